//! A held file lock, and the watcher that keeps its file in place.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::FileBackend;
use super::lock_file::{Content, LockFile, Restorable, lock_exclusive};
use crate::backend::ticker::{self, Ticket};
use crate::backend::{Held, LossWatch};
use crate::error::Result;
use crate::name::LockName;
use crate::record::Record;
use crate::sys::HolderSocket;
/// How often a holder checks that its lock file is still in place.
const WATCH_INTERVAL: Duration = Duration::from_millis(25);

/// How often a holder sets its lock file's access time.
const KEEP_ACCESSED: Duration = Duration::from_secs(3600);

/// A lock held through the file backend. Fields drop in order: the
/// watcher stops first, then the socket closes, then the file: a starter
/// that gets the file lock must find the socket free, not report a
/// conflict.
#[derive(Debug)]
pub(super) struct FileHeld {
    _watcher: Option<Ticket>,
    socket: Arc<HolderSocket>,
    /// A file the watcher made and locked after the first was deleted
    /// (only kept, to be closed after the socket).
    _restored: Arc<Mutex<Option<LockFile>>>,
    /// The file locked at acquisition; a child inherits this one.
    lock_file: LockFile,
    name: LockName,
    path: PathBuf,
    record: Record,
    token: Option<u64>,
    loss: LossWatch,
}

impl FileHeld {
    pub(super) fn start(
        backend: FileBackend,
        name: LockName,
        lock_file: LockFile,
        (content, length): (Content, Option<u64>),
        socket: HolderSocket,
        command: &[String],
    ) -> FileHeld {
        // The token is read while holding the lock, so no other holder can
        // read the same previous value.
        let path = backend.path(&name);
        let socket = Arc::new(socket);
        let previous = match &content {
            Content::Record(record) => record.token,
            Content::Nothing | Content::Foreign(_) => 0,
        };
        let next = next_token(previous, &path);
        // An exhausted count stays at its maximum, so that no later holder
        // starts again from a smaller number either.
        let record = Record::for_current_process(command, next.unwrap_or(u64::MAX));
        let token = match content {
            Content::Foreign(len) => {
                log::warn!(
                    "lock file {} holds {len} bytes that are not an onlyone record; it is locked all the same, but not written over, and no fencing token is given (if nothing else uses that file, remove it)",
                    path.display()
                );
                None
            }
            Content::Nothing | Content::Record(_) => {
                let written = lock_file.write_record(&record, &path, length);
                next.filter(|_| written)
            }
        };
        let loss = LossWatch::new();
        let restored = Arc::new(Mutex::new(None));
        let watcher = Watcher {
            backend,
            path: path.clone(),
            record: record.clone(),
            current: (lock_file.dev, lock_file.ino),
            restored: restored.clone(),
            socket: socket.clone(),
            loss: loss.clone(),
            reported_blocked: false,
            accessed: std::time::Instant::now(),
        };
        let ticket = ticker::register(Box::new(watcher), WATCH_INTERVAL);
        if ticket.is_none() {
            log::warn!(
                "cannot start the thread that restores {} if it is deleted",
                path.display()
            );
        }
        FileHeld {
            name,
            path,
            record,
            token,
            lock_file,
            socket,
            loss,
            _watcher: ticket,
            _restored: restored,
        }
    }
}

/// What a holder needs that does not need the lock, done by a starter
/// that is about to wait for it, so that the kernel's grant is followed by
/// only what must follow it (the record's token and write, the holder
/// socket, the pool/plain check): the process's identity for the record
/// (its start time and boot from /proc, its user name from the user
/// database), and the thread that watches held lock files. A starter that
/// tries once does none of it before its try: one that finds the lock
/// held would have done it for nothing.
pub(super) fn before_wait() {
    crate::record::prefetch();
    ticker::start(WATCH_INTERVAL);
}

/// The token after `previous`; `None` (with a warning) when the count is
/// exhausted: a token that wrapped to 0 or repeated would defeat fencing.
fn next_token(previous: u64, path: &Path) -> Option<u64> {
    let next = previous.checked_add(1);
    if next.is_none() {
        log::warn!(
            "the fencing token recorded in {} is {previous}, the largest there is; the lock is held all the same, and no fencing token is given",
            path.display()
        );
    }
    next
}

impl Held for FileHeld {
    fn record(&self) -> &Record {
        &self.record
    }

    fn token(&self) -> Option<u64> {
        self.token
    }

    fn name(&self) -> &LockName {
        &self.name
    }

    fn env(&self) -> Vec<(String, String)> {
        let path = self.path.display().to_string();
        vec![
            ("ONLYONE_LOCK".to_owned(), path.clone()),
            ("ONLYONE_LOCK_FILE".to_owned(), path),
        ]
    }

    fn inheritable_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.lock_file.file.as_fd()];
        fds.extend(self.socket.fd());
        fds
    }

    fn descriptors_now(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self
            .inheritable_fds()
            .iter()
            .map(AsRawFd::as_raw_fd)
            .collect();
        let restored = self._restored.lock().unwrap_or_else(|e| e.into_inner());
        fds.extend(restored.as_ref().map(|file| file.file.as_raw_fd()));
        fds
    }

    fn loss(&self) -> &LossWatch {
        &self.loss
    }

    fn release(self: Box<Self>) -> Result<()> {
        // Waiters connected to the socket are woken once the file is
        // closed too, so that they find the lock free.
        let waiters = self.socket.take_waiters();
        drop(self);
        drop(waiters);
        Ok(())
    }
}

