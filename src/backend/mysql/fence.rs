//! Fenced writes: `onlyone_fence(name, token)`, a stored function created
//! beside the state table (in its database, reading it) that a holder's
//! command calls first inside its own transaction. It raises (SQLSTATE
//! `ON001`) unless `token` is the current token of `name`'s row and the
//! row says `held`, and, when they match, it reads that row again
//! `LOCK IN SHARE MODE` (and checks again): InnoDB
//! keeps the shared row lock to the end of the caller's transaction, and
//! the next holder's token increment (`SELECT … FOR UPDATE`) must wait for
//! it. So a transaction that passed the fence ends before the next token
//! is committed, and once it is committed the old token fails the fence.
//!
//! The next holder first asks for the row with a wait of one second; when
//! fenced transactions hold it that long it says so and then waits for
//! them in InnoDB's lock queue with no deadline of its own
//! ([`WAIT_FOREVER`]), where fences that start meanwhile queue behind its
//! waiting exclusive request (checked on MariaDB 10.11: a new shared
//! request waits behind a waiting exclusive one).

use super::session::{Failure, Session};
use crate::name::LockName;

/// The fence function's name, in the state table's database.
pub(super) const FENCE_FUNCTION: &str = "onlyone_fence";

/// `innodb_lock_wait_timeout` while the next holder waits for fenced
/// transactions: the largest the servers take (about 34 years).
const WAIT_FOREVER: u64 = 1_073_741_824;

/// How long the next holder waits for the row before it says that it
/// waits for fenced transactions, and waits on.
const FIRST_WAIT: u64 = 1;

/// ER_LOCK_WAIT_TIMEOUT.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// The fence function's parameters, as `information_schema.PARAMETERS`
/// shows them (name, type, length, unsigned), in order.
pub(super) const FENCE_PARAMETERS: &str = "given_name varchar 255, given_token bigint unsigned";

