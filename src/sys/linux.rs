//! Linux: /proc, abstract-namespace sockets, parent-death signals.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

mod mountinfo;
mod unix_diag;

use super::{FsLocation, SocketPeer};
use rustix::net::{
    AddressFamily, SocketAddrUnix, SocketFlags, SocketType, accept_with, bind, connect, listen,
    socket_with,
};

pub use super::procfs::{
    children_of, flock_holders, process_command, process_name, process_start_time, stat_field,
};

/// The parent of process `pid` (field 4 of `/proc/PID/stat`).
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_field(pid, 4)?.parse().ok().filter(|&p| p != 0)
}

/// This boot's id: a random UUID chosen by the kernel at boot.
pub fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned())
}

/// The pids blocked in flock(2) until the inode `(dev, ino)` is free, read
/// from `/proc/locks` (its "-> FLOCK" lines); `None` when they cannot be
/// known.
pub fn flock_waiters(dev: u64, ino: u64) -> Option<Vec<u32>> {
    let locks = fs::read_to_string("/proc/locks").ok()?;
    Some(super::procfs::parse_flocks(
        &locks,
        &super::procfs::inode_id(dev, ino),
        true,
    ))
}

/// True when process `pid` holds a flock(2) lock on some file of the
/// filesystem `device` (major, minor), as `/proc/locks` lists them.
pub fn holds_flock_on(pid: u32, device: (u32, u32)) -> bool {
    let Ok(locks) = fs::read_to_string("/proc/locks") else {
        return false;
    };
    let prefix = format!("{:02x}:{:02x}:", device.0, device.1);
    locks.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some("FLOCK")
            && fields.nth(2).and_then(|p| p.parse().ok()) == Some(pid)
            && fields.next().is_some_and(|id| id.starts_with(&prefix))
    })
}

/// The supplementary groups of process `pid` (`Groups:` in
/// `/proc/PID/status`), when it exists.
pub fn supplementary_groups(pid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let groups = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        groups
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

/// The system layer's process-wide mutexes (the mount table's), held
/// across a fork so that no child inherits one locked (see `ticker.rs`).
pub fn hold_for_fork() -> Option<Box<dyn std::any::Any>> {
    Some(mountinfo::hold_for_fork())
}

/// Where the directory at `canonical` (an absolute path, symlinks resolved;
/// its last components may not exist yet) lives: the filesystem it is on
/// and its path inside that filesystem, from `/proc/self/mountinfo`. One
/// directory reached through two bind mounts has one location; the same
/// path on two filesystems (a tmpfs of one's own over `/dev/shm`) has two.
/// `None` when the mount table cannot be read.
pub fn filesystem_location(canonical: &std::path::Path) -> Option<FsLocation> {
    use std::os::unix::ffi::OsStrExt;
    mountinfo::with_table(|mounts| mountinfo::locate(mounts, canonical.as_os_str().as_bytes()))?
}

/// When process `pid` started: its start time (clock ticks since boot)
/// counted back from now on the clock since boot.
pub fn process_started_at(pid: u32) -> Option<std::time::SystemTime> {
    use std::time::{Duration, SystemTime};
    let ticks = process_start_time(pid)?;
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|&n| n > 0)?;
    let started = Duration::from_millis(ticks.checked_mul(1000)? / per_second);
    let now = SystemTime::now();
    let uptime = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let uptime = Duration::new(
        u64::try_from(uptime.tv_sec).ok()?,
        u32::try_from(uptime.tv_nsec).ok()?,
    );
    now.checked_sub(uptime.checked_sub(started)?)
}

/// A kernel object that stands for "the lock named X is held", independent of
/// any path: a listening abstract-namespace Unix socket. Deleting files or
/// directories cannot remove it; the kernel frees it when the last process
/// holding the descriptor exits.
#[derive(Debug)]
pub struct HolderSocket(Option<OwnedFd>);