/// What keeps a held lock file in place, at every tick of the shared
/// watcher thread: if the file or its directory is deleted or replaced (a
/// cleanup script), it makes a new one, locks it and writes the record
/// again.
struct Watcher {
    backend: FileBackend,
    path: PathBuf,
    record: Record,
    current: (u64, u64),
    /// Shared with the held lock, which closes it after the socket.
    restored: Arc<Mutex<Option<LockFile>>>,
    socket: Arc<HolderSocket>,
    loss: LossWatch,
    reported_blocked: bool,
    /// When the lock file's access time was last set (see
    /// [`Watcher::keep_accessed`]).
    accessed: std::time::Instant,
}

impl ticker::Tick for Watcher {
    fn tick(&mut self) -> bool {
        self.socket.drain();
        if self.path_is_ours() {
            self.socket.rebind_if_gone();
            self.keep_accessed();
            return true;
        }
        match self.restore() {
            Ok(Restore::Done) => {
                self.socket.rebind_if_gone();
                self.reported_blocked = false;
                log::warn!(
                    "lock file {} was deleted or replaced while held; restored it",
                    self.path.display()
                );
            }
            Ok(Restore::Retry) => {}
            // Without a socket that still stands for the lock (Linux's
            // abstract one; off Linux, the socket file while it is in
            // place), the file was the only lock.
            Ok(Restore::HeldByOther) if !self.socket.guards_without_file() => {
                // Without a socket the file was the only lock, and someone
                // else now holds the new one.
                self.loss.fire(format!(
                    "lock file {} was replaced and another process locked the new one",
                    self.path.display()
                ));
                return false;
            }
            Ok(Restore::HeldByOther) => {
                let message = format!(
                    "lock file {} was replaced and another process locks the new one (a starter about to find the lock held, or a program that is not onlyone); still holding the lock",
                    self.path.display()
                );
                self.report_once(&message);
            }
            Ok(Restore::Occupied(why)) if !self.socket.guards_without_file() => {
                // Without a socket the file was the only lock, and the path
                // now names one we may not take: a starter could.
                self.loss.fire(format!(
                    "lock file {} was replaced by a file that is not restored into ({why})",
                    self.path.display()
                ));
                return false;
            }
            Ok(Restore::Occupied(why)) => {
                let message = format!(
                    "lock file {} was replaced by a file that onlyone does not write into ({why}); still holding the lock, but without a lock file until that file is removed",
                    self.path.display()
                );
                self.report_once(&message);
            }
            Err(err) => self.report_once(&format!("cannot restore deleted lock file: {err}")),
        }
        true
    }
}

impl Watcher {
    /// Logs a trouble that repeats at every tick only the first time.
    fn report_once(&mut self, message: &str) {
        if !self.reported_blocked {
            self.reported_blocked = true;
            log::warn!("{message}");
        }
    }

    /// Sets the lock file's access time once an hour: macOS removes files
    /// of the per-user temporary directory (the default lock directory
    /// there) that were not accessed for three days, and a held lock's file
    /// is never read.
    fn keep_accessed(&mut self) {
        if self.accessed.elapsed() < KEEP_ACCESSED {
            return;
        }
        self.accessed = std::time::Instant::now();
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::open(&self.path, flags, rustix::fs::Mode::empty()) else {
            return;
        };
        let file = std::fs::File::from(fd);
        if file
            .metadata()
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.current)
        {
            let now = std::time::SystemTime::now();
            let _ = file.set_times(std::fs::FileTimes::new().set_accessed(now));
        }
    }

    fn path_is_ours(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) == self.current,
            Err(_) => false,
        }
    }

    /// Makes a new lock file (or takes the empty one a starter left),
    /// locks it and writes the record. Never writes into a file that was
    /// at the path with content or another name: a hard link planted there
    /// may be someone's data.
    fn restore(&mut self) -> Result<Restore> {
        // A directory that is now refused (a symlink, another owner) gets
        // no file: the old rules do not make it safe.
        let rules = self.backend.prepare_dir()?;
        let lock_file = match self.backend.open_restorable(&self.path, &rules)? {
            Some(Restorable::Writable(lock_file)) => lock_file,
            Some(Restorable::Occupied(why)) => return Ok(Restore::Occupied(why)),
            None => return Ok(Restore::Retry),
        };
        let Some(lock_file) = lock_exclusive(lock_file, false, &self.path)? else {
            return Ok(Restore::HeldByOther);
        };
        if !lock_file.is_at(&self.path) || !lock_file.is_empty_and_single() {
            return Ok(Restore::Retry);
        }
        lock_file.fix_mode(&rules);
        lock_file.write_record(&self.record, &self.path, None);
        self.current = (lock_file.dev, lock_file.ino);
        *self.restored.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock_file);
        Ok(Restore::Done)
    }
}

/// What an attempt to restore the lock file came to.
enum Restore {
    Done,
    /// Another process locks the file now at the path.
    HeldByOther,
    /// The path names a file that must not be written to, for this reason.
    Occupied(String),
    /// The path changed again meanwhile; try at the next tick.
    Retry,
}
