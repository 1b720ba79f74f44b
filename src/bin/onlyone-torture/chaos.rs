//! The chaos thread: at random intervals it SIGKILLs the holder's command
//! or a supervisor, SIGSTOPs the holder for a few milliseconds, deletes the
//! lock file or the whole lock directory (or, with PostgreSQL, terminates
//! the holder's session). It follows the witness log to know who holds the
//! lock, and records what it did, with the time, for the analysis.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::contenders::Supervisors;
use crate::procs::Pinned;
use crate::rng::Rng;
use crate::stop::{Stop, StopReason};
use crate::witness_log::{Line, LogTail, monotonic_ns};

/// How often the log is read when nothing else is due.
const FOLLOW_TICK: Duration = Duration::from_millis(5);
/// How long a stopped holder stays stopped: a few ms to 100 ms.
const STOP_MS: (u64, u64) = (2, 100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// SIGKILL of the holder's command (the witness).
    HolderSigkill,
    /// SIGKILL of the holder's supervisor (its command dies of the
    /// parent-death signal a moment later).
    HolderSupervisorSigkill,
    /// SIGKILL of a random supervisor, most often a waiting one.
    RandomSupervisorSigkill,
    /// SIGSTOP of the holder's command, SIGCONT a little later.
    HolderSigstop,
    /// Deletion of the lock file.
    LockFileDeletion,
    /// Deletion of the whole lock directory.
    LockDirDeletion,
    /// `pg_terminate_backend` of the holder's session (its supervisor then
    /// stops its command).
    SessionTermination,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::HolderSigkill,
        Kind::HolderSupervisorSigkill,
        Kind::RandomSupervisorSigkill,
        Kind::HolderSigstop,
        Kind::LockFileDeletion,
        Kind::LockDirDeletion,
        Kind::SessionTermination,
    ];

    /// How often each kind is chosen, relative to the others.
    fn weight(self, postgres: bool) -> u64 {
        match self {
            Kind::HolderSigkill => 3,
            Kind::HolderSupervisorSigkill => 2,
            Kind::RandomSupervisorSigkill => 2,
            Kind::HolderSigstop => 2,
            Kind::LockFileDeletion if !postgres => 2,
            Kind::LockDirDeletion if !postgres => 1,
            Kind::SessionTermination if postgres => 3,
            _ => 0,
        }
    }

    fn needs_holder(self) -> bool {
        !matches!(
            self,
            Kind::RandomSupervisorSigkill | Kind::LockFileDeletion | Kind::LockDirDeletion
        )
    }
}

/// One thing the chaos thread did. `pid` is whom it hit: the witness for
/// SIGKILL and SIGSTOP of the holder, the supervisor for supervisor kills
/// and session terminations, nobody (0) for deletions. `t_before`/`t_after` bracket the act (monotonic ns).
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: Kind,
    pub pid: u32,
    pub t_before: u64,
    pub t_after: u64,
}

impl Event {
    /// The event as a line of the run's chaos log, for a person to line up
    /// with the witness log.
    pub fn to_line(&self) -> String {
        format!(
            "{:?} {} {} {}\n",
            self.kind, self.pid, self.t_before, self.t_after
        )
    }
}

/// What the chaos thread needs to know.
#[derive(Debug)]
pub struct Config {
    pub log: PathBuf,
    pub lock_file: PathBuf,
    pub lock_dir: PathBuf,
    /// How a witness's command line starts (to pin only witnesses).
    pub witness_prefix: String,
    pub postgres: Option<String>,
    /// A LIKE pattern for the `application_name` of this run's sessions.
    pub session_pattern: String,
    /// Mean time between acts; `None` turns chaos off (the log is still
    /// followed, to count acquisitions).
    pub mean_interval: Option<Duration>,
    /// The kinds of chaos to choose from; empty: all that apply.
    pub kinds: Vec<Kind>,
    /// Stop the run once this many holders have entered.
    pub target: Option<u64>,
}

/// The holder as the log last said.
#[derive(Clone, Copy, Debug)]
struct Holder {
    pid: u32,
    ppid: u32,
}

pub struct Chaos<'a> {
    config: &'a Config,
    stop: &'a Stop,
    supervisors: &'a Supervisors,
    rng: Rng,
    tail: LogTail,
    holder: Option<Holder>,
    entered: &'a AtomicU64,
    stopped: Vec<(Pinned, Instant)>,
    events: Vec<Event>,
}

