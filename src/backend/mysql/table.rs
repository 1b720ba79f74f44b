//! The state table `onlyone_locks` (InnoDB) in the URL's database: one row
//! per named lock, with the fencing token, whether the last holder
//! released cleanly, and the holder's record. Written only by a session
//! that holds the row's named lock.

use std::time::{Duration, Instant};

use mysql_async::Value;

use super::session::{ANSWER_DEADLINE, Failure, Session};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;

/// The statement that creates the table; run on first use.
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS onlyone_locks ( \
    lock_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
    name VARCHAR(255) NOT NULL, \
    token BIGINT UNSIGNED NOT NULL, \
    state ENUM('held', 'released') NOT NULL, \
    connection_id BIGINT UNSIGNED NULL, \
    record TEXT NULL, \
    stop_within_ms BIGINT UNSIGNED NULL, \
    owed_ms BIGINT UNSIGNED NULL, \
    stopped_token BIGINT UNSIGNED NULL, \
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6) \
) ENGINE=InnoDB";

/// One row, as read.
#[derive(Clone, Debug)]
pub(super) struct Row {
    pub lock_name: String,
    pub name: String,
    pub token: u64,
    pub held: bool,
    pub connection_id: Option<u64>,
    pub record: Option<Record>,
}

/// What recording an acquisition found and wrote.
#[derive(Debug)]
pub(super) struct Acquisition {
    pub token: u64,
    /// The previous holder did not release cleanly.
    pub previous_was_held: bool,
    /// The longest bound of every holder since the last clean release.
    pub owed: Duration,
}

type RawRow = (String, String, u64, String, Option<u64>, Option<String>);

const COLUMNS: &str = "lock_name, name, token, state, connection_id, record";

fn row_of(raw: RawRow) -> Row {
    let (lock_name, name, token, state, connection_id, record) = raw;
    Row {
        lock_name,
        name,
        token,
        held: state == "held",
        connection_id,
        record: record.and_then(|text| Record::parse(text.as_bytes())),
    }
}

/// Creates the table if it is not there.
pub(super) fn ensure(session: &mut Session) -> Result<()> {
    session.execute(CREATE).map_err(|failure| {
        let ends = failure.ends_session();
        let mut err = session.error("creating the state table onlyone_locks", failure);
        if !ends {
            err = Error::unavailable(format!("{err}; have a privileged account run: {CREATE};"));
        }
        err
    })
}

/// ER_NO_SUCH_TABLE: nobody took a lock in this database yet.
const NO_SUCH_TABLE: u16 = 1146;

/// The row of `lock_name`, if any (none without the table).
pub(super) fn row(session: &mut Session, lock_name: &str) -> Result<Option<Row>> {
    Ok(
        select(session, "WHERE lock_name = ?", vec![lock_name.into()])?
            .into_iter()
            .next(),
    )
}

/// Every row (none without the table).
pub(super) fn rows(session: &mut Session) -> Result<Vec<Row>> {
    select(session, "ORDER BY name", Vec::new())
}

fn select(session: &mut Session, tail: &str, params: Vec<Value>) -> Result<Vec<Row>> {
    match session.exec_rows::<RawRow>(
        &format!("SELECT {COLUMNS} FROM onlyone_locks {tail}"),
        params,
    ) {
        Ok(rows) => Ok(rows.into_iter().map(row_of).collect()),
        Err(failure) if failure.code() == Some(NO_SUCH_TABLE) => Ok(Vec::new()),
        Err(failure) => Err(session.error("reading the state table", failure)),
    }
}

/// InnoDB's "Deadlock found when trying to get lock": the server rolled
/// the transaction back.
const DEADLOCK: u16 = 1213;

/// How many times a transaction the server rolled back as a deadlock is
/// tried before the error is reported.
const DEADLOCK_ATTEMPTS: u32 = 20;

