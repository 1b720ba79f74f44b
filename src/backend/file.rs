//! The file backend: a flock(2) lock on `<dir>/<name>.lock`, the zero-setup
//! default.
//!
//! - The lock is the kernel's: an exclusive flock(2) on an open file,
//!   released when every descriptor of it is closed (so when the holder and
//!   any child that inherited it have exited). flock(1) and Python's
//!   `fcntl.flock` on the same path see it.
//! - The lock file is opened without truncation and without following
//!   symlinks; the holder's record is written only once the lock is held.
//! - After locking, the path must still name the locked inode, or the
//!   attempt is retried: a lock on a deleted file excludes nobody.
//! - On Linux the holder also binds an abstract-namespace socket named after
//!   the lock. It is independent of any path, so deleting the lock file or
//!   its directory leaves no window for a second holder; the holder notices
//!   the deletion and restores its file.
//! - Nothing is ever unlinked: a file someone waits on stays where it is.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::backend::ticker::{self, Ticket};
use crate::backend::{
    Attempt, Backend, Guard, Held, Holder, LossWatch, Status, first_free, free_now, rounds,
};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::{MAX_RECORD_LEN, Record};
use crate::sys::{self, HolderSocket, SocketProbe};

/// How often a holder checks that its lock file is still in place.
const WATCH_INTERVAL: Duration = Duration::from_millis(25);

/// The per-user default lock directory: `$XDG_RUNTIME_DIR/onlyone` when
/// that variable is set, else `/tmp/onlyone-<uid>` (on macOS
/// `$TMPDIR/onlyone`). It is created with mode 0700, and refused when it
/// belongs to someone else or others may write in it.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) if !runtime.is_empty() => PathBuf::from(runtime).join("onlyone"),
        _ => sys::default_temp_dir(),
    }
}

/// Lock files in one directory.
#[derive(Clone, Debug)]
pub struct FileBackend {
    dir: PathBuf,
    private: bool,
}

impl FileBackend {
    /// Lock files in `dir`. The per-user [`default_dir`] is held to the
    /// stricter rule (owned by this user, no access for others); another
    /// directory may be shared by a group (see the README).
    pub fn new(dir: impl Into<PathBuf>) -> FileBackend {
        let dir = dir.into();
        let private = dir == default_dir();
        FileBackend { dir, private }
    }

    /// The directory that holds the lock files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file of `name`.
    pub fn path(&self, name: &LockName) -> PathBuf {
        self.dir.join(format!("{name}.lock"))
    }

    /// The abstract socket that stands for `name` on this machine. The
    /// default directory is named by user, not by path, so that a login
    /// shell (with `XDG_RUNTIME_DIR`) and cron (without) still exclude each
    /// other.
    fn socket_name(&self, name: &LockName) -> Vec<u8> {
        let scope = if self.private {
            format!("default-dir-of-uid-{}", sys::uid())
        } else {
            let dir = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
            dir.to_string_lossy().into_owned()
        };
        let digest = Sha256::digest(format!("{scope}\0{name}").as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("onlyone/v1/{hex}").into_bytes()
    }

    /// Creates the directory if needed and checks that it is safe to use.
    fn prepare_dir(&self) -> Result<DirRules> {
        loop {
            if let Err(err) = std::fs::DirBuilder::new().mode(0o700).create(&self.dir)
                && err.kind() != io::ErrorKind::AlreadyExists
            {
                return Err(Error::io(
                    "cannot create the lock directory",
                    &self.dir,
                    err,
                ));
            }
            match std::fs::symlink_metadata(&self.dir) {
                Ok(meta) => return check_dir(&self.dir, &meta, self.private),
                // Deleted again right after it was made or found (a cleanup
                // script): make it again.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(Error::io("cannot read the lock directory", &self.dir, err));
                }
            }
        }
    }

