//! The command line: flags, and what each subcommand does with the library.

mod locks;
mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use onlyone::{Backend, FileBackend};

use self::locks::{StatusArgs, StopArgs, WaitArgs};
use self::run::RunArgs;

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
    /// pid and start time, never by name), or with --postgres its database
    /// session (its own onlyone then stops the command). Exit 0 when the
    /// lock is free afterwards, 75 if still held at the timeout, 3 if it
    /// was free.
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
pub(crate) struct BackendArgs {
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

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!("{err}; a duration is a number with a unit, such as 500ms, 30s, 5m or 1h 30m")
    })
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Run(args) => run::run_command(args, quiet),
        Command::Status(args) => locks::status(args),
        Command::Stop(args) => locks::stop(args, quiet),
        Command::Wait(args) => locks::wait(args, quiet),
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
pub(crate) const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// The backend the flags choose: PostgreSQL with `--postgres`, else files.
pub(crate) fn backend(
    args: &BackendArgs,
    kill_grace: Duration,
) -> anyhow::Result<Arc<dyn Backend>> {
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
