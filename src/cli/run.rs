//! `onlyone run`: take the lock as the flags say, then supervise the
//! command (and restart it with `--restart`).

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use crate::supervise::{Outcome, Supervisor};
use crate::sys;
use crate::{Attempt, Guard, Holder, Lock, LockName, MAX_SLOTS, Stop, Timing, exit};

use super::output::{self, Level, say};
use super::{BackendArgs, Place, parse_duration, parse_shown_duration};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock's name: 1-128 characters of A-Z a-z 0-9 . _ -, not starting
    /// with '.'
    #[arg(long, short = 'n', value_name = "NAME")]
    name: String,

    #[command(flatten)]
    backend: BackendArgs,

    /// Wait for the lock without limit, instead of refusing when it is held
    #[arg(long, conflicts_with = "timeout")]
    wait: bool,

    /// Wait for the lock at most this long (e.g. 30s, 5m, 1h 30m)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Exit with this code instead of 75 when the lock is not acquired
    /// (0 suits cron: "already running" is not a failure)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8))]
    conflict_exit_code: Option<u8>,

    /// Stop the current holder (SIGTERM to its command, SIGKILL after
    /// --kill-grace; with --postgres, asked through the database, and its
    /// session ended if it has not let go within the heartbeat deadline +
    /// --kill-grace + 1 s), then take the lock and run
    #[arg(long, conflicts_with = "max")]
    replace: bool,

    /// Allow at most N instances at once (a semaphore): each takes one of N
    /// slots and gets ONLYONE_SLOT and its own token. --max 1 is the plain
    /// lock; a name is used with N >= 2 everywhere, or nowhere
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS)))]
    max: Option<u32>,

    /// Keep the command running: restart it when it fails (on-failure) or
    /// whenever it exits (always), holding the lock throughout
    #[arg(long, value_enum, value_name = "WHEN")]
    restart: Option<Restart>,

    /// The first delay before a restart; it doubles after each quick
    /// failure, up to 1 minute, and resets once the command has run for
    /// 1 minute
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, default_value = "1s", value_parser = parse_duration)]
    restart_delay: Duration,

    /// After losing the lock, how long the command gets between SIGTERM and
    /// SIGKILL
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, default_value_t = Timing::DEFAULT_KILL_GRACE.into(), value_parser = parse_shown_duration)]
    kill_grace: humantime::Duration,

    /// The command to run, and its arguments (passed on byte for byte,
    /// whatever their encoding)
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// When `--restart` starts the command again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Restart {
    /// When it exits with a non-zero status or is killed by a signal
    OnFailure,
    /// Whenever it exits
    Always,
}

/// After a restart, the delay doubles up to this.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// A command that ran this long before exiting resets the restart delay.
const STABLE_RUN: Duration = Duration::from_secs(60);

pub fn run_command(args: RunArgs) -> anyhow::Result<u8> {
    let name = LockName::new(&args.name)?;
    let timing = args.backend.timing(*args.kill_grace);
    // The record is for people: a lossy UTF-8 copy of the command line.
    let recorded = args
        .command
        .iter()
        .map(|word| word.to_string_lossy().into_owned())
        .collect();
    let mut lock = Place::new(&args.backend, timing)?
        .lock(name.clone())
        .command(recorded);
    if let Some(max) = args.max {
        lock = lock.max(max)?;
    }
    // The supervisor, on this thread, checks a held file lock from its
    // waits: no thread of the backend's (issue 15).
    crate::supervise::tick_on_this_thread();
    let mut early_guardian = None;
    let taken = take_lock(&lock, &args, &mut early_guardian);
    let Some(guard) = taken? else {
        if let Some(guardian) = early_guardian {
            guardian.dismiss();
        }
        return Ok(args.conflict_exit_code.unwrap_or(exit::CONFLICT));
    };
    log::info!(
        "acquired lock '{name}' (token {})",
        guard.token().map_or("none".to_owned(), |t| t.to_string())
    );
    let mut supervisor = Supervisor::new(timing)?;
    if let Some(guardian) = early_guardian {
        supervisor.adopt_guardian(guardian);
    }
    let code = supervise(&mut supervisor, &guard, &args)?;
    drop(guard);
    Ok(code)
}

