//! What onlyone creates beside the state table, and checks before each
//! use: the row guard triggers and the fence function (`fence.rs`).
//!
//! The triggers refuse, with SQLSTATE 23001 and a message starting
//! `onlyone:`, every `DELETE` of a row (also through `REPLACE`, which
//! deletes first) and every `UPDATE` (also through `INSERT … ON DUPLICATE
//! KEY UPDATE`) that changes a row's lock name or moves its token back, or
//! that changes anything else from a session that does not hold the row's
//! named lock (`IS_USED_LOCK(lock_name) = CONNECTION_ID()`), except
//! `stop`'s mark: `stopped_token` set to the row's current token; and
//! every `INSERT` of a row from a session that does not hold its named
//! lock (a row planted for a name not used yet could owe years of
//! lock-delay, or carry the largest token).
//!
//! A trigger runs with its definer's rights for every writer of the table,
//! and a different body undoes the guard; a function named as the fence
//! that is not onlyone's decides whether stale holders may commit. So
//! every trigger on the table and the fence function are read from
//! `information_schema` before each use: anything onlyone did not create,
//! or with another body, is refused (77), never used, replaced or dropped.

use super::fence::{FENCE_BODY, FENCE_FUNCTION, FENCE_PARAMETERS, fence_ddl, one_line};
use super::session::Session;
use crate::error::{Error, Result};

/// The guard against deleting rows.
const DELETE_TRIGGER: &str = "onlyone_guard_delete";

/// The guard against changing rows.
const UPDATE_TRIGGER: &str = "onlyone_guard_update";