    /// Opens (or creates) the lock file; `None` when its directory has
    /// vanished since [`FileBackend::prepare_dir`] made it.
    fn open(&self, path: &Path, rules: &DirRules) -> Result<Option<LockFile>> {
        let flags = OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(rules.file_mode);
        let (fd, writable) = match rustix::fs::open(path, flags | OFlags::RDWR, mode) {
            Ok(fd) => (fd, true),
            // With O_CREAT and O_NOFOLLOW, only a missing directory.
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            // A read-only file or filesystem still locks: the record just
            // cannot be written.
            Err(
                first @ (rustix::io::Errno::ACCESS
                | rustix::io::Errno::ROFS
                | rustix::io::Errno::PERM),
            ) => {
                let fd = rustix::fs::open(
                    path,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    mode,
                )
                // A file that does not exist and cannot be created: the
                // first error says why.
                .map_err(|_| open_error(path, first))?;
                (fd, false)
            }
            Err(e) => return Err(open_error(path, e)),
        };
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| Error::io("cannot stat the lock file", path, e))?;
        if !meta.file_type().is_file() {
            return Err(
                Error::unsafe_("refusing to lock something that is not a regular file")
                    .with_path(path),
            );
        }
        let owner = meta.uid();
        if owner != sys::uid() && owner != 0 && !rules.shared_group {
            return Err(Error::unsafe_(format!(
                "refusing a lock file owned by another user (uid {owner})"
            ))
            .with_path(path));
        }
        if writable && owner == sys::uid() && meta.mode() & 0o7777 != rules.file_mode {
            // Created under a umask that stripped group bits, or left over
            // with other permissions: make it what the directory implies.
            let _ = rustix::fs::fchmod(&file, Mode::from_raw_mode(rules.file_mode));
        }
        Ok(Some(LockFile {
            file,
            writable,
            dev: meta.dev(),
            ino: meta.ino(),
        }))
    }

    fn attempt(&self, name: &LockName, command: &[String], deadline: Wait) -> Result<Attempt> {
        let path = self.path(name);
        let socket_name = self.socket_name(name);
        loop {
            let rules = self.prepare_dir()?;
            let Some(lock_file) = self.open(&path, &rules)? else {
                continue;
            };
            let lock_file = match lock_exclusive(lock_file, deadline, &path)? {
                Some(locked) => locked,
                None => return Ok(Attempt::Held(holder_of(&path, &socket_name))),
            };
            if !lock_file.is_at(&path) {
                // Deleted or replaced between open and lock: that inode
                // protects nothing. Try again with what the path names now.
                continue;
            }
            let socket = match HolderSocket::bind(&socket_name) {
                Ok(Some(socket)) => socket,
                Ok(None) => {
                    // The lock file was deleted while held: its holder keeps
                    // the socket and is about to restore the file.
                    drop(lock_file);
                    match deadline {
                        Wait::No => {
                            return Ok(Attempt::Held(holder_of(&path, &socket_name)));
                        }
                        Wait::Until(Some(at)) if Instant::now() >= at => {
                            return Ok(Attempt::Held(holder_of(&path, &socket_name)));
                        }
                        // Give the holder a moment to take its restored
                        // file, then block on that file's lock.
                        _ => thread::sleep(Duration::from_millis(5)),
                    }
                    continue;
                }
                Err(err) => {
                    return Err(Error::unavailable(format!(
                        "cannot bind the lock's socket for {name}"
                    ))
                    .with_source(err));
                }
            };
            return Ok(Attempt::Acquired(Guard::new(Box::new(FileHeld::start(
                self.clone(),
                name.clone(),
                rules,
                lock_file,
                socket,
                command,
            )))));
        }
    }
}

