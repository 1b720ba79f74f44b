//! Linux: /proc, abstract-namespace sockets, parent-death signals.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    AddressFamily, SocketAddrUnix, SocketFlags, SocketType, accept_with, bind, connect, listen,
    socket_with, sockopt,
};

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), which together with the boot id tells a process from
/// a later one that reuses its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or
    // parentheses itself: fields after it are counted from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// This boot's id: a random UUID chosen by the kernel at boot.
pub fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned())
}

/// The pids that hold a granted flock(2) lock on the inode `(dev, ino)`,
/// read from `/proc/locks`. Reading it never takes or disturbs a lock.
pub fn flock_holders(dev: u64, ino: u64) -> Vec<u32> {
    let Ok(locks) = fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let id = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        ino
    );
    parse_flock_holders(&locks, &id)
}

fn parse_flock_holders(locks: &str, id: &str) -> Vec<u32> {
    locks
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            // Blocked waiters are listed as "-> FLOCK ...": only holders count.
            if fields.next()? != "FLOCK" {
                return None;
            }
            let mut fields = fields.skip(2);
            let pid = fields.next()?;
            (fields.next()? == id).then(|| pid.parse().ok())?
        })
        .collect()
}

/// A kernel object that stands for "the lock named X is held", independent of
/// any path: a listening abstract-namespace Unix socket. Deleting files or
/// directories cannot remove it; the kernel frees it when the last process
/// holding the descriptor exits.
#[derive(Debug)]
pub struct HolderSocket(OwnedFd);

/// What probing a holder socket found.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketProbe {
    /// Nobody listens: no onlyone process on this machine holds the lock.
    Free,
    /// Someone listens; the pid comes from the socket's peer credentials
    /// when the kernel could give them.
    Held(Option<u32>),
}

impl HolderSocket {
    /// Binds the socket named `name`; `Ok(None)` when another process has it.
    pub fn bind(name: &[u8]) -> io::Result<Option<HolderSocket>> {
        let (fd, addr) = unix_socket(name)?;
        match bind(&fd, &addr) {
            Ok(()) => {}
            Err(rustix::io::Errno::ADDRINUSE) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        listen(&fd, 64)?;
        Ok(Some(HolderSocket(fd)))
    }

    /// Accepts and closes pending connections (status probes), so that the
    /// backlog never fills up.
    pub fn drain(&self) {
        while accept_with(&self.0, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK).is_ok() {}
    }

    /// The descriptor, for a child that must inherit it.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.0.as_fd())
    }

    /// Asks whether someone listens on the socket `name`, without binding it.
    pub fn probe(name: &[u8]) -> io::Result<SocketProbe> {
        let (fd, addr) = unix_socket(name)?;
        match connect(&fd, &addr) {
            Ok(()) => {
                let pid = sockopt::socket_peercred(&fd)
                    .ok()
                    .map(|cred| cred.pid.as_raw_nonzero().get() as u32);
                Ok(SocketProbe::Held(pid))
            }
            // A full backlog: someone listens but is slow to drain it.
            Err(rustix::io::Errno::AGAIN) => Ok(SocketProbe::Held(None)),
            Err(rustix::io::Errno::CONNREFUSED) => Ok(SocketProbe::Free),
            Err(e) => Err(e.into()),
        }
    }
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

/// The default lock directory when `XDG_RUNTIME_DIR` is not set.
pub fn default_temp_dir() -> std::path::PathBuf {
    format!("/tmp/onlyone-{}", super::uid()).into()
}

/// Refuses a directory on a network filesystem, where flock(2) is emulated
/// with byte-range locks that may hang or silently not exclude.
pub fn refuse_network_fs(dir: &std::path::Path) -> crate::Result<()> {
    const NFS: i64 = 0x6969;
    const SMB: i64 = 0x517b;
    const CIFS: i64 = 0xff53_4d42;
    const SMB2: i64 = 0xfe53_4d42;
    let Ok(stat) = rustix::fs::statfs(dir) else {
        return Ok(());
    };
    // f_type's integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let kind = stat.f_type as i64;
    let name = match kind {
        NFS => "NFS",
        SMB | CIFS | SMB2 => "SMB/CIFS",
        _ => return Ok(()),
    };
    Err(crate::Error::unsafe_(format!(
        "refusing a lock directory on {name}: file locks there may not exclude other machines; use a local directory, or --postgres across machines"
    ))
    .with_path(dir))
}

/// Wakes up when files in a directory are closed, deleted or renamed
/// (inotify): how a waiter learns that a lock may have been released
/// without taking it.
#[derive(Debug)]
pub struct DirWatch(OwnedFd);

impl DirWatch {
    /// Watches `dir`; `None` when inotify is not available.
    pub fn new(dir: &std::path::Path) -> Option<DirWatch> {
        use rustix::fs::inotify;
        let fd =
            inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
        let events = inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::CLOSE_NOWRITE
            | inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::DELETE_SELF;
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

/// The pids of the children of `pid` (from `/proc/PID/task/*/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Makes orphaned descendants our children instead of init's.
pub fn become_subreaper() {
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_holders_not_waiters_from_proc_locks() {
        let locks = "\
1: FLOCK  ADVISORY  WRITE 1234 00:2a:12345 0 EOF
1: -> FLOCK  ADVISORY  WRITE 999 00:2a:12345 0 EOF
2: POSIX  ADVISORY  WRITE 5678 00:2a:12345 0 EOF
3: FLOCK  ADVISORY  WRITE 42 00:2a:123456 0 EOF
";
        assert_eq!(parse_flock_holders(locks, "00:2a:12345"), vec![1234]);
    }

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id();
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(me), process_start_time(me));
    }
}
