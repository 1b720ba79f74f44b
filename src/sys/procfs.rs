//! Linux: what /proc tells of a process and of flock(2) locks, and a socket peer's
//! credentials from SO_PEERCRED, for both Linux builds (the portable one
//! asks Linux what macOS's `proc_pidinfo` and `LOCAL_PEERPID` answer there).

use std::os::fd::{AsRawFd, BorrowedFd};

use super::SocketPeer;

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), which together with the boot id tells a process from
/// a later one that reuses its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)?.parse().ok()
}

/// Field `field` of `/proc/PID/stat`, numbered as proc(5) numbers them
/// (3 is the state, 4 the parent, 5 the process group, 6 the session, 8
/// the terminal's foreground group, 9 the flags, 22 the start time); from
/// 3 on. `None` when the process is gone.
pub fn stat_field(pid: u32, field: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or
    // parentheses itself: fields after it are counted from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let value = after_name.split_whitespace().nth(field.checked_sub(3)?)?;
    Some(value.to_owned())
}

/// The pids of the children of `pid` (from `/proc/PID/task/*/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The pids that hold a granted flock(2) lock on the inode `(dev, ino)`,
/// read from `/proc/locks`; `None` when they cannot be known. Reading it
/// never takes or disturbs a lock.
pub fn flock_holders(dev: u64, ino: u64) -> Option<Vec<u32>> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    Some(parse_flocks(&locks, &inode_id(dev, ino), false))
}

/// An inode as `/proc/locks` names it: `MAJOR:MINOR:INODE`.
pub(super) fn inode_id(dev: u64, ino: u64) -> String {
    format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        ino
    )
}

/// The command name of process `pid` (`/proc/PID/comm`), for messages.
pub fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_owned())
}

/// The pids of the flock(2) lines of `/proc/locks` on inode `id`: the
/// holders, or the blocked waiters (listed as "-> FLOCK ...").
pub(super) fn parse_flocks(locks: &str, id: &str, waiting: bool) -> Vec<u32> {
    locks
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1).peekable();
            let blocked = fields.next_if_eq(&"->").is_some();
            if fields.next()? != "FLOCK" || blocked != waiting {
                return None;
            }
            let mut fields = fields.skip(2);
            let pid = fields.next()?;
            (fields.next()? == id).then(|| pid.parse().ok())?
        })
        .collect()
}

/// The command line of process `pid` (`/proc/PID/cmdline`), each word as
/// UTF-8 with its bad bytes replaced; `None` when it cannot be read.
pub fn process_command(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(&bytes);
    Some(
        bytes
            .split(|&b| b == 0)
            .map(|word| String::from_utf8_lossy(word).into_owned())
            .collect(),
    )
}

/// The peer credentials of a connected Unix socket. Read with libc, since a
/// peer in a pid namespace we cannot see has pid 0, which rustix's `Pid`
/// cannot hold.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> SocketPeer {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, which
    // lives across the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return SocketPeer::default();
    }
    SocketPeer {
        pid: u32::try_from(cred.pid).ok().filter(|&pid| pid != 0),
        uid: Some(cred.uid),
        gid: Some(cred.gid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_holders_and_waiters_apart_from_proc_locks() {
        let locks = "\
1: FLOCK  ADVISORY  WRITE 1234 00:2a:12345 0 EOF
1: -> FLOCK  ADVISORY  WRITE 999 00:2a:12345 0 EOF
2: POSIX  ADVISORY  WRITE 5678 00:2a:12345 0 EOF
3: FLOCK  ADVISORY  WRITE 42 00:2a:123456 0 EOF
";
        assert_eq!(parse_flocks(locks, "00:2a:12345", false), vec![1234]);
        assert_eq!(parse_flocks(locks, "00:2a:12345", true), vec![999]);
    }
}