/// Who holds the lock of `path` (and its socket), found without taking it.
fn holder_of(path: &Path, socket_name: &[u8]) -> Holder {
    let mut pids = Vec::new();
    if let Ok(SocketProbe::Held(Some(pid))) = HolderSocket::probe(socket_name) {
        pids.push(pid);
    }
    let (record, flock_pids) = read_lock_file(path);
    for pid in flock_pids {
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    let mut holder = Holder {
        record,
        pids,
        detail: None,
    };
    if let Some(record) = &holder.record
        && !holder.pids.is_empty()
        && !holder.pids.contains(&record.pid)
    {
        // The current holder could not write its record; what the file
        // says is a previous holder's.
        holder.detail = Some(format!(
            "the lock file's record names pid {}, an earlier holder",
            record.pid
        ));
        holder.record = None;
    }
    holder
}

/// Reads the record and the kernel's flock holders of the file at `path`,
/// without locking it.
fn read_lock_file(path: &Path) -> (Option<Record>, Vec<u32>) {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rustix::fs::open(path, flags, Mode::empty()) else {
        return (None, Vec::new());
    };
    let file = File::from(fd);
    let Ok(meta) = file.metadata() else {
        return (None, Vec::new());
    };
    if !meta.file_type().is_file() {
        return (None, Vec::new());
    }
    let pids = sys::flock_holders(meta.dev(), meta.ino());
    (read_record(&file), pids)
}

/// The record on the first line of a lock file, if there is one.
fn read_record(file: &File) -> Option<Record> {
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    // Only the first line counts: a longer, older record may still follow
    // for an instant while a new one is written over it.
    let line = bytes.split(|&b| b == b'\n').next()?;
    Record::parse(line)
}

fn open_error(path: &Path, errno: rustix::io::Errno) -> Error {
    match errno {
        rustix::io::Errno::LOOP => {
            Error::unsafe_("refusing to follow a symlink where the lock file should be")
                .with_path(path)
        }
        rustix::io::Errno::ISDIR => {
            Error::unsafe_("refusing to lock something that is not a regular file").with_path(path)
        }
        e => Error::io("cannot open the lock file", path, e.into()),
    }
}

/// What the directory's ownership and mode allow.
#[derive(Clone, Copy, Debug)]
struct DirRules {
    /// The directory is shared by a group: lock files are group-writable and
    /// may belong to other members.
    shared_group: bool,
    file_mode: u32,
}

fn check_dir(dir: &Path, meta: &std::fs::Metadata, private: bool) -> Result<DirRules> {
    if meta.file_type().is_symlink() {
        return Err(Error::unsafe_("refusing a lock directory that is a symlink").with_path(dir));
    }
    if !meta.is_dir() {
        return Err(Error::unavailable("the lock directory is not a directory").with_path(dir));
    }
    sys::refuse_network_fs(dir)?;
    let me = sys::uid();
    let mode = meta.mode() & 0o7777;
    if private {
        if meta.uid() != me {
            return Err(Error::unsafe_(format!(
                "refusing the default lock directory: it is owned by uid {}, not by you (uid {me})",
                meta.uid()
            ))
            .with_path(dir));
        }
        if mode & 0o077 != 0 {
            return Err(Error::unsafe_(format!(
                "refusing the default lock directory: its mode is {mode:04o}, it must be 0700"
            ))
            .with_path(dir));
        }
        return Ok(DirRules {
            shared_group: false,
            file_mode: 0o600,
        });
    }
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(Error::unsafe_(format!(
            "refusing a lock directory that anyone may write to without the sticky bit (mode {mode:04o})"
        ))
        .with_path(dir));
    }
    let shared_group = mode & 0o020 != 0 && sys::in_group(meta.gid());
    if meta.uid() != me && meta.uid() != 0 && !shared_group {
        return Err(Error::unsafe_(format!(
            "refusing a lock directory owned by another user (uid {}); a directory shared by a group must be group-writable and its group yours",
            meta.uid()
        ))
        .with_path(dir));
    }
    Ok(DirRules {
        shared_group,
        file_mode: if shared_group { 0o660 } else { 0o600 },
    })
}

/// An open lock file and the identity of its inode.
#[derive(Debug)]
struct LockFile {
    file: File,
    writable: bool,
    dev: u64,
    ino: u64,
}

impl LockFile {
    /// True when `path` still names this inode.
    fn is_at(&self, path: &Path) -> bool {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => meta.dev() == self.dev && meta.ino() == self.ino,
            Err(_) => false,
        }
    }

    /// Writes `record` as the file's content, in one write. Returns false
    /// (and logs why) when it could not.
    fn write_record(&self, record: &Record, path: &Path) -> bool {
        let line = record.to_line();
        let written = if !self.writable {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        } else {
            self.file
                .write_all_at(line.as_bytes(), 0)
                .and_then(|()| self.file.set_len(line.len() as u64))
        };
        match written {
            Ok(()) => true,
            Err(err) => {
                // Leave no earlier holder's record behind to be mistaken
                // for ours.
                if self.writable {
                    let _ = self.file.set_len(0);
                }
                log::warn!(
                    "cannot write the holder record to {}: {err}; the lock is held all the same, others will see an unknown holder, and no fencing token is given",
                    path.display()
                );
                false
            }
        }
    }
}

/// How long to wait for the lock.
#[derive(Clone, Copy, Debug)]
enum Wait {
    No,
    Until(Option<Instant>),
}

