//! The `onlyone` command (the `cli` feature): flags, and what each
//! subcommand does with the library. The `onlyone` binary and the Python
//! package's `onlyone` command both call [`main`], so they are one program.

mod locks;
mod logger;
mod man;
pub(crate) mod output;
mod run;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::{Backend, FileBackend, Lock, LockName, Status, Timing, exit};

use self::locks::{StatusArgs, StopArgs, WaitArgs};
use self::man::ManArgs;
use self::output::Level;
use self::run::RunArgs;
pub use self::run::conflict_message;

/// The "Exit codes:" section of every help text, made from the one table
/// in [`crate::exit`]; the CLI adds which flag changes a code.
fn exit_codes_help() -> String {
    let mut text = String::from("Exit codes:");
    for (code, meaning) in crate::exit::TABLE {
        let advice = match code == Some(crate::exit::CONFLICT) {
            true => " (see --conflict-exit-code)",
            false => "",
        };
        let code = match code {
            Some(code) => format!("{code:<4}"),
            None => "(command's own) ".to_owned(),
        };
        text.push_str(&format!("\n  {code} {meaning}{advice}"));
    }
    text
}

/// Run exactly one instance of a command: a kernel file lock on one
/// machine, or a PostgreSQL advisory lock across machines.
#[derive(Debug, Parser)]
#[command(name = "onlyone", version, after_help = exit_codes_help())]
pub(crate) struct Cli {
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
    /// How much to say on stderr, and how: the library's log level, the
    /// least important line shown, and the format.
    pub(crate) fn log_settings(&self) -> (log::LevelFilter, output::Level, LogFormat) {
        let (filter, shown) = match (self.quiet, self.verbose) {
            (true, _) => (log::LevelFilter::Error, output::Level::Error),
            (false, 0) => (log::LevelFilter::Warn, output::Level::Notice),
            (false, 1) => (log::LevelFilter::Info, output::Level::Info),
            (false, _) => (log::LevelFilter::Debug, output::Level::Debug),
        };
        (filter, shown, self.log_format)
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// `onlyone: warning: ...`
    Text,
    /// One JSON object per line: level, message, time
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run COMMAND while holding the lock NAME; refuse (exit 75) if another
    /// holder has it.
    #[command(after_help = exit_codes_help())]
    Run(RunArgs),
    /// Show whether a lock (or every lock) is held, and by whom, without
    /// taking it. With NAME: exit 0 when held, 3 when free.
    #[command(after_help = exit_codes_help())]
    Status(StatusArgs),
    /// Stop the holder of a lock, or of every slot of a pool: its exact
    /// supervisor process (verified by pid, start time and token right
    /// before the signal, never by name). With --postgres it asks the
    /// holder through the database, wherever it runs (its own onlyone then
    /// stops the command and releases cleanly); a holder that has not let
    /// go by the timeout, or any with --signal KILL, has its database
    /// session ended. Exit 0 when the lock is free afterwards, 75 if still
    /// held at the timeout, 3 if it was free.
    Stop(StopArgs),
    /// Wait until a lock (and every slot of its pool) is free, without
    /// taking it. Exit 0 when free, 75 at the timeout.
    Wait(WaitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page of onlyone or of one subcommand (roff), or write
    /// them all into a directory
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BackendArgs {
    /// Directory of the lock files [default on Linux: /dev/shm/onlyone-<uid>,
    /// or /tmp/onlyone-<uid> without /dev/shm; on macOS: $TMPDIR/onlyone;
    /// elsewhere /tmp/onlyone-<uid>; whatever the environment]
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
        hide_env_values = true,
        value_parser = non_empty_url
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

    /// The state table of fencing tokens and holders, as SCHEMA.TABLE or
    /// TABLE (in schema public); every holder of one key must use the same
    /// [default: public.onlyone_locks]
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "TABLE", requires = "postgres")]
    table: Option<String>,

    /// Lock across machines with a MySQL/MariaDB named lock (GET_LOCK): a
    /// URL mysql://user@host:3306/database (the database keeps the state
    /// table). Keep the password out of it (use MYSQL_PWD or ~/.my.cnf).
    /// TLS as the mysql client's ssl-mode, in the URL
    /// (?ssl-mode=VERIFY_IDENTITY&ssl-ca=FILE) or in ~/.my.cnf
    #[cfg(feature = "mysql")]
    #[arg(
        long,
        env = "ONLYONE_MYSQL_URL",
        value_name = "URL",
        hide_env_values = true,
        value_parser = non_empty_mysql_url
    )]
    mysql: Option<String>,

    /// How often a database holder checks with the server that it still
    /// holds the lock
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, default_value_t = Timing::DEFAULT_HEARTBEAT.into(), value_parser = parse_shown_duration)]
    heartbeat: humantime::Duration,

    /// After the previous holder was lost uncleanly, wait this long before
    /// starting the command [default: more than the heartbeat deadline plus
    /// the kill grace]
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    lock_delay: Option<Duration>,
}