/// Takes the lock as the flags say: one try, a wait, or replacing the
/// holder. `None` when it is held by someone else. Before a wait, the
/// command's guardian is forked into `guardian`: its fork is then not
/// between the grant and the command's start (a single try forks it after
/// winning, as a loser would fork it for nothing).
fn take_lock(
    lock: &Lock,
    args: &RunArgs,
    guardian: &mut Option<sys::Guardian>,
) -> anyhow::Result<Option<Guard>> {
    let name = lock.name();
    // The timeout bounds the whole start: the first try's lock-delay, and
    // then the wait for what is left of it.
    let started = Instant::now();
    let first = match args.timeout {
        Some(timeout) if !args.replace => lock.try_acquire_within(timeout)?,
        _ => lock.try_acquire()?,
    };
    let holder = match first {
        Attempt::Acquired(guard) => return Ok(Some(guard)),
        Attempt::Held(holder) => holder,
    };
    if args.replace {
        return replace_holder(lock, args, holder);
    }
    if !args.wait && args.timeout.is_none() {
        // --max 1 is the plain lock.
        say(
            Level::Notice,
            match args.max.filter(|&max| max >= 2) {
                Some(max) => {
                    format!("all {max} slots of lock '{name}' are held; slot 1 by {holder}")
                }
                None => conflict_message(name, &holder, None),
            },
        );
        return Ok(None);
    }
    let left = args.timeout.map(|t| t.saturating_sub(started.elapsed()));
    let attempt = if holder.lock_delay.is_some() || left == Some(Duration::ZERO) {
        Attempt::Held(holder)
    } else {
        let waiting = WaitNotice::start(name, &holder);
        // Forked with none of the lock's descriptors open (the first try
        // closed them). Should the fork fail, the supervisor tries again
        // once the lock is held, and reports it then.
        *guardian = sys::Guardian::watch().ok();
        let attempt = lock.acquire(left);
        waiting.stop();
        attempt?
    };
    match attempt {
        Attempt::Acquired(guard) => Ok(Some(guard)),
        Attempt::Held(holder) => {
            let waited = args.timeout.unwrap_or_default();
            say(Level::Notice, conflict_message(name, &holder, Some(waited)));
            Ok(None)
        }
    }
}

/// What the command says when it does not get lock `name` from `holder`:
/// after one try (`waited` is `None`), or after waiting `waited`. The
/// Python package raises `Held` with the same words.
pub fn conflict_message(name: &LockName, holder: &Holder, waited: Option<Duration>) -> String {
    let Some(waited) = waited else {
        return format!("lock '{name}' is held by {holder}");
    };
    let waited = humantime::format_duration(waited);
    match holder.lock_delay {
        Some(delay) => format!(
            "gave up after {waited}: lock '{name}' was free, but the previous holder did not release it cleanly and its lock-delay of {} had not passed",
            humantime::format_duration(delay)
        ),
        None => format!("gave up after {waited}: lock '{name}' is held by {holder}"),
    }
}

/// `--replace`: SIGTERM to the holder seen, a grace period to let go,
/// then SIGKILL to that same holder, then the lock. Each signal goes only
/// to the holder verified right before it; when another starter (another
/// replacer) has taken the lock meanwhile, it is left alone and this run
/// gives up.
fn replace_holder(lock: &Lock, args: &RunArgs, holder: Holder) -> anyhow::Result<Option<Guard>> {
    let name = lock.name();
    say(
        Level::Notice,
        format!("replacing the holder of lock '{name}': {holder}"),
    );
    // Whom the next signal is for: the holder seen, then the one that got
    // SIGTERM. When it let go by itself, there is nobody to escalate
    // against.
    let mut target = holder.id();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        match lock.stop_holder(signal, target.as_ref())? {
            Stop::Signalled(signalled) => {
                log::info!("sent signal {signal} to the holder of lock '{name}': {signalled}");
                target = signalled.id();
            }
            Stop::Requested(asked, owes) => {
                log::info!("asked the holder of lock '{name}' to stop: {asked}");
                target = asked.id();
                // Waited for in the server's queue: the lock is taken the
                // moment the holder releases it. A starter asked during its
                // lock-delay answers only once the delay has passed: what
                // it still owes is added to the bound.
                let bound = answer_bound(args).saturating_add(owes);
                let current = match lock.acquire(Some(bound))? {
                    Attempt::Acquired(guard) => return Ok(Some(guard)),
                    Attempt::Held(current) => current,
                };
                if current.id() != target {
                    return Ok(taken_meanwhile(name, &current));
                }
                say(
                    Level::Warning,
                    format!(
                        "the holder of lock '{name}' did not answer the stop request within {}; ending its database session, so this start waits the lock-delay",
                        humantime::format_duration(bound)
                    ),
                );
                continue;
            }
            Stop::Free => target = None,
            Stop::Changed(other) => return Ok(taken_meanwhile(name, &other)),
        }
        // The kill grace bounds how long the holder takes to let go, not
        // the lock-delay that may follow (a timeout given to `acquire`
        // would bound both).
        let current = if lock.wait_free(Some(*args.kill_grace))? {
            match lock.try_acquire()? {
                Attempt::Acquired(guard) => return Ok(Some(guard)),
                Attempt::Held(current) => Some(current),
            }
        } else {
            let status = lock.status()?;
            status.holder.filter(|_| status.held)
        };
        // Someone else has it now (it took the lock the moment it was
        // free): not ours to stop. Still the holder we signalled: escalate
        // against it (the next stop_holder checks again).
        if let Some(current) = current
            && (target.is_none() || current.id() != target)
        {
            return Ok(taken_meanwhile(name, &current));
        }
    }
    say(
        Level::Notice,
        format!("lock '{name}' is still held after SIGKILL to its holder"),
    );
    Ok(None)
}

