//! An exhaustive model of the PostgreSQL backend's safety argument
//! (docs/DESIGN.md, "Safety of the PostgreSQL backend").
//!
//! Time is discrete. Between two `Tick`s any number of instantaneous events
//! happen, in every possible order; timers that fall due (a heartbeat to
//! send, a deadline, the end of the lock-delay or of the kill grace) must
//! fire before time moves on, unless their supervisor is paused. Faults and
//! network delays may happen at any instant. The explorer visits every
//! reachable state breadth-first, checks the invariants on every transition
//! and rebuilds the shortest trace to a violation.
//!
//! The state holds no clock: only ages (ticks since something happened),
//! capped where larger values behave alike, so the state space is finite.
//!
//! With [`Sharing`], one library process holds two names on one shared
//! session (docs/DESIGN.md, "Many names on one session"), and exclusion,
//! tokens and start order are checked per name.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Instant;

const MAX_CONTENDERS: usize = 4;

/// Lock names: every contender takes name x, except with sharing (see
/// [`Sharing`]).
const NAMES: usize = 2;

/// What is modeled. Durations are in ticks.
#[derive(Clone, Copy, Debug)]
struct Params {
    contenders: usize,
    /// How many times each contender takes the lock (a supervisor killed or
    /// crashed is restarted for its next attempt).
    attempts: u8,
    /// Heartbeat interval.
    heartbeat: u8,
    /// T: the holder declares the lock lost this long after the send time of
    /// its last successful heartbeat.
    deadline: u8,
    /// G of each contender: SIGTERM, then SIGKILL this much later.
    graces: [u8; MAX_CONTENDERS],
    /// D of each contender: its own lock-delay after an unclean loss.
    lock_delays: [u8; MAX_CONTENDERS],
    /// Each holder records its T + G in the row, and a successor waits at
    /// least that plus `margin` (production: 2 s). Off: a successor waits
    /// its own D alone, as when every holder has the same T and G.
    record_bound: bool,
    margin: u8,
    /// The row carries the largest T + G + margin of every holder since
    /// the last clean release (`owed_ms`); without it, a successor owes
    /// only its immediate predecessor's (the bug of issue 9, item 1).
    carry_owed: bool,
    faults: Faults,
    /// The unsafe variant: measure the deadline from the *reply* to the last
    /// successful heartbeat instead of its send time.
    deadline_from_reply: bool,
    /// The unsafe variant: a holder that gives up during its lock-delay
    /// commits `state='released'` although its command never ran.
    give_up_releases: bool,
    writes: Writes,
    /// Whether two commands running at once is a violation. Off when
    /// checking what fencing alone guarantees.
    check_exclusion: bool,
    /// Whether an acquisition whose token is not above every earlier
    /// acquisition's is a violation.
    check_tokens: bool,
    /// Whether a command starting with a token not above an earlier start's
    /// is a violation. (Stale writes accepted by the protected system are
    /// always a violation.)
    check_start_order: bool,
    sharing: Sharing,
    /// With sharing: every statement of the shared session is cut off at
    /// its last good heartbeat + T. Off (an unsafe variant): a take of one
    /// name that gets no answer holds up the session's thread, and with it
    /// the other name's deadline.
    cutoff: bool,
}

/// One library process holding two names on one PostgreSQL session
/// (`PostgresBackend::share_sessions`, `src/backend/postgres/shared.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sharing {
    /// Every contender holds one name, x, on a session of its own.
    Off,
    /// Contenders A and B are one process's names x and y: whenever both
    /// are held at once, they are on one session, with one heartbeat
    /// whose send time proves both, and one deadline. Whatever loses the
    /// session (its heartbeat fails, errs or is late; the server drops or
    /// terminates it or restarts; the process dies) loses both names at
    /// once, and the session is dropped. C takes x and D takes y, each on
    /// a session of its own. The "command" of A and B is the caller's
    /// code, told by the loss callback: it stops within G of being told
    /// (the caller's side of the contract; the library cannot kill it).
    OneSession,
    /// The unsafe variant: as `OneSession`, but a lost session tells only
    /// the name whose check failed. The other name's code, running, is
    /// never told (its session and its heartbeat are gone) and runs on.
    LosesOneName,
}

/// Which faults may happen.
#[derive(Clone, Copy, Debug)]
struct Faults {
    /// Client and server stop talking; the server drops the session after
    /// any R ≥ 0; the partition may heal.
    partition: bool,
    /// All sessions and locks are dropped at once.
    server_restart: bool,
    /// `pg_terminate_backend` on a holder's session.
    terminate: bool,
    /// A heartbeat errs, times out or is ambiguous: the holder gives up.
    heartbeat_errors: bool,
    /// SIGKILL of the supervisor: the kernel closes its socket and kills its
    /// command (PDEATHSIG) at once.
    supervisor_kill: bool,
    /// The holder's machine dies: its command with it, but its session
    /// lives until the server drops it (after any R ≥ 0).
    host_crash: bool,
    /// SIGSTOP and SIGCONT of the supervisor; its command keeps running.
    pause: bool,
    /// The holder gives up during its lock-delay (SIGTERM to onlyone, or a
    /// timeout) without starting the command.
    give_up: bool,
    /// Failover to an asynchronous standby that lacks the last commits to
    /// the state row (outside the design's assumptions).
    failover_loses_commits: bool,
}

/// The protected system that the commands write to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writes {
    /// Not modeled: no write events.
    None,
    /// Accepts every write.
    Unfenced,
    /// Refuses a write whose token is lower than the highest it accepted.
    Fenced,
}

impl Params {
    /// Production defaults with one tick per second: heartbeat 1 s, deadline
    /// 3 s, kill grace 5 s, lock-delay 10 s.
    fn defaults() -> Params {
        Params {
            contenders: 2,
            attempts: 2,
            heartbeat: 1,
            deadline: 3,
            graces: [5; MAX_CONTENDERS],
            lock_delays: [10; MAX_CONTENDERS],
            record_bound: true,
            margin: 2,
            carry_owed: true,
            faults: Faults {
                partition: true,
                server_restart: true,
                terminate: true,
                heartbeat_errors: true,
                supervisor_kill: true,
                host_crash: true,
                pause: false,
                give_up: true,
                failover_loses_commits: false,
            },
            deadline_from_reply: false,
            give_up_releases: false,
            writes: Writes::None,
            check_exclusion: true,
            check_tokens: true,
            check_start_order: true,
            sharing: Sharing::Off,
            cutoff: true,
        }
    }

    /// A's and B's names x and y on one shared session; C takes x and D
    /// takes y; one attempt each.
    fn shared(self, sharing: Sharing) -> Params {
        Params {
            contenders: 4,
            attempts: 1,
            sharing,
            ..self
        }
    }

    /// The name contender `i` takes.
    fn name_of(&self, i: usize) -> u8 {
        match self.sharing {
            Sharing::Off => 0,
            _ => u8::from(i % 2 == 1),
        }
    }

    /// Whether contender `i` is subject to faults and heartbeats. With
    /// sharing, the successors C and D are not: each holds one name on a
    /// session of its own, which the model without sharing already covers;
    /// here they only take their name, wait and run, so that the search
    /// stays small.
    fn faulty(&self, i: usize) -> bool {
        self.sharing == Sharing::Off || i < 2
    }

