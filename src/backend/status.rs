//! What can be told about a lock without taking it: whether it is held,
//! by whom (`Holder`, `HolderId`), and who waits.

use std::fmt;

use serde::Serialize;

use crate::record::Record;

/// Who holds a lock, as far as can be told without taking it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Holder {
    /// The holder's record, when it could be read and parsed.
    pub record: Option<Record>,
    /// The local processes holding it, on the holder's machine: on files,
    /// those the kernel names (the holder socket's, and each flock's); on
    /// PostgreSQL, the holder's client pid from its record, when known.
    pub pids: Vec<u32>,
    /// On PostgreSQL, the server process of the session that holds the
    /// lock (`pg_locks.pid`, what `pg_terminate_backend` takes); on MySQL,
    /// that session's connection id (`IS_USED_LOCK`).
    pub server_pid: Option<u32>,
    /// Anything else the backend can tell (for example the database
    /// session's client address).
    pub detail: Option<String>,
    /// Set when nobody held the lock at the end of a wait that timed out:
    /// the lock was free and taken, but the lock-delay after the previous
    /// holder's unclean release (this long) had not passed at the timeout,
    /// so it was given up without running anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_delay: Option<std::time::Duration>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(delay) = self.lock_delay {
            return write!(
                f,
                "nobody: it was free, but the previous holder did not release it cleanly and its lock-delay of {} had not passed",
                humantime::format_duration(delay)
            );
        }
        match &self.record {
            Some(record) => {
                write!(f, "{record}")?;
                if record.process_is_running_here() == Some(false) {
                    f.write_str(" [that process has exited; its descendants keep the lock]")?;
                }
            }
            None => {
                f.write_str("an unknown holder (no readable onlyone record)")?;
                if !self.pids.is_empty() {
                    let pids: Vec<_> = self.pids.iter().map(u32::to_string).collect();
                    write!(f, ", locked by pid {}", pids.join(", "))?;
                }
            }
        }
        if let Some(detail) = &self.detail {
            write!(f, " ({})", crate::escape::controls(detail))?;
        }
        Ok(())
    }
}

impl Holder {
    /// The acquisition this holder stands for, from its record: `None`
    /// when there is no record to tell it by.
    pub fn id(&self) -> Option<HolderId> {
        let record = self.record.as_ref()?;
        Some(HolderId {
            pid: record.pid,
            start_time: record.start_time,
            host: record.host.clone(),
            token: record.token,
        })
    }
}

/// One acquisition of a lock: the holder's process (pid and start time, on
/// its host) and the token it recorded. A later holder differs in at least
/// one of them, even when it reuses the pid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderId {
    /// The holder's process id.
    pub pid: u32,
    /// The holder's start time (clock ticks since boot), when known.
    pub start_time: Option<u64>,
    /// The holder's host name.
    pub host: String,
    /// The fencing token of the acquisition.
    pub token: u64,
}

/// Whether a lock is held, and by whom.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The lock's name.
    pub name: String,
    /// Where the lock lives (a file path, or a database key).
    pub location: String,
    /// Whether it is held now.
    pub held: bool,
    /// The holder, when held.
    pub holder: Option<Holder>,
    /// The last fencing token handed out, when known.
    pub last_token: Option<u64>,
    /// Processes or sessions waiting for it, when the backend can see them.
    pub waiters: Vec<String>,
    /// A stop request the holder has not answered yet (PostgreSQL: the
    /// token `stop` or `--replace` asked to stop is the holder's).
    pub stop_requested: Option<u64>,
    /// Not held now, but its last holder did not release it cleanly (its
    /// state row still says `held`): the next holder owes it a lock-delay,
    /// and that holder's command may still run. Always false on files.
    /// Read by the pool/plain check; not part of `status --json`.
    #[serde(skip)]
    pub unreleased: bool,
}
