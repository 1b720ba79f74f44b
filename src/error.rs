//! The library's one error type: opaque, with accessors for what a caller
//! may want to act on.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A specialized `Result` for onlyone operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from onlyone.
///
/// "The lock is held by someone else" is not an error: it is the
/// [`Attempt::Held`](crate::Attempt::Held) outcome. An `Error` means the
/// lock could not be used at all, or was refused for safety, or was lost.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    code: Option<u8>,
    /// The failure ended a database session that held nothing yet: a
    /// waiter may try again with a new session.
    session_ended: bool,
    path: Option<PathBuf>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// What class of failure an [`Error`] is. Each maps to one exit code of the
/// command-line tool (see [`Error::exit_code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input: an invalid name, duration, URL or option.
    Usage,
    /// The lock backend cannot be used: the lock file cannot be created,
    /// opened or locked for a reason other than a conflict, or the database
    /// cannot be reached.
    Unavailable,
    /// Refused for safety: a symlink where a lock file or directory should
    /// be, a directory owned by another user, unsafe permissions, a standby
    /// server, a connection pooler.
    Unsafe,
    /// The lock was held, and then lost.
    Lost,
    /// The command to run under the lock could not be started (not found:
    /// exit code 127; not executable: 126).
    Command,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            code: None,
            session_ended: false,
            path: None,
            source: None,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, message)
    }

    pub(crate) fn unsafe_(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsafe, message)
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn lost(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Lost, message)
    }

    pub(crate) fn command(code: u8, message: impl Into<String>) -> Error {
        let mut err = Error::new(ErrorKind::Command, message);
        err.code = Some(code);
        err
    }

    /// An I/O failure on `path` that makes the backend unusable.
    pub(crate) fn io(message: impl Into<String>, path: &Path, err: io::Error) -> Error {
        Error::unavailable(message).with_path(path).with_source(err)
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn ending_session(mut self, ended: bool) -> Error {
        self.session_ended = ended;
        self
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn ended_session(&self) -> bool {
        self.session_ended
    }

    pub(crate) fn with_path(mut self, path: &Path) -> Error {
        self.path = Some(path.to_path_buf());
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        self.source = Some(source.into());
        self
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file or directory the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// True for bad input (name, duration, URL).
    pub fn is_usage(&self) -> bool {
        self.kind == ErrorKind::Usage
    }

    /// True when the operation was refused for safety.
    pub fn is_unsafe(&self) -> bool {
        self.kind == ErrorKind::Unsafe
    }

    /// True when a held lock was lost.
    pub fn is_lost(&self) -> bool {
        self.kind == ErrorKind::Lost
    }

    /// The exit code the command-line tool uses for this error
    /// (sysexits.h: 64 usage, 69 unavailable, 74 lost, 77 refused; the
    /// shell's 126 and 127 for a command that cannot run).
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Command => self.code.unwrap_or(126),
            ErrorKind::Usage => 64,
            ErrorKind::Unavailable => 69,
            ErrorKind::Lost => 74,
            ErrorKind::Unsafe => 77,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(path) = &self.path {
            write!(f, ": {}", path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
