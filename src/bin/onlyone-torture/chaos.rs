//! The chaos thread: at random intervals it SIGKILLs the holder's command
//! or a supervisor, SIGSTOPs the holder for a few milliseconds, deletes the
//! lock file or the whole lock directory (or, with PostgreSQL, terminates
//! the holder's session, or SIGSTOPs its supervisor for up to 2 s). It
//! follows the witness log to know whose command runs; with PostgreSQL it
//! asks the server who holds the lock, so that holders waiting out their
//! lock-delay are hit too. It records what it did, with the time, for the
//! analysis.

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
/// How long a stopped supervisor stays stopped. Longer than the heartbeat
/// deadline of the short timings (1.2 s), so that most stops end in a lost
/// lock; shorter than the server's idle limit for the lock session
/// (deadline + 2 s), past which a stopped supervisor's command may overlap
/// its successor's: the documented limit of a paused supervisor.
const SUPERVISOR_STOP_MS: (u64, u64) = (100, 2000);

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
    /// SIGSTOP of the holder's supervisor (PostgreSQL), SIGCONT 0.1-2 s
    /// later: its heartbeat misses the deadline, and it stops its command.
    SupervisorSigstop,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::HolderSigkill,
        Kind::HolderSupervisorSigkill,
        Kind::RandomSupervisorSigkill,
        Kind::HolderSigstop,
        Kind::LockFileDeletion,
        Kind::LockDirDeletion,
        Kind::SessionTermination,
        Kind::SupervisorSigstop,
    ];

    /// How often each kind is chosen, relative to the others.
    fn weight(self, postgres: bool) -> u64 {
        match self {
            Kind::HolderSigkill => 3,
            Kind::HolderSupervisorSigkill if postgres => 3,
            Kind::HolderSupervisorSigkill => 2,
            Kind::RandomSupervisorSigkill => 2,
            Kind::HolderSigstop => 2,
            Kind::LockFileDeletion if !postgres => 2,
            Kind::LockDirDeletion if !postgres => 1,
            Kind::SessionTermination if postgres => 3,
            Kind::SupervisorSigstop if postgres => 2,
            _ => 0,
        }
    }

    /// Whether the kind needs a holder whose command runs (the witness
    /// log's). With PostgreSQL, the kinds aimed at the holder's supervisor
    /// or session find the holder on the server instead.
    fn needs_command(self, postgres: bool) -> bool {
        match self {
            Kind::RandomSupervisorSigkill | Kind::LockFileDeletion | Kind::LockDirDeletion => false,
            Kind::HolderSupervisorSigkill | Kind::SessionTermination | Kind::SupervisorSigstop => {
                !postgres
            }
            Kind::HolderSigkill | Kind::HolderSigstop => true,
        }
    }
}

/// One thing the chaos thread did. `pid` is whom it hit: the witness for
/// SIGKILL and SIGSTOP of the holder, the supervisor for supervisor kills
/// and stops and session terminations, nobody (0) for deletions.
/// `t_before`/`t_after` bracket the act (monotonic ns). `before_command`:
/// no command of the holder's was running (with PostgreSQL, most often the
/// holder was waiting out its lock-delay: the chain case).
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: Kind,
    pub pid: u32,
    pub t_before: u64,
    pub t_after: u64,
    pub before_command: bool,
}

