//! `stop` and `--replace` on MySQL/MariaDB: end the session of the lock's
//! holder (`KILL CONNECTION`), but only of a holder identified as an
//! onlyone holder; and `wait`, which watches `IS_USED_LOCK`.

use std::time::Duration;

use super::session::{ANSWER_DEADLINE, Session};
use super::{MysqlBackend, holder_of, table};
use crate::backend::settle::{Unidentified, once_settled};
use crate::backend::wait::{Round, rounds};
use crate::backend::{HolderId, Stop, Wait};
use crate::error::{Error, Result};
use crate::name::LockName;

/// ER_NO_SUCH_THREAD: the connection to kill is gone already.
const NO_SUCH_THREAD: u16 = 1094;

/// ER_LOCK_WAIT_TIMEOUT.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// How long `stop`'s mark waits for a row lock (`innodb_lock_wait_timeout`).
const MARK_WAIT_SECONDS: u64 = 1;

impl MysqlBackend {
    /// Ends the session that holds `name`'s lock. Only a session that the
    /// state row names is ended: the row says 'held' with that session's
    /// connection id, and `IS_USED_LOCK` shows that session holding the
    /// lock, checked again in the statement that marks the row. Anything
    /// else holding the name (another program, a `mariadb` session, an
    /// onlyone holder still starting) is refused, never ended. With
    /// `expected`, only that holder is ended: another one is
    /// [`Stop::Changed`] and left alone.
    pub(super) fn kill_holder(
        &self,
        session: &mut Session,
        name: &LockName,
        expected: Option<&HolderId>,
    ) -> Result<Stop> {
        once_settled(|| self.kill_holder_once(session, name, expected))
    }

    /// One look of [`MysqlBackend::kill_holder`].
    fn kill_holder_once(
        &self,
        session: &mut Session,
        name: &LockName,
        expected: Option<&HolderId>,
    ) -> std::result::Result<Stop, Unidentified> {
        let lock_name = self.lock_name_for(name);
        let Some(server) = session.holder(&lock_name)? else {
            return Ok(Stop::Free);
        };
        let row = table::row(session, &lock_name)?;
        let holder = holder_of(&server, row.as_ref());
        // A holder that has recorded its clean release but not released
        // the lock yet is neither another holder nor one to stop: it lets
        // go within milliseconds.
        if row
            .as_ref()
            .is_some_and(|row| !row.held && row.connection_id == Some(server.connection_id))
        {
            return Err(Unidentified::Settling(Error::unsafe_(format!(
                "the holder of lock '{name}' recorded its release but still holds the lock ({holder})"
            ))));
        }
        if expected.is_some_and(|expected| holder.id().as_ref() != Some(expected)) {
            return Ok(Stop::Changed(holder));
        }
        let identified = row
            .as_ref()
            .filter(|row| row.held && row.connection_id == Some(server.connection_id));
        let Some(row) = identified else {
            return Err(Error::unsafe_(format!(
                "cannot identify the holder of lock '{name}' safely ({holder}); stop it by hand"
            ))
            .into());
        };
        // The mark names the holder's token, so that a starter ended during
        // its lock-delay gives up instead of starting over; it is made only
        // while the row still names that session and the server still shows
        // that session holding the lock. Connection ids are not reused
        // while the server runs, so the kill that follows ends that session
        // or nothing.
        let params: Vec<mysql_async::Value> = vec![
            lock_name.clone().into(),
            row.token.into(),
            server.connection_id.into(),
            lock_name.clone().into(),
            server.connection_id.into(),
        ];
        // Fenced transactions of the holder's command share-lock the row
        // (fence.rs), and the mark must update it: it waits for them one
        // second at most. They end only once that command is stopped, which
        // is what the kill does; a holder whose command runs is past its
        // lock-delay and needs no mark. So when they hold the row, the
        // holder is checked again with a plain read in place of the mark.
        session
            .execute(&format!(
                "SET SESSION innodb_lock_wait_timeout = {MARK_WAIT_SECONDS}"
            ))
            .map_err(|failure| session.error("marking the holder stopped", failure))?;
        let marked = match session.exec_within(
            ANSWER_DEADLINE,
            "UPDATE onlyone_locks SET stopped_token = token \
             WHERE lock_name = ? AND state = 'held' AND token = ? AND connection_id = ? \
               AND IS_USED_LOCK(?) = ?",
            params.clone(),
        ) {
            Err(failure) if failure.code() == Some(LOCK_WAIT_TIMEOUT) => {
                log::warn!(
                    "lock '{name}': fenced transactions of the holder's command hold its row; ending the holder's session without marking its token {} stopped",
                    row.token
                );
                session
                    .exec_rows_within::<(u8,)>(
                        ANSWER_DEADLINE,
                        "SELECT 1 FROM onlyone_locks \
                         WHERE lock_name = ? AND state = 'held' AND token = ? AND connection_id = ? \
                           AND IS_USED_LOCK(?) = ?",
                        params,
                    )
                    .map(|rows| rows.len() as u64)
            }
            done => done,
        }
        .map_err(|failure| session.error("marking the holder stopped", failure))?;
        if marked == 0 {
            // The holder changed between the read and the mark: it recorded
            // its clean release (the mark waited for the row it was
            // updating), let go, or was ended by another `stop` or
            // replacer. It is looked at again, as on PostgreSQL: the next
            // look finds it releasing, the lock free, or another holder
            // (`Changed` for a replacer). The error stands only if it
            // keeps changing.
            return Err(Unidentified::Settling(Error::unsafe_(format!(
                "the holder of lock '{name}' changed while it was being identified; nothing was stopped"
            ))));
        }
        match session.execute(&format!("KILL CONNECTION {}", server.connection_id)) {
            Ok(()) => Ok(Stop::Signalled(holder)),
            Err(failure) if failure.code() == Some(NO_SUCH_THREAD) => Ok(Stop::Signalled(holder)),
            Err(failure) => Err(session.error("ending the holder's session", failure).into()),
        }
    }

    /// Whether `stop` marked the acquisition `token` of `lock_name`
    /// stopped; asked on a session of its own.
    pub(super) fn was_stopped(&self, lock_name: &str, token: u64) -> Result<bool> {
        let mut session = Session::open(&self.target, self.idle_limit())?;
        let stopped = table::stopped_token(&mut session, lock_name);
        session.close();
        Ok(stopped? == Some(token))
    }

    /// Waits until nobody holds `name`'s lock, checking `IS_USED_LOCK`
    /// every heartbeat interval on one session (taking the lock to find
    /// out would make a real starter fail).
    pub(super) fn watch_free(&self, name: &LockName, timeout: Option<Duration>) -> Result<bool> {
        let lock_name = self.lock_name_for(name);
        let mut session = Session::open(&self.target, self.idle_limit())?;
        let interval = self.config.timing.heartbeat;
        let free = rounds(
            Wait::at_most(timeout),
            || (),
            |_, left| std::thread::sleep(left.min(interval)),
            || {
                Ok(match session.holder(&lock_name)? {
                    Some(_) => Round::Pending(()),
                    None => Round::Done(()),
                })
            },
        );
        session.close();
        Ok(free?.is_ok())
    }
}