/// What probing a holder socket found.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketProbe {
    /// Nobody listens: no onlyone process on this machine holds the lock.
    Free,
    /// Someone listens (or has the name bound); who, as far as the kernel
    /// tells.
    Held(SocketPeer),
}

/// What binding a holder socket came to.
#[derive(Debug)]
pub enum Bind {
    /// The name is ours until the socket is dropped.
    Bound(HolderSocket),
    /// Another socket has the name.
    Taken,
    /// No socket can be made (never here: an abstract socket needs no
    /// file).
    Impossible(String),
}

impl HolderSocket {
    /// Binds the socket named `name`, and listens on it. An abstract
    /// socket has no mode: `_mode` is for a socket that is a file.
    pub fn bind(name: &[u8], _mode: u32) -> io::Result<Bind> {
        let (fd, addr) = unix_socket(name)?;
        match bind(&fd, &addr) {
            Ok(()) => {}
            Err(rustix::io::Errno::ADDRINUSE) => return Ok(Bind::Taken),
            Err(e) => return Err(e.into()),
        }
        listen(&fd, 64)?;
        Ok(Bind::Bound(HolderSocket(Some(fd))))
    }

    /// A holder without a socket: its name is bound by a process that
    /// cannot be a holder, so only the file lock stands for the lock.
    pub fn none() -> HolderSocket {
        HolderSocket(None)
    }

    /// Accepts and closes pending connections (status probes), so that the
    /// backlog never fills up.
    pub fn drain(&self) {
        if let Some(fd) = &self.0 {
            while accept_with(fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK).is_ok() {}
        }
    }

    /// True when there is a socket: its abstract name stays bound while
    /// the lock file or its directory is deleted, and starters that find
    /// it bound do not take the lock.
    pub fn guards_without_file(&self) -> bool {
        self.0.is_some()
    }

    /// Nothing to do: an abstract name has no file to delete.
    pub fn rebind_if_gone(&self) {}

    /// None: waiters are not connected here.
    pub fn take_waiters(&self) -> Vec<OwnedFd> {
        Vec::new()
    }

    /// The descriptor, for a child that must inherit it; `None` without a
    /// socket.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.0.as_ref().map(|fd| fd.as_fd())
    }

    /// Asks whether someone listens on the socket `name`, without binding
    /// it, and who.
    pub fn probe(name: &[u8]) -> io::Result<SocketProbe> {
        let (fd, addr) = unix_socket(name)?;
        match connect(&fd, &addr) {
            Ok(()) => Ok(SocketProbe::Held(super::procfs::peer_credentials(
                fd.as_fd(),
            ))),
            // A full backlog: someone listens but does not drain it. Who
            // bound it is still known to the kernel.
            Err(rustix::io::Errno::AGAIN) => Ok(SocketProbe::Held(SocketPeer {
                uid: socket_owner(name),
                ..SocketPeer::default()
            })),
            Err(rustix::io::Errno::CONNREFUSED) => Ok(SocketProbe::Free),
            Err(e) => Err(e.into()),
        }
    }

    /// Who has the name `name` bound, after [`HolderSocket::bind`] found it
    /// taken: the listener, or a socket bound without listening (which no
    /// probe can connect to); `None` when nobody has it any more.
    pub fn binder(name: &[u8]) -> io::Result<Option<SocketPeer>> {
        if let SocketProbe::Held(peer) = HolderSocket::probe(name)? {
            return Ok(Some(peer));
        }
        match bound_socket_uids(name) {
            Ok(uids) => Ok(uids.first().map(|&uid| SocketPeer {
                uid: Some(uid),
                ..SocketPeer::default()
            })),
            // Someone had it a moment ago, and who cannot be known.
            Err(_) => Ok(Some(SocketPeer::default())),
        }
    }
}

/// The owner of the socket bound to the abstract name `name`, from the
/// kernel's socket diagnostics; `None` when that cannot be known.
fn socket_owner(name: &[u8]) -> Option<u32> {
    bound_socket_uids(name).ok()?.first().copied()
}