/// Takes the exclusive flock, waiting as told; `None` when someone else
/// holds it (at the deadline).
fn lock_exclusive(lock_file: LockFile, wait: Wait, path: &Path) -> Result<Option<LockFile>> {
    let lock_error = |err: io::Error| Error::io("cannot lock the lock file", path, err);
    match wait {
        Wait::No => match lock_file.file.try_lock() {
            Ok(()) => Ok(Some(lock_file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(err)) => Err(lock_error(err)),
        },
        Wait::Until(None) => {
            lock_file.file.lock().map_err(lock_error)?;
            Ok(Some(lock_file))
        }
        Wait::Until(Some(deadline)) => {
            // flock(2) has no timeout. A helper thread blocks in the kernel
            // (so the wake-up on release is immediate); if we stop waiting
            // first, the thread releases the lock the moment it gets it,
            // because nobody is left to receive it.
            let (sender, receiver) = std::sync::mpsc::sync_channel(1);
            thread::spawn(move || {
                let locked = lock_file.file.lock().map(|()| lock_file);
                let _ = sender.send(locked);
            });
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(Ok(locked)) => Ok(Some(locked)),
                Ok(Err(err)) => Err(lock_error(err)),
                Err(_) => Ok(None),
            }
        }
    }
}

impl Backend for FileBackend {
    fn try_acquire(&self, name: &LockName, command: &[String]) -> Result<Attempt> {
        self.attempt(name, command, Wait::No)
    }

    fn acquire(
        &self,
        name: &LockName,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<Attempt> {
        self.attempt(
            name,
            command,
            Wait::Until(timeout.map(|t| Instant::now() + t)),
        )
    }

    fn status(&self, name: &LockName) -> Result<Status> {
        let meta = match std::fs::symlink_metadata(&self.dir) {
            Ok(meta) => Some(meta),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(Error::io("cannot read the lock directory", &self.dir, err)),
        };
        if let Some(meta) = &meta {
            check_dir(&self.dir, meta, self.private)?;
        }
        let path = self.path(name);
        let socket_name = self.socket_name(name);
        let socket_pid = match HolderSocket::probe(&socket_name) {
            Ok(SocketProbe::Held(pid)) => Some(pid),
            _ => None,
        };
        let (record, flock_pids) = read_lock_file(&path);
        let held = socket_pid.is_some() || !flock_pids.is_empty();
        let last_token = record.as_ref().map(|r| r.token);
        let holder = held.then(|| holder_of(&path, &socket_name));
        Ok(Status {
            name: name.to_string(),
            location: path.display().to_string(),
            held,
            holder,
            last_token,
            waiters: Vec::new(),
        })
    }

    fn list(&self) -> Result<Vec<Status>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(Error::io("cannot list the lock directory", &self.dir, err)),
        };
        let mut names: Vec<LockName> = entries
            .filter_map(|entry| {
                let file_name = entry.ok()?.file_name();
                let stem = file_name.to_str()?.strip_suffix(".lock")?;
                LockName::from_stored(stem)
            })
            .collect();
        names.sort();
        names.iter().map(|name| self.status(name)).collect()
    }

    fn acquire_any(
        &self,
        names: &[LockName],
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<Attempt> {
        let first = rounds(
            timeout,
            || self.watch_dir(),
            wait_for_dir,
            || first_free(self, names, command),
        )?;
        Ok(first.map_or_else(Attempt::Held, Attempt::Acquired))
    }

    fn stop_holder(&self, name: &LockName, signal: i32) -> Result<bool> {
        let status = self.status(name)?;
        if !status.held {
            return Ok(false);
        }
        let holder = status.holder.unwrap_or_default();
        // Only a process that the kernel names as the holder, whose record
        // matches it down to its start time, is signalled: never a pid
        // from a stale record, never a process found by its name.
        let verified = holder.record.as_ref().filter(|record| {
            holder.pids.contains(&record.pid) && record.process_is_running_here() == Some(true)
        });
        let Some(record) = verified else {
            return Err(Error::unsafe_(format!(
                "cannot identify the holder of lock '{name}' safely ({holder}); stop it by hand"
            )));
        };
        if signal == libc::SIGKILL {
            // A killed supervisor cannot pass the signal on: kill its
            // command's process group first.
            for child in sys::children_of(record.pid) {
                if sys::process_group_of(child) == Some(child) {
                    let _ = sys::signal_group(child, signal);
                }
            }
        }
        sys::signal_process(record.pid, signal).map_err(|e| {
            Error::unavailable(format!("cannot signal pid {}", record.pid)).with_source(e)
        })?;
        Ok(true)
    }

    fn wait_free(&self, name: &LockName, timeout: Option<Duration>) -> Result<bool> {
        let free = rounds(
            timeout,
            || self.watch_dir(),
            wait_for_dir,
            || free_now(self, name),
        )?;
        Ok(free.is_ok())
    }
}

