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

mod admission;
mod dir;
pub(crate) use self::dir::hold_for_fork;
mod held;
mod lock_file;
mod wait;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::admission::Admission;
use self::held::FileHeld;
use self::lock_file::{
    Content, flock_is_held, flock_waiters, lock_exclusive, read_content_sized, read_lock_file,
};
use crate::backend::wait::{first_free, free_now, rounds};
use crate::backend::{Attempt, Backend, Guard, Holder, HolderId, Status, Stop, Wait};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;
use crate::sys::{self, Bind, HolderSocket, SocketPeer};
/// The per-user default lock directory. On Linux it is
/// `/dev/shm/onlyone-<uid>` (or `/tmp/onlyone-<uid>` where there is no
/// `/dev/shm`) in every context, whatever the environment; elsewhere
/// `$XDG_RUNTIME_DIR/onlyone`, else `$TMPDIR/onlyone`. It is created with
/// mode 0700, and refused when it belongs to someone else or others may
/// use it.
pub fn default_dir() -> PathBuf {
    sys::default_lock_dir()
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
    ///
    /// A relative `dir` is taken against the working directory now, so that
    /// a holder that changes directory later still restores its lock file
    /// where it was; a trailing slash is dropped.
    pub fn new(dir: impl Into<PathBuf>) -> FileBackend {
        let dir = dir.into();
        // Without a working directory a relative path names nothing: it is
        // kept as given, and resolving it fails when the lock is used.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        // Without a trailing slash: lstat follows a symlink before one, and
        // a symlinked directory would pass for a directory.
        let dir: PathBuf = dir.components().collect();
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

    /// The names of the lock files in the directory, sorted.
    fn stored_names(&self) -> Result<Vec<LockName>> {
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
        Ok(names)
    }

    fn attempt(&self, name: &LockName, command: &[String], deadline: Wait) -> Result<Attempt> {
        let path = self.path(name);
        let mut named = None;
        let mut wait = deadline;
        if deadline != Wait::No {
            held::before_wait();
        }
        loop {
            let rules = self.prepare_dir()?;
            // Named once the directory exists, so that the name comes from
            // the directory itself whenever possible.
            let (identity, socket_name) = match &named {
                Some(named) => named,
                None => {
                    let identity = self.identity()?;
                    let socket_name = dir::socket_name(&identity, name);
                    named.insert((identity, socket_name))
                }
            };
            let admission = Admission::new(Some(rules), self.private, identity);
            let Some(lock_file) = self.open(&path, &rules)? else {
                continue;
            };
            // A bounded wait is a try, then a wait for a release event, then
            // another try: flock(2) has no timeout, and a thread left blocked
            // in it after the deadline would keep the file open and grab the
            // lock the moment it is released, for nobody.
            let lock_file = match lock_exclusive(lock_file, wait == Wait::Until(None), &path)? {
                Some(locked) => locked,
                None if matches!(wait, Wait::No)
                    && !sys::FLOCK_HOLDERS_VISIBLE
                    && admission.socket_holder(socket_name).is_none() =>
                {
                    // Where holders are seen by their sockets only, a
                    // holder's socket closes an instant before its file
                    // lock when it exits (the kernel releases the two in
                    // either order): a starter woken by the socket's close
                    // would find the lock held by nobody it can name. It
                    // waits that instant for the file lock, once.
                    wait = Wait::at_most(Some(EXITING_HOLDER));
                    continue;
                }
                None => {
                    let left = wait.left().unwrap_or(Duration::ZERO);
                    if left.is_zero() {
                        return Ok(Attempt::Held(holder_of(&path, socket_name, &admission)));
                    }
                    self.wait_for_release(std::slice::from_ref(name), left);
                    continue;
                }
            };
            if !lock_file.is_at(&path) {
                // Deleted or replaced between open and lock: that inode
                // protects nothing. Try again with what the path names now.
                continue;
            }
            let socket = match bind_socket(name, socket_name, rules.file_mode)? {
                Bind::Bound(socket) => socket,
                // Fail closed: without the socket, a deleted lock file lets
                // a second instance start beside this one.
                Bind::Impossible(why) => {
                    return Err(Error::unsafe_(format!(
                        "refusing to hold lock '{name}': the socket that guards it while its lock file is deleted cannot be made ({why})"
                    )));
                }
                Bind::Taken => match HolderSocket::binder(socket_name)
                    .map_err(|e| socket_error(name, e))?
                {
                    // Let go of meanwhile: try again.
                    None => continue,
                    Some(peer) if admission.admits(&peer) => {
                        // The lock file was deleted while held: its holder
                        // keeps the socket and restores its file.
                        let waited = match deadline {
                            Wait::Until(at) => self.wait_for_restoration(lock_file, at),
                            Wait::No => {
                                drop(lock_file);
                                false
                            }
                        };
                        if !waited {
                            return Ok(Attempt::Held(holder_of(&path, socket_name, &admission)));
                        }
                        continue;
                    }
                    Some(squatter) => {
                        self.warn_squatted(name, &squatter);
                        HolderSocket::none()
                    }
                },
            };
            // Someone's file at the lock file's path is locked, but neither
            // written over nor given another mode.
            let content = read_content_sized(&lock_file.file);
            if !matches!(content.0, Content::Foreign(_)) {
                lock_file.fix_mode(&rules);
            }
            return Ok(Attempt::Acquired(Guard::new(Box::new(FileHeld::start(
                self.clone(),
                name.clone(),
                lock_file,
                content,
                socket,
                command,
            )))));
        }
    }

    /// The lock is taken, but its holder socket is bound by someone who may
    /// not hold locks here: the lock is held without the socket, which
    /// only guards the moments when the lock file is missing.
    fn warn_squatted(&self, name: &LockName, squatter: &SocketPeer) {
        let uid = squatter
            .uid
            .map_or_else(|| "?".to_owned(), |uid| uid.to_string());
        let pid = squatter
            .pid
            .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string());
        log::warn!(
            "the socket that guards lock '{name}' while its file is deleted is bound by uid {uid} (pid {pid}), who may not hold locks in {}; running without that guard (the file lock still excludes)",
            self.dir.display()
        );
    }

    /// The names of the slots of `base` whose holder sockets are bound,
    /// whether or not their files exist.
    fn slots_by_socket(&self, base: &LockName) -> Result<Vec<LockName>> {
        let prefix = dir::slot_prefix(&self.identity()?, base.as_str());
        Ok(sys::holder_socket_names(&prefix)
            .iter()
            .filter_map(|socket| {
                let slot = std::str::from_utf8(&socket[prefix.len()..]).ok()?;
                LockName::lock_or_slot(&format!("{base}@{slot}")).ok()
            })
            .collect())
    }
}