    /// The other name of the same process, when names are shared.
    fn partner(&self, i: usize) -> Option<usize> {
        match (self.sharing, i) {
            (Sharing::Off, _) | (_, 2..) => None,
            (_, i) => Some(1 - i),
        }
    }

    /// No faults at all; tests switch on the ones they study.
    fn without_faults(self) -> Params {
        Params {
            faults: Faults {
                partition: false,
                server_restart: false,
                terminate: false,
                heartbeat_errors: false,
                supervisor_kill: false,
                host_crash: false,
                pause: false,
                give_up: false,
                failover_loses_commits: false,
            },
            ..self
        }
    }

    /// Every contender with lock-delay `delay`.
    fn with_lock_delay(self, delay: u8) -> Params {
        Params {
            lock_delays: [delay; MAX_CONTENDERS],
            ..self
        }
    }

    /// Contender A with kill grace `long`, the others with `short`; each
    /// with the default lock-delay for its own grace, T + G + margin.
    fn with_graces(self, long: u8, short: u8) -> Params {
        let mut graces = [short; MAX_CONTENDERS];
        graces[0] = long;
        Params {
            graces,
            lock_delays: graces.map(|grace| self.deadline + grace + self.margin),
            ..self
        }
    }

    /// Ages above this behave alike: a heartbeat older than the deadline
    /// proves nothing useful, and one older than the interval is due.
    fn age_cap(&self) -> u8 {
        self.deadline.max(self.heartbeat)
    }
}

/// The committed state row: whether the last holder left uncleanly, the
/// last fencing token handed out, the last holder's T + G, and the bound
/// its successor owes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Row {
    held: bool,
    token: u8,
    stop_within: u8,
    owed: u8,
}

impl Row {
    /// The row rewritten by a clean release. (What a successor owes is
    /// read only from a row that says 'held': zero here, so that rows that
    /// behave alike are one.)
    fn released(self) -> Row {
        Row {
            held: false,
            owed: 0,
            ..self
        }
    }
}

/// Where a contender's supervisor is in one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Blocked in `pg_advisory_lock`. A waiting session holds nothing, so
    /// its loss is only a retry and is not modeled.
    Waiting,
    /// Holds the lock; starts the command `left` ticks from now.
    Delaying { left: u8 },
    /// Found the deadline not passed and is about to spawn the command.
    /// A pause here starts the command late.
    Spawning,
    /// The command runs.
    Running,
    /// The lock was declared lost: SIGTERM sent, SIGKILL in `grace_left`.
    Stopping { grace_left: u8 },
    /// Only in an unsafe variant: the command runs and no one will tell it
    /// to stop (it may still exit by itself).
    Untold,
    /// No attempts left.
    Done,
}

/// The heartbeat query in flight (one at a time on the lock session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Heartbeat {
    Idle,
    /// Sent; the server has not run it yet.
    Sent,
    /// The server ran it; the answer is on its way back.
    Answered {
        holds: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Contender {
    phase: Phase,
    /// The name it takes (index into the rows).
    name: u8,
    attempts_left: u8,
    /// Its kill grace G and its own lock-delay D.
    grace: u8,
    own_delay: u8,
    /// Client and server can reach each other.
    link_up: bool,
    /// Its lock session is alive on the server, and so holds the lock (only
    /// a session that was granted the lock is modeled). It outlives the
    /// supervisor when the server cannot be told (partition, host crash).
    session: bool,
    /// The supervisor is SIGSTOPped: its timers do not fire, its clock runs.
    paused: bool,
    token: u8,
    /// Ghost: the place of this acquisition in the order the server granted
    /// the lock (fencing check).
    acquisition: u8,
    /// Ticks since the send time of the last successful heartbeat.
    since_ok: u8,
    /// Ticks since the last heartbeat was sent.
    since_send: u8,
    heartbeat: Heartbeat,
}

/// Hashes a contender as one word: the derived hash makes a dozen calls per
/// contender, which dominate the search in a debug build. Equality stays
/// exact, so a collision would only cost a comparison.
impl Hash for Contender {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (phase, count) = match self.phase {
            Phase::Waiting => (0, 0),
            Phase::Delaying { left } => (1, left),
            Phase::Spawning => (2, 0),
            Phase::Running => (3, 0),
            Phase::Stopping { grace_left } => (4, grace_left),
            Phase::Done => (5, 0),
            Phase::Untold => (6, 0),
        };
        let heartbeat = match self.heartbeat {
            Heartbeat::Idle => 0,
            Heartbeat::Sent => 1,
            Heartbeat::Answered { holds } => 2 + u8::from(holds),
        };
        state.write_u128(u128::from_le_bytes([
            phase,
            count,
            self.attempts_left,
            u8::from(self.link_up),
            u8::from(self.session),
            u8::from(self.paused),
            self.token,
            self.acquisition,
            self.since_ok,
            self.since_send,
            heartbeat,
            self.grace,
            self.own_delay,
            self.name,
            0,
            0,
        ]));
    }
}

impl Row {
    fn word(self) -> u32 {
        u32::from_le_bytes([u8::from(self.held), self.token, self.stop_within, self.owed])
    }
}

/// Hashes a state as a few words, as for `Contender`.
impl Hash for State {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.contenders.hash(state);
        let [x, y] = self.rows.map(Row::word);
        let [sx, sy] = self
            .standby_rows
            .map_or([u32::MAX; NAMES], |rows| rows.map(Row::word));
        state.write_u128(
            u128::from(x) | u128::from(y) << 32 | u128::from(sx) << 64 | u128::from(sy) << 96,
        );
        state.write_u64(u64::from_le_bytes([
            u8::from(self.together) | u8::from(self.taking) << 1,
            self.fence_token,
            self.last_write_acquisition,
            self.max_token_issued[0],
            self.max_token_issued[1],
            self.max_token_started[0],
            self.max_token_started[1],
            self.acquisitions,
        ]));
    }
}

impl Contender {
    fn new(name: u8, attempts: u8, grace: u8, own_delay: u8) -> Contender {
        Contender {
            phase: Phase::Waiting,
            name,
            attempts_left: attempts,
            grace,
            own_delay,
            link_up: true,
            session: false,
            paused: false,
            token: 0,
            acquisition: 0,
            since_ok: 0,
            since_send: 0,
            heartbeat: Heartbeat::Idle,
        }
    }

    /// The supervisor holds (or believes it holds) the lock.
    fn supervising(&self) -> bool {
        matches!(
            self.phase,
            Phase::Delaying { .. } | Phase::Spawning | Phase::Running | Phase::Stopping { .. }
        )
    }

    /// The age of the last successful heartbeat matters.
    fn aging(&self) -> bool {
        matches!(
            self.phase,
            Phase::Delaying { .. } | Phase::Spawning | Phase::Running
        )
    }

    /// Heartbeats run, and the deadline applies, before the loss is noticed.
    fn watching(&self) -> bool {
        matches!(self.phase, Phase::Delaying { .. } | Phase::Running)
    }

