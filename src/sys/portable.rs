//! Unix systems other than Linux (macOS, the BSDs), and Linux built with
//! `--cfg onlyone_portable`, which is how this file is tested: no /proc, no
//! abstract sockets, no parent-death signal, no inotify.
//!
//! The holder's socket is a Unix socket file in the lock directory: its
//! peer credentials name the holder's pid (so `status` and `stop` find the
//! holder without taking the lock), and a waiter's connection to it hangs
//! up when the holder releases the lock (so `wait` wakes at once). Unlike
//! Linux's abstract socket it is reached by its path: deleting the whole
//! lock directory leaves no guard until the holder restores its files.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SocketAddrUnix, SocketFlags, SocketType, accept_with, bind, connect, listen,
    socket_with,
};

use super::SocketPeer;

#[cfg(target_os = "linux")]
use super::procfs as os;

#[cfg(target_os = "macos")]
use super::macos as os;

/// The BSDs: nothing beyond POSIX is used, so what POSIX does not tell is
/// unknown.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod os {
    use std::os::fd::BorrowedFd;

    /// Unknown: `stop` then refuses to signal the holder (exit 77).
    pub fn process_start_time(_pid: u32) -> Option<u64> {
        None
    }

    /// No `/proc/PID/stat` here.
    pub fn stat_field(_pid: u32, _field: usize) -> Option<String> {
        None
    }

    /// The peer's user and group; its pid is unknown.
    pub fn peer_credentials(fd: BorrowedFd<'_>) -> super::SocketPeer {
        super::super::unix::peer_ids(fd)
    }
}

/// When process `pid` started, as this system tells it (on macOS in
/// microseconds since the epoch, on Linux in clock ticks since boot);
/// `None` where it cannot be known.
pub fn process_start_time(pid: u32) -> Option<u64> {
    os::process_start_time(pid)
}

/// Field `field` of `/proc/PID/stat` where there is one (Linux, where the
/// portable path is tested); `None` elsewhere.
pub fn stat_field(pid: u32, field: usize) -> Option<String> {
    os::stat_field(pid, field)
}

/// Not available without /proc: beyond our own parent, ancestry is
/// unknown (and job control is then not used).
pub fn parent_of(_pid: u32) -> Option<u32> {
    None
}

/// Not available without /proc: a process is told from a later one with
/// its pid by its start time alone.
pub fn boot_id() -> Option<String> {
    None
}

/// Not available without /proc/locks: the holder is found by its socket.
pub fn flock_holders(_dev: u64, _ino: u64) -> Option<Vec<u32>> {
    None
}

/// Not available without /proc/locks.
pub fn holds_flock_on(_pid: u32, _device: (u32, u32)) -> bool {
    false
}

/// Not available without /proc.
pub fn supplementary_groups(_pid: u32) -> Option<Vec<u32>> {
    None
}

/// Not available without /proc.
pub fn flock_waiters(_dev: u64, _ino: u64) -> Option<Vec<u32>> {
    None
}

/// Not available without /proc.
pub fn process_name(_pid: u32) -> Option<String> {
    None
}

/// Not known without /proc/self/mountinfo: a directory is named by its
/// canonical path.
pub fn filesystem_location(_canonical: &std::path::Path) -> Option<super::FsLocation> {
    None
}

/// Not available without /proc.
pub fn process_started_at(_pid: u32) -> Option<std::time::SystemTime> {
    None
}

/// Not available without /proc.
pub fn process_command(_pid: u32) -> Option<Vec<String>> {
    None
}

