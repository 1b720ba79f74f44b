//! Why a statement failed, and the driver's errors as one line.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::error::Error;

/// Why a statement failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The server or the driver reported an error.
    Server(tokio_postgres::Error),
    /// No answer within this deadline.
    Silent(Duration),
}

impl Failure {
    /// The SQLSTATE, when the server sent one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Failure::Server(err) => err.code(),
            Failure::Silent(_) => None,
        }
    }

    /// Whether the session is gone: the server ended it (a terminated
    /// backend, a shutdown, an idle timeout), the connection broke, or no
    /// answer came.
    pub fn ends_session(&self) -> bool {
        match self {
            Failure::Server(err) => {
                err.is_closed()
                    || err.as_db_error().is_none()
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::IDLE_SESSION_TIMEOUT,
                    ]
                    .iter()
                    .any(|code| err.code() == Some(code))
            }
            Failure::Silent(_) => true,
        }
    }

    /// The error as one line.
    pub fn describe(&self) -> String {
        match self {
            Failure::Server(err) => describe(err),
            Failure::Silent(deadline) => format!(
                "no answer within {} (is the network or the server down?)",
                humantime::format_duration(*deadline)
            ),
        }
    }

    /// The server cut the statement short as it was told to (`lock_timeout`,
    /// `statement_timeout`) or as someone asked (`pg_cancel_backend`): the
    /// session is fine.
    pub fn cut_short(&self) -> bool {
        [SqlState::LOCK_NOT_AVAILABLE, SqlState::QUERY_CANCELED]
            .iter()
            .any(|code| self.code() == Some(code))
    }

    /// Adds the driver's error, if any, as the source of `error`.
    pub fn attach_to(self, error: Error) -> Error {
        match self {
            Failure::Server(err) => error.with_source(err),
            Failure::Silent(_) => error,
        }
    }
}

/// The driver's error as one line: the server's message, or the error and
/// its causes (the driver's own `Display` leaves the causes out). Neither
/// ever contains the password.
pub(super) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_owned();
    }
    let mut line = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
