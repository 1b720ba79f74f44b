//! Log lines on stderr: the library reports through `log` (a restored lock
//! file, a failed record write, a lost lock), this prints them.

use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::cli::LogFormat;

struct StderrLogger {
    format: LogFormat,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Warn => "warning".to_owned(),
            level => level.as_str().to_lowercase(),
        };
        match self.format {
            LogFormat::Text => eprintln!("onlyone: {level}: {}", record.args()),
            LogFormat::Json => {
                let line = serde_json::json!({
                    "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                    "level": level,
                    "message": record.args().to_string(),
                    "pid": std::process::id(),
                });
                eprintln!("{line}");
            }
        }
    }

    fn flush(&self) {}
}

/// Sends log lines at `level` and above to stderr, as `format` says.
pub fn init(level: LevelFilter, format: LogFormat) {
    if log::set_logger(Box::leak(Box::new(StderrLogger { format }))).is_ok() {
        log::set_max_level(level);
    }
}
