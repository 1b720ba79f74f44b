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

/// A small process that kills a command's whole process group with
/// SIGKILL if the supervisor dies: the kernel's parent-death signal
/// reaches only the command itself, not what it started. It notices the
/// death as end-of-file on a pipe whose only writer is the supervisor.
#[derive(Debug)]
pub struct Guardian {
    pid: Pid,
    stand_down: Option<std::os::fd::OwnedFd>,
}

impl Guardian {
    /// Forks the guardian of process group `pgid`.
    pub fn watch(pgid: u32) -> io::Result<Guardian> {
        use std::os::fd::AsRawFd;
        let group = i32::try_from(pgid).map_err(io::Error::other)?;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let read_fd = read.as_raw_fd();
        // SAFETY: the child only makes async-signal-safe calls (setpgid,
        // signal, close, read, kill, _exit), as required after fork in a
        // process with threads; it never returns into Rust code.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => unsafe { guard(read_fd, group) },
            pid => Ok(Guardian {
                pid: Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork gave pid 0"))?,
                stand_down: Some(write),
            }),
        }
    }

    /// The command ended normally: the guardian exits without killing, and
    /// is reaped.
    pub fn dismiss(mut self) {
        if let Some(write) = self.stand_down.take() {
            let _ = rustix::io::write(&write, &[1]);
        }
        let _ = rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::empty());
    }
}

/// The guardian's whole life, in the forked child.
unsafe fn guard(read_fd: i32, group: i32) -> ! {
    unsafe {
        // Out of the supervisor's group and deaf to the signals aimed at
        // it, so that only the supervisor's end can set it off.
        libc::setpgid(0, 0);
        for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Hold nothing of the supervisor's: not its lock descriptors (the
        // lock must go when the supervisor releases it), not its output.
        for fd in 0..1024 {
            if fd != read_fd {
                libc::close(fd);
            }
        }
        let mut byte = 0u8;
        let read = loop {
            let read = libc::read(read_fd, (&raw mut byte).cast(), 1);
            if read >= 0 || *libc::__errno_location() != libc::EINTR {
                break read;
            }
        };
        if read == 0 {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

/// True when no process is left in the group `pgid`.
pub fn group_is_gone(pgid: u32) -> bool {
    match Pid::from_raw(pgid as i32) {
        Some(pid) => matches!(
            rustix::process::test_kill_process_group(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => true,
    }
}

/// Waits up to `timeout` for the group `pgid` to be empty, reaping those of
/// its processes that are our children (orphans come to a subreaper).
/// There is no event for "a group is empty", so this checks every 2 ms.
pub fn wait_group_gone(pgid: u32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let Some(group) = Pid::from_raw(pgid as i32) else {
        return true;
    };
    let reap = rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG;
    loop {
        while let Ok(Some(_)) =
            rustix::process::waitid(rustix::process::WaitId::Pgid(Some(group)), reap)
        {}
        if group_is_gone(pgid) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
