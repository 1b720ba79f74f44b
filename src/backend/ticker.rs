//! One thread that ticks every held file lock of this process, instead of
//! a thread per lock: starting and joining a thread was half the cost of
//! an acquisition. Or no thread at all: a caller that promises to tick
//! ([`tick_on_this_thread`]: `onlyone run`'s supervisor, from its poll
//! loop) gets the jobs ticked by [`tick_if_due`], and wakes by
//! [`next_tick`].

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sys;

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
    /// The thread waits without a timeout: a new job must wake it. While
    /// it ticks, a new job waits for the next tick instead, so that an
    /// acquisition does not wake another thread and contend for the lock.
    parked: bool,
    /// The process whose caller promised to tick ([`tick_on_this_thread`]):
    /// it starts no thread. A forked child has made no promise.
    caller_ticks: Option<u32>,
    /// When the caller's next tick is due, while it has jobs.
    due: Option<Instant>,
    /// The interval of the caller's ticks (the jobs').
    interval: Duration,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    jobs: Vec::new(),
    thread_of: None,
    parked: false,
    caller_ticks: None,
    due: None,
    interval: Duration::MAX,
});
static WAKE: Condvar = Condvar::new();

/// How long the thread keeps ticking with no job before it parks: a
/// process that takes and lets go of locks in a loop does not wake it at
/// every acquisition, and an idle one does not wake at all.
const LINGER: u32 = 40;

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ticks `job` every `interval` until it says it is finished or the ticket
/// is dropped. `None` when no thread can be started.
pub(crate) fn register(job: Box<dyn Tick>, interval: Duration) -> Option<Ticket> {
    install_fork_hooks();
    let mut registry = registry();
    if registry.caller_ticks == Some(std::process::id()) {
        // The first job's first tick is an interval away, as on the
        // thread; later jobs share the ticks already due.
        registry.interval = registry.interval.min(interval);
        if registry.jobs.is_empty() {
            registry.due = Instant::now().checked_add(registry.interval);
        }
    } else if !started(&mut registry, interval) {
        return None;
    }
    let id = registry.next_id;
    registry.next_id += 1;
    registry.jobs.push((id, job));
    let parked = std::mem::take(&mut registry.parked);
    drop(registry);
    if parked {
        WAKE.notify_all();
    }
    Some(Ticket(id))
}

/// The calling thread promises to call [`tick_if_due`] by every
/// [`next_tick`] for as long as the process holds a lock, from now on: the
/// jobs registered from now on start no thread. For a program that runs a
/// poll loop anyway (`onlyone run`'s supervisor), whose one thread is then
/// all it has. Every wait of that thread while a lock is held must then
/// end by the next tick; a library user who makes no promise gets the
/// thread.
#[cfg(feature = "cli")]
pub(crate) fn tick_on_this_thread() {
    install_fork_hooks();
    registry().caller_ticks = Some(std::process::id());
}

/// When the promised tick ([`tick_on_this_thread`]) is due: `None` when
/// there is nothing to tick, or when a thread ticks.
pub(crate) fn next_tick() -> Option<Instant> {
    let registry = registry();
    if registry.caller_ticks != Some(std::process::id()) || registry.jobs.is_empty() {
        return None;
    }
    registry.due
}

/// Ticks every job if the promised tick is due (see
/// [`tick_on_this_thread`]); does nothing otherwise, or when a thread
/// ticks.
pub(crate) fn tick_if_due() {
    let mut registry = registry();
    let now = Instant::now();
    if registry.caller_ticks != Some(std::process::id())
        || registry.jobs.is_empty()
        || registry.due.is_some_and(|due| now < due)
    {
        return;
    }
    // As on the thread: a tick that forks (a loss callback) holds the
    // registry already, and the fork hooks must not wait for it.
    let ticker = TICKER.replace(true);
    registry.jobs.retain_mut(|(_, job)| job.tick());
    TICKER.set(ticker);
    registry.due = Instant::now().checked_add(registry.interval);
}

/// Starts the thread now if this process has none, so that a job
/// registered later (by an acquisition that waits, once the lock is
/// granted) does not start it then. Without jobs it ticks for a while,
/// then parks until one is registered. Nothing to start when the caller
/// ticks ([`tick_on_this_thread`]).
pub(crate) fn start(interval: Duration) {
    install_fork_hooks();
    let mut registry = registry();
    if registry.caller_ticks != Some(std::process::id()) {
        let _ = started(&mut registry, interval);
    }
}

/// True when this process has the thread, started now if needed.
fn started(registry: &mut Registry, interval: Duration) -> bool {
    let me = std::process::id();
    if registry.thread_of != Some(me) {
        if std::thread::Builder::new()
            .name("onlyone-watch".into())
            .spawn(move || run(interval))
            .is_err()
        {
            return false;
        }
        registry.thread_of = Some(me);
    }
    true
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Ticks run under the registry's lock: once we hold it, none of
        // this job's ticks is running, and none will.
        registry().jobs.retain(|(id, _)| *id != self.0);
    }
}

/// Who installs the at-fork hooks: nobody yet (0), a thread of the
/// process with this pid, or done ([`HOOKS_INSTALLED`]).
static FORK_HOOKS: AtomicU64 = AtomicU64::new(0);
const HOOKS_INSTALLED: u64 = u64::MAX;