impl<'a> Chaos<'a> {
    pub fn new(
        config: &'a Config,
        stop: &'a Stop,
        supervisors: &'a Supervisors,
        entered: &'a AtomicU64,
        rng: Rng,
    ) -> Chaos<'a> {
        Chaos {
            config,
            stop,
            supervisors,
            rng,
            tail: LogTail::new(),
            holder: None,
            entered,
            stopped: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Acts until the run stops; then lets every stopped holder continue
    /// and returns what it did.
    pub fn run(mut self) -> Vec<Event> {
        let mut next_act = self.next_act_after(Instant::now());
        loop {
            let wake = [
                Some(Instant::now() + FOLLOW_TICK),
                next_act,
                self.stopped.iter().map(|(_, at)| *at).min(),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("the tick is always there");
            if self.stop.wait_until(wake) {
                break;
            }
            self.follow_log();
            self.continue_holders_due(Instant::now());
            if next_act.is_some_and(|at| Instant::now() >= at) {
                self.act();
                next_act = self.next_act_after(Instant::now());
            }
        }
        self.continue_all_holders();
        self.events
    }

    fn next_act_after(&mut self, now: Instant) -> Option<Instant> {
        let mean = self.config.mean_interval?.as_micros() as u64;
        Some(now + Duration::from_micros(self.rng.between(0, 2 * mean)))
    }

    /// Reads what the witnesses logged since last time: who holds now, and
    /// how many have entered.
    fn follow_log(&mut self) {
        for line in self.tail.read_new(&self.config.log) {
            match line {
                Line::Enter { pid, ppid, .. } => {
                    self.holder = Some(Holder { pid, ppid });
                    self.entered.fetch_add(1, Ordering::Relaxed);
                }
                Line::Exit { pid, .. } if self.holder.is_some_and(|h| h.pid == pid) => {
                    self.holder = None;
                }
                _ => {}
            }
        }
        let entered = self.entered.load(Ordering::Relaxed);
        if self.config.target.is_some_and(|target| entered >= target) {
            self.stop.stop(StopReason::Target);
        }
    }

    fn act(&mut self) {
        let postgres = self.config.postgres.is_some();
        let weights: Vec<u64> = Kind::ALL
            .iter()
            .map(|kind| {
                let chosen = self.config.kinds.is_empty() || self.config.kinds.contains(kind);
                if !chosen || (kind.needs_holder() && self.holder.is_none()) {
                    0
                } else {
                    kind.weight(postgres)
                }
            })
            .collect();
        let Some(choice) = self.rng.weighted(&weights) else {
            return;
        };
        let kind = Kind::ALL[choice];
        let t_before = monotonic_ns();
        let hit = match kind {
            Kind::HolderSigkill => self.kill_holder(),
            Kind::HolderSupervisorSigkill => self.kill_holder_supervisor(),
            Kind::RandomSupervisorSigkill => {
                self.supervisors.signal_random(&mut self.rng, Signal::KILL)
            }
            Kind::HolderSigstop => self.stop_holder(),
            Kind::LockFileDeletion => deleted(std::fs::remove_file(&self.config.lock_file)),
            Kind::LockDirDeletion => deleted(std::fs::remove_dir_all(&self.config.lock_dir)),
            Kind::SessionTermination => self.terminate_holder_session(),
        };
        if let Some(pid) = hit {
            let t_after = monotonic_ns();
            self.events.push(Event {
                kind,
                pid,
                t_before,
                t_after,
            });
        }
    }

    /// The holder's witness, pinned, if it is still there.
    fn pinned_holder(&self) -> Option<Pinned> {
        Pinned::ours(self.holder?.pid, &self.config.witness_prefix)
    }

    fn kill_holder(&mut self) -> Option<u32> {
        let witness = self.pinned_holder()?;
        witness.signal(Signal::KILL).then(|| {
            self.holder = None;
            witness.pid
        })
    }

    fn kill_holder_supervisor(&mut self) -> Option<u32> {
        let supervisor = self.holder?.ppid;
        self.supervisors.signal(supervisor, Signal::KILL).then(|| {
            self.holder = None;
            supervisor
        })
    }

    fn stop_holder(&mut self) -> Option<u32> {
        let witness = self.pinned_holder()?;
        if self.stopped.iter().any(|(p, _)| p.pid == witness.pid) || !witness.signal(Signal::STOP) {
            return None;
        }
        let pause = Duration::from_millis(self.rng.between(STOP_MS.0, STOP_MS.1));
        let pid = witness.pid;
        self.stopped.push((witness, Instant::now() + pause));
        Some(pid)
    }

    fn continue_all_holders(&mut self) {
        for (witness, _) in self.stopped.drain(..) {
            witness.signal(Signal::CONT);
        }
    }

    fn continue_holders_due(&mut self, now: Instant) {
        self.stopped.retain(|(witness, at)| {
            if *at > now {
                return true;
            }
            witness.signal(Signal::CONT);
            false
        });
    }

    /// Terminates the server session of the current holder; returns the
    /// pid of its supervisor, which onlyone puts at the end of the
    /// session's `application_name` (`onlyone:<name>@<host>:<pid>`).
    fn terminate_holder_session(&mut self) -> Option<u32> {
        let url = self.config.postgres.as_deref()?;
        // The holder is the one session of this run granted an advisory
        // lock (waiters are in pg_locks too, not granted). The select list
        // is only evaluated for rows that pass the WHERE clause.
        let sql = format!(
            "SELECT pg_terminate_backend(a.pid), a.application_name \
             FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
             WHERE a.application_name LIKE '{}' \
             AND l.locktype = 'advisory' AND l.granted",
            self.config.session_pattern
        );
        let output = Command::new("psql")
            .args(["-XAtq", "-d", url, "-c", &sql])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        // Lines of "t|onlyone:torture-1@host:4242" for each session ended.
        let supervisor = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("t|"))
            .find_map(|name| name.rsplit(':').next()?.parse().ok())?;
        self.holder = None;
        Some(supervisor)
    }
}

/// Whether a deletion removed something (`Some(0)`: no process was hit).
/// A directory deletion that failed part way (a contender made a new lock
/// file in it meanwhile) still deleted the old lock file: it counts.
fn deleted(result: std::io::Result<()>) -> Option<u32> {
    match result {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        _ => Some(0),
    }
}