/// Records an acquisition by `session`, which holds the named lock
/// `lock_name`: the next token, state 'held', the record, in one
/// committed transaction. `stop_within` is this holder's heartbeat
/// deadline + kill grace, `margin` what is added to each bound.
///
/// Starters of different names that found no row took gap locks on the
/// same gap of the primary key (`FOR UPDATE` on a missing row) and
/// deadlocked on their inserts: the row is now inserted first, outside
/// the transaction. A transaction the server still rolls back as a
/// deadlock changed nothing (the named lock is not transactional), so it
/// is tried again.
pub(super) fn record_acquisition(
    session: &mut Session,
    lock_name: &str,
    name: &LockName,
    record: &mut Record,
    stop_within: Duration,
    margin: Duration,
) -> Result<Acquisition> {
    let mut attempt = 1;
    loop {
        match record_once(session, lock_name, name, record, stop_within, margin) {
            Err(failure) if failure.code() == Some(DEADLOCK) && attempt < DEADLOCK_ATTEMPTS => {
                attempt += 1;
            }
            Err(failure) => return Err(session.error("recording the fencing token", failure)),
            Ok(Some(acquisition)) => return Ok(acquisition),
            Ok(None) => {
                return Err(Error::unsafe_(format!(
                    "the fencing token of lock '{name}' in the state table onlyone_locks at {} is {} already, the largest there is, and cannot grow: the next holder would share it with the previous one, whose fenced writes would then still pass; onlyone never counts that far, so someone set it by hand: the lock is not taken",
                    session.location(),
                    u64::MAX
                )));
            }
        }
    }
}

/// One try of [`record_acquisition`]; `None`, with nothing written, when
/// the row's token cannot grow.
fn record_once(
    session: &mut Session,
    lock_name: &str,
    name: &LockName,
    record: &mut Record,
    stop_within: Duration,
    margin: Duration,
) -> std::result::Result<Option<Acquisition>, Failure> {
    // A row of its own first (autocommitted; a new name's row is token 0,
    // released, which reads as no row does), so that `FOR UPDATE` below
    // locks that row rather than a gap of the primary key that other
    // starters' inserts need.
    session.exec_within(
        ANSWER_DEADLINE,
        "INSERT IGNORE INTO onlyone_locks (lock_name, name, token, state) VALUES (?, ?, 0, 'released')",
        vec![lock_name.into(), name.as_str().into()],
    )?;
    session.execute("START TRANSACTION")?;
    let recorded = (|| {
        // Waits for the previous holder's fenced transactions (see
        // `fence.rs`): the token is committed only once they have ended.
        let previous: Vec<(u64, String, Option<u64>, Option<u64>)> =
            super::fence::lock_row_after_fenced(
                session,
                name,
                "SELECT token, state, stop_within_ms, owed_ms FROM onlyone_locks WHERE lock_name = ? FOR UPDATE",
                vec![lock_name.into()],
            )?;
        let (token, previous_was_held, owed) = match previous.into_iter().next() {
            None => (1, false, Duration::ZERO),
            Some((token, state, stop_within_ms, owed_ms)) => {
                let held = state == "held";
                let owed = match held {
                    // The previous holder's bound (or 0 when it did not say)
                    // plus the margin, and whatever was owed before it.
                    true => Duration::from_millis(stop_within_ms.unwrap_or(0))
                        .saturating_add(margin)
                        .max(Duration::from_millis(owed_ms.unwrap_or(0))),
                    false => Duration::ZERO,
                };
                // A token shared by two holders would pass both fences.
                let Some(next) = token.checked_add(1) else {
                    return Ok(None);
                };
                (next, held, owed)
            }
        };
        record.token = token;
        let params: Vec<Value> = vec![
            lock_name.into(),
            name.as_str().into(),
            token.into(),
            session.id().into(),
            record.to_line().into(),
            millis(stop_within).into(),
            millis(owed).into(),
        ];
        session.exec_within(
            ANSWER_DEADLINE,
            "INSERT INTO onlyone_locks \
               (lock_name, name, token, state, connection_id, record, stop_within_ms, owed_ms) \
             VALUES (?, ?, ?, 'held', ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE name = VALUES(name), token = VALUES(token), \
               state = 'held', connection_id = VALUES(connection_id), \
               record = VALUES(record), stop_within_ms = VALUES(stop_within_ms), \
               owed_ms = VALUES(owed_ms)",
            params,
        )?;
        Ok(Some(Acquisition {
            token,
            previous_was_held,
            owed,
        }))
    })();
    let end = match recorded {
        Ok(Some(_)) => "COMMIT",
        Ok(None) | Err(_) => "ROLLBACK",
    };
    match session.execute(end) {
        Ok(()) => recorded,
        Err(failure) => recorded.and(Err(failure)),
    }
}

