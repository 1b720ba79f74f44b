//! onlyone's errors as the Python package's exceptions, with the
//! command's messages.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The exception class `class` of the package (python/onlyone/_errors.py)
/// made with `args`.
pub fn raise(py: Python<'_>, class: &str, args: Bound<'_, PyTuple>) -> PyErr {
    let made = py
        .import("onlyone._errors")
        .and_then(|module| module.getattr(class))
        .and_then(|class| class.call1(args));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(err) => err,
    }
}

/// `err` as `onlyone.UsageError` (a `ValueError`), `Unusable`, `Refused`,
/// `Lost` or `Error`, with the message the command prints and its exit
/// code.
pub fn to_py(py: Python<'_>, err: onlyone::Error) -> PyErr {
    let class = match err.kind() {
        onlyone::ErrorKind::Usage => "UsageError",
        onlyone::ErrorKind::Unavailable => "Unusable",
        onlyone::ErrorKind::Unsafe => "Refused",
        onlyone::ErrorKind::Lost => "Lost",
        _ => "Error",
    };
    let code = err.exit_code();
    let message = onlyone::cli::describe(err);
    usage_like(py, class, &message, code)
}

/// A usage error found here rather than by the library (an empty URL).
pub fn usage(py: Python<'_>, message: &str) -> PyErr {
    usage_like(py, "UsageError", message, onlyone::exit::USAGE)
}

fn usage_like(py: Python<'_>, class: &str, message: &str, code: u8) -> PyErr {
    match (message, code).into_pyobject(py) {
        Ok(args) => raise(py, class, args),
        Err(err) => err,
    }
}
