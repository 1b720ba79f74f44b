//! `onlyone run`: take the lock as the flags say, then supervise the
//! command (and restart it with `--restart`).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use onlyone::supervise::{Outcome, Supervisor};
use onlyone::{Attempt, Backend, Guard, Holder, Lock, LockName};

use super::{BackendArgs, EXIT_CONFLICT, EXIT_LOST, backend, parse_duration};

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
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Exit with this code instead of 75 when the lock is not acquired
    /// (0 suits cron: "already running" is not a failure)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8))]
    conflict_exit_code: Option<u8>,

    /// Stop the current holder (SIGTERM to its command, SIGKILL after
    /// --kill-grace), then take the lock and run
    #[arg(long, conflicts_with = "max")]
    replace: bool,

    /// Allow at most N instances at once (a semaphore): each takes one of N
    /// slots and gets ONLYONE_SLOT and its own token
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    max: Option<u32>,

    /// Keep the command running: restart it when it fails (on-failure) or
    /// whenever it exits (always), holding the lock throughout
    #[arg(long, value_enum, value_name = "WHEN")]
    restart: Option<Restart>,

    /// The first delay before a restart; it doubles after each quick
    /// failure, up to 1 minute, and resets once the command has run for
    /// 1 minute
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    restart_delay: Duration,

    /// After losing the lock, how long the command gets between SIGTERM and
    /// SIGKILL
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,

    /// The command to run, and its arguments
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<String>,
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

pub fn run_command(args: RunArgs, quiet: bool) -> anyhow::Result<u8> {
    let name = LockName::new(&args.name)?;
    let backend = backend(&args.backend, args.kill_grace)?;
    let mut lock = Lock::with_backend(name.clone(), backend.clone()).command(args.command.clone());
    if let Some(max) = args.max {
        lock = lock.max(max)?;
    }
    let Some(guard) = take_lock(&lock, backend.as_ref(), &args, quiet)? else {
        return Ok(args.conflict_exit_code.unwrap_or(EXIT_CONFLICT));
    };
    log::info!(
        "acquired lock '{name}' (token {})",
        guard.token().map_or("none".to_owned(), |t| t.to_string())
    );
    let mut supervisor = Supervisor::new(args.kill_grace)?;
    let code = supervise(&mut supervisor, &guard, &args)?;
    drop(guard);
    Ok(code)
}

/// Takes the lock as the flags say: one try, a wait, or replacing the
/// holder. `None` when it is held by someone else.
fn take_lock(
    lock: &Lock,
    backend: &dyn Backend,
    args: &RunArgs,
    quiet: bool,
) -> anyhow::Result<Option<Guard>> {
    let name = lock.name();
    let holder = match lock.try_acquire()? {
        Attempt::Acquired(guard) => return Ok(Some(guard)),
        Attempt::Held(holder) => holder,
    };
    if args.replace {
        return replace_holder(lock, backend, args, quiet, holder);
    }
    if !args.wait && args.timeout.is_none() {
        if !quiet {
            match args.max {
                Some(max) => eprintln!(
                    "onlyone: all {max} slots of lock '{name}' are held; slot 1 by {holder}"
                ),
                None => eprintln!("onlyone: lock '{name}' is held by {holder}"),
            }
        }
        return Ok(None);
    }
    let waiting = (!quiet).then(|| WaitNotice::start(name, &holder));
    let attempt = lock.acquire(args.timeout);
    if let Some(notice) = waiting {
        notice.stop();
    }
    match attempt? {
        Attempt::Acquired(guard) => Ok(Some(guard)),
        Attempt::Held(holder) => {
            if !quiet {
                let waited = humantime::format_duration(args.timeout.unwrap_or_default());
                eprintln!("onlyone: gave up after {waited}: lock '{name}' is held by {holder}");
            }
            Ok(None)
        }
    }
}

/// `--replace`: SIGTERM to the holder, a grace period to let go, then
/// SIGKILL, then the lock.
fn replace_holder(
    lock: &Lock,
    backend: &dyn Backend,
    args: &RunArgs,
    quiet: bool,
    holder: Holder,
) -> anyhow::Result<Option<Guard>> {
    let name = lock.name();
    if !quiet {
        eprintln!("onlyone: replacing the holder of lock '{name}': {holder}");
    }
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        if backend.stop_holder(name, signal)? {
            log::info!("sent signal {signal} to the holder of lock '{name}'");
        }
        if let Attempt::Acquired(guard) = lock.acquire(Some(args.kill_grace))? {
            return Ok(Some(guard));
        }
    }
    if !quiet {
        eprintln!("onlyone: lock '{name}' is still held after SIGKILL to its holder");
    }
    Ok(None)
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
                eprintln!(
                    "onlyone: lost lock '{name}' ({reason}); the command was stopped (its status was {code})"
                );
                return Ok(EXIT_LOST);
            }
            Outcome::LostBeforeStart { reason } => {
                eprintln!("onlyone: lost lock '{name}' ({reason}); the command was not started");
                return Ok(EXIT_LOST);
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
        log::warn!(
            "the command exited with status {code}; restarting it in {}",
            humantime::format_duration(delay)
        );
        if !supervisor.pause(delay) {
            return Ok(code);
        }
        if let Some(reason) = guard.lost() {
            eprintln!("onlyone: lost lock '{name}' ({reason}) between restarts");
            return Ok(EXIT_LOST);
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

/// The one line that says we wait, and for whom; on a terminal it also
/// shows how long we have waited.
struct WaitNotice {
    done: Arc<AtomicBool>,
    ticker: Option<thread::JoinHandle<()>>,
}

impl WaitNotice {
    fn start(name: &LockName, holder: &Holder) -> WaitNotice {
        let line = format!("onlyone: waiting for lock '{name}' held by {holder}");
        let done = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            eprintln!("{line}");
            return WaitNotice { done, ticker: None };
        }
        let started = Instant::now();
        let flag = done.clone();
        let ticker = thread::spawn(move || {
            // Only the display ticks: the wait itself is a blocking kernel
            // or server call.
            while !flag.load(Ordering::Relaxed) {
                let waited =
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
                eprint!("\r\x1b[K{line} ({waited})");
                let _ = std::io::stderr().flush();
                thread::park_timeout(Duration::from_secs(1));
            }
            eprint!("\r\x1b[K");
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
