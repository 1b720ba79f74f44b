//! The holder record: who holds a lock, written by the holder only after the
//! lock is held. It is information for people and for fencing; it never
//! decides whether a lock is held.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::escape;
use crate::sys;

/// The format tag of version 1 of the record.
pub const RECORD_FORMAT: &str = "onlyone/1";

/// The largest record read back; anything longer is not a record.
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// Who holds (or last held) a lock.
///
/// In the lock file it is one line of JSON (format `onlyone/1`), for example:
///
/// ```text
/// {"format":"onlyone/1","token":7,"pid":17656,"start_time":912345,
///  "boot_id":"0c6f…","host":"host1","user":"bot","uid":1000,
///  "command":["python3","main.py"],"acquired_at":"2025-10-18T14:43:00.123Z"}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Always [`RECORD_FORMAT`] for this version.
    pub format: String,
    /// The fencing token of this acquisition: one more than the previous
    /// holder's.
    pub token: u64,
    /// The process id of the holder (the supervisor, for `onlyone run`).
    pub pid: u32,
    /// The holder's start time in clock ticks since boot (Linux), which
    /// tells it apart from a later process that reuses its pid.
    pub start_time: Option<u64>,
    /// The boot the holder ran in (Linux `boot_id`).
    pub boot_id: Option<String>,
    /// The host name of the holder's machine.
    pub host: String,
    /// The holder's login name.
    pub user: String,
    /// The holder's user id.
    pub uid: u32,
    /// The command that runs under the lock (empty for a library holder
    /// that said none). Words that are not valid UTF-8 are kept with
    /// U+FFFD in place of the bad bytes: the record is for people to read,
    /// the command itself receives the exact bytes.
    pub command: Vec<String>,
    /// When the lock was acquired, RFC 3339 in UTC.
    pub acquired_at: String,
}

impl Record {
    /// A record for the calling process, acquiring now with `token`.
    ///
    /// The command is cut short (whole words, then one that says how many
    /// were left out) so that the record's line fits in
    /// 64 KiB (`MAX_RECORD_LEN`): a longer one could not be read back, and the
    /// next holder would start the fencing tokens again at 1.
    pub fn for_current_process(command: &[String], token: u64) -> Record {
        let me = ProcessIdentity::current();
        let mut record = Record {
            format: RECORD_FORMAT.to_owned(),
            token,
            pid: me.pid,
            start_time: me.start_time,
            boot_id: me.boot_id,
            host: sys::hostname(),
            user: me.user,
            uid: me.uid,
            command: Vec::new(),
            acquired_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let room = MAX_RECORD_LEN.saturating_sub(record.to_line().len() + ELISION_ROOM);
        record.command = fit_command(command, room);
        record
    }

    /// Parses a record; `None` for anything that is not a version-1 record
    /// (an empty file, garbage, a future version, a file written by flock(1)).
    pub fn parse(bytes: &[u8]) -> Option<Record> {
        if bytes.len() > MAX_RECORD_LEN {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let record: Record = serde_json::from_str(text.trim_end()).ok()?;
        (record.format == RECORD_FORMAT).then_some(record)
    }

    /// The record as written to the lock file: one JSON line.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a record always serializes");
        line.push('\n');
        line
    }

    /// When the lock was acquired, if the recorded time parses.
    pub fn acquired_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.acquired_at).ok()
    }

    /// How long ago the lock was acquired.
    pub fn age(&self) -> Option<Duration> {
        SystemTime::now().duration_since(self.acquired_time()?).ok()
    }

    /// Whether the recorded process still runs on this machine: the same
    /// pid, start time and boot. For display only — liveness of a lock is
    /// decided by the kernel or the server, never by this.
    pub fn process_is_running_here(&self) -> Option<bool> {
        if self.host != sys::hostname() {
            return None;
        }
        if self.boot_id.is_some() && self.boot_id != sys::boot_id() {
            return Some(false);
        }
        match self.start_time {
            Some(start) => Some(sys::process_start_time(self.pid) == Some(start)),
            None => Some(sys::pid_exists(self.pid)),
        }
    }

    /// The command as one shell-like line, safe to print: control
    /// characters are escaped (see [`escape::shell_word`]).
    pub fn command_line(&self) -> String {
        escape::command_line(&self.command)
    }
}