/// The body of [`DELETE_TRIGGER`]. onlyone never deletes a row: a missing
/// row reads as a lock never used, so the next holder would start at once
/// beside a command that may still run, with token 1 again.
const DELETE_BODY: &str = "\
BEGIN
  DECLARE message VARCHAR(128);
  SET message = LEFT(CONCAT('onlyone: the row of lock ''', OLD.name, ''' (token ', OLD.token, ', ', OLD.state, ') in onlyone_locks cannot be deleted'), 128);
  SIGNAL SQLSTATE '23001' SET MESSAGE_TEXT = message;
END";

/// The body of [`UPDATE_TRIGGER`]. Only the session that holds the row's
/// named lock changes the row (acquisition, release, write-back), except
/// `stop`, which marks the row's current token stopped from a session of
/// its own. `updated_at` is the server's.
const UPDATE_BODY: &str = "\
BEGIN
  DECLARE message VARCHAR(128);
  IF CAST(NEW.lock_name AS BINARY) <> CAST(OLD.lock_name AS BINARY) OR NEW.token < OLD.token THEN
    SET message = LEFT(CONCAT('onlyone: the row of lock ''', OLD.name, ''' (token ', OLD.token, ') cannot change its lock name or move its token back'), 128);
    SIGNAL SQLSTATE '23001' SET MESSAGE_TEXT = message;
  END IF;
  IF (NOT (CAST(NEW.name AS BINARY) <=> CAST(OLD.name AS BINARY))
      OR NOT (NEW.token <=> OLD.token)
      OR NOT (NEW.state <=> OLD.state)
      OR NOT (NEW.connection_id <=> OLD.connection_id)
      OR NOT (CAST(NEW.record AS BINARY) <=> CAST(OLD.record AS BINARY))
      OR NOT (NEW.stop_within_ms <=> OLD.stop_within_ms)
      OR NOT (NEW.owed_ms <=> OLD.owed_ms)
      OR NOT (NEW.stopped_token <=> OLD.stopped_token) AND NOT (NEW.stopped_token <=> OLD.token))
     AND NOT (IS_USED_LOCK(OLD.lock_name) <=> CONNECTION_ID()) THEN
    SET message = LEFT(CONCAT('onlyone: the row of lock ''', OLD.name, ''' (token ', OLD.token, ', ', OLD.state, ') can only be changed by the session that holds its named lock'), 128);
    SIGNAL SQLSTATE '23001' SET MESSAGE_TEXT = message;
  END IF;
END";

/// The guard against adding rows.
const INSERT_TRIGGER: &str = "onlyone_guard_insert";

/// The body of [`INSERT_TRIGGER`]. Only the session that holds a row's
/// named lock adds it (the starter's placeholder and its acquisition, the
/// holder's write-back): a row planted by another session for a name not
/// used yet would be taken as the previous holder's, with whatever
/// lock-delay it says is owed and whatever token.
const INSERT_BODY: &str = "\
BEGIN
  DECLARE message VARCHAR(128);
  IF NOT (IS_USED_LOCK(NEW.lock_name) <=> CONNECTION_ID()) THEN
    SET message = LEFT(CONCAT('onlyone: a row of lock ''', NEW.name, ''' can only be added by the session that holds its named lock'), 128);
    SIGNAL SQLSTATE '23001' SET MESSAGE_TEXT = message;
  END IF;
END";

/// The guard triggers: name, event, body.
const TRIGGERS: [(&str, &str, &str); 3] = [
    (DELETE_TRIGGER, "DELETE", DELETE_BODY),
    (INSERT_TRIGGER, "INSERT", INSERT_BODY),
    (UPDATE_TRIGGER, "UPDATE", UPDATE_BODY),
];

fn trigger_ddl(name: &str, event: &str, body: &str) -> String {
    format!(
        "CREATE TRIGGER {name} BEFORE {event} ON onlyone_locks FOR EACH ROW {}",
        one_line(body)
    )
}

/// ER_TRG_ALREADY_EXISTS, ER_SP_ALREADY_EXISTS: another starter made it
/// first; it is checked like any other.
const ALREADY_EXISTS: [u16; 2] = [1359, 1304];

/// ER_LOCK_WAIT_TIMEOUT: here, the table's metadata lock.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// How long creating a trigger waits for the table (`lock_wait_timeout`).
const CREATE_WAIT_SECONDS: u64 = 5;

/// A trigger on the table, as `information_schema.TRIGGERS` shows it.
type TriggerFacts = (String, String, String, String, Option<String>);

/// The fence function, as `information_schema` shows it: its body (NULL
/// to an account that may not see it) and its parameters.
type FenceFacts = (Option<String>, Option<String>);

/// What is there beside the table.
struct Shape {
    /// Each guard trigger, present and onlyone's.
    triggers: [bool; 3],
    fence: bool,
}

impl Shape {
    fn complete(&self) -> bool {
        self.triggers.iter().all(|present| *present) && self.fence
    }
}

/// Makes sure the guard triggers and the fence function are there and are
/// onlyone's: creates what is missing and checks everything, again after
/// creating.
///
/// # Errors
///
/// 77 for a trigger or function that is not onlyone's; 69 when something
/// is missing and this account may not create it, with the statements to
/// have a privileged account run.
pub(super) fn ensure(session: &mut Session) -> Result<()> {
    let shape = inspect(session)?;
    if shape.complete() {
        return Ok(());
    }
    let mut statements = Vec::new();
    for ((name, event, body), present) in TRIGGERS.iter().zip(shape.triggers) {
        if !present {
            statements.push(trigger_ddl(name, event, body));
        }
    }
    if !shape.fence {
        statements.push(fence_ddl());
    }
    // Creating a trigger waits for every open transaction on the table
    // (a metadata lock), and every statement on the table waits behind
    // it: give up after a few seconds rather than the server's year.
    session
        .execute(&format!(
            "SET SESSION lock_wait_timeout = {CREATE_WAIT_SECONDS}"
        ))
        .map_err(|failure| session.error("creating the state table's guard triggers", failure))?;
    for statement in &statements {
        match session.execute(statement) {
            Ok(()) => {}
            Err(failure) if failure.code().is_some_and(|c| ALREADY_EXISTS.contains(&c)) => {}
            Err(failure) if failure.ends_session() || failure.code() == Some(LOCK_WAIT_TIMEOUT) => {
                return Err(session.error(
                    &format!(
                        "creating the state table's guard triggers (it waits for every open transaction on onlyone_locks, at most {CREATE_WAIT_SECONDS} s)"
                    ),
                    failure,
                ));
            }
            Err(failure) => {
                return Err(Error::unavailable(format!(
                    "cannot create the guard triggers and the fence function of the state table onlyone_locks at {} ({}); have a privileged account run, in the mysql client started with --delimiter=// in this database (mariadb --delimiter=// DATABASE): {} // and, so that onlyone can check them, GRANT TRIGGER ON onlyone_locks and SELECT on the routine definitions (MariaDB: SELECT ON mysql.proc; MySQL 8: SHOW_ROUTINE) to this account",
                    session.location(),
                    failure.describe(),
                    all_statements().join(" // "),
                )));
            }
        }
    }
    let shape = inspect(session)?;
    if shape.complete() {
        return Ok(());
    }
    Err(Error::unavailable(format!(
        "the guard triggers or the fence function of the state table onlyone_locks at {} were created but this account cannot see them; have a privileged account GRANT TRIGGER ON onlyone_locks and SELECT on the routine definitions (MariaDB: SELECT ON mysql.proc; MySQL 8: SHOW_ROUTINE) to it",
        session.location(),
    )))
}

/// Every statement that makes what [`ensure`] checks, for an admin.
fn all_statements() -> Vec<String> {
    let mut statements: Vec<String> = TRIGGERS
        .iter()
        .map(|(name, event, body)| trigger_ddl(name, event, body))
        .collect();
    statements.push(fence_ddl());
    statements
}

/// Reads the triggers of the table and the fence function; refuses (77)
/// any that is not onlyone's.
fn inspect(session: &mut Session) -> Result<Shape> {
    let triggers: Vec<TriggerFacts> = session
        .exec_rows(
            "SELECT TRIGGER_NAME, EVENT_MANIPULATION, ACTION_TIMING, ACTION_ORIENTATION, ACTION_STATEMENT \
             FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'onlyone_locks' \
             ORDER BY TRIGGER_NAME",
            Vec::new(),
        )
        .map_err(|failure| session.error("reading the state table's triggers", failure))?;
    let mut present = [false; 3];
    for (name, event, timing, orientation, statement) in triggers {
        let ours = TRIGGERS.iter().position(|(own, own_event, body)| {
            name == *own
                && event == *own_event
                && timing == "BEFORE"
                && orientation == "ROW"
                && statement.as_deref().map(one_line) == Some(one_line(body))
        });
        match ours {
            Some(at) => present[at] = true,
            None => {
                return Err(Error::unsafe_(format!(
                    "the state table onlyone_locks at {} has a trigger onlyone did not create, or not with this body: {name} ({timing} {event}); a trigger runs for every writer of the table and could undo the guard against deleting or changing its rows, so the table is not used: find out who made it, drop it (DROP TRIGGER {name}), and start again",
                    session.location()
                )));
            }
        }
    }
    let fences: Vec<FenceFacts> = session
        .exec_rows(
            "SELECT r.ROUTINE_DEFINITION, \
               (SELECT GROUP_CONCAT(CONCAT_WS(' ', p.PARAMETER_NAME, p.DATA_TYPE, p.CHARACTER_MAXIMUM_LENGTH, \
                    IF(p.DTD_IDENTIFIER LIKE '%unsigned%', 'unsigned', NULL)) \
                  ORDER BY p.ORDINAL_POSITION SEPARATOR ', ') \
                FROM information_schema.PARAMETERS p \
                WHERE p.SPECIFIC_SCHEMA = r.ROUTINE_SCHEMA AND p.SPECIFIC_NAME = r.ROUTINE_NAME \
                  AND p.ROUTINE_TYPE = 'FUNCTION' AND p.ORDINAL_POSITION > 0) \
             FROM information_schema.ROUTINES r \
             WHERE r.ROUTINE_SCHEMA = DATABASE() AND r.ROUTINE_NAME = ?",
            vec![FENCE_FUNCTION.into()],
        )
        .map_err(|failure| session.error("reading the fence function", failure))?;
    let fence = match fences.into_iter().next() {
        None => false,
        // Visible by name, but its body only to its definer or with the
        // privilege to read routine definitions.
        Some((None, _)) => {
            return Err(Error::unavailable(format!(
                "the fence function {FENCE_FUNCTION} at {} cannot be checked: this account may not read its definition; have a privileged account grant it SELECT ON mysql.proc (MariaDB) or SHOW_ROUTINE (MySQL 8)",
                session.location()
            )));
        }
        Some((Some(body), parameters)) => {
            if one_line(&body) != one_line(FENCE_BODY)
                || parameters.as_deref() != Some(FENCE_PARAMETERS)
            {
                return Err(Error::unsafe_(format!(
                    "the fence function {FENCE_FUNCTION} at {} is not the one onlyone creates (its body or parameters differ); it decides whether a holder's transaction may commit, so it is neither used nor replaced: find out who made it, drop it (DROP FUNCTION {FENCE_FUNCTION}), and start again",
                    session.location()
                )));
            }
            true
        }
    };
    Ok(Shape {
        triggers: present,
        fence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_creates_in_the_current_database() {
        let statements = all_statements();
        assert_eq!(statements.len(), 4);
        assert!(statements[0].starts_with(
            "CREATE TRIGGER onlyone_guard_delete BEFORE DELETE ON onlyone_locks FOR EACH ROW BEGIN"
        ));
        assert!(statements[1].contains("IS_USED_LOCK(NEW.lock_name) <=> CONNECTION_ID()"));
        assert!(statements[2].contains("IS_USED_LOCK(OLD.lock_name) <=> CONNECTION_ID()"));
        assert!(statements[3].starts_with("CREATE FUNCTION onlyone_fence("));
    }
}