    fn command_running(&self) -> bool {
        matches!(
            self.phase,
            Phase::Running | Phase::Stopping { .. } | Phase::Untold
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    contenders: [Contender; MAX_CONTENDERS],
    /// One row per name.
    rows: [Row; NAMES],
    /// The rows as an asynchronous standby has them, while the last
    /// commits have not reached it.
    standby_rows: Option<[Row; NAMES]>,
    /// With sharing: A's and B's names are on one session (set when one is
    /// taken while the other is held, until either attempt ends).
    together: bool,
    /// With sharing: the session's thread is taking the other name (sent,
    /// not answered): it sends no heartbeat meanwhile.
    taking: bool,
    /// The protected system: the highest token it accepted.
    fence_token: u8,
    /// Ghost: the acquisition whose write was accepted last.
    last_write_acquisition: u8,
    /// Ghost: the highest token handed out so far, per name.
    max_token_issued: [u8; NAMES],
    /// Ghost: the highest token of any command started so far, per name.
    max_token_started: [u8; NAMES],
    /// Ghost: how many acquisitions there were (only counted when writes
    /// are modeled, where it is needed).
    acquisitions: u8,
}

/// Everything that can happen. `usize` is the contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Tick,
    // The supervisor's own steps.
    Acquire(usize),
    /// With sharing: the take of a name is sent on the session that holds
    /// the other (`Acquire` is its answer).
    TakeSent(usize),
    ReadyToStart(usize),
    Spawn(usize),
    SendHeartbeat(usize),
    DeadlinePassed(usize),
    Kill(usize),
    // The command.
    CommandExits(usize),
    CommandWrites(usize),
    // The server and the network.
    ServerChecksHeartbeat(usize),
    ReplyArrives(usize),
    HeartbeatErrs(usize),
    Partition(usize),
    Heal(usize),
    ServerDropsUnreachable(usize),
    Terminate(usize),
    ServerRestart,
    FailoverLosingCommits,
    StandbyCatchesUp,
    // The holder's machine.
    GiveUp(usize),
    SupervisorKilled(usize),
    HostCrash(usize),
    Pause(usize),
    Resume(usize),
}

/// An event without its contender, for coverage checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tick,
    Acquire,
    TakeSent,
    ReadyToStart,
    Spawn,
    SendHeartbeat,
    DeadlinePassed,
    Kill,
    CommandExits,
    CommandWrites,
    ServerChecksHeartbeat,
    ReplyArrives,
    HeartbeatErrs,
    Partition,
    Heal,
    ServerDropsUnreachable,
    Terminate,
    ServerRestart,
    FailoverLosingCommits,
    StandbyCatchesUp,
    GiveUp,
    SupervisorKilled,
    HostCrash,
    Pause,
    Resume,
}

impl Event {
    /// The event's kind, without the contender, for coverage checks.
    fn kind(&self) -> Kind {
        match self {
            Event::Tick => Kind::Tick,
            Event::Acquire(_) => Kind::Acquire,
            Event::TakeSent(_) => Kind::TakeSent,
            Event::ReadyToStart(_) => Kind::ReadyToStart,
            Event::Spawn(_) => Kind::Spawn,
            Event::SendHeartbeat(_) => Kind::SendHeartbeat,
            Event::DeadlinePassed(_) => Kind::DeadlinePassed,
            Event::Kill(_) => Kind::Kill,
            Event::CommandExits(_) => Kind::CommandExits,
            Event::CommandWrites(_) => Kind::CommandWrites,
            Event::ServerChecksHeartbeat(_) => Kind::ServerChecksHeartbeat,
            Event::ReplyArrives(_) => Kind::ReplyArrives,
            Event::HeartbeatErrs(_) => Kind::HeartbeatErrs,
            Event::Partition(_) => Kind::Partition,
            Event::Heal(_) => Kind::Heal,
            Event::ServerDropsUnreachable(_) => Kind::ServerDropsUnreachable,
            Event::Terminate(_) => Kind::Terminate,
            Event::ServerRestart => Kind::ServerRestart,
            Event::FailoverLosingCommits => Kind::FailoverLosingCommits,
            Event::StandbyCatchesUp => Kind::StandbyCatchesUp,
            Event::GiveUp(_) => Kind::GiveUp,
            Event::SupervisorKilled(_) => Kind::SupervisorKilled,
            Event::HostCrash(_) => Kind::HostCrash,
            Event::Pause(_) => Kind::Pause,
            Event::Resume(_) => Kind::Resume,
        }
    }