/// "pid 17656 on host1 since 2025-10-18T14:43:00Z (2h 3m ago): python3 main.py"
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on {}", self.pid, escape::controls(&self.host))?;
        if let Some(at) = self.acquired_time() {
            write!(f, " since {}", humantime::format_rfc3339_seconds(at))?;
        }
        if let Some(age) = self.age() {
            write!(f, " ({} ago)", format_age(age))?;
        }
        if !self.command.is_empty() {
            write!(f, ": {}", self.command_line())?;
        }
        Ok(())
    }
}

/// Room kept in a record for the word that says how many were left out.
const ELISION_ROOM: usize = 64;

/// The first words of `command` whose JSON takes at most `room` bytes,
/// and, if some did not fit, a last word that says how many.
fn fit_command(command: &[String], room: usize) -> Vec<String> {
    let mut used = 0;
    let mut fitted = Vec::new();
    for (at, word) in command.iter().enumerate() {
        // The quoted, escaped word and its comma.
        let cost = serde_json::to_string(word).map_or(usize::MAX, |json| json.len() + 1);
        if cost > room - used {
            let left_out = command.len() - at;
            fitted.push(format!(
                "[{left_out} more argument{} not recorded]",
                if left_out == 1 { "" } else { "s" }
            ));
            break;
        }
        used += cost;
        fitted.push(word.clone());
    }
    fitted
}

/// Reads this process's identity into the cache, so that an acquisition
/// that waits has it before the kernel's or the server's grant, and the
/// record's making after the grant does not go to /proc and the user
/// database (nsswitch, /etc/passwd, possibly a directory service). None of
/// it needs the lock; the record itself (token, time of acquisition, host
/// name) is still made and written only once the lock is held.
pub(crate) fn prefetch() {
    let _ = ProcessIdentity::current();
}

/// What identifies this process, which does not change while it runs:
/// read once (from /proc and the user database), not on every acquisition.
#[derive(Clone)]
struct ProcessIdentity {
    pid: u32,
    start_time: Option<u64>,
    boot_id: Option<String>,
    uid: u32,
    user: String,
}

/// This process's identity, once read.
static CACHE: std::sync::Mutex<Option<ProcessIdentity>> = std::sync::Mutex::new(None);

/// The cache's mutex, held across a fork (see `backend/ticker.rs`).
pub(crate) fn hold_for_fork() -> Box<dyn std::any::Any> {
    Box::new(CACHE.lock().unwrap_or_else(|e| e.into_inner()))
}

impl ProcessIdentity {
    fn current() -> ProcessIdentity {
        let pid = std::process::id();
        let uid = sys::uid();
        // A public entry point (`Record::for_current_process`, and the
        // database backends' acquisitions): the fork hooks before the
        // cache's mutex is first taken.
        crate::backend::ticker::install_fork_hooks();
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        // A forked child has another pid (and may have another uid): it
        // reads its own.
        match &*cache {
            Some(me) if me.pid == pid && me.uid == uid => me.clone(),
            _ => {
                let me = ProcessIdentity {
                    pid,
                    start_time: sys::process_start_time(pid),
                    boot_id: sys::boot_id(),
                    uid,
                    user: sys::user_name(uid),
                };
                *cache = Some(me.clone());
                me
            }
        }
    }
}

/// A duration rounded to whole seconds, as "2h 3m 4s".
pub fn format_age(age: Duration) -> String {
    humantime::format_duration(Duration::from_secs(age.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_line() {
        let record = Record::for_current_process(&["sleep".into(), "it's 5".into()], 7);
        assert_eq!(Record::parse(record.to_line().as_bytes()), Some(record));
    }

    #[test]
    fn refuses_garbage_and_other_versions() {
        assert_eq!(Record::parse(b""), None);
        assert_eq!(Record::parse(b"17656\n"), None);
        let mut record = Record::for_current_process(&[], 1);
        record.format = "onlyone/2".into();
        assert_eq!(Record::parse(record.to_line().as_bytes()), None);
    }

    #[test]
    fn a_long_command_is_cut_short_so_that_the_record_reads_back() {
        let command = vec!["true".to_owned(), "a".repeat(MAX_RECORD_LEN), "b".into()];
        let record = Record::for_current_process(&command, 7);
        assert!(record.to_line().len() <= MAX_RECORD_LEN);
        assert_eq!(record.command, ["true", "[2 more arguments not recorded]"]);
        assert_eq!(
            Record::parse(record.to_line().trim_end().as_bytes()),
            Some(record)
        );
    }

    #[test]
    fn quotes_arguments_that_need_it() {
        let record = Record::for_current_process(&["sh".into(), "-c".into(), "a b".into()], 1);
        assert_eq!(record.command_line(), "sh -c 'a b'");
    }
}
