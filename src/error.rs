//! The library's one error type: opaque, with accessors for what a caller
//! may want to act on.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::exit;

/// A specialized `Result` for onlyone operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from onlyone.
///
/// "The lock is held by someone else" is not an error: it is the
/// [`Attempt::Held`](crate::Attempt::Held) outcome. An `Error` means the
/// lock could not be used at all, or was refused for safety, or was lost.
pub struct Error(Box<Inner>);

struct Inner {
    kind: Kind,
    message: String,
    /// The advisory key and fencing token of a PostgreSQL acquisition
    /// whose session ended before its command started: what `stop` marks
    /// when it ends such a starter. Any kind of failure can end a start.
    start_lost: Option<(i64, u64)>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// What failed, with what belongs to that failure alone.
#[derive(Debug)]
enum Kind {
    Usage,
    Unavailable {
        /// The file or directory that could not be used.
        path: Option<PathBuf>,
        /// The failure ended a database session that held nothing yet: a
        /// waiter may try again with a new session.
        session_ended: bool,
    },
    Unsafe {
        /// The file or directory refused.
        path: Option<PathBuf>,
        /// The network filesystem the lock directory is on.
        network_filesystem: Option<&'static str>,
    },
    Lost {
        /// The loss ended the database session (it is gone with the lock).
        session_ended: bool,
    },
    Command {
        /// 127: not found; 126: cannot be executed.
        code: u8,
    },
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
    fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            start_lost: None,
            source: None,
        }))
    }

    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Error {
        Error::new(
            Kind::Unavailable {
                path: None,
                session_ended: false,
            },
            message,
        )
    }

    pub(crate) fn unsafe_(message: impl Into<String>) -> Error {
        Error::new(
            Kind::Unsafe {
                path: None,
                network_filesystem: None,
            },
            message,
        )
    }

    /// A lock directory refused because it is on `filesystem` (NFS,
    /// SMB/CIFS), whose locks may not exclude other machines.
    pub(crate) fn on_network_filesystem(filesystem: &'static str, dir: &Path) -> Error {
        Error::new(
            Kind::Unsafe {
                path: Some(dir.to_path_buf()),
                network_filesystem: Some(filesystem),
            },
            format!(
                "refusing a lock directory on {filesystem}: file locks there may not exclude other machines; use a local directory, or a PostgreSQL lock across machines"
            ),
        )
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn lost(message: impl Into<String>) -> Error {
        Error::new(
            Kind::Lost {
                session_ended: false,
            },
            message,
        )
    }

    pub(crate) fn command(code: u8, message: impl Into<String>) -> Error {
        Error::new(Kind::Command { code }, message)
    }

    /// An I/O failure on `path` that makes the backend unusable.
    pub(crate) fn io(message: impl Into<String>, path: &Path, err: io::Error) -> Error {
        Error::unavailable(message).with_path(path).with_source(err)
    }

    /// Marks whether the failure ended the database session; only an
    /// unavailable backend or a loss can.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn ending_session(mut self, ended: bool) -> Error {
        match &mut self.0.kind {
            Kind::Unavailable { session_ended, .. } | Kind::Lost { session_ended } => {
                *session_ended = ended;
            }
            other => debug_assert!(!ended, "{other:?} cannot end a session"),
        }
        self
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn ended_session(&self) -> bool {
        match self.0.kind {
            Kind::Unavailable { session_ended, .. } | Kind::Lost { session_ended } => session_ended,
            _ => false,
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn losing_start(mut self, key: i64, token: u64) -> Error {
        self.0.start_lost = Some((key, token));
        self
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn start_lost(&self) -> Option<(i64, u64)> {
        self.0.start_lost
    }

    /// Names the file or directory the error is about; only an unusable or
    /// refused one has a path.
    pub(crate) fn with_path(mut self, at: &Path) -> Error {
        match &mut self.0.kind {
            Kind::Unavailable { path, .. } | Kind::Unsafe { path, .. } => {
                *path = Some(at.to_path_buf());
            }
            other => debug_assert!(false, "{other:?} has no path"),
        }
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        self.0.source = Some(source.into());
        self
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self.0.kind {
            Kind::Usage => ErrorKind::Usage,
            Kind::Unavailable { .. } => ErrorKind::Unavailable,
            Kind::Unsafe { .. } => ErrorKind::Unsafe,
            Kind::Lost { .. } => ErrorKind::Lost,
            Kind::Command { .. } => ErrorKind::Command,
        }
    }

    /// The file or directory the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.0.kind {
            Kind::Unavailable { path, .. } | Kind::Unsafe { path, .. } => path.as_deref(),
            _ => None,
        }
    }

    /// The network filesystem (NFS, SMB/CIFS) that a lock directory was
    /// refused on: its locks may not exclude other machines.
    pub fn network_filesystem(&self) -> Option<&'static str> {
        match self.0.kind {
            Kind::Unsafe {
                network_filesystem, ..
            } => network_filesystem,
            _ => None,
        }
    }

    /// True for bad input (name, duration, URL).
    pub fn is_usage(&self) -> bool {
        self.kind() == ErrorKind::Usage
    }

    /// True when the lock backend cannot be used.
    pub fn is_unavailable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// True when the operation was refused for safety.
    pub fn is_unsafe(&self) -> bool {
        self.kind() == ErrorKind::Unsafe
    }

    /// True when a held lock was lost.
    pub fn is_lost(&self) -> bool {
        self.kind() == ErrorKind::Lost
    }

    /// True when the command to run under the lock could not be started.
    pub fn is_command(&self) -> bool {
        self.kind() == ErrorKind::Command
    }

    /// The exit code the command-line tool uses for this error, from
    /// [`crate::exit`] (sysexits.h: 64 usage, 69 unavailable, 74 lost, 77
    /// refused; the shell's 126 and 127 for a command that cannot run).
    pub fn exit_code(&self) -> u8 {
        match self.0.kind {
            Kind::Command { code } => code,
            Kind::Usage => exit::USAGE,
            Kind::Unavailable { .. } => exit::UNAVAILABLE,
            Kind::Lost { .. } => exit::LOST,
            Kind::Unsafe { .. } => exit::UNSAFE,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .field("source", &self.0.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        if let Some(path) = self.path() {
            write!(f, ": {}", path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