/// The owners (uids) of the stream sockets bound to the abstract name
/// `name` in this network namespace, from the kernel's socket diagnostics
/// (sock_diag; the owner since Linux 5.3): the listening one first, then
/// one bound without listening, then connections accepted on it.
fn bound_socket_uids(name: &[u8]) -> io::Result<Vec<u32>> {
    let mut abstract_name = vec![0u8];
    abstract_name.extend_from_slice(name);
    let mut sockets: Vec<_> = unix_diag::dump(u32::MAX)?
        .into_iter()
        .filter(|socket| socket.stream && socket.name.as_deref() == Some(&abstract_name[..]))
        .collect();
    sockets.sort_by_key(|socket| match socket.state {
        unix_diag::LISTEN => 0,
        unix_diag::UNCONNECTED => 1,
        _ => 2,
    });
    Ok(sockets
        .into_iter()
        .filter_map(|socket| socket.uid)
        .collect())
}

/// The address of the holder socket `name` of a lock in a directory: the
/// abstract name itself, which no deletion of the directory can remove.
pub fn holder_socket_address(_dir: &std::path::Path, name: &[u8]) -> Vec<u8> {
    name.to_vec()
}

/// Never waits: inotify wakes waiters here. (The abstract socket could
/// serve as well; it is not needed.)
pub fn wait_for_hangup(_addresses: &[Vec<u8>], _timeout: std::time::Duration) -> bool {
    false
}

/// The abstract names (without the leading NUL) of the listening stream
/// sockets in this network namespace whose name starts with `prefix`; each
/// once. From the kernel's socket diagnostics, else (no netlink allowed)
/// from `/proc/net/unix`, which the kernel takes longer to make (three
/// times, with a thousand sockets).
pub fn holder_socket_names(prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut names = match unix_diag::dump(1 << unix_diag::LISTEN) {
        Ok(sockets) => sockets
            .into_iter()
            .filter(|socket| socket.stream)
            .filter_map(|socket| Some(socket.name?.strip_prefix(b"\0")?.to_vec()))
            .filter(|name| name.starts_with(prefix))
            .collect(),
        Err(_) => match fs::read("/proc/net/unix") {
            Ok(table) => parse_abstract_names(&table, prefix),
            Err(_) => Vec::new(),
        },
    };
    names.sort();
    names.dedup();
    names
}

/// The names in a `/proc/net/unix` table: an abstract name is shown with
/// `@` for its leading NUL, after seven fields (the fourth from last,
/// `Type`, is 0001 for a stream socket).
fn parse_abstract_names(table: &[u8], prefix: &[u8]) -> Vec<Vec<u8>> {
    table
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
            let kind = fields.nth(4)?;
            let path = fields.nth(2)?;
            let name = path.strip_prefix(b"@")?;
            (kind == b"0001" && name.starts_with(prefix)).then(|| name.to_vec())
        })
        .collect()
}

/// A non-blocking stream socket, and the abstract address `name`.
fn unix_socket(name: &[u8]) -> io::Result<(OwnedFd, SocketAddrUnix)> {
    let addr = SocketAddrUnix::new_abstract_name(name)?;
    let fd = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    Ok((fd, addr))
}

/// In a freshly forked child: ask the kernel to kill us with SIGKILL when
/// the parent (the supervisor) dies, and close the race where it died
/// before we asked. Only async-signal-safe calls.
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
        return Err(io::Error::other(
            "the supervisor exited before the command started",
        ));
    }
    Ok(())
}

/// Whether the processes holding a file lock can be listed (/proc/locks names them).
pub const FLOCK_HOLDERS_VISIBLE: bool = true;