/// How long a starter that finds the file lock held, but no holder's
/// socket, waits for the file lock (see [`FileBackend::attempt`]): the
/// moment between an exiting holder's socket and its file lock closing,
/// or between a new holder's file lock and its socket.
const EXITING_HOLDER: Duration = Duration::from_millis(50);

/// Binds the holder socket of lock `name`.
/// `mode` is the lock files' (a socket that is a file needs it too, for
/// others to connect).
fn bind_socket(name: &LockName, socket_name: &[u8], mode: u32) -> Result<Bind> {
    HolderSocket::bind(socket_name, mode).map_err(|e| socket_error(name, e))
}

fn socket_error(name: &LockName, err: io::Error) -> Error {
    Error::unavailable(format!("cannot bind the socket of lock '{name}'")).with_source(err)
}

/// Who holds the lock of `path` (and its socket), found without taking it.
/// A socket counts only if `admission` admits its owner.
fn holder_of(path: &Path, socket_name: &[u8], admission: &Admission) -> Holder {
    let mut pids = Vec::new();
    if let Some(SocketPeer { pid: Some(pid), .. }) = admission.socket_holder(socket_name) {
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
        ..Holder::default()
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
    } else if let Some(record) = &holder.record
        && holder.pids.is_empty()
    {
        // Nobody is named as the holder (the portable path names one by
        // its socket only, which a new holder binds an instant after it
        // locks the file, before it writes its record): the record may be
        // an earlier holder's, whose process may linger as a zombie.
        holder.detail = Some(format!(
            "the lock file's record names pid {}, which may be an earlier holder",
            record.pid
        ));
        holder.record = None;
    }
    holder
}

/// A process waiting for a lock, shown as PostgreSQL's waiters are:
/// "pid 4243 (onlyone run --name bot --wait -- ./report.sh), running since
/// 2025-10-18T14:43:00Z". The kernel does not tell when its wait began:
/// the time is when the process started.
fn waiter(pid: u32) -> String {
    let mut text = format!("pid {pid}");
    if let Some(command) = sys::process_command(pid).filter(|words| !words.is_empty()) {
        text.push_str(&format!(" ({})", crate::escape::command_line(&command)));
    }
    if let Some(started) = sys::process_started_at(pid) {
        text.push_str(&format!(
            ", running since {}",
            humantime::format_rfc3339_seconds(started)
        ));
    }
    text
}

impl Backend for FileBackend {
    fn acquire(&self, name: &LockName, command: &[String], wait: Wait) -> Result<Attempt> {
        self.attempt(name, command, wait)
    }

