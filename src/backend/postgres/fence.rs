//! Fenced writes: `onlyone_fence(name, token)`, a function created beside
//! the state table (in its schema, reading it) that a holder's command
//! calls inside its own transaction. It raises unless `token` is the
//! current token of `name`'s current holder, and it share-locks the state
//! row, which the next holder's token increment must lock for update: a
//! transaction that passed the fence ends before the next token is
//! committed, and once it is committed the old token fails the fence.
//!
//! Each fenced transaction also holds the advisory key of `NAME@fence`
//! shared (transaction level). The next holder takes it exclusively in the
//! transaction that increments the token: it can say how many fenced
//! transactions it waits for (they show in `pg_locks`), it waits for them
//! in the server's lock queue with no deadline of its own, and fences that
//! start meanwhile queue behind it, then find the new token.

use super::session::Session;
use super::table::{DEFAULT_TABLE_NAME, MAX_IDENTIFIER_LEN, Table};
use super::{derive_key, key_parts};
use crate::error::Result;
use crate::name::LockName;

/// The fence function's name, in the state table's schema, for the
/// default table name.
pub(super) const FENCE_FUNCTION: &str = "onlyone_fence";

/// What names the fence function of a table not named `onlyone_locks`.
const FENCE_SUFFIX: &str = "_fence";

/// The SQLSTATE the fence raises for a stale token: class `ON` (not used by
/// PostgreSQL), "onlyone: stale fencing token".
pub const STALE_TOKEN_SQLSTATE: &str = "ON001";

/// The advisory key that fenced transactions of `name` hold shared.
/// Derived as a lock name's from `NAME@fence` (`@` never appears in a lock
/// name, so it is no lock's key).
pub(super) fn fence_key(name: &LockName) -> i64 {
    derive_key(&format!("{}@fence", name.as_str()))
}

impl Table {
    /// The fence function of this table, in its schema: `onlyone_fence`
    /// for a table named `onlyone_locks` (the default), else
    /// `<table>_fence` (the table's name cut to fit 63 bytes). One per
    /// table: a function that looked through every state table of a schema
    /// would hold each open in the program's transaction.
    pub(super) fn fence_function(&self) -> String {
        let function = if self.name == DEFAULT_TABLE_NAME {
            FENCE_FUNCTION.to_owned()
        } else {
            let room = MAX_IDENTIFIER_LEN - FENCE_SUFFIX.len();
            format!("{}{FENCE_SUFFIX}", &self.name[..self.name.len().min(room)])
        };
        format!("\"{}\".{function}", self.schema)
    }

    /// The statement that creates the fence function unless it exists. Like
    /// the guard, it is never replaced (its owner may be another role).
    /// `SECURITY DEFINER`, so that a program's role needs no privilege on
    /// the state table (`FOR SHARE` would need `UPDATE`); its `search_path`
    /// is pinned.
    pub(super) fn fence_ddl(&self) -> String {
        let function = self.fence_function();
        let body = self.fence_source();
        format!(
            "DO $do$ BEGIN IF to_regprocedure('{function}(text,bigint)') IS NULL THEN \
             CREATE FUNCTION {function}(name text, token bigint) RETURNS void \
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp \
             AS $onlyone${body}$onlyone$; \
             END IF; END $do$"
        )
    }

    /// The fence function's body (`prosrc`), as [`Table::fence_ddl`]
    /// creates it: a function of that name is used only with this body.
    pub(super) fn fence_source(&self) -> String {
        let table = &self.sql;
        let display = &self.display;
        format!(
            " DECLARE \
               lock_key bigint := ('x' || left(encode(sha256(convert_to('onlyone/v1/' || name, 'UTF8')), 'hex'), 16))::bit(64)::bigint; \
               fence_key bigint := ('x' || left(encode(sha256(convert_to('onlyone/v1/' || name || '@fence', 'UTF8')), 'hex'), 16))::bit(64)::bigint; \
               current_token bigint; \
               current_state text; \
             BEGIN \
               IF name IS NULL OR token IS NULL THEN \
                 RAISE EXCEPTION 'onlyone: stale fencing token % for lock ''%'': a lock name and a token are needed', token, name \
                   USING ERRCODE = '{STALE_TOKEN_SQLSTATE}'; \
               END IF; \
               PERFORM pg_advisory_xact_lock_shared(fence_key); \
               SELECT s.token, s.state INTO current_token, current_state \
                 FROM {table} s WHERE s.key = lock_key FOR SHARE; \
               IF NOT FOUND THEN \
                 RAISE EXCEPTION 'onlyone: stale fencing token % for lock ''%'': the state table {display} has no row for it (current token none)', token, name \
                   USING ERRCODE = '{STALE_TOKEN_SQLSTATE}', \
                     HINT = 'The lock was never taken with the state table {display}, or only with an explicit advisory key (the fence finds a lock by its name).'; \
               END IF; \
               IF current_token IS DISTINCT FROM token OR current_state IS DISTINCT FROM 'held' THEN \
                 RAISE EXCEPTION 'onlyone: stale fencing token % for lock ''%'' (current token %, %)', token, name, current_token, current_state \
                   USING ERRCODE = '{STALE_TOKEN_SQLSTATE}', \
                     DETAIL = 'The holder that was given this token has lost or released the lock; this transaction must not commit.'; \
               END IF; \
             END "
        )
    }

