//! Calls that mean the same on every Unix.

use std::ffi::CStr;
use std::io;

use rustix::process::{Pid, Signal};

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The real user id of this process.
pub fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The login name of `uid`, or the number when it has none.
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: the buffers outlive the call; getpwuid_r writes only into them.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        // SAFETY: on success pw_name points to a NUL-terminated string in buf.
        unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned()
    } else {
        uid.to_string()
    }
}

/// Sends `signal` to every process in the group `pgid`.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pgid as i32).ok_or_else(|| io::Error::other("process group 0"))?;
    // SAFETY: the number comes from a real signal constant or a user's
    // choice validated by the caller; sending it has no memory effects.
    let signal = unsafe { Signal::from_raw_unchecked(signal) };
    rustix::process::kill_process_group(pid, signal)?;
    Ok(())
}

/// True when a process with this pid exists (it may belong to another user).
pub fn pid_exists(pid: u32) -> bool {
    match Pid::from_raw(pid as i32) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// True when this process is a member of group `gid`.
pub fn in_group(gid: u32) -> bool {
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups()
            .map(|groups| groups.iter().any(|g| g.as_raw() == gid))
            .unwrap_or(false)
}

/// True when standard input is a terminal whose foreground process group is
/// ours: an interactive run, where the command should get the terminal.
pub fn owns_terminal() -> bool {
    let stdin = rustix::stdio::stdin();
    rustix::termios::isatty(stdin)
        && rustix::termios::tcgetpgrp(stdin).ok() == Some(rustix::process::getpgrp())
}

/// Makes `pgid` the foreground process group of the terminal on standard
/// input. SIGTTOU is blocked meanwhile, because a background group asking
/// for the terminal would otherwise be stopped. Async-signal-safe: it may
/// run between fork and exec.
pub fn hand_terminal_to(pgid: u32) -> io::Result<()> {
    let pgid = Pid::from_raw(pgid as i32).ok_or_else(|| io::Error::other("process group 0"))?;
    // SAFETY: plain signal-mask calls on stack-allocated sets.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut previous);
        let result = rustix::termios::tcsetpgrp(rustix::stdio::stdin(), pgid);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        result.map_err(io::Error::from)
    }
}

/// This process's group id.
pub fn own_process_group() -> u32 {
    rustix::process::getpgrp().as_raw_nonzero().get() as u32
}

/// Sends `signal` to the process `pid`.
pub fn signal_process(pid: u32, signal: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("pid 0"))?;
    // SAFETY: as in signal_group.
    let signal = unsafe { Signal::from_raw_unchecked(signal) };
    rustix::process::kill_process(pid, signal)?;
    Ok(())
}

/// The process group of `pid`, if it exists.
pub fn process_group_of(pid: u32) -> Option<u32> {
    let pid = Pid::from_raw(pid as i32)?;
    rustix::process::getpgid(Some(pid))
        .ok()
        .map(|pgid| pgid.as_raw_nonzero().get() as u32)
}