    fn contender(&self) -> Option<usize> {
        match *self {
            Event::Tick
            | Event::ServerRestart
            | Event::FailoverLosingCommits
            | Event::StandbyCatchesUp => None,
            Event::Acquire(i)
            | Event::TakeSent(i)
            | Event::ReadyToStart(i)
            | Event::Spawn(i)
            | Event::SendHeartbeat(i)
            | Event::DeadlinePassed(i)
            | Event::Kill(i)
            | Event::CommandExits(i)
            | Event::CommandWrites(i)
            | Event::ServerChecksHeartbeat(i)
            | Event::ReplyArrives(i)
            | Event::HeartbeatErrs(i)
            | Event::Partition(i)
            | Event::Heal(i)
            | Event::ServerDropsUnreachable(i)
            | Event::Terminate(i)
            | Event::GiveUp(i)
            | Event::SupervisorKilled(i)
            | Event::HostCrash(i)
            | Event::Pause(i)
            | Event::Resume(i) => Some(i),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self.contender() {
            Some(i) => format!("{:?}({})", self.kind(), name(i)),
            None => format!("{:?}", self.kind()),
        };
        f.pad(&text)
    }
}

fn name(contender: usize) -> char {
    char::from(b'A' + contender as u8)
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Violation {
    TwoCommandsRunning,
    /// An acquisition got a token not above every earlier acquisition's.
    TokenNotIncreasing {
        token: u8,
        earlier: u8,
    },
    /// A command started with a token not above an earlier start's.
    StartedOutOfTokenOrder {
        token: u8,
        earlier: u8,
    },
    /// The protected system accepted a write from an older acquisition
    /// after one from a newer.
    StaleWriteAccepted,
}

impl State {
    fn initial(p: &Params) -> State {
        State {
            contenders: std::array::from_fn(|i| {
                Contender::new(p.name_of(i), p.attempts, p.graces[i], p.lock_delays[i])
            }),
            rows: [Row {
                held: false,
                token: 0,
                stop_within: 0,
                owed: 0,
            }; NAMES],
            standby_rows: None,
            together: false,
            taking: false,
            fence_token: 0,
            last_write_acquisition: 0,
            max_token_issued: [0; NAMES],
            max_token_started: [0; NAMES],
            acquisitions: 0,
        }
    }

    /// Contenders are interchangeable (every field that names one lives in
    /// its own entry), so states that differ only in their order behave
    /// alike: the visited set keeps the sorted one. (Not with sharing: A
    /// and B are one process, and each name has its own contenders.)
    fn symmetric_key(&self, p: &Params) -> State {
        let mut key = *self;
        if p.sharing == Sharing::Off {
            key.contenders[..p.contenders].sort_unstable();
        }
        key
    }

    fn lock_free(&self, name: u8) -> bool {
        self.contenders.iter().all(|c| c.name != name || !c.session)
    }

    /// The most commands running at once for one name.
    fn commands_running(&self) -> usize {
        let mut running = [0; NAMES];
        for c in &self.contenders {
            if c.command_running() {
                running[usize::from(c.name)] += 1;
            }
        }
        running[0].max(running[1])
    }

    fn fence_accepts(&self, p: &Params, token: u8) -> bool {
        match p.writes {
            Writes::None => false,
            Writes::Unfenced => true,
            Writes::Fenced => token >= self.fence_token,
        }
    }

    fn events(&self, p: &Params) -> Vec<Event> {
        let mut events = Vec::new();
        self.events_into(p, &mut events);
        events
    }

    /// Every event that can happen now, into `events` (reused by the
    /// search, which would otherwise spend its time allocating). Due timers
    /// of running supervisors are urgent: time does not advance until they
    /// have fired.
    fn events_into(&self, p: &Params, events: &mut Vec<Event>) {
        events.clear();
        let mut urgent = false;
        let f = &p.faults;
        let none = Params::without_faults(*p).faults;
        for (i, c) in self.contenders[..p.contenders].iter().enumerate() {
            let f = if p.faulty(i) { &p.faults } else { &none };
            if c.supervising() && !c.paused {
                urgent |= self.push_due(p, i, events);
            }
            if c.phase == Phase::Waiting && c.link_up && self.lock_free(c.name) {
                // A name taken while the process holds its other one goes
                // on that session: only while the server has it (a take on
                // a session that is gone fails, and loses the other name:
                // modeled by its heartbeat, later) and can be reached, and
                // between two heartbeats (one thread serves both).
                match p.partner(i).map(|j| self.contenders[j]) {
                    Some(other) if other.aging() => {
                        if !other.session || !other.link_up {
                        } else if self.taking {
                            events.push(Event::Acquire(i));
                        } else if other.heartbeat == Heartbeat::Idle {
                            events.push(Event::TakeSent(i));
                        }
                    }
                    _ => events.push(Event::Acquire(i)),
                }
            }
            if c.command_running() {
                // A command exiting while its supervisor is paused would only
                // be noticed at the resume: modeled as exiting then.
                if !c.paused {
                    events.push(Event::CommandExits(i));
                }
                if p.writes != Writes::None {
                    events.push(Event::CommandWrites(i));
                }
            }
            if c.heartbeat == Heartbeat::Sent && c.link_up {
                events.push(Event::ServerChecksHeartbeat(i));
            }
            if c.watching() && !c.paused {
                if matches!(c.heartbeat, Heartbeat::Answered { .. }) && c.link_up {
                    events.push(Event::ReplyArrives(i));
                }
                if c.heartbeat != Heartbeat::Idle && f.heartbeat_errors {
                    events.push(Event::HeartbeatErrs(i));
                }
            }
            if f.partition && c.supervising() {
                if c.link_up && c.session {
                    events.push(Event::Partition(i));
                }
                if !c.link_up {
                    events.push(Event::Heal(i));
                }
            }
            // TCP keepalives or tcp_user_timeout end a session whose client
            // cannot answer, after any R >= 0.
            if c.session && (!c.link_up || !c.supervising()) {
                events.push(Event::ServerDropsUnreachable(i));
            }
            if f.terminate && c.session {
                events.push(Event::Terminate(i));
            }
            if f.give_up && matches!(c.phase, Phase::Delaying { .. }) && !c.paused {
                events.push(Event::GiveUp(i));
            }
            if c.supervising() {
                if f.supervisor_kill {
                    events.push(Event::SupervisorKilled(i));
                }
                if f.host_crash {
                    events.push(Event::HostCrash(i));
                }
                if f.pause {
                    events.push(if c.paused {
                        Event::Resume(i)
                    } else {
                        Event::Pause(i)
                    });
                }
            }
        }
        // (With sharing, only while the successors, which have no
        // heartbeat to notice it, hold nothing.)
        let successors_hold = (0..p.contenders).any(|i| !p.faulty(i) && self.contenders[i].session);
        if f.server_restart
            && (0..NAMES as u8).any(|name| !self.lock_free(name))
            && !successors_hold
        {
            events.push(Event::ServerRestart);
        }
        if f.failover_loses_commits && self.standby_rows.is_some() {
            events.push(Event::FailoverLosingCommits);
            events.push(Event::StandbyCatchesUp);
        }
        if !urgent {
            events.push(Event::Tick);
        }
    }

    /// Adds the timers of contender `i` that have fallen due; tells whether
    /// there were any.
    fn push_due(&self, p: &Params, i: usize, due: &mut Vec<Event>) -> bool {
        let c = &self.contenders[i];
        let before = due.len();
        // The session's thread waits for the answer to a take: the cutoff
        // ends the wait at the deadline, which loses the session.
        let taking = self.taking && p.partner(i).is_some();
        if c.watching() {
            if c.since_ok >= p.deadline && (p.cutoff || !taking) {
                due.push(Event::DeadlinePassed(i));
            }
            if c.heartbeat == Heartbeat::Idle && c.since_send >= p.heartbeat && !taking {
                due.push(Event::SendHeartbeat(i));
            }
        }
        match c.phase {
            // The deadline is checked before starting: a holder that may
            // have lost the lock does not start.
            Phase::Delaying { left: 0 } if c.since_ok < p.deadline => {
                due.push(Event::ReadyToStart(i));
            }
            Phase::Spawning => due.push(Event::Spawn(i)),
            Phase::Stopping { grace_left: 0 } => due.push(Event::Kill(i)),
            _ => {}
        }
        due.len() > before
    }

    fn step(&self, p: &Params, event: Event) -> State {
        let mut s = *self;
        match event {
            Event::Tick => {
                let cap = p.age_cap();
                for (i, c) in s.contenders[..p.contenders].iter_mut().enumerate() {
                    // A contender without faults needs no heartbeat.
                    if c.aging() && p.faulty(i) {
                        c.since_ok = (c.since_ok + 1).min(cap);
                        c.since_send = (c.since_send + 1).min(cap);
                    }
                    match &mut c.phase {
                        Phase::Delaying { left } => *left = left.saturating_sub(1),
                        Phase::Stopping { grace_left } => {
                            *grace_left = grace_left.saturating_sub(1);
                        }
                        _ => {}
                    }
                }
            }
            Event::Acquire(i) => {
                // The grant, the token increment and `state='held'` in one
                // committed transaction on the lock session. Its send time
                // counts as the first successful heartbeat.
                // After an unclean release, the new holder owes the last
                // holder's T + G + margin and, with the carry, the bound that
                // holder owed in turn; it waits that or its own D, whichever
                // is longer, counted from its own acquisition.
                if p.partner(i).is_some() {
                    s.taking = false;
                }
                let c = s.contenders[i];
                let name = usize::from(c.name);
                let was = s.rows[name];
                let token = was.token + 1;
                let previous = if p.record_bound {
                    was.stop_within + p.margin
                } else {
                    0
                };
                let owed = match (was.held, p.carry_owed) {
                    (false, _) => 0,
                    (true, false) => previous,
                    (true, true) => was.owed.max(previous),
                };
                let left = if was.held { c.own_delay.max(owed) } else { 0 };
                let row = Row {
                    held: true,
                    token,
                    stop_within: p.deadline + c.grace,
                    owed: if p.carry_owed { owed } else { 0 },
                };
                s.commit(p, name, row);
                s.max_token_issued[name] = s.max_token_issued[name].max(token);
                if p.writes != Writes::None {
                    s.acquisitions += 1;
                }
                let c = &mut s.contenders[i];
                c.session = true;
                c.token = token;
                c.acquisition = s.acquisitions;
                c.phase = Phase::Delaying { left };
                c.since_ok = 0;
                c.since_send = 0;
                c.heartbeat = Heartbeat::Idle;
                // With the other name held, this one joins its session
                // (between two of its heartbeats: one thread serves both),
                // and with it that session's last proof and deadline.
                if let Some(j) = p.partner(i)
                    && s.contenders[j].aging()
                {
                    s.together = true;
                    let other = s.contenders[j];
                    let c = &mut s.contenders[i];
                    c.link_up = other.link_up;
                    c.since_ok = other.since_ok;
                    c.since_send = other.since_send;
                    c.heartbeat = other.heartbeat;
                }
            }
            Event::TakeSent(_) => s.taking = true,
            Event::ReadyToStart(i) => s.contenders[i].phase = Phase::Spawning,
            Event::Spawn(i) => {
                let c = s.contenders[i];
                let name = usize::from(c.name);
                s.max_token_started[name] = s.max_token_started[name].max(c.token);
                s.contenders[i].phase = Phase::Running;
            }
            Event::SendHeartbeat(i) => {
                let c = &mut s.contenders[i];
                c.heartbeat = Heartbeat::Sent;
                c.since_send = 0;
            }
            Event::ServerChecksHeartbeat(i) => {
                let c = &mut s.contenders[i];
                c.heartbeat = Heartbeat::Answered { holds: c.session };
            }
            Event::ReplyArrives(i) => {
                let c = &mut s.contenders[i];
                if c.heartbeat == (Heartbeat::Answered { holds: true }) {
                    // The lock was held at some instant after the send: the
                    // deadline counts from the send.
                    c.since_ok = if p.deadline_from_reply {
                        0
                    } else {
                        c.since_send
                    };
                    c.heartbeat = Heartbeat::Idle;
                } else {
                    s.lose(p, i);
                }
            }
            Event::HeartbeatErrs(i) | Event::DeadlinePassed(i) => s.lose(p, i),
            Event::Kill(i) => {
                s.close_session(i);
                s.end_attempt(p, i);
            }
            Event::CommandExits(i) => {
                let c = s.contenders[i];
                if c.phase == Phase::Running && c.link_up && c.session {
                    // Clean release: `state='released'`, committed on the
                    // lock session, then unlock (of this name's key alone,
                    // on a shared session).
                    let name = usize::from(c.name);
                    s.commit(p, name, s.rows[name].released());
                }
                s.close_session(i);
                s.end_attempt(p, i);
            }
            Event::CommandWrites(i) => {
                let writer = s.contenders[i];
                if self.fence_accepts(p, writer.token) {
                    if p.writes == Writes::Fenced {
                        s.fence_token = s.fence_token.max(writer.token);
                    }
                    s.last_write_acquisition = writer.acquisition;
                }
            }
            Event::Partition(i) | Event::Heal(i) => {
                for j in s.on_session_of(p, i) {
                    s.contenders[j].link_up = event == Event::Heal(i);
                }
            }
            Event::ServerDropsUnreachable(i) | Event::Terminate(i) => {
                for j in s.on_session_of(p, i) {
                    s.contenders[j].session = false;
                }
            }
            Event::ServerRestart => s.drop_all_sessions(),
            Event::FailoverLosingCommits => {
                s.drop_all_sessions();
                s.rows = s.standby_rows.take().expect("enabled only when behind");
            }
            Event::StandbyCatchesUp => s.standby_rows = None,
            Event::SupervisorKilled(i) => {
                // The kernel closes the socket and PDEATHSIG kills the
                // command at once. (A library process: its code dies with
                // it, every name's.)
                for j in s.in_process_of(p, i) {
                    s.close_session(j);
                    s.end_attempt(p, j);
                }
            }
            Event::GiveUp(i) => {
                // Only a holder whose own command ran and ended may say
                // 'released': an earlier holder's command may still run.
                let c = s.contenders[i];
                if p.give_up_releases && c.link_up && c.session {
                    let name = usize::from(c.name);
                    s.commit(p, name, s.rows[name].released());
                }
                s.close_session(i);
                s.end_attempt(p, i);
            }
            Event::HostCrash(i) => {
                for j in s.in_process_of(p, i) {
                    s.end_attempt(p, j);
                }
            }
            Event::Pause(i) => s.contenders[i].paused = true,
            Event::Resume(i) => s.contenders[i].paused = false,
        }
        if let Some(i) = event.contender() {
            s.share_session_state(p, i);
        }
        s.normalize(p);
        s
    }

    /// What one name's step changed of the session it shares with its
    /// partner (the heartbeat, its ages, the link) holds for both.
    fn share_session_state(&mut self, p: &Params, i: usize) {
        let Some(j) = p.partner(i) else { return };
        let from = self.contenders[i];
        let to = &mut self.contenders[j];
        if self.together && from.aging() && to.aging() {
            to.link_up = from.link_up;
            to.heartbeat = from.heartbeat;
            to.since_ok = from.since_ok;
            to.since_send = from.since_send;
        }
    }

    /// `i`, and its partner while both are on one session.
    fn on_session_of(&self, p: &Params, i: usize) -> impl Iterator<Item = usize> + use<> {
        let partner = p.partner(i).filter(|_| self.together);
        std::iter::once(i).chain(partner)
    }

    /// `i`, and its partner in the same process while that one holds (or
    /// is taking) its name.
    fn in_process_of(&self, p: &Params, i: usize) -> impl Iterator<Item = usize> + use<> {
        let partner = p.partner(i).filter(|&j| {
            let c = self.contenders[j];
            c.supervising() || c.phase == Phase::Untold
        });
        std::iter::once(i).chain(partner)
    }

    fn commit(&mut self, p: &Params, name: usize, row: Row) {
        if p.faults.failover_loses_commits {
            self.standby_rows = self.standby_rows.or(Some(self.rows));
        }
        self.rows[name] = row;
    }

    /// The holder noticed that it may have lost the lock: with a shared
    /// session, every name on it (or, in the unsafe variant, `i` alone).
    fn lose(&mut self, p: &Params, i: usize) {
        let group: Vec<usize> = self.on_session_of(p, i).collect();
        if p.partner(i).is_some() {
            // A take under way fails with the session.
            self.taking = false;
            // A shared session is dropped at its loss (`abandon`): the
            // server hears of it over a working link. The rows stay held.
            for &j in &group {
                self.close_session(j);
            }
        }
        for j in group {
            let told = j == i || p.sharing != Sharing::LosesOneName;
            match self.contenders[j].phase {
                Phase::Delaying { .. } => {
                    self.close_session(j);
                    self.end_attempt(p, j);
                }
                Phase::Spawning | Phase::Running if !told => {
                    self.contenders[j].phase = Phase::Untold;
                }
                // A partner about to start is told as it starts.
                Phase::Spawning | Phase::Running => {
                    let c = &mut self.contenders[j];
                    c.phase = Phase::Stopping {
                        grace_left: c.grace,
                    };
                    c.heartbeat = Heartbeat::Idle;
                }
                _ => unreachable!("only a watching holder can lose the lock"),
            }
        }
    }

    /// The client closes its lock session. The server hears of it only over
    /// a working link; otherwise the session lingers until dropped.
    fn close_session(&mut self, i: usize) {
        let c = &mut self.contenders[i];
        if c.link_up {
            c.session = false;
        }
    }

    fn drop_all_sessions(&mut self) {
        for c in &mut self.contenders {
            c.session = false;
        }
    }

    /// The attempt is over and its command dead. The session may linger
    /// (with sharing, counted apart from the partner's from now on: that
    /// only adds behaviours).
    fn end_attempt(&mut self, p: &Params, i: usize) {
        if p.partner(i).is_some() {
            self.together = false;
            self.taking = false;
        }
        let c = &mut self.contenders[i];
        c.attempts_left -= 1;
        *c = Contender {
            phase: if c.attempts_left > 0 {
                Phase::Waiting
            } else {
                Phase::Done
            },
            session: c.session,
            ..Contender::new(c.name, c.attempts_left, c.grace, c.own_delay)
        };
    }

    /// Fields that no longer matter get one value, so that states that
    /// behave alike are one state.
    fn normalize(&mut self, p: &Params) {
        for c in &mut self.contenders[..p.contenders] {
            if !c.supervising() {
                // A lingering session is dropped whatever the link does.
                c.link_up = true;
            }
            if !c.aging() {
                c.since_ok = 0;
                c.since_send = 0;
            }
        }
    }

    /// How the invariants fare on the transition `self --event--> after`.
    fn violation(&self, p: &Params, event: Event, after: &State) -> Option<Violation> {
        if p.check_exclusion && after.commands_running() > 1 {
            return Some(Violation::TwoCommandsRunning);
        }
        match event {
            Event::Acquire(i)
                if p.check_tokens
                    && after.contenders[i].token
                        <= self.max_token_issued[usize::from(after.contenders[i].name)] =>
            {
                Some(Violation::TokenNotIncreasing {
                    token: after.contenders[i].token,
                    earlier: self.max_token_issued[usize::from(after.contenders[i].name)],
                })
            }
            Event::Spawn(i)
                if p.check_start_order
                    && self.contenders[i].token
                        <= self.max_token_started[usize::from(self.contenders[i].name)] =>
            {
                Some(Violation::StartedOutOfTokenOrder {
                    token: self.contenders[i].token,
                    earlier: self.max_token_started[usize::from(self.contenders[i].name)],
                })
            }
            Event::CommandWrites(i)
                if self.fence_accepts(p, self.contenders[i].token)
                    && self.contenders[i].acquisition < self.last_write_acquisition =>
            {
                Some(Violation::StaleWriteAccepted)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Contender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            Phase::Waiting => write!(f, "waiting")?,
            Phase::Delaying { left } => write!(f, "delay {left}")?,
            Phase::Spawning => write!(f, "spawning")?,
            Phase::Running => write!(f, "RUNNING")?,
            Phase::Stopping { grace_left } => write!(f, "RUNNING (SIGTERM, kill in {grace_left})")?,
            Phase::Done => write!(f, "done")?,
            Phase::Untold => write!(f, "RUNNING (never told)")?,
        }
        if self.supervising() {
            write!(f, " token {}", self.token)?;
        }
        if self.aging() {
            write!(f, " last-ok-sent {} ago", self.since_ok)?;
        }
        if self.session {
            write!(f, " [session holds lock]")?;
        }
        if !self.link_up {
            write!(f, " [partitioned]")?;
        }
        if self.paused {
            write!(f, " [paused]")?;
        }
        Ok(())
    }
}

/// A shortest path from the initial state to a violation.
struct Counterexample {
    violation: Violation,
    steps: Vec<(Event, State)>,
}

impl Counterexample {
    fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.steps.iter().map(|(event, _)| *event)
    }

    fn print(&self, p: &Params) {
        println!("counterexample: {:?}", self.violation);
        let mut time = 0;
        for (event, state) in &self.steps {
            if *event == Event::Tick {
                time += 1;
            }
            let contenders: Vec<String> = state.contenders[..p.contenders]
                .iter()
                .enumerate()
                .map(|(i, c)| match p.sharing {
                    Sharing::Off => format!("{}: {c}", name(i)),
                    _ => format!("{}({}): {c}", name(i), ["x", "y"][usize::from(c.name)]),
                })
                .collect();
            let names = if p.sharing == Sharing::Off { 1 } else { NAMES };
            let rows: Vec<String> = state.rows[..names]
                .iter()
                .map(|row| {
                    let held = if row.held { "held" } else { "released" };
                    format!("row {held}, token {}, owed {}", row.token, row.owed)
                })
                .collect();
            println!(
                "  t={time:<3} {event:<26} {}{} | {}",
                contenders.join(" | "),
                if state.together {
                    " [A, B on one session]"
                } else {
                    ""
                },
                rows.join(" | ")
            );
        }
    }
}

/// What a search found.
struct Exploration {
    states: usize,
    transitions: usize,
    counterexample: Option<Counterexample>,
    /// The kinds of event that happened somewhere, one bit per kind.
    kinds: u64,
    /// States with two commands running (counted only when allowed).
    overlaps: usize,
    /// Writes the fence refused.
    refused_writes: usize,
    /// Acquisitions that found `state='held'` and so waited the lock-delay.
    delayed_acquisitions: usize,
    /// With sharing: transitions that lost both names on one session.
    shared_losses: usize,
}

impl Exploration {
    fn happened(&self, kind: Kind) -> bool {
        self.kinds & 1 << kind as u32 != 0
    }
}

/// Breadth-first search over every reachable state; stops at the first
/// violation, whose trace is then a shortest one.
fn explore(p: &Params) -> Exploration {
    assert!(p.contenders <= MAX_CONTENDERS);
    let started = Instant::now();
    let initial = State::initial(p);
    // For each state, the state it was first reached from and how. The
    // queue holds the states themselves, the visited set their symmetric
    // keys, so that a trace replays with the contenders' real names.
    let mut parents: Vec<Option<(u32, Event)>> = vec![None];
    let mut seen: HashSet<State, BuildHasherDefault<FxHasher>> = HashSet::default();
    seen.insert(initial.symmetric_key(p));
    let mut queue = VecDeque::from([(initial, 0_u32)]);
    let mut found = Exploration {
        states: 1,
        transitions: 0,
        counterexample: None,
        kinds: 0,
        overlaps: 0,
        refused_writes: 0,
        delayed_acquisitions: 0,
        shared_losses: 0,
    };
    let mut events = Vec::new();
    while let Some((state, index)) = queue.pop_front() {
        state.events_into(p, &mut events);
        for &event in &events {
            let next = state.step(p, event);
            found.transitions += 1;
            found.kinds |= 1 << event.kind() as u32;
            match event {
                Event::CommandWrites(i) if !state.fence_accepts(p, state.contenders[i].token) => {
                    found.refused_writes += 1;
                }
                Event::Acquire(i) if state.rows[usize::from(state.contenders[i].name)].held => {
                    found.delayed_acquisitions += 1;
                }
                _ => {}
            }
            let held_both = |s: &State| s.contenders[..2].iter().all(Contender::aging);
            if p.sharing != Sharing::Off
                && state.together
                && held_both(&state)
                && next.contenders[..2].iter().all(|c| !c.aging())
            {
                found.shared_losses += 1;
            }
            if let Some(violation) = state.violation(p, event, &next) {
                let mut path = vec![event];
                let mut at = index;
                while let Some((parent, event)) = parents[at as usize] {
                    path.push(event);
                    at = parent;
                }
                path.reverse();
                found.counterexample = Some(replay(p, violation, &path));
                found.states = seen.len();
                report(p, &found, started);
                return found;
            }
            if seen.insert(next.symmetric_key(p)) {
                let next_index = u32::try_from(parents.len()).expect("fewer than 2^32 states");
                parents.push(Some((index, event)));
                if next.commands_running() > 1 {
                    found.overlaps += 1;
                }
                queue.push_back((next, next_index));
            }
        }
    }
    found.states = seen.len();
    report(p, &found, started);
    found
}

/// FxHash, the compiler's own hasher: several times faster than the
/// default SipHash, and hash flooding is no concern here.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.add(u64::from(byte));
        }
    }
    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }
    fn write_u128(&mut self, value: u128) {
        self.add(value as u64);
        self.add((value >> 64) as u64);
    }
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }
    fn write_isize(&mut self, value: isize) {
        self.add(value as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Rebuilds the states along a path of events (`step` is deterministic).
fn replay(p: &Params, violation: Violation, events: &[Event]) -> Counterexample {
    let mut state = State::initial(p);
    let mut steps = Vec::new();
    for &event in events {
        assert!(state.events(p).contains(&event), "{event} is enabled");
        state = state.step(p, event);
        steps.push((event, state));
    }
    Counterexample { violation, steps }
}

fn report(p: &Params, found: &Exploration, started: Instant) {
    println!(
        "{} contenders x {} attempts, heartbeat {} T {} G {:?} D {:?}{}: {} states, {} transitions in {:.2?}{}",
        p.contenders,
        p.attempts,
        p.heartbeat,
        p.deadline,
        &p.graces[..p.contenders],
        &p.lock_delays[..p.contenders],
        if p.carry_owed {
            ""
        } else {
            " (bound not carried)"
        },
        found.states,
        found.transitions,
        started.elapsed(),
        if found.counterexample.is_some() {
            " (stopped at a violation)"
        } else {
            ""
        },
    );
    if let Some(counterexample) = &found.counterexample {
        counterexample.print(p);
    }
}

fn assert_holds(found: &Exploration, more_than: usize) {
    if let Some(counterexample) = &found.counterexample {
        panic!("unexpected violation {:?}", counterexample.violation);
    }
    assert!(
        found.states > more_than,
        "only {} states explored: the model no longer explores what it should",
        found.states
    );
}

fn assert_violation(found: &Exploration, violation: Violation) -> &Counterexample {
    let counterexample = found
        .counterexample
        .as_ref()
        .expect("the checker finds a counterexample");
    assert_eq!(counterexample.violation, violation);
    counterexample
}

/// The design's claim with the production defaults: no overlap, tokens
/// increase, under every fault except a paused supervisor.
#[test]
fn defaults_keep_one_command_under_every_fault() {
    let p = Params::defaults();
    let found = explore(&p);
    assert_holds(&found, 50_000);
    // Not vacuous: every step of the protocol and every fault happened, and
    // holders did wait the lock-delay.
    assert!(found.delayed_acquisitions > 0);
    for kind in [
        Kind::Acquire,
        Kind::ReadyToStart,
        Kind::Spawn,
        Kind::SendHeartbeat,
        Kind::ServerChecksHeartbeat,
        Kind::ReplyArrives,
        Kind::HeartbeatErrs,
        Kind::DeadlinePassed,
        Kind::Kill,
        Kind::CommandExits,
        Kind::Partition,
        Kind::Heal,
        Kind::ServerDropsUnreachable,
        Kind::Terminate,
        Kind::ServerRestart,
        Kind::GiveUp,
        Kind::SupervisorKilled,
        Kind::HostCrash,
    ] {
        assert!(found.happened(kind), "{kind:?} never happened");
    }
}

/// Three holders in a row, each lost in any way, while the first one's
/// command may still run.
#[test]
fn three_contenders_keep_one_command_under_every_fault() {
    let mut p = Params::defaults();
    p.contenders = 3;
    p.attempts = 1;
    let found = explore(&p);
    assert_holds(&found, 50_000);
    assert!(found.delayed_acquisitions > 0);
}

/// The inequality is tight: D = T + G + 1 (the smallest integer D > T + G)
/// is safe, and D = T + G is not (below).
#[test]
fn smallest_lock_delay_above_deadline_plus_grace_is_safe() {
    let mut p = Params::defaults();
    // The wait is D alone.
    p.record_bound = false;
    p = p.with_lock_delay(p.deadline + p.graces[0] + 1);
    assert_holds(&explore(&p), 50_000);
}

/// Without a lock-delay, a partitioned holder's command still runs when the
/// server has dropped its session and the next holder starts.
#[test]
fn no_lock_delay_overlaps_after_a_partition() {
    let mut p = Params::defaults().without_faults();
    p.faults.partition = true;
    p.record_bound = false;
    p = p.with_lock_delay(0);
    let found = explore(&p);
    let trace = assert_violation(&found, Violation::TwoCommandsRunning);
    assert!(trace.events().any(|e| e == Event::Partition(0)));
    assert!(
        trace
            .events()
            .any(|e| e == Event::ServerDropsUnreachable(0))
    );
}

/// D = T + G is one tick short: the old command's SIGKILL and the new
/// command's start fall on the same instant.
#[test]
fn lock_delay_equal_to_deadline_plus_grace_overlaps_after_a_partition() {
    let mut p = Params::defaults().without_faults();
    // One handover is enough to show it.
    p.attempts = 1;
    p.faults.partition = true;
    p.record_bound = false;
    p = p.with_lock_delay(p.deadline + p.graces[0]);
    let found = explore(&p);
    let trace = assert_violation(&found, Violation::TwoCommandsRunning);
    assert!(trace.events().any(|e| e == Event::Partition(0)));
    let ticks = trace.events().filter(|&e| e == Event::Tick).count();
    assert_eq!(ticks, usize::from(p.lock_delays[0]));
}

/// A paused supervisor cannot stop its command, whatever D is: the lock
/// cannot prevent this overlap.
#[test]
fn paused_supervisor_overlaps_despite_the_lock_delay() {
    let mut p = Params::defaults().without_faults();
    // One handover is enough to show it.
    p.attempts = 1;
    p.faults.pause = true;
    p.faults.terminate = true;
    let found = explore(&p);
    let trace = assert_violation(&found, Violation::TwoCommandsRunning);
    assert!(trace.events().any(|e| e == Event::Pause(0)));
}

/// A supervisor paused between its deadline check and the spawn starts its
/// command after its successor's, with the smaller token: start order and
/// token order differ, which is why the protected system must compare
/// tokens rather than trust arrival order.
#[test]
fn paused_supervisor_can_start_after_its_successor() {
    let mut p = Params::defaults().without_faults();
    p.attempts = 1;
    p.faults.pause = true;
    p.faults.terminate = true;
    p.check_exclusion = false;
    let found = explore(&p);
    let trace = assert_violation(
        &found,
        Violation::StartedOutOfTokenOrder {
            token: 1,
            earlier: 2,
        },
    );
    assert!(trace.events().any(|e| e == Event::Pause(0)));
}

/// ...but each acquisition's token is larger than every earlier one's, so a
/// fenced protected system refuses the old holder's writes once the new
/// holder has written.
#[test]
fn paused_supervisor_writes_are_ordered_by_the_fence() {
    let mut p = Params::defaults().without_faults();
    p.attempts = 1;
    p.faults.pause = true;
    p.faults.terminate = true;
    p.check_exclusion = false;
    p.check_start_order = false;
    p.writes = Writes::Fenced;
    let found = explore(&p);
    assert_holds(&found, 40_000);
    assert!(found.overlaps > 0, "two commands did overlap");
    assert!(found.refused_writes > 0, "the fence refused a stale write");
}

/// The fencing check can fail: without the fence, the paused holder's stale
/// write is accepted after the new holder's.
#[test]
fn paused_supervisor_writes_are_disordered_without_a_fence() {
    let mut p = Params::defaults().without_faults();
    p.attempts = 1;
    p.faults.pause = true;
    p.faults.terminate = true;
    p.check_exclusion = false;
    p.check_start_order = false;
    p.writes = Writes::Unfenced;
    assert_violation(&explore(&p), Violation::StaleWriteAccepted);
}

/// Why only a holder whose command ran may say 'released': one that gives
/// up during its lock-delay and releases cleanly lets a third holder start
/// at once, while the first (partitioned) holder's command still runs.
#[test]
fn giving_up_during_the_delay_must_leave_the_row_held() {
    let mut p = Params::defaults().without_faults();
    p.contenders = 3;
    p.attempts = 1;
    p.faults.partition = true;
    p.faults.give_up = true;
    p.give_up_releases = true;
    let found = explore(&p);
    let trace = assert_violation(&found, Violation::TwoCommandsRunning);
    assert!(trace.events().any(|e| matches!(e, Event::GiveUp(_))));
}

/// Why the deadline counts from the send time: a reply proves the lock was
/// held only at some instant after the send, and may arrive much later.
#[test]
fn deadline_from_the_reply_time_overlaps() {
    let mut p = Params::defaults().without_faults();
    // One handover is enough to show it.
    p.attempts = 1;
    p.faults.terminate = true;
    p.deadline_from_reply = true;
    // Even the default D = T + G + 2 is not enough: a reply may take up to
    // T to arrive, and all that time is added to the old command's life.
    let found = explore(&p);
    let trace = assert_violation(&found, Violation::TwoCommandsRunning);
    assert!(trace.events().any(|e| e == Event::Terminate(0)));
}

/// Outside the assumptions: a failover to an asynchronous standby that lost
/// the holder's `state='held'` commit hands out the holder's token again,
/// and lets the next holder start at once while the first command runs.
#[test]
fn failover_that_loses_commits_breaks_tokens_and_exclusion() {
    let mut p = Params::defaults().without_faults();
    p.attempts = 1;
    p.faults.failover_loses_commits = true;
    let found = explore(&p);
    let trace = assert_violation(
        &found,
        Violation::TokenNotIncreasing {
            token: 1,
            earlier: 1,
        },
    );
    assert!(trace.events().any(|e| e == Event::FailoverLosingCommits));

    p.check_tokens = false;
    assert_violation(&explore(&p), Violation::TwoCommandsRunning);
}

/// Issue 9, item 1: holders with different kill graces. A (G = 5) loses its
/// session; B (G = 1) takes the lock and waits A's bound, but gives up
/// during that wait; C (G = 1) owes only B's bound when the row does not
/// carry A's, and starts while A's command still runs.
#[test]
fn chain_of_unclean_holders_overlaps_without_carrying_the_bound() {
    let mut p = Params::defaults().without_faults().with_graces(5, 1);
    p.contenders = 3;
    p.attempts = 1;
    p.faults.terminate = true;
    p.faults.give_up = true;
    p.carry_owed = false;
    let found = explore(&p);
    let trace = assert_violation(&found, Violation::TwoCommandsRunning);
    assert!(trace.events().any(|e| matches!(e, Event::GiveUp(_))));
    assert!(trace.events().any(|e| matches!(e, Event::Terminate(_))));
}

/// ...and carrying the largest bound of every unclean holder since the last
/// clean release keeps one command, under every fault but pause, three
/// holders in a row.
#[test]
fn chain_of_unclean_holders_with_mixed_graces_keeps_one_command() {
    let mut p = Params::defaults().with_graces(5, 1);
    p.contenders = 3;
    p.attempts = 1;
    let found = explore(&p);
    assert_holds(&found, 50_000);
    assert!(found.happened(Kind::GiveUp));
    assert!(found.delayed_acquisitions > 0);
}

/// Issue 15: one process holds names x and y on one shared session (A and
/// B), C takes x and D takes y. Every fault but pause, each of which loses
/// both of A's and B's names at once when they share the session: neither
/// successor overlaps the lost holder's code for its name.
#[test]
fn shared_session_keeps_one_command_per_name_under_every_fault() {
    let p = shared_params(Sharing::OneSession);
    let found = explore(&p);
    assert_holds(&found, 50_000);
    assert!(found.delayed_acquisitions > 0);
    assert!(found.shared_losses > 0, "one event lost both names");
    for kind in [
        Kind::DeadlinePassed,
        Kind::HeartbeatErrs,
        Kind::Partition,
        Kind::Terminate,
        Kind::ServerRestart,
        Kind::SupervisorKilled,
        Kind::HostCrash,
        Kind::GiveUp,
        Kind::TakeSent,
    ] {
        assert!(found.happened(kind), "{kind:?} never happened");
    }
}

/// Why a lost session must tell every name on it: when the session's
/// loss tells only the name whose check failed, the other name's code runs
/// on, untold, and its successor starts after its lock-delay while it runs.
#[test]
fn shared_session_that_tells_one_name_overlaps() {
    let p = shared_params(Sharing::LosesOneName);
    let found = explore(&p);
    let trace = assert_violation(&found, Violation::TwoCommandsRunning);
    let (_, last) = trace.steps.last().expect("a trace");
    assert!(
        last.contenders[..2]
            .iter()
            .any(|c| c.phase == Phase::Untold),
        "the overlap is with the name that was not told"
    );
}

/// Why every statement of a shared session is cut off at its last good
/// heartbeat + T: a take of B's name that gets no answer (here, the
/// network fails while it is out) holds up the session's thread, so A's
/// loss is never declared, and C starts after its lock-delay while A's
/// code runs.
#[test]
fn shared_session_without_the_cutoff_overlaps() {
    let mut p = shared_params(Sharing::OneSession).without_faults();
    p.faults.partition = true;
    p.cutoff = false;
    let found = explore(&p);
    let trace = assert_violation(&found, Violation::TwoCommandsRunning);
    assert!(trace.events().any(|e| e == Event::TakeSent(1)));
    assert!(trace.events().any(|e| matches!(e, Event::Partition(_))));
}

/// The bound is the same as with a session per name: D = T + G + 1 (the
/// wait D alone) keeps one command per name, D = T + G does not.
#[test]
fn shared_session_needs_the_same_lock_delay() {
    let mut p = shared_params(Sharing::OneSession);
    p.record_bound = false;
    p = p.with_lock_delay(p.deadline + p.graces[0] + 1);
    assert_holds(&explore(&p), 50_000);
    p = p.with_lock_delay(p.deadline + p.graces[0]);
    assert_violation(&explore(&p), Violation::TwoCommandsRunning);
}

/// The shared-session runs: the production defaults, every fault but
/// pause (on A and B; see `Params::faulty`).
fn shared_params(sharing: Sharing) -> Params {
    Params::defaults().shared(sharing)
}
