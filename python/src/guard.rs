//! `NativeGuard`: a held lock, for `onlyone.Guard`.

use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use onlyone::{Guard, LossWatch, Record};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{errors, fork, values};

const HELD: u8 = 0;
const RELEASED: u8 = 1;
const FORKED: u8 = 2;

/// A held lock. Dropped (garbage-collected), it releases the lock; in a
/// child made by fork it is never released, only let go of.
#[pyclass(frozen, module = "onlyone._onlyone")]
pub struct NativeGuard {
    guard: ManuallyDrop<Mutex<Option<Guard>>>,
    phase: AtomicU8,
    record: Record,
    token: Option<u64>,
    fence_sql: Option<String>,
    name: String,
    loss: LossWatch,
    env: Vec<(String, String)>,
    /// What a forked child closes: the guard's descriptors (as they were
    /// just before the fork) and sockets.
    fds: Mutex<Vec<RawFd>>,
    sockets: Vec<u64>,
    /// Set once the guard is released or dropped, for the "raise" backstop.
    released: Arc<Released>,
    holder_pid: u32,
    /// Held in a database server (PostgreSQL or MySQL), on a session.
    database: bool,
}

impl NativeGuard {
    pub fn new(guard: Guard, sockets: Vec<u64>, database: bool) -> NativeGuard {
        NativeGuard {
            database,
            phase: AtomicU8::new(HELD),
            record: guard.record().clone(),
            token: guard.token(),
            fence_sql: guard.fence_sql(),
            name: guard.name().to_string(),
            loss: guard.loss_watch(),
            env: guard.env(),
            fds: Mutex::new(guard.descriptors_now()),
            sockets,
            released: Arc::default(),
            holder_pid: std::process::id(),
            guard: ManuallyDrop::new(Mutex::new(Some(guard))),
        }
    }

    fn guard(&self) -> MutexGuard<'_, Option<Guard>> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forked(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == FORKED
    }
}

/// Whether the guard has been released (or dropped): a flag to wait for.
#[derive(Default)]
struct Released {
    done: Mutex<bool>,
    changed: Condvar,
}

impl Released {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits at most `timeout`; whether the guard was released.
    fn wait(&self, timeout: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .changed
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }
}

/// Ends this process after a lost lock, as `onlyone run` ends its command:
/// its children get SIGTERM, and SIGKILL after `grace` (a zero grace:
/// SIGKILL at once); then the process ends with status 74.
fn end_process(message: String, grace: Duration) -> ! {
    onlyone::cli::say_error(message);
    fork::stop_children(grace);
    // SAFETY: _exit ends the process without running anything of it (no
    // atexit handler, no destructor): nothing of the work the lock
    // protected runs after this.
    unsafe { libc::_exit(i32::from(onlyone::exit::LOST)) }
}

impl Drop for NativeGuard {
    fn drop(&mut self) {
        if self.forked() {
            // The parent's lock: leaked here, never released.
            return;
        }
        self.released.set();
        // SAFETY: dropped once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
    }
}

#[pymethods]
impl NativeGuard {
    /// The fencing token, or None when it could not be recorded.
    #[getter]
    fn token(&self) -> Option<u64> {
        self.token
    }

    /// The statement that fences a transaction's writes with this token
    /// (PostgreSQL with a named lock), else None.
    #[getter]
    fn fence_sql(&self) -> Option<String> {
        self.fence_sql.clone()
    }

    /// Whether the lock is held in a database server, PostgreSQL or MySQL
    /// (else a lock file): releasing it speaks to the server.
    #[getter]
    fn database(&self) -> bool {
        self.database
    }