    fn status(&self, name: &LockName) -> Result<Status> {
        let rules = self.rules_now()?;
        let path = self.path(name);
        let identity = self.identity()?;
        let admission = Admission::new(rules, self.private, &identity);
        let socket_name = dir::socket_name(&identity, name);
        let socket_held = admission.socket_holder(&socket_name).is_some();
        let (record, flock_pids) = read_lock_file(&path);
        // Where the kernel does not name flock holders, a holder is seen
        // by its socket; its lock file tells too while the socket file is
        // missing (deleted, and not bound again yet).
        let held = socket_held
            || !flock_pids.is_empty()
            || (!sys::FLOCK_HOLDERS_VISIBLE && flock_is_held(&path));
        let last_token = record.as_ref().map(|r| r.token);
        let holder = held.then(|| holder_of(&path, &socket_name, &admission));
        Ok(Status {
            name: name.to_string(),
            location: path.display().to_string(),
            held,
            holder,
            last_token,
            waiters: flock_waiters(&path).into_iter().map(waiter).collect(),
            stop_requested: None,
            unreleased: false,
        })
    }

    fn list(&self) -> Result<Vec<Status>> {
        let names = self.stored_names()?;
        names.iter().map(|name| self.status(name)).collect()
    }

    /// Looks at the files named `BASE@N.lock`, and at the bound holder
    /// sockets of the pool's slots: a slot whose file was deleted while
    /// held is found by its socket.
    fn slots(&self, base: &LockName) -> Result<Vec<Status>> {
        let mut names: Vec<LockName> = self
            .stored_names()?
            .into_iter()
            .filter(|name| name.is_slot_of(base))
            .collect();
        names.extend(self.slots_by_socket(base)?);
        names.sort();
        names.dedup();
        names.iter().map(|name| self.status(name)).collect()
    }

    fn acquire_any(&self, names: &[LockName], command: &[String], wait: Wait) -> Result<Attempt> {
        if wait != Wait::No {
            held::before_wait();
        }
        let first = rounds(
            wait,
            || (),
            |(), left| self.wait_for_release(names, left),
            || first_free(self, names, command),
        )?;
        Ok(first.map_or_else(Attempt::Held, Attempt::Acquired))
    }

    fn stop_holder(
        &self,
        name: &LockName,
        signal: i32,
        expected: Option<&HolderId>,
    ) -> Result<Stop> {
        // A holder that exits or hands over between the two readings is
        // read again; a lock that changes hands that fast is left alone.
        for _ in 0..3 {
            let Some(holder) = self.holder_now(name)? else {
                return Ok(Stop::Free);
            };
            if expected.is_some_and(|expected| holder.id().as_ref() != Some(expected)) {
                return Ok(Stop::Changed(holder));
            }
            let record = verified_record(name, &holder)?;
            let Some(process) = sys::Process::open(record.pid, record.start_time) else {
                continue;
            };
            // The process is held fast now; it must still be this
            // acquisition's holder, read again right before the signal.
            let again = self.holder_now(name)?;
            if again.as_ref().and_then(Holder::id) != holder.id() {
                continue;
            }
            if signal == libc::SIGKILL {
                // A killed supervisor cannot pass the signal on: kill its
                // command's process group first.
                for child in sys::children_of(record.pid) {
                    if sys::process_group_of(child) == Some(child) {
                        let _ = sys::signal_group(child, signal);
                    }
                }
            }
            process.signal(signal).map_err(|e| {
                Error::unavailable(format!("cannot signal pid {}", record.pid)).with_source(e)
            })?;
            return Ok(Stop::Signalled(holder));
        }
        Err(Error::unavailable(format!(
            "the holder of lock '{name}' changed three times while it was being stopped; nothing was signalled"
        )))
    }

    fn wait_free(&self, name: &LockName, timeout: Option<Duration>) -> Result<bool> {
        let free = rounds(
            Wait::at_most(timeout),
            || (),
            |(), left| self.wait_for_release(std::slice::from_ref(name), left),
            || free_now(self, name),
        )?;
        Ok(free.is_ok())
    }
}

/// The holder's record, when it identifies the process the kernel names as
/// the holder, down to its start time: never a pid from a stale record,
/// never a process found by its name.
fn verified_record<'a>(name: &LockName, holder: &'a Holder) -> Result<&'a Record> {
    holder
        .record
        .as_ref()
        .filter(|record| {
            // Without a start time a pid reused since cannot be told
            // apart: unverifiable (a system that does not tell it).
            holder.pids.contains(&record.pid)
                && record.start_time.is_some()
                && record.process_is_running_here() == Some(true)
        })
        .ok_or_else(|| {
            Error::unsafe_(format!(
                "cannot identify the holder of lock '{name}' safely ({holder}); stop it by hand"
            ))
        })
}

impl FileBackend {
    /// The holder of `name` now, `None` when it is free.
    fn holder_now(&self, name: &LockName) -> Result<Option<Holder>> {
        let status = self.status(name)?;
        Ok(status.held.then(|| status.holder.unwrap_or_default()))
    }
}