/// How long `--replace` waits for a holder it asked to stop (PostgreSQL)
/// before it ends the holder's session: the heartbeat deadline (a holder
/// that missed the announcement reads the request at its next heartbeat)
/// plus the kill grace (its command's time to stop) plus a second, all as
/// this start's own flags give them.
fn answer_bound(args: &RunArgs) -> Duration {
    args.backend
        .timing(*args.kill_grace)
        .stop_within()
        .saturating_add(Duration::from_secs(1))
}

/// Another starter took the lock while we replaced its holder: it is not
/// ours to stop.
fn taken_meanwhile(name: &LockName, holder: &Holder) -> Option<Guard> {
    say(
        Level::Notice,
        format!("lock '{name}' was taken by another starter while replacing: {holder}"),
    );
    None
}

/// Runs the command, again and again with `--restart`, holding the lock.
fn supervise(supervisor: &mut Supervisor, guard: &Guard, args: &RunArgs) -> anyhow::Result<u8> {
    let name = guard.name();
    let mut delay = args.restart_delay;
    loop {
        let started = Instant::now();
        let code = match supervisor.run(guard, &args.command)? {
            Outcome::Exited(code) => code,
            Outcome::Lost { reason, code } => {
                say(
                    Level::Error,
                    format!(
                        "lost lock '{name}' ({reason}); the command was stopped (its status was {code})"
                    ),
                );
                return Ok(exit::LOST);
            }
            Outcome::LostBeforeStart { reason } => {
                say(
                    Level::Error,
                    format!("lost lock '{name}' ({reason}); the command was not started"),
                );
                return Ok(exit::LOST);
            }
        };
        let again = match args.restart {
            None => false,
            Some(Restart::Always) => true,
            Some(Restart::OnFailure) => code != 0,
        };
        if !again || supervisor.stop_signal().is_some() {
            return Ok(code);
        }
        if started.elapsed() >= STABLE_RUN {
            delay = args.restart_delay;
        }
        // A clean exit is what `--restart always` is for; a failure is
        // worth a warning.
        say(
            if code == 0 {
                Level::Info
            } else {
                Level::Warning
            },
            format!(
                "the command exited with status {code}; restarting it in {}",
                humantime::format_duration(delay)
            ),
        );
        if !supervisor.pause(delay) {
            return Ok(code);
        }
        if let Some(reason) = guard.lost() {
            say(
                Level::Error,
                format!("lost lock '{name}' ({reason}) between restarts"),
            );
            return Ok(exit::LOST);
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

/// The one line that says we wait, and for whom. On a terminal it is
/// drawn again every second from one clock, so that the holder's age and
/// the time waited move together.
struct WaitNotice {
    done: Arc<AtomicBool>,
    ticker: Option<thread::JoinHandle<()>>,
}

impl WaitNotice {
    fn start(name: &LockName, holder: &Holder) -> WaitNotice {
        let done = Arc::new(AtomicBool::new(false));
        if !output::can_redraw() {
            say(
                Level::Notice,
                format!("waiting for lock '{name}' held by {holder}"),
            );
            return WaitNotice { done, ticker: None };
        }
        let (name, holder) = (name.clone(), holder.clone());
        let started = Instant::now();
        let flag = done.clone();
        let ticker = thread::spawn(move || {
            // Only the display ticks: the wait itself is a blocking kernel
            // or server call.
            while !flag.load(Ordering::Relaxed) {
                let waited =
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
                // The holder is shown anew, so its "(3s ago)" keeps time.
                output::redraw(&format!(
                    "waiting for lock '{name}' held by {holder} (waited {waited})"
                ));
                thread::park_timeout(Duration::from_secs(1));
            }
            output::clear_redrawn();
        });
        WaitNotice {
            done,
            ticker: Some(ticker),
        }
    }

    fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker {
            ticker.thread().unpark();
            let _ = ticker.join();
        }
    }
}
