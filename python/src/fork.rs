//! What a child made by `fork()` must not keep of its parent's locks: the
//! descriptors that hold them. A lock file's flock and a database session
//! live as long as any process has their descriptor open, so a child that
//! kept them would hold the lock after its parent released it or died.
//! The child closes its copies (closing is not unlocking: the parent's
//! copy keeps the lock) and never runs a release, which would unlock the
//! parent's lock file or speak on the parent's database session.
//!
//! A database session's socket is not the library's to hand out: it is
//! found as the sockets that a database acquisition (PostgreSQL, MySQL)
//! left open, told apart by their inode (`/proc/self/fd`, Linux), so that
//! a descriptor number used again later is never closed by mistake.

use std::os::fd::RawFd;
use std::time::Duration;

use onlyone::Attempt;

/// Runs `acquire`; when `track` is set, also returns the inodes of the
/// sockets it left open (on Linux; elsewhere none).
pub fn tracking_sockets(
    track: bool,
    acquire: impl FnOnce() -> onlyone::Result<Attempt>,
) -> onlyone::Result<(Attempt, Vec<u64>)> {
    if !track {
        return acquire().map(|attempt| (attempt, Vec::new()));
    }
    let before = sockets();
    let attempt = acquire()?;
    let new = match attempt {
        Attempt::Acquired(_) => sockets()
            .into_iter()
            .filter(|(_, inode)| !before.iter().any(|(_, old)| old == inode))
            .map(|(_, inode)| inode)
            .collect(),
        Attempt::Held(_) => Vec::new(),
    };
    Ok((attempt, new))
}

/// In a child after fork: closes this process's descriptors `fds` and
/// those of the sockets `inodes`.
pub fn close_in_child(fds: &[RawFd], inodes: &[u64]) {
    for &fd in fds {
        // SAFETY: the descriptor belongs to a guard that is never used
        // again in this process (it is leaked, not dropped), so nothing
        // closes it twice or reads it after this.
        unsafe { libc::close(fd) };
    }
    if inodes.is_empty() {
        return;
    }
    for (fd, inode) in sockets() {
        if inodes.contains(&inode) {
            // SAFETY: as above: the socket of a leaked guard's session.
            unsafe { libc::close(fd) };
        }
    }
}

/// This process's open sockets: descriptor and inode.
fn sockets() -> Vec<(RawFd, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect()
}

/// In a child made by fork while this process held a lock: the child is
/// killed when the thread that forked it ends (its process, usually), so
/// that no worker outlives the lock that protected its work. `parent` is
/// the pid of the process that forked: if it has ended already, before
/// this call, the child ends now. Linux only (PR_SET_PDEATHSIG).
#[cfg(target_os = "linux")]
pub fn die_with_parent(parent: u32) {
    // SAFETY: prctl and getppid take no pointers; raise ends this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
            libc::raise(libc::SIGKILL);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_parent: u32) {}

/// Ends this process's descendants, before the process ends with a lost
/// lock: SIGTERM, then SIGKILL to all after `grace` if a child still runs
/// (at once with a zero grace). The kernel's lists (every child, and
/// theirs: multiprocessing workers, a forkserver's workers,
/// subprocesses), each process held by a pidfd and checked to still be
/// the child of its parent once held, so that no signal reaches a process
/// that reused a pid. Children are not reaped, which stays their owner's
/// job. Linux only.
#[cfg(target_os = "linux")]
pub fn stop_children(grace: Duration) {
    let children = onlyone::internals::children_of(std::process::id());
    let descendants = held_descendants(std::process::id());
    if descendants.is_empty() {
        return;
    }
    let deadline = std::time::Instant::now().checked_add(grace);
    if !grace.is_zero() {
        signal_all(&descendants, libc::SIGTERM);
        // A child's exit sends no event this thread can wait for without
        // reaping it: look every 10 ms, within the grace.
        while deadline.is_none_or(|d| std::time::Instant::now() < d) {
            if children.iter().all(|&pid| exited(pid)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Grandchildren may outlive their parent: SIGKILL to every one held.
    signal_all(&descendants, libc::SIGKILL);
}

#[cfg(not(target_os = "linux"))]
pub fn stop_children(_grace: Duration) {}

/// The descendants of `root`, each held for signalling.
#[cfg(target_os = "linux")]
fn held_descendants(root: u32) -> Vec<onlyone::internals::Process> {
    let mut held = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for pid in onlyone::internals::children_of(parent) {
            let Some(process) = onlyone::internals::Process::open(pid, None) else {
                continue;
            };
            // Held now: if it is still the child of `parent`, it is the
            // process that was listed, not a later one with its pid.
            if onlyone::internals::parent_of(pid) == Some(parent) {
                held.push(process);
                parents.push(pid);
            }
        }
    }
    held
}

#[cfg(target_os = "linux")]
fn signal_all(processes: &[onlyone::internals::Process], signal: libc::c_int) {
    for process in processes {
        let _ = process.signal(signal);
    }
}

/// Whether the child `pid` has ended (a zombie included), without reaping it.
#[cfg(target_os = "linux")]
fn exited(pid: u32) -> bool {
    // SAFETY: waitid writes into the zeroed siginfo_t it is given.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let options = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        if libc::waitid(libc::P_PID, pid, &mut info, options) != 0 {
            return true; // no such child any more (reaped by its owner)
        }
        info.si_pid() != 0
    }
}
