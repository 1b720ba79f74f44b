//! Unix systems other than Linux: no /proc, no abstract sockets. These
//! fallbacks keep the same meaning with less information; untested here.

use std::io;
use std::os::fd::BorrowedFd;

/// Not available without /proc: the pid alone identifies the process.
pub fn process_start_time(_pid: u32) -> Option<u64> {
    None
}

/// Not available without /proc.
pub fn boot_id() -> Option<String> {
    None
}

/// Not available without /proc/locks.
pub fn flock_holders(_dev: u64, _ino: u64) -> Vec<u32> {
    Vec::new()
}

/// Without abstract sockets, nothing stands for the lock but the file.
#[derive(Debug)]
pub struct HolderSocket(());

/// What probing a holder socket found.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketProbe {
    /// Nobody listens.
    Free,
    /// Someone listens.
    Held(Option<u32>),
}

impl HolderSocket {
    /// Always succeeds: there is no socket to bind.
    pub fn bind(_name: &[u8]) -> io::Result<Option<HolderSocket>> {
        Ok(Some(HolderSocket(())))
    }
    /// Nothing to drain.
    pub fn drain(&self) {}
    /// There is no descriptor to inherit.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Always free: only the file lock speaks.
    pub fn probe(_name: &[u8]) -> io::Result<SocketProbe> {
        Ok(SocketProbe::Free)
    }
}

/// No parent-death signal here; the command inherits the lock instead.
pub fn die_with_parent(_parent: u32) -> io::Result<()> {
    Ok(())
}

/// The default lock directory when `XDG_RUNTIME_DIR` is not set.
pub fn default_temp_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("onlyone")
}

/// Not detected here.
pub fn refuse_network_fs(_dir: &std::path::Path) -> crate::Result<()> {
    Ok(())
}

/// Without inotify, a waiter re-checks at a fixed interval.
#[derive(Debug)]
pub struct DirWatch(());

impl DirWatch {
    /// Always available: it only sleeps.
    pub fn new(_dir: &std::path::Path) -> Option<DirWatch> {
        Some(DirWatch(()))
    }
    /// Sleeps a short while.
    pub fn wait(&self, timeout: std::time::Duration) {
        std::thread::sleep(timeout.min(std::time::Duration::from_millis(50)));
    }
}

/// Not available without /proc.
pub fn children_of(_pid: u32) -> Vec<u32> {
    Vec::new()
}

/// Not available: orphans go to init.
pub fn become_subreaper() {}
