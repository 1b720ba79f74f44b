//! Log lines on stderr: the library reports through `log` (a restored lock
//! file, a failed record write, a lost lock); this hands each record to
//! the one function that writes stderr lines.

use log::{Level as LogLevel, LevelFilter, Log, Metadata, Record};

use crate::cli::output::{self, Level};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            output::say(level(record.level()), record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn level(level: LogLevel) -> Level {
    match level {
        LogLevel::Error => Level::Error,
        LogLevel::Warn => Level::Warning,
        LogLevel::Info => Level::Info,
        LogLevel::Debug => Level::Debug,
        LogLevel::Trace => Level::Trace,
    }
}

/// Sends the library's log records at `level` and above to stderr. A
/// second call changes the level (the Python package sets one when it is
/// imported, and its `onlyone` command the one its flags ask for).
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(level);
}
