//! Everything onlyone writes, in one place: results on stdout ([`show`]),
//! and lines for people on stderr ([`say`]), one line each, as text or,
//! with `--log-format json`, as one JSON object each.
//!
//! Lines carry text onlyone does not control (a holder's command line and
//! host, a database session's `application_name`, a server's error
//! message): control characters in it are escaped here, in text; JSON
//! keeps the exact text (its serializer escapes them).
//!
//! A closed stdout (`onlyone status | head -1`) is not an error: the first
//! write that finds it closed stops the command, which ends quietly (see
//! [`is_closed`]).

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::time::SystemTime;

use serde::Serialize;

use crate::escape;

use super::LogFormat;

/// How much a stderr line matters. Lines above the chosen level are left
/// out (`-q`: errors only; `-v`, `-vv`: info, debug).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed, or a held lock was lost.
    Error,
    /// Something to look at; onlyone carries on.
    Warning,
    /// What the user asked about: a conflict, a wait, giving up.
    Notice,
    /// What onlyone does (`-v`).
    Info,
    /// Detail for debugging (`-vv`).
    Debug,
    /// More detail still (a library's own tracing).
    Trace,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }
}

struct Settings {
    format: LogFormat,
    shown: Level,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Chooses the format of stderr lines, and the least important level
/// shown. Until this is called (while the flags are parsed), lines are
/// text and every level is shown.
pub fn init(format: LogFormat, shown: Level) {
    let _ = SETTINGS.set(Settings { format, shown });
}

fn format() -> LogFormat {
    SETTINGS.get().map_or(LogFormat::Text, |s| s.format)
}

/// True when lines of `level` are shown.
pub fn enabled(level: Level) -> bool {
    level <= SETTINGS.get().map_or(Level::Trace, |s| s.shown)
}

/// Writes `message` on stderr as one line: `onlyone: error: ...` (a notice
/// without a label), or a JSON object with `time`, `level`, `message` and
/// `pid`. Every line onlyone writes on stderr goes through here.
pub fn say(level: Level, message: impl AsRef<str>) {
    if enabled(level) {
        write_stderr(&line(format(), level, message.as_ref()));
    }
}

fn line(format: LogFormat, level: Level, message: &str) -> String {
    match format {
        LogFormat::Text => {
            let message = escape::controls(message);
            match level {
                Level::Notice => format!("onlyone: {message}\n"),
                level => format!("onlyone: {}: {message}\n", level.label()),
            }
        }
        LogFormat::Json => {
            let object = JsonLine {
                time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                level: level.label(),
                message,
                pid: std::process::id(),
            };
            // A struct of strings and a number always serializes.
            let json = serde_json::to_string(&object).unwrap_or_default();
            format!("{json}\n")
        }
    }
}

/// One stderr line as JSON, its keys in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    level: &'static str,
    message: &'a str,
    pid: u32,
}

fn write_stderr(text: &str) {
    // One write per line, so that lines of several threads never mix;
    // a closed stderr leaves nobody to tell.
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

/// True when a line that is redrawn in place (the waiting line's clock)
/// can be shown: text lines, notices shown, stderr a terminal.
pub fn can_redraw() -> bool {
    format() == LogFormat::Text && enabled(Level::Notice) && io::stderr().is_terminal()
}

/// Draws `message` as a notice over the current terminal line, without
/// ending it (see [`can_redraw`]).
pub fn redraw(message: &str) {
    let message = escape::controls(message);
    write_stderr(&format!("\r\x1b[Konlyone: {message}"));
}

/// Clears the line that [`redraw`] drew.
pub fn clear_redrawn() {
    write_stderr("\r\x1b[K");
}

/// Shows a usage error from the flag parser (exit 64). Its text is clap's,
/// as clap prints it; with `--log-format json` (looked for in the raw
/// arguments, since they did not parse) it is one JSON object.
pub fn usage_error(err: &clap::Error, json: bool) {
    if json {
        let text = err.render().to_string();
        let text = text.trim().trim_start_matches("error: ");
        write_stderr(&line(LogFormat::Json, Level::Error, text));
    } else if io::stderr().is_terminal() {
        write_stderr(&err.render().ansi().to_string());
    } else {
        write_stderr(&err.render().to_string());
    }
}

/// The error and its causes as one line. A cause whose words the message
/// already quotes is left out: the server's message of a PostgreSQL error
/// is in the text, and its driver's `db error: ERROR: ...` would repeat it.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) && !message.contains(server_message(cause).unwrap_or(&text)) {
            message.push_str(&format!(": {text}"));
        }
    }
    message
}

