//! The command line: flags, and what each subcommand does with the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use onlyone::supervise::{self, Outcome};
use onlyone::{Attempt, Backend, FileBackend, Holder, Lock, LockName, Status};

/// Exit code: the lock is held by someone else (or the wait timed out).
pub const EXIT_CONFLICT: u8 = 75;
/// Exit code of `status NAME` when the lock is free (as LSB init scripts).
pub const EXIT_FREE: u8 = 3;
/// Exit code: the lock was lost and the command stopped.
pub const EXIT_LOST: u8 = 74;
/// Exit code for bad usage.
pub const EXIT_USAGE: u8 = 64;

const EXIT_CODES: &str = "\
Exit codes:
  (command's own)  run: the command's exit status; 128+N if killed by signal N
  0    status NAME: the lock is held
  3    status NAME: the lock is free
  64   usage error (bad flag, name, duration)
  69   the lock backend is unusable (cannot create, open or lock; database unreachable)
  74   the lock was lost while the command ran, and the command was stopped
  75   not acquired: the lock is held, or the wait timed out (see --conflict-exit-code)
  77   refused for safety (symlink, foreign owner, unsafe permissions, standby, pooler)
  126  the command cannot be executed
  127  the command was not found";

/// Run exactly one instance of a command: a kernel file lock on one
/// machine, or a PostgreSQL advisory lock across machines.
#[derive(Debug, Parser)]
#[command(name = "onlyone", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run COMMAND while holding the lock NAME; refuse (exit 75) if another
    /// holder has it.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Show whether a lock (or every lock) is held, and by whom, without
    /// taking it. With NAME: exit 0 when held, 3 when free.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct BackendArgs {
    /// Directory of the lock files [default: $XDG_RUNTIME_DIR/onlyone, else
    /// /tmp/onlyone-<uid>]
    #[arg(long, env = "ONLYONE_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
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

    /// Say nothing about conflicts and waiting; errors are still shown
    #[arg(long, short = 'q')]
    quiet: bool,

    /// After losing the lock, how long the command gets between SIGTERM and
    /// SIGKILL
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,

    /// The command to run, and its arguments
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// One lock's name; without it, every lock in the directory
    #[arg(value_name = "NAME")]
    name: Option<String>,

    #[command(flatten)]
    backend: BackendArgs,

    /// Print JSON (an object for NAME, else an array)
    #[arg(long)]
    json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!("{err}; a duration is a number with a unit, such as 500ms, 30s, 5m or 1h 30m")
    })
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::Status(args) => status(args),
    }
}

fn backend(args: &BackendArgs) -> Arc<dyn Backend> {
    match &args.dir {
        Some(dir) => Arc::new(FileBackend::new(dir)),
        None => Arc::new(FileBackend::new(onlyone::default_dir())),
    }
}

fn run_command(args: RunArgs) -> anyhow::Result<u8> {
    let name = LockName::new(&args.name)?;
    let lock =
        Lock::with_backend(name.clone(), backend(&args.backend)).command(args.command.clone());
    let conflict = args.conflict_exit_code.unwrap_or(EXIT_CONFLICT);

    let guard = match lock.try_acquire()? {
        Attempt::Acquired(guard) => guard,
        Attempt::Held(holder) if !args.wait && args.timeout.is_none() => {
            if !args.quiet {
                eprintln!("onlyone: lock '{name}' is held by {holder}");
            }
            return Ok(conflict);
        }
        Attempt::Held(holder) => {
            let waiting = (!args.quiet).then(|| WaitNotice::start(&name, &holder));
            let attempt = lock.acquire(args.timeout);
            if let Some(notice) = waiting {
                notice.stop();
            }
            match attempt? {
                Attempt::Acquired(guard) => guard,
                Attempt::Held(holder) => {
                    if !args.quiet {
                        let waited = humantime::format_duration(args.timeout.unwrap_or_default());
                        eprintln!(
                            "onlyone: gave up after {waited}: lock '{name}' is held by {holder}"
                        );
                    }
                    return Ok(conflict);
                }
            }
        }
    };
    let outcome = supervise::run(&guard, &args.command, args.kill_grace);
    drop(guard);
    match outcome? {
        Outcome::Exited(code) => Ok(code),
        Outcome::Lost { reason, code } => {
            eprintln!(
                "onlyone: lost lock '{name}' ({reason}); the command was stopped (its status was {code})"
            );
            Ok(EXIT_LOST)
        }
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

fn status(args: StatusArgs) -> anyhow::Result<u8> {
    let backend = backend(&args.backend);
    let Some(name) = &args.name else {
        let all = backend.list()?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else if all.is_empty() {
            println!("no locks");
        } else {
            for status in &all {
                println!("{}", status_line(status));
            }
        }
        return Ok(0);
    };
    let status = backend.status(&LockName::new(name)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("{}", status_line(&status));
    }
    Ok(if status.held { 0 } else { EXIT_FREE })
}

fn status_line(status: &Status) -> String {
    let mut line = match &status.holder {
        Some(holder) if status.held => format!("{}: held by {holder}", status.name),
        _ if status.held => format!("{}: held", status.name),
        _ => format!("{}: free", status.name),
    };
    if let Some(token) = status.last_token {
        line.push_str(&format!("; last token {token}"));
    }
    for waiter in &status.waiters {
        line.push_str(&format!("; waiting: {waiter}"));
    }
    line.push_str(&format!("; {}", status.location));
    line
}