/// What a holder wrote in its row, and keeps there.
#[derive(Clone, Debug)]
pub(super) struct Holding {
    pub lock_name: String,
    pub name: String,
    pub token: u64,
    pub connection_id: u64,
    pub record_line: String,
    pub stop_within: Duration,
    pub owed: Duration,
}

/// Whether the holder's row still says what the holder wrote: its token,
/// `held`, its connection. Read without locking (a consistent read), so
/// that a transaction holding the row cannot hold up the heartbeat.
pub(super) fn holder_row_intact(
    session: &mut Session,
    holding: &Holding,
    deadline: Duration,
) -> std::result::Result<bool, Failure> {
    let rows: Vec<(u64, String, Option<u64>)> = session.exec_rows_within(
        deadline,
        "SELECT token, state, connection_id FROM onlyone_locks WHERE lock_name = ?",
        vec![holding.lock_name.clone().into()],
    )?;
    Ok(rows.first().is_some_and(|(token, state, connection)| {
        *token == holding.token && state == "held" && *connection == Some(holding.connection_id)
    }))
}

/// Writes the holder's row back as it wrote it (deleted, or altered by
/// hand): the next holder then still waits the lock-delay.
pub(super) fn restore(
    session: &mut Session,
    holding: &Holding,
    deadline: Duration,
) -> std::result::Result<(), Failure> {
    session
        .exec_within(
            deadline,
            "INSERT INTO onlyone_locks \
               (lock_name, name, token, state, connection_id, record, stop_within_ms, owed_ms) \
             VALUES (?, ?, ?, 'held', ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE name = VALUES(name), token = VALUES(token), \
               state = 'held', connection_id = VALUES(connection_id), \
               record = VALUES(record), stop_within_ms = VALUES(stop_within_ms), \
               owed_ms = VALUES(owed_ms)",
            vec![
                holding.lock_name.clone().into(),
                holding.name.clone().into(),
                holding.token.into(),
                holding.connection_id.into(),
                holding.record_line.clone().into(),
                millis(holding.stop_within).into(),
                millis(holding.owed).into(),
            ],
        )
        .map(|_| ())
}

/// The last token `stop` marked stopped for `lock_name`, if any.
pub(super) fn stopped_token(session: &mut Session, lock_name: &str) -> Result<Option<u64>> {
    let rows: Vec<(Option<u64>,)> = session
        .exec_rows(
            "SELECT stopped_token FROM onlyone_locks WHERE lock_name = ?",
            vec![lock_name.into()],
        )
        .map_err(|failure| session.error("reading the state table", failure))?;
    Ok(rows.into_iter().next().and_then(|(token,)| token))
}

/// A clean release: the row of `token` says 'released' (and owes nothing),
/// answered by `deadline`.
pub(super) fn mark_released(
    session: &mut Session,
    lock_name: &str,
    token: u64,
    deadline: Instant,
) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    session
        .exec_within(
            left,
            "UPDATE onlyone_locks SET state = 'released', owed_ms = 0 \
             WHERE lock_name = ? AND token = ? AND state = 'held'",
            vec![lock_name.into(), token.into()],
        )
        .map(|_| ())
        .map_err(|failure| session.error("recording the clean release", failure))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