/// Where the holder socket `name` (`onlyone/v1/HASH`, or
/// `onlyone/v1/HASH/N` for a slot) of a lock in `dir` lives: files
/// `.onlyone-HASH.UID` (`.onlyone-HASH-N.UID`) in `dir`, one per user, so
/// that a file left by one user's killed holder never blocks another's
/// (who may not remove it from a sticky directory). This returns the part
/// before `.UID`: short, because a socket's path has at most 103 bytes on
/// macOS; and a prefix of a name gives a prefix of its path, so that a
/// pool's slots are found by listing.
pub fn holder_socket_address(dir: &Path, name: &[u8]) -> Vec<u8> {
    let name = name.strip_prefix(b"onlyone/v1/").unwrap_or(name);
    let file: Vec<u8> = name
        .iter()
        .map(|&b| if b == b'/' { b'-' } else { b })
        .collect();
    let mut path = dir.as_os_str().as_bytes().to_vec();
    path.extend_from_slice(b"/.onlyone-");
    path.extend_from_slice(&file);
    path
}

fn socket_path(address: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(address))
}

/// This user's socket file of the holder socket `address`.
fn own_socket_file(address: &[u8]) -> PathBuf {
    let mut path = address.to_vec();
    path.extend_from_slice(format!(".{}", rustix::process::geteuid().as_raw()).as_bytes());
    socket_path(&path).to_owned()
}

/// The address whose socket file (of some user) is named `file_name` in
/// `dir`, if its name starts with `start`: the name without its `.UID`.
fn address_of(dir: &Path, file_name: &[u8], start: &[u8]) -> Option<Vec<u8>> {
    if !file_name.starts_with(start) {
        return None;
    }
    let dot = file_name.iter().rposition(|&b| b == b'.')?;
    let uid = &file_name[dot + 1..];
    if dot < start.len() || uid.is_empty() || !uid.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut address = dir.as_os_str().as_bytes().to_vec();
    address.push(b'/');
    address.extend_from_slice(&file_name[..dot]);
    Some(address)
}

/// The socket files (of every user) whose addresses start with `prefix`,
/// with their addresses. Only sockets: a symlink or any other file there
/// is nobody's holder (connect(2) would follow a symlink to another
/// listener).
fn socket_files(prefix: &[u8]) -> Vec<(Vec<u8>, PathBuf)> {
    let prefix_path = socket_path(prefix);
    let (Some(dir), Some(start)) = (prefix_path.parent(), prefix.rsplit(|&b| b == b'/').next())
    else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(Vec<u8>, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let address = address_of(dir, entry.file_name().as_bytes(), start)?;
            // d_type, or lstat: never follows a symlink.
            entry
                .file_type()
                .ok()?
                .is_socket()
                .then(|| (address, entry.path()))
        })
        .collect();
    files.sort();
    files
}

/// The socket files of the holder socket `address` itself.
fn socket_files_of(address: &[u8]) -> Vec<PathBuf> {
    socket_files(address)
        .into_iter()
        .filter(|(of, _)| of == address)
        .map(|(_, file)| file)
        .collect()
}

/// The listening socket file that stands for a held lock.
#[derive(Debug)]
pub struct HolderSocket {
    /// Bound at acquisition; the command inherits it. `None`: no socket.
    listener: Option<OwnedFd>,
    path: PathBuf,
    mode: u32,
    /// The socket file's (device, inode), to see it deleted or replaced.
    file: Mutex<Option<(u64, u64)>>,
    /// Sockets bound again after the file of the first was deleted.
    rebound: Mutex<Vec<OwnedFd>>,
    /// Connections from waiters, kept open until the lock is released:
    /// their hang-up is what wakes them.
    waiters: Mutex<Vec<OwnedFd>>,
}

/// What probing a holder socket found.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketProbe {
    /// Nobody listens (or no socket file is there).
    Free,
    /// Someone listens; who, as far as the kernel tells.
    Held(SocketPeer),
}

/// What binding a holder socket came to.
#[derive(Debug)]
pub enum Bind {
    /// The socket file is ours until the socket is dropped.
    Bound(HolderSocket),
    /// Someone listens on it.
    Taken,
    /// No socket file can be made, for the reason given: without it a
    /// deleted lock file would let a second instance start, so the caller
    /// refuses to hold the lock.
    Impossible(String),
}

/// The most waiter connections a holder keeps: more wait by rechecking.
const MAX_WAITERS: usize = 256;