    /// The name of the lock held.
    #[getter]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// This holder's record (a dict).
    #[getter]
    fn record<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        values::record(py, &self.record)
    }

    /// The variables that describe the lock to a child process.
    #[getter]
    fn env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    /// Whether this guard still holds (not released, not a fork's copy).
    #[getter]
    fn holding(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == HELD
    }

    /// Why the lock was lost, or None while it is held.
    #[getter]
    fn lost(&self) -> Option<String> {
        if self.forked() {
            return Some(self.fork_reason());
        }
        self.loss.reason()
    }

    /// Who asked this holder to stop (`HOST:PID`: PostgreSQL's `onlyone
    /// stop` or `--replace`; MySQL's end the session instead), or None.
    /// Not a loss: the lock is still held.
    #[getter]
    fn stop_requested(&self) -> Option<String> {
        if self.forked() {
            return None;
        }
        self.loss.stop_requested()
    }

    /// Waits at most `timeout` seconds (None: without limit) for the lock
    /// to be lost; the reason if it was. Ctrl-C is seen within 50 ms.
    #[pyo3(signature = (timeout=None))]
    fn wait_lost(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<String>> {
        if self.forked() {
            return Ok(Some(self.fork_reason()));
        }
        let deadline = match timeout {
            Some(t) => Some(
                Duration::try_from_secs_f64(t)
                    .map_err(|_| pyo3::exceptions::PyValueError::new_err("a bad timeout"))?,
            ),
            None => None,
        }
        .and_then(|t| Instant::now().checked_add(t));
        loop {
            let slice = deadline.map_or(Duration::from_millis(50), |d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50))
            });
            let loss = self.loss.clone();
            if let Some(reason) = py.detach(move || loss.wait(Some(slice))) {
                return Ok(Some(reason));
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Releases the lock now; nothing if it was released already, or in a
    /// child made by fork (the lock is the parent's).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        if self
            .phase
            .compare_exchange(HELD, RELEASED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Ok(());
        }
        let guard = self.guard().take();
        self.released.set();
        match guard {
            Some(guard) => py
                .detach(move || guard.release())
                .map_err(|err| errors::to_py(py, err)),
            None => Ok(()),
        }
    }

    /// When the lock is lost: say why on stderr, as the command does, stop
    /// the process's children (SIGTERM, SIGKILL after `grace` seconds) and
    /// end the process with status 74, before a new holder starts.
    fn exit_on_loss(&self, grace: f64) -> PyResult<()> {
        let grace = grace_of(grace)?;
        let name = self.name.clone();
        self.loss.on_loss(move |reason| {
            end_process(
                format!("lost lock '{name}' ({reason}); the program was ended"),
                grace,
            )
        });
        Ok(())
    }

    /// Calls `raise_lost(reason)` in a thread of its own when the lock is
    /// lost; if the guard is still not released `grace` seconds later (the
    /// exception was swallowed), ends the process as [`exit_on_loss`] does,
    /// its children killed at once: a successor may start soon after.
    ///
    /// [`exit_on_loss`]: NativeGuard::exit_on_loss
    fn raise_on_loss(&self, raise_lost: Py<PyAny>, grace: f64) -> PyResult<()> {
        let grace = grace_of(grace)?;
        let name = self.name.clone();
        let released = self.released.clone();
        self.loss.on_loss(move |reason| {
            let _ = std::thread::Builder::new()
                .name("onlyone-loss".to_owned())
                .spawn(move || {
                    Python::attach(|py| {
                        if let Err(err) = raise_lost.call1(py, (reason.clone(),)) {
                            err.print(py);
                        }
                    });
                    if !released.wait(grace) {
                        end_process(
                            format!(
                                "lost lock '{name}' ({reason}), and its guard was not released within {grace:?}; the program was ended"
                            ),
                            Duration::ZERO,
                        );
                    }
                });
        });
        Ok(())
    }

    /// Just before a fork, in the parent: notes the descriptors that hold
    /// the lock now (a lock file may have been restored since it was
    /// taken), which the child closes.
    fn before_fork(&self) {
        if let Some(guard) = self.guard().as_ref() {
            *self.fds.lock().unwrap_or_else(|e| e.into_inner()) = guard.descriptors_now();
        }
    }

    /// Calls `callback(reason)` in a thread of its own when the lock is
    /// lost.
    fn on_loss(&self, callback: Py<PyAny>) {
        self.loss.on_loss(move |reason| {
            let _ = std::thread::Builder::new()
                .name("onlyone-loss".to_owned())
                .spawn(move || {
                    Python::attach(|py| {
                        if let Err(err) = callback.call1(py, (reason,)) {
                            err.print(py);
                        }
                    });
                });
        });
    }

    /// In a child made by fork: closes the child's copies of what holds the
    /// lock, and never releases it.
    fn forget_in_child(&self) {
        if self.phase.swap(FORKED, Ordering::SeqCst) == HELD {
            let fds = self.fds.lock().unwrap_or_else(|e| e.into_inner());
            fork::close_in_child(&fds, &self.sockets);
        }
    }
}

/// A grace period from Python, in seconds.
fn grace_of(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("a bad grace period"))
}

impl NativeGuard {
    fn fork_reason(&self) -> String {
        format!(
            "this process is a fork of the holder, pid {}; the lock stays with it",
            self.holder_pid
        )
    }
}