impl Event {
    /// The event as a line of the run's chaos log, for a person to line up
    /// with the witness log.
    pub fn to_line(&self) -> String {
        format!(
            "{:?} {} {} {}{}\n",
            self.kind,
            self.pid,
            self.t_before,
            self.t_after,
            if self.before_command {
                " before-command"
            } else {
                ""
            }
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
    /// The MySQL/MariaDB URL (`mysql://user@host:port/db`), for the
    /// `mariadb` client.
    pub mysql: Option<String>,
    /// A LIKE pattern for the `application_name` of this run's sessions.
    pub session_pattern: String,
    /// This run's lock name.
    pub lock_name: String,
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
    /// Supervisors stopped, by pid, and when to let them continue.
    stopped_supervisors: Vec<(u32, Instant)>,
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
            stopped_supervisors: Vec::new(),
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
                self.stopped_supervisors.iter().map(|(_, at)| *at).min(),
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
        // The target counts once every chosen kind of chaos has landed as
        // well (the time bound still ends a run that cannot): a run that
        // reached its acquisitions within a few acts would prove nothing
        // of the kinds it never drew.
        if self.config.target.is_some_and(|target| entered >= target) && self.every_kind_landed() {
            self.stop.stop(StopReason::Target);
        }
    }

    /// Whether each kind of chaos named (`--chaos`) has landed at least
    /// once; true when none was named or chaos is off.
    fn every_kind_landed(&self) -> bool {
        self.config.mean_interval.is_none()
            || self
                .config
                .kinds
                .iter()
                .all(|kind| self.events.iter().any(|event| event.kind == *kind))
    }

    fn act(&mut self) {
        // A database backend: its session is what the chaos ends.
        let postgres = self.config.postgres.is_some() || self.config.mysql.is_some();
        let weights: Vec<u64> = Kind::ALL
            .iter()
            .map(|kind| {
                let chosen = self.config.kinds.is_empty() || self.config.kinds.contains(kind);
                if !chosen || (kind.needs_command(postgres) && self.holder.is_none()) {
                    0
                } else {
                    kind.weight(postgres)
                }
            })
            .collect();
        // Every other act prefers a chosen kind that has not landed yet: a
        // short run must not go without one by the luck of the draw (the
        // in-suite PostgreSQL run once had no supervisor SIGSTOP at all),
        // nor stall on a kind that cannot land now.
        let unhit: Vec<u64> = Kind::ALL
            .iter()
            .zip(&weights)
            .map(|(kind, &weight)| {
                if self.events.iter().any(|event| event.kind == *kind) {
                    0
                } else {
                    weight
                }
            })
            .collect();
        let prefer_unhit = self.rng.between(0, 1) == 0;
        let Some(choice) = prefer_unhit
            .then(|| self.rng.weighted(&unhit))
            .flatten()
            .or_else(|| self.rng.weighted(&weights))
        else {
            return;
        };
        let kind = Kind::ALL[choice];
        let before_command = self.holder.is_none();
        let t_before = monotonic_ns();
        let hit = match kind {
            Kind::HolderSigkill => self.kill_holder(),
            Kind::HolderSupervisorSigkill => self.kill_holder_supervisor(),
            Kind::SupervisorSigstop => self.stop_holder_supervisor(),
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
                before_command,
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

    /// The supervisor of the holder: the server's, with PostgreSQL (it may
    /// be waiting out its lock-delay), else the parent of the running
    /// witness.
    fn holder_supervisor(&self) -> Option<u32> {
        if let Some(url) = &self.config.mysql {
            return mysql_holder(url, &self.config.lock_name).map(|(_, supervisor)| supervisor);
        }
        match &self.config.postgres {
            Some(url) => self.server_holder_supervisor(url),
            None => Some(self.holder?.ppid),
        }
    }

    fn kill_holder_supervisor(&mut self) -> Option<u32> {
        let supervisor = self.holder_supervisor()?;
        self.supervisors.signal(supervisor, Signal::KILL).then(|| {
            self.holder = None;
            supervisor
        })
    }

    fn stop_holder_supervisor(&mut self) -> Option<u32> {
        let supervisor = self.holder_supervisor()?;
        if self
            .stopped_supervisors
            .iter()
            .any(|(p, _)| *p == supervisor)
            || !self.supervisors.signal(supervisor, Signal::STOP)
        {
            return None;
        }
        let pause =
            Duration::from_millis(self.rng.between(SUPERVISOR_STOP_MS.0, SUPERVISOR_STOP_MS.1));
        self.stopped_supervisors
            .push((supervisor, Instant::now() + pause));
        Some(supervisor)
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
        for (supervisor, _) in self.stopped_supervisors.drain(..) {
            self.supervisors.signal(supervisor, Signal::CONT);
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
        let supervisors = self.supervisors;
        self.stopped_supervisors.retain(|(supervisor, at)| {
            if *at > now {
                return true;
            }
            // A supervisor killed meanwhile is no longer registered.
            supervisors.signal(*supervisor, Signal::CONT);
            false
        });
    }

    /// The supervisor of the session that holds the lock on the server: it
    /// may be waiting out its lock-delay, or running its command.
    fn server_holder_supervisor(&self, url: &str) -> Option<u32> {
        let sql = format!(
            "SELECT a.application_name \
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
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(supervisor_of)
    }

    /// Terminates the server session of the current holder; returns the
    /// pid of its supervisor, which onlyone puts at the end of the
    /// session's `application_name` (`onlyone:<name>@<host>:<pid>`).
    fn terminate_holder_session(&mut self) -> Option<u32> {
        if let Some(url) = &self.config.mysql {
            let (connection, supervisor) = mysql_holder(url, &self.config.lock_name)?;
            // Connection ids are not reused while the server runs: this
            // ends that session or nothing.
            mariadb(url, &format!("KILL CONNECTION {connection}"))?;
            self.holder = None;
            return Some(supervisor);
        }
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
            .find_map(supervisor_of)?;
        self.holder = None;
        Some(supervisor)
    }
}

/// The session holding this run's MySQL lock, as its state row names it
/// (`held`, the connection `IS_USED_LOCK` shows), and its supervisor (the
/// record's pid): it may be waiting out its lock-delay, or running its
/// command. The row is found by its onlyone name (`name`), so that the
/// database-scoped server lock name need not be computed here.
fn mysql_holder(url: &str, lock_name: &str) -> Option<(u64, u32)> {
    let sql = format!(
        "SELECT connection_id, record FROM onlyone_locks \
         WHERE name = '{lock_name}' AND state = 'held' \
           AND IS_USED_LOCK(lock_name) = connection_id"
    );
    let output = mariadb(url, &sql)?;
    let (connection, record) = output.lines().next()?.split_once('\t')?;
    let record: serde_json::Value = serde_json::from_str(record).ok()?;
    Some((
        connection.parse().ok()?,
        u32::try_from(record["pid"].as_u64()?).ok()?,
    ))
}

/// Runs `sql` with the `mariadb` client against `url`
/// (`mysql://user@host:port/db`; a password comes from `MYSQL_PWD`); its
/// output, or `None` when it failed.
fn mariadb(url: &str, sql: &str) -> Option<String> {
    let rest = url.strip_prefix("mysql://")?;
    let (user, rest) = rest.split_once('@')?;
    let (host_port, db) = rest.split_once('/')?;
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
    let output = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            host,
            "-P",
            port,
            "-u",
            user,
            "-N",
            "-B",
            "-r",
            db,
        ])
        .args(["-e", sql])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The supervisor's pid at the end of an `application_name`.
fn supervisor_of(application_name: &str) -> Option<u32> {
    application_name.rsplit(':').next()?.parse().ok()
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