impl FileBackend {
    /// Watches the lock directory for closed, deleted and renamed files.
    fn watch_dir(&self) -> Option<sys::DirWatch> {
        self.prepare_dir()
            .ok()
            .and_then(|_| sys::DirWatch::new(&self.dir))
    }
}

/// Waits for a change in the lock directory. A release closes the lock
/// file, which wakes the watch at once; the re-check after at most a second
/// only covers a holder that unlocks without closing (`flock -u`).
fn wait_for_dir(watch: &Option<sys::DirWatch>, left: Duration) {
    let left = left.min(Duration::from_secs(1));
    match watch {
        Some(watch) => watch.wait(left),
        None => thread::sleep(left.min(Duration::from_millis(50))),
    }
}

/// A lock held through the file backend. Fields drop in order: the
/// watcher stops first, then the socket closes, then the file: a starter
/// that gets the file lock must find the socket free, not report a
/// conflict.
#[derive(Debug)]
struct FileHeld {
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
    fn start(
        backend: FileBackend,
        name: LockName,
        rules: DirRules,
        lock_file: LockFile,
        socket: HolderSocket,
        command: &[String],
    ) -> FileHeld {
        // The token is read while holding the lock, so no other holder can
        // read the same previous value.
        let path = backend.path(&name);
        let socket = Arc::new(socket);
        let previous = read_record(&lock_file.file).map_or(0, |r| r.token);
        let record = Record::for_current_process(command, previous + 1);
        let token = lock_file
            .write_record(&record, &path)
            .then_some(record.token);
        let loss = LossWatch::new();
        let restored = Arc::new(Mutex::new(None));
        let watcher = Watcher {
            backend,
            path: path.clone(),
            rules,
            record: record.clone(),
            current: (lock_file.dev, lock_file.ino),
            restored: restored.clone(),
            has_socket: socket.fd().is_some(),
            socket: socket.clone(),
            loss: loss.clone(),
            reported_blocked: false,
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
        vec![(
            "ONLYONE_LOCK_FILE".to_owned(),
            self.path.display().to_string(),
        )]
    }

    fn inheritable_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.lock_file.file.as_fd()];
        fds.extend(self.socket.fd());
        fds
    }

    fn loss(&self) -> &LossWatch {
        &self.loss
    }

    fn release(self: Box<Self>) -> Result<()> {
        drop(self);
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
    rules: DirRules,
    record: Record,
    current: (u64, u64),
    /// Shared with the held lock, which closes it after the socket.
    restored: Arc<Mutex<Option<LockFile>>>,
    has_socket: bool,
    socket: Arc<HolderSocket>,
    loss: LossWatch,
    reported_blocked: bool,
}

impl ticker::Tick for Watcher {
    fn tick(&mut self) -> bool {
        self.socket.drain();
        if self.path_is_ours() {
            return true;
        }
        match self.restore() {
            Ok(Restore::Done) => {
                self.reported_blocked = false;
                log::warn!(
                    "lock file {} was deleted or replaced while held; restored it",
                    self.path.display()
                );
            }
            Ok(Restore::Retry) => {}
            Ok(Restore::HeldByOther) if !self.has_socket => {
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

    fn path_is_ours(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) == self.current,
            Err(_) => false,
        }
    }

    /// Recreates, locks and records the lock file.
    fn restore(&mut self) -> Result<Restore> {
        let rules = self.backend.prepare_dir().unwrap_or(self.rules);
        let Some(lock_file) = self.backend.open(&self.path, &rules)? else {
            return Ok(Restore::Retry);
        };
        let Some(lock_file) = lock_exclusive(lock_file, Wait::No, &self.path)? else {
            return Ok(Restore::HeldByOther);
        };
        if !lock_file.is_at(&self.path) {
            return Ok(Restore::Retry);
        }
        lock_file.write_record(&self.record, &self.path);
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
    /// The path changed again meanwhile; try at the next tick.
    Retry,
}