/// The fence function's body. Its parameters and variables are named
/// unlike any column: in a stored routine a variable hides a column of
/// the same name. The row is found by its primary key, the lock name
/// mapped as `MysqlBackend::lock_name_for` maps it (the function runs
/// with its own database as the default one), so that the locking read
/// locks that row and no other. A stale token is refused from a plain
/// read first, without a row lock: InnoDB keeps a lock taken by a
/// statement that then fails until the transaction ends, and a stale
/// holder's failed transaction, left open, would hold off the next holder.
pub(super) const FENCE_BODY: &str = "\
BEGIN
  DECLARE scoped VARCHAR(512) CHARACTER SET utf8mb4;
  DECLARE row_key VARCHAR(512) CHARACTER SET utf8mb4;
  DECLARE row_token BIGINT UNSIGNED DEFAULT NULL;
  DECLARE row_state VARCHAR(16) DEFAULT NULL;
  DECLARE message VARCHAR(128);
  DECLARE CONTINUE HANDLER FOR NOT FOUND SET row_token = NULL;
  IF given_name IS NULL OR given_token IS NULL THEN
    SIGNAL SQLSTATE 'ON001' SET MESSAGE_TEXT = 'onlyone: stale fencing token: a lock name and a token are needed';
  END IF;
  SET scoped = CONCAT(DATABASE(), '/', given_name);
  SET row_key = CONCAT('onlyone/', scoped);
  IF CHAR_LENGTH(row_key) > 64 OR CAST(row_key AS BINARY) <> CAST(LOWER(row_key) AS BINARY) THEN
    SET row_key = CONCAT('onlyone/sha256/', LEFT(SHA2(scoped, 256), 48));
  END IF;
  SELECT token, state INTO row_token, row_state FROM onlyone_locks WHERE lock_name = row_key;
  IF row_token = given_token AND row_state = 'held' THEN
    SET row_token = NULL;
    SELECT token, state INTO row_token, row_state FROM onlyone_locks
      WHERE lock_name = row_key LOCK IN SHARE MODE;
  END IF;
  IF row_token IS NULL THEN
    SET message = LEFT(CONCAT('onlyone: stale fencing token ', given_token, ' for lock ''', given_name, ''' (current token none)'), 128);
    SIGNAL SQLSTATE 'ON001' SET MESSAGE_TEXT = message;
  END IF;
  IF row_token <> given_token OR row_state <> 'held' THEN
    SET message = LEFT(CONCAT('onlyone: stale fencing token ', given_token, ' for lock ''', given_name, ''' (current token ', row_token, ', ', row_state, ')'), 128);
    SIGNAL SQLSTATE 'ON001' SET MESSAGE_TEXT = message;
  END IF;
  RETURN given_token;
END";

/// `text` on one line, each run of white space one space: how the
/// triggers and the fence function are created, so that an admin can run
/// the statements a message gives (one line each), and how their bodies
/// are compared, so that the multi-line ones created before still count.
/// The bodies have no comments and no string with two spaces in a row, so
/// this changes nothing they do.
pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The statement that creates the fence function in the current
/// database. `SQL SECURITY DEFINER`: a program's account needs `EXECUTE`
/// on it, not a privilege on the state table. `READS SQL DATA`, which
/// binary logging asks of a function.
pub(super) fn fence_ddl() -> String {
    format!(
        "CREATE FUNCTION {FENCE_FUNCTION}(given_name VARCHAR(255) CHARACTER SET utf8mb4, given_token BIGINT UNSIGNED) \
         RETURNS BIGINT UNSIGNED NOT DETERMINISTIC READS SQL DATA SQL SECURITY DEFINER {}",
        one_line(FENCE_BODY)
    )
}

/// The fence call for `name`'s acquisition `token` through `database`,
/// ready to run first inside a transaction. The function is named with
/// its database, so that the call does not depend on the program's
/// default database.
pub(super) fn fence_sql(database: &str, name: &LockName, token: u64) -> String {
    // A lock name is `A-Z a-z 0-9 . _ - @`: nothing to escape.
    format!(
        "SELECT `{}`.{FENCE_FUNCTION}('{}', {token})",
        database.replace('`', "``"),
        name.as_str()
    )
}

/// Reads `lock_name`'s row `FOR UPDATE` in the transaction the caller has
/// begun, waiting for every fenced transaction of the previous holder to
/// end (saying so when there are any, after a second). The wait has no
/// deadline: a fenced transaction may run as long as it likes, and this
/// holder's command must not start before it has ended. `sql` is the
/// locking read, its rows are returned.
pub(super) fn lock_row_after_fenced<T>(
    session: &mut Session,
    name: &LockName,
    sql: &str,
    params: Vec<mysql_async::Value>,
) -> std::result::Result<Vec<T>, Failure>
where
    T: mysql_async::prelude::FromRow + Send + 'static,
{
    session.execute(&format!(
        "SET SESSION innodb_lock_wait_timeout = {FIRST_WAIT}"
    ))?;
    match session.exec_rows(sql, params.clone()) {
        Err(failure) if failure.code() == Some(LOCK_WAIT_TIMEOUT) => {}
        done => return done,
    }
    log::warn!(
        "lock '{name}': waiting for the fenced transactions of the previous holder to end (they hold its row of the state table onlyone_locks in share mode; there is no deadline)"
    );
    session.execute(&format!(
        "SET SESSION innodb_lock_wait_timeout = {WAIT_FOREVER}"
    ))?;
    let rows = session.exec_rows_waiting(sql, params);
    session.execute(&format!(
        "SET SESSION innodb_lock_wait_timeout = {FIRST_WAIT}"
    ))?;
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_call_names_the_database_and_the_token() {
        let name = LockName::new("nightly-report").unwrap();
        assert_eq!(
            fence_sql("app", &name, 42),
            "SELECT `app`.onlyone_fence('nightly-report', 42)"
        );
        assert!(fence_ddl().contains("SQL SECURITY DEFINER"));
    }
}