/// How long a new holder waits for the socket of an exiting holder to
/// close (it closes within microseconds of its lock file).
const EXITING_HOLDER: Duration = Duration::from_millis(50);

impl HolderSocket {
    /// Binds this user's socket file of `address` and listens on it,
    /// unless someone (of any user) listens on the address already. A
    /// socket file of ours nobody listens on is a released holder's: it is
    /// replaced (the caller holds the lock), as is anything else of ours
    /// there; another user's file there is left alone. A path too long for
    /// a socket, or a socket file that cannot be made, is
    /// [`Bind::Impossible`], but for a read-only filesystem, where no file
    /// can be deleted either: there the lock is held without a socket. The socket file gets `mode`, the lock files'
    /// (connecting to it needs write permission).
    pub fn bind(address: &[u8], mode: u32) -> io::Result<Bind> {
        let path = own_socket_file(address);
        if SocketAddrUnix::new(path.as_path()).is_err() {
            return Ok(Bind::Impossible(format!(
                "{} is too long a path for a Unix socket; use a lock directory with a shorter path",
                path.display()
            )));
        }
        for _ in 0..3 {
            if let SocketProbe::Held(_) = HolderSocket::probe(address)? {
                // The caller holds the file lock: most often this is its
                // previous holder exiting, whose socket closes an instant
                // after its lock file. Else a holder whose lock file was
                // deleted (it is still there after the wait).
                wait_for_hangup(&[address.to_vec()], EXITING_HOLDER);
                if let SocketProbe::Held(_) = HolderSocket::probe(address)? {
                    return Ok(Bind::Taken);
                }
            }
            match listening_socket(&path, mode) {
                Ok(fd) => {
                    // Another user's holder that bound its own file since
                    // the look above (its lock file deleted, restoring
                    // it): ours is dropped, a released socket file.
                    if socket_files_of(address)
                        .iter()
                        .any(|other| *other != path && connect_to_file(other).is_some())
                    {
                        return Ok(Bind::Taken);
                    }
                    return Ok(Bind::Bound(HolderSocket::listening(fd, &path, mode)));
                }
                Err(Errno::ADDRINUSE) => {}
                // The directory was deleted since the lock file was
                // locked: the caller probes, finds nobody, and starts over.
                Err(Errno::NOENT) => return Ok(Bind::Taken),
                // Nobody can delete the lock file either: the flock alone
                // guards it.
                Err(Errno::ROFS) => {
                    log::debug!(
                        "no holder socket at {}: the filesystem is read-only",
                        path.display()
                    );
                    return Ok(Bind::Bound(HolderSocket::none()));
                }
                Err(e) => {
                    return Ok(Bind::Impossible(format!(
                        "cannot make {}: {}",
                        path.display(),
                        io::Error::from(e)
                    )));
                }
            }
            if !remove_stale_socket(&path)? {
                return Ok(Bind::Impossible(format!(
                    "{} is another user's file, not a socket of ours; it is not ours to remove",
                    path.display()
                )));
            }
        }
        // Bound and let go of by others three times meanwhile: the caller
        // looks again.
        Ok(Bind::Taken)
    }