/// An empty URL would connect with libpq's defaults alone: to whatever
/// server and database they name, which nobody chose.
#[cfg(feature = "postgres")]
fn non_empty_url(text: &str) -> Result<String, String> {
    match text.trim().is_empty() {
        true => Err(
            "the PostgreSQL URL is empty (in --postgres or ONLYONE_POSTGRES_URL); to lock with files, give neither"
                .to_owned(),
        ),
        false => Ok(text.to_owned()),
    }
}

/// An empty URL names no server.
#[cfg(feature = "mysql")]
fn non_empty_mysql_url(text: &str) -> Result<String, String> {
    match text.trim().is_empty() {
        true => Err(
            "the MySQL URL is empty (in --mysql or ONLYONE_MYSQL_URL); to lock with files, give neither"
                .to_owned(),
        ),
        false => Ok(text.to_owned()),
    }
}

/// A duration flag whose default the help shows (taken from [`Timing`],
/// where it is written once).
pub(crate) fn parse_shown_duration(text: &str) -> Result<humantime::Duration, String> {
    parse_duration(text).map(Into::into)
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    use humantime::DurationError;
    const FORM: &str = "a duration is a number with a unit, such as 500ms, 30s, 5m or 1h 30m";
    let text = text.trim();
    // `--timeout -5s` reaches here (the flags take values that start
    // with '-'), and so does a flag given where a value should be.
    if text
        .strip_prefix('-')
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Err("a duration cannot be negative".to_owned());
    }
    humantime::parse_duration(text).map_err(|err| match err {
        DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("{value} needs a unit; {FORM}")
        }
        DurationError::UnknownUnit { unit, .. } => format!("unknown unit '{unit}'; {FORM}"),
        DurationError::NumberOverflow => format!("too large or too precise; {FORM}"),
        DurationError::InvalidCharacter(_)
        | DurationError::NumberExpected(_)
        | DurationError::Empty => FORM.to_owned(),
    })
}

/// An error as one line, with the flags that address it: the library says
/// what is wrong, the command line what to type.
fn error_message(err: &anyhow::Error) -> String {
    let mut message = output::error_message(err);
    let advice = err
        .downcast_ref::<crate::Error>()
        .and_then(crate::Error::network_filesystem)
        .map(|_| " (--dir DIR on a local filesystem, or --postgres URL)");
    message.extend(advice);
    message
}

/// Runs the `onlyone` command with `args` (the program name first) and
/// returns its exit code: parses the flags, runs the subcommand, prints
/// an error as one line on stderr.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     std::process::ExitCode::from(onlyone::cli::main(std::env::args_os()))
/// }
/// ```
pub fn main(args: impl IntoIterator<Item = OsString>) -> u8 {
    let args: Vec<OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => return parse_failure(&err, args),
    };
    let (filter, shown, format) = cli.log_settings();
    output::init(format, shown);
    logger::init(filter);
    match run(cli) {
        Ok(code) => code,
        Err(err) if output::is_closed(&err) => exit::OK,
        Err(err) => {
            output::say(Level::Error, error_message(&err));
            err.downcast_ref::<crate::Error>()
                .map_or(1, crate::Error::exit_code)
        }
    }
}

/// Flags that do not parse (64), or `--help`/`--version`, which clap
/// reports the same way (0).
fn parse_failure(err: &clap::Error, args: Vec<OsString>) -> u8 {
    if err.use_stderr() {
        output::usage_error(err, output::json_requested(args));
        return exit::USAGE;
    }
    // Help and version go to stdout; a reader that left early is fine.
    let text = match std::io::stdout().is_terminal() {
        true => err.render().ansi().to_string(),
        false => err.render().to_string(),
    };
    let _ = output::show_bytes(text.as_bytes());
    exit::OK
}

/// Prints the library's warnings (a record that could not be written, a
/// failed release) on stderr as the command does, for a program that
/// uses the library without [`main`] (the Python package).
pub fn show_library_warnings() {
    logger::init(log::LevelFilter::Warn);
}

/// Prints `message` on stderr as the command prints an error
/// (`onlyone: error: ...`).
pub fn say_error(message: impl AsRef<str>) {
    output::say(Level::Error, message);
}

/// `err` as the one line the command prints for it, without the flags
/// that address it (a program other than the command has none).
pub fn describe(err: crate::Error) -> String {
    output::error_message(&anyhow::Error::new(err))
}

/// Runs the parsed command line and returns the process exit code.
fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => run::run_command(args),
        Command::Status(args) => locks::status(args),
        Command::Stop(args) => locks::stop(args),
        Command::Wait(args) => locks::wait(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "onlyone", &mut script);
            output::show_bytes(&script)?;
            Ok(0)
        }
        Command::Man(args) => man::man(args),
    }
}

