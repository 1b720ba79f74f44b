//! Log lines on stderr, prefixed with the program's name: the library
//! reports through `log` (a restored lock file, a failed record write).

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Warn
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                Level::Warn => "warning".to_owned(),
                level => level.as_str().to_lowercase(),
            };
            eprintln!("onlyone: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Sends warnings and errors to stderr.
pub fn init() {
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}