/// The per-user default lock directory: `/dev/shm/onlyone-<uid>`, else
/// `/tmp/onlyone-<uid>` where `/dev/shm` is not a directory. It depends on
/// nothing in the environment, so a login shell, cron, `su`/`sudo -u` and a
/// systemd service (`PrivateTmp=`, `PrivateNetwork=`; `PrivateDevices=`
/// mounts `/dev/shm` in) all use the same one: the abstract socket alone
/// cannot join two directories, because it is per network namespace.
pub fn default_lock_dir() -> std::path::PathBuf {
    let uid = super::uid();
    if std::path::Path::new("/dev/shm").is_dir() {
        format!("/dev/shm/onlyone-{uid}").into()
    } else {
        format!("/tmp/onlyone-{uid}").into()
    }
}

/// The network filesystem `dir` is on ("NFS", "SMB/CIFS"), where flock(2)
/// is emulated with byte-range locks that may hang or silently not
/// exclude; `None` on a local one, or when it cannot be told.
pub fn network_filesystem(dir: &std::path::Path) -> Option<&'static str> {
    const NFS: i64 = 0x6969;
    const SMB: i64 = 0x517b;
    const CIFS: i64 = 0xff53_4d42;
    const SMB2: i64 = 0xfe53_4d42;
    let stat = rustix::fs::statfs(dir).ok()?;
    // f_type's integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    match stat.f_type as i64 {
        NFS => Some("NFS"),
        SMB | CIFS | SMB2 => Some("SMB/CIFS"),
        _ => None,
    }
}

/// Which changes in a directory wake a [`DirWatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirEvents {
    /// A file closed, deleted or renamed: a lock may have been released.
    Releases,
    /// A file created, written to, or its mode changed, deleted or renamed;
    /// not opened or closed, so that a waiter letting go of a file does not
    /// wake itself: a holder restoring its deleted lock file.
    Writes,
}

/// Wakes up on changes in a directory (inotify): how a waiter learns that
/// a lock may have been released without taking it.
#[derive(Debug)]
pub struct DirWatch(OwnedFd);

impl DirWatch {
    /// Watches `dir` for `events`; `None` when inotify is not available.
    pub fn new(dir: &std::path::Path, events: DirEvents) -> Option<DirWatch> {
        use rustix::fs::inotify::{self, WatchFlags};
        let fd =
            inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
        let gone = WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF;
        let events = match events {
            DirEvents::Releases => gone | WatchFlags::CLOSE_WRITE | WatchFlags::CLOSE_NOWRITE,
            DirEvents::Writes => {
                gone | WatchFlags::CREATE | WatchFlags::MODIFY | WatchFlags::ATTRIB
            }
        };
        inotify::add_watch(&fd, dir, events).ok()?;
        Some(DirWatch(fd))
    }

    /// Waits for the next event or `timeout`, then discards what arrived.
    pub fn wait(&self, timeout: std::time::Duration) {
        let mut poll = [rustix::event::PollFd::new(
            &self.0,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let _ = rustix::event::poll(&mut poll, Some(&timeout));
        let mut buf = [0u8; 4096];
        while matches!(rustix::io::read(&self.0, &mut buf), Ok(n) if n > 0) {}
    }
}

/// A process held fast for signalling: a pidfd, so that a signal can never
/// reach a later process that reuses the pid.
#[derive(Debug)]
pub struct Process(ProcessRef);

#[derive(Debug)]
enum ProcessRef {
    Fd(OwnedFd),
    /// Kernels before 5.3 have no pidfd: the pid, checked just before.
    Pid(u32),
}

impl Process {
    /// Holds process `pid` if it exists and, when `start_time` is given,
    /// started at that time; `None` otherwise.
    pub fn open(pid: u32, start_time: Option<u64>) -> Option<Process> {
        let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let process = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => ProcessRef::Fd(fd),
            Err(rustix::io::Errno::NOSYS) => ProcessRef::Pid(pid),
            Err(_) => return None,
        };
        // Checked once the process is held: a pid reused before that shows
        // another start time.
        if start_time.is_some() && process_start_time(pid) != start_time {
            return None;
        }
        Some(Process(process))
    }

    /// Sends `signal` to the process held (nothing happens if it has exited
    /// since).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let sig = super::unix::checked_signal(signal)?;
        match &self.0 {
            ProcessRef::Fd(fd) => match rustix::process::pidfd_send_signal(fd, sig) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
                Err(err) => Err(err.into()),
            },
            ProcessRef::Pid(pid) => super::signal_process(*pid, signal),
        }
    }
}

