//! The server's own view of an advisory lock: who holds it and who waits
//! for it, from `pg_locks` joined to `pg_stat_activity`.

use std::time::SystemTime;

use super::key_parts;
use super::session::Session;
use super::state::Row;
use crate::backend::Holder;
use crate::error::Result;

/// A server session that holds or waits for a lock.
#[derive(Debug)]
pub(super) struct ServerSession {
    pub pid: i32,
    application_name: Option<String>,
    client: Option<String>,
    user: Option<String>,
    connected: Option<SystemTime>,
    waiting_since: Option<SystemTime>,
    /// From `pg_stat_ssl`: whether the session is encrypted, and how.
    encrypted: Option<bool>,
    tls_version: Option<String>,
}

impl ServerSession {
    /// Whether the session names itself as onlyone's (`onlyone:NAME@HOST:PID`,
    /// the application_name every onlyone lock session sets): one that
    /// holds the key but is not in the state row yet is a starter between
    /// its lock and its recording transaction. Only a hint for how long to
    /// look again (anyone may set the name): never a reason to end it.
    pub fn says_onlyone(&self) -> bool {
        self.application_name
            .as_deref()
            .is_some_and(|name| name.starts_with("onlyone:"))
    }

    /// "backend pid 4242, application_name 'x', user bot, client
    /// 10.0.0.5:5000, encrypted (TLSv1.3)"
    fn describe(&self) -> String {
        let mut text = format!("backend pid {}", self.pid);
        if let Some(name) = self.application_name.as_deref().filter(|n| !n.is_empty()) {
            text.push_str(&format!(", application_name '{name}'"));
        }
        if let Some(user) = &self.user {
            text.push_str(&format!(", user {user}"));
        }
        text.push_str(&match &self.client {
            Some(client) => format!(", client {client}"),
            None => ", local socket or not visible to this role".to_owned(),
        });
        match (self.encrypted, &self.tls_version) {
            (Some(true), Some(version)) => text.push_str(&format!(", encrypted ({version})")),
            (Some(true), None) => text.push_str(", encrypted"),
            (Some(false), _) => text.push_str(", not encrypted"),
            (None, _) => {}
        }
        text
    }

    fn as_holder(&self) -> String {
        let mut text = format!("PostgreSQL {}", self.describe());
        if let Some(since) = self.connected {
            text.push_str(&format!(
                ", connected since {}",
                humantime::format_rfc3339_seconds(since)
            ));
        }
        text
    }

    fn as_waiter(&self) -> String {
        let mut text = self.describe();
        if let Some(since) = self.waiting_since {
            text.push_str(&format!(
                ", waiting since {}",
                humantime::format_rfc3339_seconds(since)
            ));
        }
        text
    }
}

/// Who holds and who waits for an advisory lock, as the server sees it.
#[derive(Debug, Default)]
pub(super) struct ServerView {
    pub holder: Option<ServerSession>,
    pub waiters: Vec<ServerSession>,
}

impl ServerView {
    /// The sessions holding (granted) and waiting for (not granted) `key`
    /// in this database, in the bigint form (`objsubid = 1`).
    pub fn read(session: &mut Session, key: i64) -> Result<ServerView> {
        let (classid, objid) = key_parts(key);
        let rows = session
            .query(
                "SELECT l.pid, l.granted, a.application_name, \
                        host(a.client_addr) || coalesce(':' || a.client_port, ''), \
                        a.usename::text, a.backend_start, a.query_start, s.ssl, s.version \
                 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
                   LEFT JOIN pg_stat_ssl s ON s.pid = l.pid \
                 WHERE l.locktype = 'advisory' \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1 \
                 ORDER BY l.granted DESC, a.query_start",
                &[&i64::from(classid), &i64::from(objid)],
            )
            .map_err(|failure| session.error("reading pg_locks", failure))?;
        let mut view = ServerView::default();
        for row in rows {
            let server_session = ServerSession {
                pid: row.get(0),
                application_name: row.get(2),
                client: row.get(3),
                user: row.get(4),
                connected: row.get(5),
                waiting_since: row.get(6),
                encrypted: row.get(7),
                tls_version: row.get(8),
            };
            if row.get::<_, bool>(1) && view.holder.is_none() {
                view.holder = Some(server_session);
            } else {
                view.waiters.push(server_session);
            }
        }
        Ok(view)
    }

    /// The waiters, one line each.
    pub fn waiter_lines(&self) -> Vec<String> {
        self.waiters.iter().map(ServerSession::as_waiter).collect()
    }

    /// The holder as [`Holder`]: the record comes from the state row only
    /// when that row belongs to the very session that holds the lock now.
    pub fn holder(&self, row: Option<&Row>) -> Holder {
        let Some(server) = &self.holder else {
            return Holder {
                record: None,
                pids: Vec::new(),
                detail: Some(
                    "nobody holds it any more: the holder released it just after our attempt"
                        .to_owned(),
                ),
                ..Holder::default()
            };
        };
        let current_row = row.filter(|row| row.names_holder(server.pid));
        let mut detail = server.as_holder();
        if current_row.is_none() {
            detail.push_str(
                "; not an onlyone holder: no record in the state table names this session (another program, or an onlyone holder still starting)",
            );
        }
        let record = current_row.and_then(|row| row.record.clone());
        Holder {
            pids: record.iter().map(|record| record.pid).collect(),
            server_pid: u32::try_from(server.pid).ok(),
            record,
            detail: Some(detail),
            ..Holder::default()
        }
    }
}