/// Installs (once) the at-fork hooks that hold the library's
/// process-wide mutexes across every fork of the process. Called before
/// any of those mutexes is first taken, at every entry point that takes
/// one, so that no fork can copy one locked before the hooks are in place.
///
/// Not a `std::sync::Once`: a child forked while another thread of its
/// parent was installing the hooks would inherit the `Once` "running",
/// with no thread left to finish it, and its first acquisition would wait
/// forever (seen: one fresh multithreaded Python program in four that
/// forked during its first acquisition). Here, such a child sees the
/// parent's pid as the installer's and installs the hooks itself. It may
/// then have them twice (the parent's registration may have been done
/// before the fork): the hooks do nothing when they run a second time.
pub(crate) fn install_fork_hooks() {
    if FORK_HOOKS.load(Ordering::Acquire) == HOOKS_INSTALLED {
        return;
    }
    let me = u64::from(std::process::id());
    loop {
        match FORK_HOOKS.load(Ordering::Acquire) {
            HOOKS_INSTALLED => return,
            // Another thread of this process installs them: a matter of
            // one pthread_atfork call.
            installer if installer == me => std::thread::yield_now(),
            // Nobody, or a thread of a parent this process was forked
            // from midway (which this process does not have).
            installer => {
                if FORK_HOOKS
                    .compare_exchange(installer, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    sys::at_fork(before_fork, after_fork_in_parent, after_fork_in_child);
                    FORK_HOOKS.store(HOOKS_INSTALLED, Ordering::Release);
                    return;
                }
            }
        }
    }
}

/// The mutexes held across a fork: the registry, then the others the
/// acquire path takes (the kept directory identities, the mount table,
/// the process's identity), outermost first, as the code nests them.
type ForkHeld = (MutexGuard<'static, Registry>, Vec<Box<dyn Any>>);

thread_local! {
    /// The mutexes locked by this thread for a fork under way.
    static FORKING: RefCell<Option<ForkHeld>> = const { RefCell::new(None) };
    /// This thread is the ticking thread (which holds the registry while
    /// it ticks).
    static TICKER: Cell<bool> = const { Cell::new(false) };
}

/// Before a fork: no tick, and no acquisition's use of a process-wide
/// mutex, may be under way, or the child would get that mutex locked by a
/// thread it does not have, and hang at its first acquisition. (A fork
/// from a tick itself, a loss callback that forks, holds the registry
/// already and cannot wait for it.) The parent and child hooks take what
/// it held: run twice, the second finds nothing.
extern "C" fn before_fork() {
    // Installed twice (see `install_fork_hooks`): the second call finds
    // the mutexes held by the first already.
    let held = FORKING.with(|forking| forking.borrow().is_some());
    if !TICKER.get() && !held {
        let registry = registry();
        let mut others = vec![
            crate::backend::file::hold_for_fork(),
            crate::record::hold_for_fork(),
        ];
        others.extend(sys::hold_for_fork());
        // Last: a thread in the MySQL driver takes none of the others.
        #[cfg(feature = "mysql")]
        others.push(crate::backend::mysql::hold_for_fork());
        FORKING.with(|forking| *forking.borrow_mut() = Some((registry, others)));
    }
}

extern "C" fn after_fork_in_parent() {
    FORKING.with(|forking| drop(forking.borrow_mut().take()));
}

/// In the child: the parent's jobs are the parent's (its watchers, which
/// would restore and lock the parent's files from here): never ticked, and
/// never dropped (a drop could unlock what the parent holds).
extern "C" fn after_fork_in_child() {
    FORKING.with(|forking| {
        if let Some((mut registry, _others)) = forking.borrow_mut().take() {
            std::mem::forget(std::mem::take(&mut registry.jobs));
            registry.parked = false;
        }
    });
}

fn run(interval: Duration) {
    TICKER.set(true);
    let mut registry = registry();
    let mut idle = 0;
    loop {
        idle = if registry.jobs.is_empty() {
            idle + 1
        } else {
            0
        };
        if idle > LINGER {
            registry.parked = true;
            while registry.parked {
                registry = WAKE.wait(registry).unwrap_or_else(|e| e.into_inner());
            }
            idle = 0;
        }
        registry = WAKE
            .wait_timeout(registry, interval)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        registry.jobs.retain_mut(|(_, job)| job.tick());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    struct Send1(mpsc::Sender<()>);

    impl Tick for Send1 {
        fn tick(&mut self) -> bool {
            let _ = self.0.send(());
            true
        }
    }

    /// A job registered after the thread parked for want of jobs is ticked:
    /// registering wakes a parked thread (and only a parked one).
    #[test]
    fn a_job_registered_after_the_thread_parked_is_ticked() {
        let interval = Duration::from_millis(5);
        let (sender, ticks) = mpsc::channel();
        let ticket = register(Box::new(Send1(sender)), interval).unwrap();
        ticks.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(ticket);
        // The thread parks once it has ticked LINGER times with no job
        // (other tests of this process may register meanwhile: then it
        // ticks them, and parks after they are gone).
        let start = Instant::now();
        while !registry().parked {
            assert!(start.elapsed() < Duration::from_secs(60), "never parked");
            std::thread::yield_now();
        }
        let (sender, ticks) = mpsc::channel();
        let _ticket = register(Box::new(Send1(sender)), interval).unwrap();
        ticks.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