/// The server's own message, when `cause` is a PostgreSQL error.
fn server_message<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a str> {
    // The driver's error, and the server's error it carries as its source.
    #[cfg(feature = "postgres")]
    if let Some(db) = cause
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
        .or_else(|| cause.downcast_ref::<tokio_postgres::error::DbError>())
    {
        return Some(db.message());
    }
    let _ = cause;
    None
}

/// True when the raw arguments ask for `--log-format json`: for flags
/// that did not parse, which must be reported as asked all the same.
pub fn json_requested(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<_> = args.into_iter().take_while(|arg| arg != "--").collect();
    args.iter().any(|arg| arg == "--log-format=json")
        || args
            .windows(2)
            .any(|pair| pair[0] == "--log-format" && pair[1] == "json")
}

/// Stdout was closed by its reader (`| head -1`): nothing more can be
/// shown, and that is not an error.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// True when `err` is [`StdoutClosed`]: the command ends quietly, as if it
/// had shown everything.
pub fn is_closed(err: &anyhow::Error) -> bool {
    err.downcast_ref::<StdoutClosed>().is_some()
}

/// Shows `line` on stdout, control characters escaped.
///
/// # Errors
///
/// [`StdoutClosed`] when the reader has gone; another write error.
pub fn show(line: impl AsRef<str>) -> anyhow::Result<()> {
    show_exact(&escape::controls(line.as_ref()))
}

/// Shows `text` on stdout as it is, and a newline: JSON, whose serializer
/// has escaped every control character already.
///
/// # Errors
///
/// As [`show`].
pub fn show_exact(text: &str) -> anyhow::Result<()> {
    show_bytes(format!("{text}\n").as_bytes())
}

/// Writes `bytes` on stdout as they are (a man page, a completion
/// script).
///
/// # Errors
///
/// As [`show`].
pub fn show_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(err) => Err(anyhow::Error::new(err).context("cannot write to stdout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_has_no_label_and_other_lines_do() {
        assert_eq!(
            line(LogFormat::Text, Level::Notice, "lock 'x' is held"),
            "onlyone: lock 'x' is held\n"
        );
        assert_eq!(
            line(LogFormat::Text, Level::Warning, "a\nb"),
            "onlyone: warning: a\\nb\n"
        );
    }

    #[test]
    fn json_is_looked_for_before_the_command_only() {
        let args = |words: &[&str]| words.iter().map(Into::into).collect::<Vec<_>>();
        assert!(json_requested(args(&[
            "onlyone",
            "--log-format",
            "json",
            "run"
        ])));
        assert!(json_requested(args(&[
            "onlyone",
            "run",
            "--log-format=json",
            "--"
        ])));
        assert!(!json_requested(args(&["onlyone", "--log-format", "text"])));
        assert!(!json_requested(args(&[
            "onlyone",
            "run",
            "--",
            "x",
            "--log-format=json"
        ])));
    }

    #[test]
    fn a_json_line_is_one_object_with_the_exact_text() {
        let text = line(LogFormat::Json, Level::Error, "a\nb");
        assert_eq!(text.matches('\n').count(), 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["level"], "error");
        assert_eq!(value["message"], "a\nb");
    }
}