    /// The fence call for `name`'s acquisition `token`, ready to run inside
    /// a transaction. Its arguments are typed exactly, so that it calls the
    /// function `(text, bigint)` that onlyone checked, never an overload of
    /// that name that fits a literal better (`(text, integer)` would).
    pub(super) fn fence_sql(&self, name: &LockName, token: u64) -> String {
        // A lock name is `A-Z a-z 0-9 . _ - @`: nothing to escape.
        format!(
            "SELECT {}('{}'::text, {token}::bigint)",
            self.fence_function(),
            name.as_str()
        )
    }

    /// What stands for the fence of a lock taken under an explicit
    /// advisory key: the fence finds a lock by its name, so it cannot
    /// check such a holder, and a program that runs the statement it is
    /// given must not write unfenced believing it is fenced. It always
    /// raises, as a stale token does.
    pub(super) fn unfenceable_sql(name: &LockName) -> String {
        format!(
            "DO $onlyone$ BEGIN RAISE EXCEPTION 'onlyone: lock ''{}'' was taken with an explicit advisory key, which the fence cannot check: its writes cannot be fenced' \
             USING ERRCODE = '{STALE_TOKEN_SQLSTATE}'; END $onlyone$",
            name.as_str()
        )
    }

    /// Begins the transaction that commits a new token of `name` and, in
    /// it (in the same round trip), waits for every fenced transaction of
    /// the previous holder to end (saying so when there are any), and keeps
    /// new ones waiting until the token is committed. The wait has no
    /// deadline: a fenced transaction may run as long as it likes, and this
    /// holder's command must not start before it has ended. The caller ends
    /// the transaction, also after an error.
    pub(super) fn begin_excluding_fenced(
        &self,
        session: &mut Session,
        name: &LockName,
    ) -> Result<()> {
        if self.begin_excluding_fenced_now(session, name)? {
            return Ok(());
        }
        self.wait_for_fenced(session, name)
    }

    /// Begins the transaction of [`Table::begin_excluding_fenced`] without
    /// waiting: false when the previous holder's fenced transactions are
    /// still running (the transaction is begun all the same; the caller
    /// ends it, or waits on with [`Table::wait_for_fenced`]).
    pub(super) fn begin_excluding_fenced_now(
        &self,
        session: &mut Session,
        name: &LockName,
    ) -> Result<bool> {
        let key = fence_key(name);
        let taken = session
            .simple_query_row(&format!(
                "BEGIN; SELECT pg_try_advisory_xact_lock('{key}'::bigint)"
            ))
            .map_err(|failure| session.error("waiting for fenced transactions", failure))?;
        if taken
            .and_then(|row| row.into_iter().next().flatten())
            .as_deref()
            == Some("t")
        {
            return Ok(true);
        }
        Ok(false)
    }

    /// Waits, with no deadline, for the fenced transactions that kept
    /// [`Table::begin_excluding_fenced_now`] from excluding them.
    pub(super) fn wait_for_fenced(&self, session: &mut Session, name: &LockName) -> Result<()> {
        let key = fence_key(name);
        let (classid, objid) = key_parts(key);
        let count = session
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                   AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2 \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&i64::from(classid), &i64::from(objid)],
            )
            .map_err(|failure| session.error("counting fenced transactions", failure))?
            .get::<_, i64>(0);
        log::warn!(
            "lock '{name}': waiting for {count} fenced transactions of the previous holder to end"
        );
        session
            .query_waiting("SELECT pg_advisory_xact_lock($1)", &[&key])
            .map(drop)
            .map_err(|failure| session.error("waiting for fenced transactions", failure))
    }

    /// Ends the sessions in fenced transactions of `name` (those that hold
    /// its fence key): for `stop`, whose mark they would hold off until the
    /// command they belong to has stopped. Returns how many were ended.
    pub(super) fn end_fenced(&self, session: &mut Session, name: &LockName) -> Result<i64> {
        let (classid, objid) = key_parts(fence_key(name));
        session
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                   AND classid::bigint = $1 AND objid::bigint = $2 AND pid <> pg_backend_pid() \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&i64::from(classid), &i64::from(objid)],
            )
            .map(|row| row.get(0))
            .map_err(|failure| session.error("ending fenced transactions", failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_call_names_the_table_schema_and_the_token() {
        let table = Table::parse("ops.locks").unwrap();
        let name = LockName::new("nightly-report").unwrap();
        assert_eq!(
            table.fence_sql(&name, 42),
            "SELECT \"ops\".locks_fence('nightly-report'::text, 42::bigint)"
        );
        assert!(table.fence_ddl().contains("FROM \"ops\".\"locks\" s"));
        let default = Table::parse("onlyone_locks").unwrap();
        assert_eq!(default.fence_function(), "\"public\".onlyone_fence");
        let long = Table::parse(&"t".repeat(63)).unwrap();
        let function = long.fence_function();
        assert_eq!(function, format!("\"public\".{}_fence", "t".repeat(57)));
    }

    #[test]
    fn the_fence_key_is_no_lock_key() {
        let name = LockName::new("demo").unwrap();
        assert_ne!(
            fence_key(&name),
            super::super::PostgresBackend::key_for(&name)
        );
    }
}