/// Makes orphaned descendants our children instead of init's.
/// In a freshly forked child: closes every descriptor but `keep`, in two
/// `close_range` calls (Linux 5.9) instead of a `close` per possible
/// descriptor (a thousand system calls, which the supervisor waited for
/// when it reaped its guardian). Falls back to that loop on older kernels.
/// Async-signal-safe.
///
/// # Safety
///
/// The descriptors closed must never be used again: only in a forked
/// child that ends without returning into code that owns them.
pub unsafe fn close_all_but(keep: i32) {
    // SAFETY: plain system calls on integers (see the function's safety).
    unsafe {
        let keep = keep.max(0) as libc::c_uint;
        let low = keep == 0 || libc::syscall(libc::SYS_close_range, 0, keep - 1, 0) == 0;
        let high = libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0) == 0;
        if !(low && high) {
            super::unix::close_below_1024_but(keep as i32);
        }
    }
}

pub fn become_subreaper() {
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_started_before_now_and_runs_its_own_command() {
        let started = process_started_at(std::process::id()).unwrap();
        assert!(started <= std::time::SystemTime::now());
        let command = process_command(std::process::id()).unwrap();
        let me = std::env::args().collect::<Vec<_>>();
        assert_eq!(command, me);
    }

    #[test]
    fn lists_abstract_stream_socket_names_with_a_prefix() {
        let table = b"\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 101 @onlyone/v1/ab/1
0000000000000000: 00000003 00000000 00000000 0001 03 102 @onlyone/v1/ab/1
0000000000000000: 00000002 00000000 00010000 0001 01 103 @onlyone/v1/ab/12
0000000000000000: 00000002 00000000 00000000 0002 01 104 @onlyone/v1/ab/3
0000000000000000: 00000002 00000000 00010000 0001 01 105 @onlyone/v1/abc/4
0000000000000000: 00000002 00000000 00010000 0001 01 106 /run/onlyone/v1/ab/5
0000000000000000: 00000002 00000000 00010000 0001 01 107
";
        assert_eq!(
            parse_abstract_names(table, b"onlyone/v1/ab/"),
            vec![
                b"onlyone/v1/ab/1".to_vec(),
                b"onlyone/v1/ab/1".to_vec(),
                b"onlyone/v1/ab/12".to_vec()
            ]
        );
    }

    /// The kernel's own table: a socket bound here is listed with its name
    /// and owner.
    #[test]
    fn finds_the_owner_of_a_bound_abstract_name() {
        let name = format!("onlyone-test/{}/owner", std::process::id());
        let Bind::Bound(_socket) = HolderSocket::bind(name.as_bytes(), 0o600).unwrap() else {
            panic!("the name is taken");
        };
        assert_eq!(
            bound_socket_uids(name.as_bytes()).unwrap(),
            vec![super::super::uid()]
        );
        assert_eq!(
            holder_socket_names(name.as_bytes()),
            vec![name.clone().into_bytes()]
        );
        let probed = HolderSocket::probe(name.as_bytes()).unwrap();
        assert_eq!(
            probed,
            SocketProbe::Held(SocketPeer {
                pid: Some(std::process::id()),
                uid: Some(super::super::uid()),
                gid: Some(rustix::process::getegid().as_raw()),
            })
        );
    }

    #[test]
    fn parent_of_self_is_getppid() {
        let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
        assert_eq!(parent_of(std::process::id()), parent);
    }

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id();
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(me), process_start_time(me));
    }
}
