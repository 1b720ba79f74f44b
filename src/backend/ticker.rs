//! One thread that ticks every held file lock of this process, instead of
//! a thread per lock: starting and joining a thread was half the cost of
//! an acquisition.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Work done at every tick; `false` when it is finished for good.
pub(crate) trait Tick: Send {
    fn tick(&mut self) -> bool;
}

/// Keeps a job registered; dropping it unregisters the job, after any tick
/// of it that is running has finished.
#[derive(Debug)]
pub(crate) struct Ticket(u64);

struct Registry {
    next_id: u64,
    jobs: Vec<(u64, Box<dyn Tick>)>,
    /// The process that started the thread: a forked child has none.
    thread_of: Option<u32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    jobs: Vec::new(),
    thread_of: None,
});
static WAKE: Condvar = Condvar::new();

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ticks `job` every `interval` until it says it is finished or the ticket
/// is dropped. `None` when no thread can be started.
pub(crate) fn register(job: Box<dyn Tick>, interval: Duration) -> Option<Ticket> {
    let mut registry = registry();
    let me = std::process::id();
    if registry.thread_of != Some(me) {
        std::thread::Builder::new()
            .name("onlyone-watch".into())
            .spawn(move || run(interval))
            .ok()?;
        registry.thread_of = Some(me);
    }
    let id = registry.next_id;
    registry.next_id += 1;
    registry.jobs.push((id, job));
    WAKE.notify_all();
    Some(Ticket(id))
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Ticks run under the registry's lock: once we hold it, none of
        // this job's ticks is running, and none will.
        registry().jobs.retain(|(id, _)| *id != self.0);
    }
}

fn run(interval: Duration) {
    let mut registry = registry();
    loop {
        while registry.jobs.is_empty() {
            registry = WAKE.wait(registry).unwrap_or_else(|e| e.into_inner());
        }
        registry = WAKE
            .wait_timeout(registry, interval)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        registry.jobs.retain_mut(|(_, job)| job.tick());
    }
}
