//! The command line: flags, and what each subcommand does with the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use onlyone::supervise::{Outcome, Supervisor};
use onlyone::{Attempt, Backend, FileBackend, Guard, Holder, Lock, LockName, Status};

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
    /// Say more on stderr (-v: what onlyone does; -vv: debugging detail)
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Say nothing on stderr but errors (no conflict or waiting messages)
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// The format of log lines on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// How much to log, and how.
    pub fn log_settings(&self) -> (log::LevelFilter, LogFormat) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => log::LevelFilter::Error,
            (false, 0) => log::LevelFilter::Warn,
            (false, 1) => log::LevelFilter::Info,
            (false, _) => log::LevelFilter::Debug,
        };
        (level, self.log_format)
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `onlyone: warning: ...`
    Text,
    /// One JSON object per line: level, message, time
    Json,
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
    /// Stop the holder of a lock: its exact supervisor process (verified by
    /// pid and start time, never by name). Exit 0 when the lock is free
    /// afterwards, 75 if still held at the timeout, 3 if it was free.
    Stop(StopArgs),
    /// Wait until a lock is free, without taking it. Exit 0 when free, 75
    /// at the timeout.
    Wait(WaitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
}

#[derive(Debug, Args)]
struct BackendArgs {
    /// Directory of the lock files [default: $XDG_RUNTIME_DIR/onlyone, else
    /// /tmp/onlyone-<uid>]
    #[arg(long, env = "ONLYONE_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Lock across machines with a PostgreSQL advisory lock: a URL
    /// (postgres://user@host:5432/db) or a key=value connection string;
    /// PG* variables fill in the rest. Keep the password out of it (use
    /// PGPASSWORD or ~/.pgpass): a command line is visible to every user
    #[cfg(feature = "postgres")]
    #[arg(
        long,
        env = "ONLYONE_POSTGRES_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    postgres: Option<String>,

    /// The advisory-lock key, instead of the one derived from the name (to
    /// share a lock with another application)
    #[cfg(feature = "postgres")]
    #[arg(
        long,
        value_name = "I64",
        requires = "postgres",
        allow_negative_numbers = true
    )]
    key: Option<i64>,

    /// The state table of fencing tokens and holders [default: onlyone_locks]
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "TABLE", requires = "postgres")]
    table: Option<String>,

    /// How often a PostgreSQL holder checks with the server that it still
    /// holds the lock
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    heartbeat: Duration,

    /// After the previous holder was lost uncleanly, wait this long before
    /// starting the command [default: more than the heartbeat deadline plus
    /// the kill grace]
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lock_delay: Option<Duration>,
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

#[derive(Debug, Args)]
struct StopArgs {
    /// The lock's name
    #[arg(value_name = "NAME")]
    name: String,

    #[command(flatten)]
    backend: BackendArgs,

    /// The signal to send (TERM, INT, HUP, QUIT, KILL, USR1, USR2, or a
    /// number)
    #[arg(long, short = 's', value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    signal: i32,

    /// How long to wait for the lock to become free
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct WaitArgs {
    /// The lock's name
    #[arg(value_name = "NAME")]
    name: String,

    #[command(flatten)]
    backend: BackendArgs,

    /// Wait at most this long [default: without limit]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
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

fn parse_signal(text: &str) -> Result<i32, String> {
    let name = text.trim().trim_start_matches("SIG").to_ascii_uppercase();
    let signal = match name.as_str() {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        number => number.parse().map_err(|_| {
            format!(
                "unknown signal {text:?}; use TERM, INT, HUP, QUIT, KILL, USR1, USR2 or a number"
            )
        })?,
    };
    if (1..=64).contains(&signal) {
        Ok(signal)
    } else {
        Err(format!("signal {signal} is out of range 1-64"))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!("{err}; a duration is a number with a unit, such as 500ms, 30s, 5m or 1h 30m")
    })
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Run(args) => run_command(args, quiet),
        Command::Status(args) => status(args),
        Command::Stop(args) => stop(args, quiet),
        Command::Wait(args) => wait(args, quiet),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "onlyone", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            Ok(0)
        }
    }
}

/// The kill grace of `run` when a command has none (status, stop, wait).
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// The backend the flags choose: PostgreSQL with `--postgres`, else files.
fn backend(args: &BackendArgs, kill_grace: Duration) -> anyhow::Result<Arc<dyn Backend>> {
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.postgres {
        let mut config = onlyone::PostgresConfig::new(url.clone());
        config.key = args.key;
        if let Some(table) = &args.table {
            config.table = table.clone();
        }
        config.heartbeat = args.heartbeat;
        config.lock_delay = args.lock_delay;
        config.kill_grace = kill_grace;
        let backend = onlyone::PostgresBackend::new(config)?;
        let from_environment = std::env::var("ONLYONE_POSTGRES_URL").ok().as_ref() == Some(url);
        if !from_environment && backend.redacted_url() != *url {
            log::warn!(
                "the password in --postgres can be read by every user of this machine in the process list; pass it in PGPASSWORD or ~/.pgpass instead"
            );
        }
        return Ok(Arc::new(backend));
    }
    let _ = kill_grace;
    Ok(match &args.dir {
        Some(dir) => Arc::new(FileBackend::new(dir)),
        None => Arc::new(FileBackend::new(onlyone::default_dir())),
    })
}

/// After a restart, the delay doubles up to this.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// A command that ran this long before exiting resets the restart delay.
const STABLE_RUN: Duration = Duration::from_secs(60);

fn run_command(args: RunArgs, quiet: bool) -> anyhow::Result<u8> {
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

fn stop(args: StopArgs, quiet: bool) -> anyhow::Result<u8> {
    let name = LockName::new(&args.name)?;
    let backend = backend(&args.backend, DEFAULT_KILL_GRACE)?;
    if !backend.stop_holder(&name, args.signal)? {
        if !quiet {
            eprintln!("onlyone: lock '{name}' is free already");
        }
        return Ok(EXIT_FREE);
    }
    if backend.wait_free(&name, Some(args.timeout))? {
        return Ok(0);
    }
    if !quiet {
        let waited = humantime::format_duration(args.timeout);
        eprintln!("onlyone: lock '{name}' is still held after {waited}");
    }
    Ok(EXIT_CONFLICT)
}

fn wait(args: WaitArgs, quiet: bool) -> anyhow::Result<u8> {
    let name = LockName::new(&args.name)?;
    let backend = backend(&args.backend, DEFAULT_KILL_GRACE)?;
    if backend.wait_free(&name, args.timeout)? {
        return Ok(0);
    }
    if !quiet {
        let waited = humantime::format_duration(args.timeout.unwrap_or_default());
        eprintln!("onlyone: lock '{name}' is still held after {waited}");
    }
    Ok(EXIT_CONFLICT)
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
    let backend = backend(&args.backend, DEFAULT_KILL_GRACE)?;
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
    let name = LockName::new(name)?;
    let status = backend.status(&name)?;
    // The slots of `run --max` belong to the name too.
    let slots: Vec<Status> = backend
        .list()?
        .into_iter()
        .filter(|slot| {
            LockName::from_stored(&slot.name)
                .is_some_and(|slot| slot.slot_number().is_some() && slot.base() == name.as_str())
        })
        .collect();
    if args.json {
        let mut value = serde_json::to_value(&status)?;
        if !slots.is_empty() {
            value["slots"] = serde_json::to_value(&slots)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", status_line(&status));
        for slot in &slots {
            println!("{}", status_line(slot));
        }
    }
    let held = status.held || slots.iter().any(|slot| slot.held);
    Ok(if held { 0 } else { EXIT_FREE })
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
