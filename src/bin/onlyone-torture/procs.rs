//! Processes: signalling them without hitting a stranger that reused a pid
//! (pid_max is often 32768, and a long run goes through it many times),
//! and what /proc says about them.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;

use onlyone::internals;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// A process pinned by a pidfd: signals reach that process or nobody,
/// even after its pid is reused.
#[derive(Debug)]
pub struct Pinned {
    pub pid: u32,
    fd: OwnedFd,
}

impl Pinned {
    /// Pins `pid` if it is a process whose command line starts with
    /// `prefix` (this run's witnesses carry its witness file in theirs).
    ///
    /// The check is made after the pidfd is opened: if the pinned process
    /// is still alive when signalled, it is the one whose command line was
    /// read, because a pid is not reused while its process exists.
    pub fn ours(pid: u32, prefix: &str) -> Option<Pinned> {
        let fd = pidfd_open(Pid::from_raw(pid as i32)?, PidfdFlags::empty()).ok()?;
        command_line(pid)?
            .starts_with(prefix)
            .then_some(Pinned { pid, fd })
    }

    /// Sends `signal`; false when the process is gone.
    pub fn signal(&self, signal: Signal) -> bool {
        pidfd_send_signal(&self.fd, signal).is_ok()
    }
}

/// The command line of `pid`, arguments joined by spaces; `None` for a
/// process that is gone (a zombie has an empty one).
pub fn command_line(pid: u32) -> Option<String> {
    let words = internals::process_command(pid)?;
    (words != [""]).then(|| words.join(" "))
}

/// Sends `signal` to the process group `pgid`.
///
/// The caller must know the group still exists: here the group's leader is
/// a child not yet reaped, so the id cannot have been reused.
pub fn signal_group(pgid: u32, signal: Signal) -> bool {
    Pid::from_raw(pgid as i32)
        .is_some_and(|pid| rustix::process::kill_process_group(pid, signal).is_ok())
}

/// The processes that hold a granted flock(2) lock on the inode
/// `(dev, ino)`, from /proc/locks (reading it takes no lock).
pub fn flock_holders(dev: u64, ino: u64) -> Vec<u32> {
    internals::flock_holders(dev, ino).unwrap_or_default()
}

/// The kernel's PF_EXITING flag: the process has begun to exit and will
/// never run its own code again.
const PF_EXITING: u64 = 0x4;

/// True when `pid` is exiting or gone: it may still hold locks for a
/// moment while the kernel closes its descriptors, but it cannot act.
pub fn is_exiting_or_gone(pid: u32) -> bool {
    // Field 9 of /proc/PID/stat.
    let flags = internals::stat_field(pid, 9).and_then(|flags| flags.parse::<u64>().ok());
    flags.is_none_or(|flags| flags & PF_EXITING != 0)
}

/// The state letter of `pid` (R, S, D, T, Z, ...), for reports.
pub fn state(pid: u32) -> char {
    internals::stat_field(pid, 3)
        .and_then(|state| state.chars().next())
        .unwrap_or('?')
}

/// Live processes (not zombies) other than this one whose command line
/// contains `marker`.
pub fn processes_marked(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| command_line(pid).is_some_and(|line| line.contains(marker)))
        .collect()
}

/// The machine, for the summary: CPUs and kernel release.
pub fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string(Path::new("/proc/sys/kernel/osrelease"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    (cpus, kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_exiting() {
        assert!(!is_exiting_or_gone(std::process::id()));
        // The main thread's state: running, or asleep while tests run.
        assert!("RS".contains(state(std::process::id())));
    }

    #[test]
    fn sees_own_flock() {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir().join(format!("torture-flock-{}", std::process::id()));
        let file = fs::File::create(&path).unwrap();
        file.lock().unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(
            flock_holders(meta.dev(), meta.ino()),
            vec![std::process::id()]
        );
        drop(file);
        fs::remove_file(&path).unwrap();
    }
}
