//! The library's records and statuses as plain Python values (dicts of
//! str, int, list and None), which the package turns into its classes.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use onlyone::{Holder, Record, Status};

/// A holder record: who took the lock, when, to run what.
pub fn record<'py>(py: Python<'py>, record: &Record) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("token", record.token)?;
    dict.set_item("pid", record.pid)?;
    dict.set_item("host", &record.host)?;
    dict.set_item("user", &record.user)?;
    dict.set_item("uid", record.uid)?;
    dict.set_item("command", &record.command)?;
    dict.set_item("acquired_at", &record.acquired_at)?;
    dict.set_item("start_time", record.start_time)?;
    dict.set_item("boot_id", &record.boot_id)?;
    dict.set_item("text", record.to_string())?;
    Ok(dict)
}

/// Who holds a lock: the record when readable, the processes, the
/// database session.
pub fn holder<'py>(py: Python<'py>, holder: &Holder) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let record = holder.record.as_ref().map(|r| record(py, r)).transpose()?;
    dict.set_item("record", record)?;
    dict.set_item("pids", &holder.pids)?;
    dict.set_item("server_pid", holder.server_pid)?;
    dict.set_item("detail", &holder.detail)?;
    dict.set_item(
        "lock_delay",
        holder.lock_delay.map(|delay| delay.as_secs_f64()),
    )?;
    dict.set_item("text", holder.to_string())?;
    Ok(dict)
}

/// Whether a lock is held, by whom, and who waits.
pub fn status<'py>(py: Python<'py>, status: &Status) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("name", &status.name)?;
    dict.set_item("location", &status.location)?;
    dict.set_item("held", status.held)?;
    let holder = status.holder.as_ref().map(|h| holder(py, h)).transpose()?;
    dict.set_item("holder", holder)?;
    dict.set_item("last_token", status.last_token)?;
    dict.set_item("waiters", &status.waiters)?;
    Ok(dict)
}
