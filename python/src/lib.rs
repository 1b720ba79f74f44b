//! `onlyone._onlyone`: the library's locks for Python, and the `onlyone`
//! command. The pure-Python package (python/onlyone/) wraps these in the
//! API Python users meet; this module stays small and private.
//!
//! The command is the library's own (`onlyone::cli`, the `cli` feature):
//! a wheel carries one native module, and the command must be the very
//! same program as the `onlyone` binary.

mod errors;
mod fork;
mod guard;
mod lock;
mod values;

use pyo3::prelude::*;

/// Runs the `onlyone` command with `argv` (the program name first) and
/// returns its exit code. The interpreter's lock is let go meanwhile: the
/// command runs as the binary does, with its own signal handling.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<std::ffi::OsString>) -> u8 {
    py.detach(|| onlyone::cli::main(argv))
}

/// In a child made by fork while its parent `parent` held a lock: the
/// child is killed when its parent ends (Linux; elsewhere nothing).
#[pyfunction]
fn die_with_parent(parent: u32) {
    fork::die_with_parent(parent);
}

#[pymodule]
fn _onlyone(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The at-fork hooks now, under the import, rather than at the first
    // acquisition: a program's thread that acquires while another forks
    // then never races their installation.
    onlyone::internals::install_fork_hooks();
    // The library's warnings (a record that could not be written, a
    // failed release) as the command prints them.
    onlyone::cli::show_library_warnings();
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(die_with_parent, m)?)?;
    m.add(
        "KILL_GRACE",
        onlyone::Timing::DEFAULT_KILL_GRACE.as_secs_f64(),
    )?;
    m.add_function(wrap_pyfunction!(lock::status, m)?)?;
    m.add_class::<lock::NativeLock>()?;
    m.add_class::<lock::Waiter>()?;
    m.add_class::<guard::NativeGuard>()?;
    m.add("NAME_RULE", onlyone::NAME_RULE)?;
    Ok(())
}