impl BackendArgs {
    /// The timing the flags give, with the kill grace of the supervisor
    /// that will run the command (the default for status, stop, wait).
    pub(crate) fn timing(&self, kill_grace: Duration) -> Timing {
        let timing = Timing {
            kill_grace,
            ..Timing::default()
        };
        #[cfg(any(feature = "postgres", feature = "mysql"))]
        let timing = Timing {
            heartbeat: *self.heartbeat,
            lock_delay: self.lock_delay,
            ..timing
        };
        timing
    }
}

/// Where the flags say locks live: PostgreSQL with `--postgres`, else a
/// directory of lock files. The CLI reaches them only through [`Lock`].
// Made once per command: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Place {
    Files(FileBackend),
    #[cfg(feature = "postgres")]
    Postgres(crate::PostgresBackend),
    #[cfg(feature = "mysql")]
    Mysql(crate::MysqlBackend),
}

impl Place {
    /// The place the flags choose, for holders that live by `timing`.
    // Files need no timing: the kernel drops a dead holder's lock at once.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql")),
        allow(unused_variables)
    )]
    pub(crate) fn new(args: &BackendArgs, timing: Timing) -> anyhow::Result<Place> {
        #[cfg(all(feature = "mysql", feature = "postgres"))]
        if args.mysql.is_some() && args.postgres.is_some() {
            return Err(crate::Error::usage(
                "--mysql and --postgres (or ONLYONE_MYSQL_URL and ONLYONE_POSTGRES_URL) name two places for locks: give one",
            )
            .into());
        }
        #[cfg(feature = "mysql")]
        if let Some(url) = &args.mysql {
            let mut config = crate::MysqlConfig::new(url.clone());
            config.timing = timing;
            let backend = crate::MysqlBackend::new(config)?;
            let from_environment = std::env::var("ONLYONE_MYSQL_URL").ok().as_ref() == Some(url);
            if !from_environment && backend.redacted_url() != *url {
                log::warn!(
                    "the password in --mysql can be read by every user of this machine in the process list; pass it in MYSQL_PWD or ~/.my.cnf instead"
                );
            }
            return Ok(Place::Mysql(backend));
        }
        #[cfg(feature = "postgres")]
        if let Some(url) = &args.postgres {
            let mut config = crate::PostgresConfig::new(url.clone());
            config.key = args.key;
            if let Some(table) = &args.table {
                config.table = table.clone();
            }
            config.timing = timing;
            let backend = crate::PostgresBackend::new(config)?;
            let from_environment = std::env::var("ONLYONE_POSTGRES_URL").ok().as_ref() == Some(url);
            if !from_environment && backend.redacted_url() != *url {
                log::warn!(
                    "the password in --postgres can be read by every user of this machine in the process list; pass it in PGPASSWORD or ~/.pgpass instead"
                );
            }
            return Ok(Place::Postgres(backend));
        }
        let dir = args.dir.clone().unwrap_or_else(crate::default_dir);
        Ok(Place::Files(FileBackend::new(dir)))
    }

    /// The lock `name` in this place.
    pub(crate) fn lock(self, name: LockName) -> Lock {
        match self {
            Place::Files(files) => Lock::with_backend(name, Arc::new(files)),
            #[cfg(feature = "postgres")]
            Place::Postgres(postgres) => Lock::with_backend(name, Arc::new(postgres)),
            #[cfg(feature = "mysql")]
            Place::Mysql(mysql) => Lock::with_backend(name, Arc::new(mysql)),
        }
    }

    /// Every lock in this place.
    pub(crate) fn list(&self) -> crate::Result<Vec<Status>> {
        match self {
            Place::Files(files) => files.list(),
            #[cfg(feature = "postgres")]
            Place::Postgres(postgres) => postgres.list(),
            #[cfg(feature = "mysql")]
            Place::Mysql(mysql) => mysql.list(),
        }
    }
}

/// Where the flags say the locks live, for people: the lock directory, or
/// the state table.
pub(crate) fn where_locks_live(args: &BackendArgs) -> String {
    #[cfg(feature = "mysql")]
    if args.mysql.is_some() {
        return "the state table onlyone_locks".to_owned();
    }
    #[cfg(feature = "postgres")]
    if args.postgres.is_some() {
        return match args.table.as_deref() {
            None => "the state table public.onlyone_locks".to_owned(),
            Some(table) if table.contains('.') => format!("the state table {table}"),
            Some(table) => format!("the state table public.{table}"),
        };
    }
    let dir = args.dir.clone().unwrap_or_else(crate::default_dir);
    FileBackend::new(dir).dir().display().to_string()
}