    fn listening(fd: OwnedFd, path: &Path, mode: u32) -> HolderSocket {
        HolderSocket {
            listener: Some(fd),
            path: path.to_owned(),
            mode,
            file: Mutex::new(file_id(path)),
            rebound: Mutex::new(Vec::new()),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// A holder without a socket: only the file lock stands for the lock.
    pub fn none() -> HolderSocket {
        HolderSocket {
            listener: None,
            path: PathBuf::new(),
            mode: 0,
            file: Mutex::new(None),
            rebound: Mutex::new(Vec::new()),
            waiters: Mutex::new(Vec::new()),
        }
    }
    /// Accepts pending connections and keeps them (status probes close
    /// theirs at once, and are let go of at the next call; waiters keep
    /// theirs until the lock is released), so that the backlog never fills.
    pub fn drain(&self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let rebound = self.rebound.lock().unwrap_or_else(|e| e.into_inner());
        for fd in std::iter::once(listener).chain(rebound.iter()) {
            while let Ok(connection) = accept_with(fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
            {
                if waiters.len() < MAX_WAITERS {
                    waiters.push(connection);
                }
            }
        }
        // A connection that is readable has been closed by its peer: the
        // holder never writes, and a peer never sends.
        let mut polled: Vec<_> = waiters
            .iter()
            .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
            .collect();
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if rustix::event::poll(&mut polled, Some(&zero)).unwrap_or(0) == 0 {
            return;
        }
        let open: Vec<bool> = polled.iter().map(|p| p.revents().is_empty()).collect();
        drop(polled);
        let mut open = open.into_iter();
        waiters.retain(|_| open.next().unwrap_or(true));
    }

    /// The connections of the waiters, for the holder to close once its
    /// lock file is closed too: woken, they find the lock free.
    pub fn take_waiters(&self) -> Vec<OwnedFd> {
        std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The descriptor, for a child that must inherit it; `None` without a
    /// socket.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.listener.as_ref().map(|fd| fd.as_fd())
    }

    /// True while our socket file is in place: starters that find it
    /// listening do not take the lock, even on a new lock file. Once it is
    /// gone (with its directory), only the file lock stood for the lock.
    pub fn guards_without_file(&self) -> bool {
        self.listener.is_some()
            && file_id(&self.path).is_some()
            && file_id(&self.path) == *self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds a new socket at the path if the socket file was deleted (with
    /// its directory, which the holder has made again), so that others
    /// still find the holder. A path that names another file now is left
    /// alone.
    pub fn rebind_if_gone(&self) {
        if self.listener.is_none() {
            return;
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if Some((meta.dev(), meta.ino())) == *file => return,
            Ok(_) => return,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return,
        }
        if let Ok(fd) = listening_socket(&self.path, self.mode) {
            *file = file_id(&self.path);
            self.rebound
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(fd);
            log::warn!(
                "the holder socket {} was deleted while held; bound it again",
                self.path.display()
            );
        }
    }

    /// Asks whether someone listens on a socket file of `address` (of any
    /// user), without binding it, and who.
    pub fn probe(address: &[u8]) -> io::Result<SocketProbe> {
        Ok(socket_files_of(address)
            .iter()
            .find_map(|file| connect_to_file(file))
            .map_or(SocketProbe::Free, |(_, peer)| SocketProbe::Held(peer)))
    }

    /// Who listens on `address`, after [`HolderSocket::bind`] found it
    /// taken; `None` when nobody does any more.
    pub fn binder(address: &[u8]) -> io::Result<Option<SocketPeer>> {
        Ok(match HolderSocket::probe(address)? {
            SocketProbe::Held(peer) => Some(peer),
            SocketProbe::Free => None,
        })
    }
}

/// A connection to the socket file `file` and who listens on it; `None`
/// when nobody does, or we may not connect (a released socket file of
/// another user's, made before the directory was shared), or `file` is
/// no longer a socket file (connect(2) follows a symlink: one swapped in
/// meanwhile is seen by the second look).
fn connect_to_file(file: &Path) -> Option<(OwnedFd, SocketPeer)> {
    let before = socket_file_id(file)?;
    let connection = match connect_to(file) {
        Ok(fd) => {
            let peer = os::peer_credentials(fd.as_fd());
            (fd, peer)
        }
        // A full backlog (Linux): someone listens but does not drain it.
        // The unconnected socket wakes a waiter at once, to look again.
        Err(Errno::AGAIN) => (unix_socket().ok()?, SocketPeer::default()),
        Err(_) => return None,
    };
    (socket_file_id(file) == Some(before)).then_some(connection)
}

/// The (device, inode) of `path` if it is a socket file (not following a
/// symlink).
fn socket_file_id(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

/// A non-blocking stream socket listening at `path`, with `mode`;
/// `ADDRINUSE` when a file is there. It is bound in a private directory
/// of its own (`.onlyone-new-PID-N`, 0700) and given its mode there, by a
/// path relative to that directory's descriptor: in a shared directory a
/// file named by its path can be swapped for a symlink between the bind
/// and the chmod, which would then change another file's mode. It is
/// linked to `path` only once it listens: a socket file seen at `path`
/// always has a listener (else a starter would take it for a released
/// holder's, and remove it), and `link` never replaces what is there.
fn listening_socket(path: &Path, mode: u32) -> Result<OwnedFd, Errno> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    use std::sync::atomic::{AtomicU32, Ordering};
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let staging = dir.join(format!(
        ".onlyone-new-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    // Left over by a process of this pid that was killed right here.
    let _ = rustix::fs::unlink(staging.join("s"));
    let _ = rustix::fs::rmdir(&staging);
    rustix::fs::mkdir(&staging, Mode::from_raw_mode(0o700))?;
    let private = rustix::fs::open(
        &staging,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    );
    private.and_then(|private| {
        let bound = bind_in(&private, &staging, path, mode);
        let _ = rustix::fs::unlinkat(&private, "s", AtFlags::empty());
        // Only the directory we made: one put in its place is not ours.
        let made = rustix::fs::fstat(&private)?;
        if rustix::fs::lstat(&staging)
            .is_ok_and(|now| (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino))
        {
            let _ = rustix::fs::rmdir(&staging);
        }
        bound
    })
}

/// Binds a socket at `s` in the private directory `private` (at
/// `staging`), gives it `mode`, listens, and links it to `path`.
fn bind_in(private: &OwnedFd, staging: &Path, path: &Path, mode: u32) -> Result<OwnedFd, Errno> {
    use rustix::fs::{AtFlags, CWD, Mode};
    let fd = unix_socket()?;
    bind(&fd, &SocketAddrUnix::new(staging.join("s").as_path())?)?;
    // By the descriptor of the directory we made: if its name was swapped
    // for another directory, the socket is not in ours and this fails.
    rustix::fs::chmodat(private, "s", Mode::from_raw_mode(mode), AtFlags::empty())?;
    listen(&fd, 64)?;
    match rustix::fs::linkat(private, "s", CWD, path, AtFlags::empty()) {
        Ok(()) => Ok(fd),
        Err(Errno::EXIST) => Err(Errno::ADDRINUSE),
        Err(e) => Err(e),
    }
}

/// A socket connected to the one listening at `path`.
fn connect_to(path: &Path) -> Result<OwnedFd, Errno> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = unix_socket()?;
    connect(&fd, &addr)?;
    Ok(fd)
}

fn unix_socket() -> Result<OwnedFd, Errno> {
    socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// Removes what is at `path`, this user's socket file, unless someone
/// listens on it: a released holder's socket file (a holder's socket
/// listens before its file appears), or anything else of ours (a symlink,
/// a plain file). False when it is another user's, which is not ours to
/// remove.
fn remove_stale_socket(path: &Path) -> io::Result<bool> {
    let stale = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.uid() != rustix::process::geteuid().as_raw() => return Ok(false),
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(err) => return Err(err),
    };
    // Checked again right before: a socket file put there meanwhile is
    // a new holder's.
    if connect_to_file(path).is_some() || file_id(path) != Some(stale) {
        return Ok(true);
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(true),
    }
}

/// The addresses of the holder sockets that start with `prefix` and that
/// someone listens on: the socket files in `prefix`'s directory.
pub fn holder_socket_names(prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = socket_files(prefix)
        .into_iter()
        .filter(|(_, file)| connect_to_file(file).is_some())
        .map(|(address, _)| address)
        .collect();
    names.dedup();
    names
}

/// Waits until one of the holders listening at `addresses` releases its
/// lock (its socket hangs up on our connection), at most `timeout`. False
/// at once when one of them has no socket to connect to: the caller looks
/// again after a short nap instead.
pub fn wait_for_hangup(addresses: &[Vec<u8>], timeout: Duration) -> bool {
    let mut connections = Vec::new();
    for address in addresses {
        let connected = socket_files_of(address)
            .iter()
            .find_map(|file| connect_to_file(file));
        match connected {
            Some((fd, _)) => connections.push(fd),
            None => return false,
        }
    }
    let mut polled: Vec<_> = connections
        .iter()
        .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
        .collect();
    let timeout = rustix::time::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let _ = rustix::event::poll(&mut polled, Some(&timeout));
    true
}

/// No parent-death signal here: the guardian kills the command's group
/// when the supervisor dies, and meanwhile the command keeps the lock by
/// the descriptor it inherited. Only checks that the supervisor is still
/// its parent. Async-signal-safe.
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
        return Err(io::Error::other(
            "the supervisor exited before the command started",
        ));
    }
    Ok(())
}

/// Whether the processes holding a file lock can be listed (only a holder's socket names it).
pub const FLOCK_HOLDERS_VISIBLE: bool = false;

/// The per-user default lock directory. On macOS `$TMPDIR/onlyone`: the
/// per-user temporary directory under `/var/folders`, asked of the system
/// so that a login shell, launchd and cron (which sets no `TMPDIR`) find
/// the same one. Elsewhere `/tmp/onlyone-<uid>`, whatever the environment.
pub fn default_lock_dir() -> std::path::PathBuf {
    #[cfg(target_os = "macos")]
    if let Some(temp) = super::macos::user_temp_dir() {
        return temp.join("onlyone");
    }
    format!("/tmp/onlyone-{}", super::uid()).into()
}

/// Not detected here.
pub fn network_filesystem(_dir: &std::path::Path) -> Option<&'static str> {
    None
}

/// Which changes in a directory would wake a [`DirWatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirEvents {
    /// A file closed, deleted or renamed.
    Releases,
    /// A file created, written to, its mode changed, deleted or renamed.
    Writes,
}

/// No directory watch here (kqueue does not see a file closed): waiters
/// wait on the holder's socket, or look again after a short nap.
#[derive(Debug)]
pub struct DirWatch(());

impl DirWatch {
    /// Never available.
    pub fn new(_dir: &std::path::Path, _events: DirEvents) -> Option<DirWatch> {
        None
    }
    /// Never called: there is no watch.
    pub fn wait(&self, timeout: std::time::Duration) {
        std::thread::sleep(timeout.min(std::time::Duration::from_millis(50)));
    }
}

/// Not available without /proc: a killed supervisor's command is stopped
/// by its guardian instead.
pub fn children_of(_pid: u32) -> Vec<u32> {
    Vec::new()
}

/// A process to signal, by its pid, checked against its start time.
#[derive(Debug)]
pub struct Process(u32);

impl Process {
    /// The process `pid`, if it exists and, when `start_time` is given,
    /// started at that time.
    pub fn open(pid: u32, start_time: Option<u64>) -> Option<Process> {
        if start_time.is_some() && process_start_time(pid) != start_time {
            return None;
        }
        super::pid_exists(pid).then_some(Process(pid))
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        super::signal_process(self.0, signal)
    }
}

/// Not available: orphans go to init.
/// In a freshly forked child: closes every descriptor below 1024 but
/// `keep` (no portable call closes a range). Async-signal-safe.
///
/// # Safety
///
/// The descriptors closed must never be used again: only in a forked
/// child that ends without returning into code that owns them.
pub unsafe fn close_all_but(keep: i32) {
    // SAFETY: as this function's.
    unsafe { super::unix::close_below_1024_but(keep) }
}

pub fn become_subreaper() {}

/// The system layer's process-wide mutexes held across a fork: none here
/// is taken on the acquire path.
pub fn hold_for_fork() -> Option<Box<dyn std::any::Any>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_of_a_name_gives_a_prefix_of_its_address() {
        let dir = Path::new("/locks");
        assert_eq!(
            holder_socket_address(dir, b"onlyone/v1/ab12"),
            b"/locks/.onlyone-ab12".to_vec()
        );
        let slot = holder_socket_address(dir, b"onlyone/v1/ab12/3");
        assert_eq!(slot, b"/locks/.onlyone-ab12-3".to_vec());
        assert!(slot.starts_with(&holder_socket_address(dir, b"onlyone/v1/ab12/")));
    }

    /// Every user's socket file of a name is found by its address; slots
    /// by the pool's prefix; a staging directory is nobody's.
    #[test]
    fn socket_files_are_read_back_as_their_addresses() {
        let dir = Path::new("/locks");
        let lock = holder_socket_address(dir, b"onlyone/v1/ab12");
        let start = b".onlyone-ab12".as_slice();
        assert_eq!(address_of(dir, b".onlyone-ab12.1000", start), Some(lock));
        assert_eq!(address_of(dir, b".onlyone-ab12.", start), None);
        assert_eq!(address_of(dir, b".onlyone-ab12.x1", start), None);
        let slots = b".onlyone-ab12-".as_slice();
        assert_eq!(
            address_of(dir, b".onlyone-ab12-3.0", slots),
            Some(holder_socket_address(dir, b"onlyone/v1/ab12/3"))
        );
        assert_eq!(address_of(dir, b".onlyone-new-12-0", b".onlyone-"), None);
    }

    /// A bound socket names this process; once dropped, its file is a
    /// released holder's, which the next holder replaces.
    #[test]
    fn the_socket_file_names_its_holder_and_is_replaced_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let address = holder_socket_address(dir.path(), b"onlyone/v1/cafe");
        assert_eq!(HolderSocket::probe(&address).unwrap(), SocketProbe::Free);
        let Bind::Bound(socket) = HolderSocket::bind(&address, 0o600).unwrap() else {
            panic!("not bound");
        };
        let me = SocketPeer {
            pid: Some(std::process::id()),
            uid: Some(super::super::uid()),
            gid: Some(rustix::process::getegid().as_raw()),
        };
        assert_eq!(
            HolderSocket::probe(&address).unwrap(),
            SocketProbe::Held(me)
        );
        assert!(socket.guards_without_file());
        assert!(matches!(
            HolderSocket::bind(&address, 0o600).unwrap(),
            Bind::Taken
        ));
        assert_eq!(
            holder_socket_names(&address[..address.len() - 2]),
            vec![address.clone()]
        );
        drop(socket);
        assert_eq!(HolderSocket::probe(&address).unwrap(), SocketProbe::Free);
        let Bind::Bound(again) = HolderSocket::bind(&address, 0o600).unwrap() else {
            panic!("the released socket file was not replaced");
        };
        assert!(again.guards_without_file());
        // Deleted (with its directory's other files): bound again, in place.
        std::fs::remove_file(own_socket_file(&address)).unwrap();
        assert!(!again.guards_without_file());
        again.rebind_if_gone();
        assert!(again.guards_without_file());
        assert!(matches!(
            HolderSocket::probe(&address).unwrap(),
            SocketProbe::Held(_)
        ));
    }

    /// A waiter's connection hangs up when the holder lets go.
    #[test]
    fn a_waiter_wakes_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let address = holder_socket_address(dir.path(), b"onlyone/v1/beef");
        let Bind::Bound(socket) = HolderSocket::bind(&address, 0o600).unwrap() else {
            panic!("not bound");
        };
        let started = std::time::Instant::now();
        let waiter = std::thread::spawn({
            let address = address.clone();
            move || wait_for_hangup(&[address], Duration::from_secs(20))
        });
        // Accept the waiter's connection as the holder's watcher does,
        // until it is there.
        while socket.waiters.lock().unwrap().is_empty() {
            socket.drain();
            std::thread::yield_now();
        }
        let waiters = socket.take_waiters();
        drop(socket);
        drop(waiters);
        assert!(waiter.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
