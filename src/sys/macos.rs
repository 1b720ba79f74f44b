//! macOS: a process's start time and a socket peer's pid, which it tells
//! through its own calls (and no /proc). Not compiled on this project's machines (there
//! is no macOS target here): kept to these two calls, each as documented
//! in `<libproc.h>` and `<sys/un.h>`.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::SocketPeer;

/// When process `pid` started, in microseconds since the epoch
/// (`proc_pidinfo(PROC_PIDTBSDINFO)`): with the pid, it tells the process
/// from a later one that reuses the pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let pid = libc::c_int::try_from(pid).ok()?;
    // SAFETY: proc_bsdinfo is a plain C struct of integers and byte arrays,
    // for which all zeroes is a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: proc_pidinfo writes at most `size` bytes into `info`.
    let written =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, (&raw mut info).cast(), size) };
    if written != size {
        return None;
    }
    info.pbi_start_tvsec
        .checked_mul(1_000_000)?
        .checked_add(info.pbi_start_tvusec)
}

/// No `/proc/PID/stat` here.
pub fn stat_field(_pid: u32, _field: usize) -> Option<String> {
    None
}

/// The peer credentials of a connected Unix socket: its effective user and
/// group (`getpeereid`) and the pid of the process that made it listen
/// (`LOCAL_PEERPID`).
pub fn peer_credentials(fd: BorrowedFd<'_>) -> SocketPeer {
    let mut peer = super::unix::peer_ids(fd);
    let mut pid: libc::pid_t = 0;
    let mut len = std::mem::size_of::<libc::pid_t>() as libc::socklen_t;
    // SAFETY: LOCAL_PEERPID writes at most `len` bytes into `pid`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_LOCAL,
            libc::LOCAL_PEERPID,
            (&raw mut pid).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        peer.pid = u32::try_from(pid).ok().filter(|&pid| pid != 0);
    }
    peer
}

/// This user's temporary directory (`confstr(_CS_DARWIN_USER_TEMP_DIR)`,
/// under `/var/folders`, what launchd sets `$TMPDIR` to): the same in a
/// login shell, a LaunchAgent and cron, which sets no `TMPDIR`.
pub fn user_temp_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: confstr writes at most `buf.len()` bytes, NUL included.
    let len = unsafe {
        libc::confstr(
            libc::_CS_DARWIN_USER_TEMP_DIR,
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len == 0 || len > buf.len() {
        return None;
    }
    buf.truncate(len - 1);
    Some(std::ffi::OsString::from_vec(buf).into())
}
