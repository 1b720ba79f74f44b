//! Calls that mean the same on every Unix.

use std::ffi::CStr;
use std::io;

use rustix::process::{Pid, Signal};

/// Who bound a holder socket, as far as the kernel tells: any of it may
/// be unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketPeer {
    /// The process that bound it (0 and absent when it is in a pid
    /// namespace this process cannot see, or has exited).
    pub pid: Option<u32>,
    /// Its effective user id.
    pub uid: Option<u32>,
    /// Its effective group id.
    pub gid: Option<u32>,
}

/// The effective user and group of a Unix socket's peer (`getpeereid`,
/// on every BSD and macOS; glibc has none).
#[cfg(not(target_os = "linux"))]
pub(super) fn peer_ids(fd: std::os::fd::BorrowedFd<'_>) -> SocketPeer {
    use std::os::fd::AsRawFd;
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: getpeereid writes only into the two integers.
    if unsafe { libc::getpeereid(fd.as_raw_fd(), &mut uid, &mut gid) } != 0 {
        return SocketPeer::default();
    }
    SocketPeer {
        pid: None,
        uid: Some(uid),
        gid: Some(gid),
    }
}

/// Where a directory is: the filesystem (its device number) and the path
/// inside that filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsLocation {
    /// The filesystem's device number, major and minor.
    pub device: (u32, u32),
    /// The directory's path from the filesystem's own root.
    pub path: std::path::PathBuf,
}

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
    // SAFETY: passwd is a plain C struct of integers and pointers, for
    // which all zeroes is a valid value (null pointers).
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

/// True for a signal number that the C library keeps for itself: glibc's
/// threads use the real-time signals below its `SIGRTMIN` (32 and 33), and
/// sending one would break the process in ways it cannot handle. A property
/// of the C library, so both Linux builds ask it; no other system's C
/// library is known to keep one.
pub fn is_reserved_signal(signal: i32) -> bool {
    #[cfg(target_os = "linux")]
    return (32..libc::SIGRTMIN()).contains(&signal);
    #[cfg(not(target_os = "linux"))]
    return {
        let _ = signal;
        false
    };
}

/// `signal` as a [`Signal`] that may be sent: not 0 or negative, and not
/// one the C library keeps for itself ([`is_reserved_signal`]).
pub(super) fn checked_signal(signal: i32) -> io::Result<Signal> {
    if signal <= 0 || is_reserved_signal(signal) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "signal {signal} cannot be sent: it is not a signal, or the C library reserves it"
            ),
        ));
    }
    // SAFETY: positive and not reserved by the C library, as
    // from_raw_unchecked requires; a number the kernel does not know is
    // refused by kill(2) with EINVAL.
    Ok(unsafe { Signal::from_raw_unchecked(signal) })
}

/// Sends `signal` to every process in the group `pgid`.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pgid as i32).ok_or_else(|| io::Error::other("process group 0"))?;
    let signal = checked_signal(signal)?;
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

// Session and group ids. The kernel answers 0 for a session or group led by
// a process outside our pid namespace (a container started from someone's
// shell, a CI runner): rustix's getsid/getpgid/getpgrp/tcgetsid assert a
// positive id and would panic, so these ask libc and call 0 "not visible".

fn visible(id: libc::pid_t) -> Option<u32> {
    u32::try_from(id).ok().filter(|&id| id > 0)
}

/// The session of `pid` (0: this process), when it is visible here.
fn session_of(pid: u32) -> Option<u32> {
    // SAFETY: getsid only reads the process table.
    visible(unsafe { libc::getsid(pid as libc::pid_t) })
}

/// The process group of `pid` (0: this process), when it is visible here.
fn group_of(pid: u32) -> Option<u32> {
    // SAFETY: getpgid only reads the process table.
    visible(unsafe { libc::getpgid(pid as libc::pid_t) })
}

/// The session that the terminal on standard input belongs to.
fn terminal_session() -> Option<u32> {
    // SAFETY: tcgetsid only queries the descriptor.
    visible(unsafe { libc::tcgetsid(libc::STDIN_FILENO) })
}

/// True when standard input is a terminal whose foreground process group is
/// ours: an interactive run, where the command should get the terminal.
pub fn owns_terminal() -> bool {
    terminal_foreground().is_some() && terminal_foreground() == group_of(0)
}

/// Runs `prepare` in the forking thread just before every fork(2) of this
/// process, then `parent` in the parent, `child` in the child
/// (pthread_atfork). Not for spawns that do not fork (posix_spawn).
pub fn at_fork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: registers plain functions; they are never unregistered and
    // live as long as the program.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    }
}

/// Whether `signal` is ignored (SIG_IGN) in this process: as `nohup`
/// leaves SIGHUP, and a shell SIGINT and SIGQUIT for a background job.
pub fn is_ignored(signal: i32) -> bool {
    // SAFETY: sigaction with no new action only reads the current one
    // into a zeroed, stack-allocated struct.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

/// Unblocks `signals` in the calling thread. A signal mask is inherited
/// through exec: a process started with a signal blocked never has it
/// delivered, whatever handler it installs.
pub fn unblock_signals(signals: &[i32]) -> io::Result<()> {
    // SAFETY: plain signal-mask calls on a stack-allocated set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        match libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
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

/// The foreground process group of the terminal on standard input, when
/// standard input is a terminal.
pub fn terminal_foreground() -> Option<u32> {
    let stdin = rustix::stdio::stdin();
    if !rustix::termios::isatty(stdin) {
        return None;
    }
    // SAFETY: tcgetpgrp only queries the descriptor.
    visible(unsafe { libc::tcgetpgrp(libc::STDIN_FILENO) })
}

/// True when a job-control shell can stop and continue this process: its
/// standard input is the controlling terminal of its session, and its
/// process group is not orphaned (a process of the group, here one of its
/// ancestors, has a parent in another group of the same session, as an
/// interactive shell is). The kernel never stops an orphaned group on
/// Ctrl-Z, and no one would continue it.
pub fn job_control_available() -> bool {
    let stdin = rustix::stdio::stdin();
    if !rustix::termios::isatty(stdin) {
        return false;
    }
    let session = session_of(0);
    if session.is_none() || terminal_session() != session {
        return false;
    }
    let Some(group) = group_of(0) else {
        return false;
    };
    let own_pid = std::process::id();
    let mut pid = own_pid;
    loop {
        let parent = if pid == own_pid {
            rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32)
        } else {
            super::parent_of(pid)
        };
        let Some(parent) = parent.filter(|&p| p > 0) else {
            return false;
        };
        match group_of(parent) {
            Some(parent_group) if parent_group == group => pid = parent,
            Some(_) => return session_of(parent) == session,
            None => return false,
        }
    }
}

/// Stops every process of this process's group with `signal` (SIGTSTP,
/// SIGTTIN or SIGTTOU), as the terminal would have: how a job-control
/// shell learns that its job is stopped.
pub fn stop_own_group(signal: i32) -> io::Result<()> {
    let signal = checked_signal(signal)?;
    rustix::process::kill_current_process_group(signal)?;
    Ok(())
}

/// What became of a child process, as [`child_change_now`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildChange {
    /// It was stopped by this signal.
    Stopped(i32),
    /// It exited or was killed (or cannot be waited for); it is not reaped.
    Exited,
}

/// Whether the child `pid` stopped or exited, without waiting (call it on
/// SIGCHLD). A stop is taken off the kernel's list, so that the next call
/// tells the next change; an exit is left there, and the child a zombie
/// until it is reaped, so that its pid (and group id) cannot be reused
/// meanwhile. None: neither happened.
pub fn child_change_now(pid: u32) -> Option<ChildChange> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let Some(id) = Pid::from_raw(pid as i32) else {
        return Some(ChildChange::Exited);
    };
    let peek = WaitIdOptions::EXITED
        | WaitIdOptions::STOPPED
        | WaitIdOptions::NOWAIT
        | WaitIdOptions::NOHANG;
    loop {
        match waitid(WaitId::Pid(id), peek) {
            Err(rustix::io::Errno::INTR) => continue,
            Ok(None) => return None,
            Ok(Some(status)) if status.stopped() => {
                // Only a stop is collected here: WEXITED is not asked for.
                let _ = waitid(
                    WaitId::Pid(id),
                    WaitIdOptions::STOPPED | WaitIdOptions::NOHANG,
                );
                return Some(ChildChange::Stopped(
                    status.stopping_signal().unwrap_or(libc::SIGSTOP),
                ));
            }
            _ => return Some(ChildChange::Exited),
        }
    }
}

/// This process's group id, when it is visible in our pid namespace.
pub fn own_process_group() -> Option<u32> {
    group_of(0)
}

/// Sends `signal` to the process `pid`.
pub fn signal_process(pid: u32, signal: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("pid 0"))?;
    let signal = checked_signal(signal)?;
    rustix::process::kill_process(pid, signal)?;
    Ok(())
}

/// Reaps our child `pid` if it has exited; true when it is gone (reaped
/// now, or no child of ours any more).
pub fn reap_if_exited(pid: u32) -> bool {
    use rustix::process::{WaitOptions, waitpid};
    let Some(child) = Pid::from_raw(pid as i32) else {
        return true;
    };
    match waitpid(Some(child), WaitOptions::NOHANG) {
        Ok(Some(_)) | Err(rustix::io::Errno::CHILD) => true,
        Ok(None) | Err(_) => false,
    }
}

/// The process group of `pid`, if it exists.
pub fn process_group_of(pid: u32) -> Option<u32> {
    if pid == 0 {
        return None;
    }
    group_of(pid)
}

/// A small process that kills a command's whole process group with
/// SIGKILL if the supervisor dies: the kernel's parent-death signal (Linux
/// only) reaches only the command itself, not what it started. It notices
/// the death as end-of-file on a pipe whose only writer is the supervisor.
///
/// It is started before the command, and the command tells it its process
/// group itself, between fork and exec ([`Guardian::tell`]): so no moment
/// is left in which the supervisor could die with the command running and
/// unguarded (there is no parent-death signal off Linux to cover it).
#[derive(Debug)]
pub struct Guardian {
    pid: Pid,
    stand_down: Option<std::os::fd::OwnedFd>,
    /// The read end of a pipe whose only writer is the guardian's
    /// inherited copy: end-of-file once the guardian has closed every
    /// descriptor it inherited (the lock's among them).
    inherited: Option<std::os::fd::OwnedFd>,
}

impl Guardian {
    /// Forks a guardian, which waits to be told the group to guard.
    pub fn watch() -> io::Result<Guardian> {
        use std::os::fd::AsRawFd;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (inherited, held_by_guardian) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let read_fd = read.as_raw_fd();
        // SAFETY: the child only makes async-signal-safe calls (setpgid,
        // signal, close, read, kill, _exit), as required after fork in a
        // process with threads; it never returns into Rust code.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            // SAFETY: this is the forked child, which `guard` requires.
            0 => unsafe { guard(read_fd) },
            pid => {
                drop(held_by_guardian);
                Ok(Guardian {
                    pid: Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork gave pid 0"))?,
                    stand_down: Some(write),
                    inherited: Some(inherited),
                })
            }
        }
    }

    /// The guardian's process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// The descriptor through which the command tells its process group
    /// (close-on-exec: the command does not keep it).
    pub fn channel(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.stand_down.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// In the command, between fork and exec: tells the guardian on
    /// `channel` to guard this process's group `pgid`. One write of four
    /// bytes to a pipe, which is atomic. Async-signal-safe.
    pub fn tell(channel: std::os::fd::RawFd, pgid: u32) -> io::Result<()> {
        // SAFETY: the descriptor is the guardian pipe's, open in this
        // process until exec.
        let channel = unsafe { std::os::fd::BorrowedFd::borrow_raw(channel) };
        match rustix::io::write(channel, &pgid.to_ne_bytes())? {
            4 => Ok(()),
            _ => Err(io::Error::other("short write to the guardian")),
        }
    }

    /// The command ended normally (or never started): the guardian exits
    /// without killing, and is reaped.
    pub fn dismiss(self) {
        self.stand_down().reap();
    }

    /// The command's group is gone: tells the guardian to exit without
    /// killing, and returns once it holds none of the descriptors it
    /// inherited (it closes them first thing, so this rarely waits), for
    /// it to be reaped later. From then on it holds no lock and kills
    /// nothing: a supervisor releases its lock without waiting for the
    /// guardian to exit, which is then on the lock's release path no more.
    pub fn stand_down(mut self) -> StoodDown {
        if let Some(write) = self.stand_down.take() {
            let _ = rustix::io::write(&write, &[1]);
        }
        let closed = self
            .inherited
            .take()
            .is_some_and(|inherited| end_of_file_within(&inherited, INHERITED_CLOSED));
        if !closed {
            // Not seen closing them (another copy of the pipe's write end
            // in a process forked meanwhile, or a descriptor above those a
            // system without close_range closes): its exit is the proof.
            let _ = rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::empty());
            return StoodDown { pid: None };
        }
        StoodDown {
            pid: Some(self.pid),
        }
    }
}

/// How long [`Guardian::stand_down`] waits to see the guardian close what
/// it inherited before it waits for its exit instead.
const INHERITED_CLOSED: std::time::Duration = std::time::Duration::from_secs(1);

/// True when `pipe` reaches end-of-file within `timeout` (every writer
/// closed it).
fn end_of_file_within(pipe: &std::os::fd::OwnedFd, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let left = rustix::time::Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut polled = [rustix::event::PollFd::new(
            pipe,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut polled, Some(&left)) {
            Ok(0) => return false,
            Ok(_) => {
                let mut byte = [0u8; 1];
                // Nobody writes to it: readable means end-of-file.
                return matches!(rustix::io::read(pipe, &mut byte), Ok(0));
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
}

/// A guardian told to stand down (see [`Guardian::stand_down`]), to be
/// reaped.
#[derive(Debug)]
#[must_use = "a guardian not reaped stays a zombie until this process exits"]
pub struct StoodDown {
    /// `None` once reaped.
    pid: Option<Pid>,
}

impl StoodDown {
    /// Waits for the guardian's exit (it was told to exit) and reaps it.
    pub fn reap(self) {
        if let Some(pid) = self.pid {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        }
    }
}

/// Reads into `buf` until it is full or the pipe ends; how much was read.
/// rustix's read reports errno without touching it: the same on every
/// Unix (Linux's __errno_location is macOS's __error). Async-signal-safe.
fn read_full(pipe: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::read(pipe, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    filled
}

/// Closes every descriptor below 1024 but `keep`, one `close` each.
/// Async-signal-safe.
///
/// # Safety
///
/// As [`close_all_but`](super::close_all_but)'s.
pub(super) unsafe fn close_below_1024_but(keep: i32) {
    for fd in 0..1024 {
        if fd != keep {
            // SAFETY: as this function's.
            unsafe { libc::close(fd) };
        }
    }
}

/// The guardian's whole life, in the forked child.
///
/// # Safety
///
/// Only in the child right after `fork`, in place of anything else: it
/// closes every descriptor but `read_fd` (Rust objects that own them are
/// never used again) and never returns.
unsafe fn guard(read_fd: i32) -> ! {
    // SAFETY: plain system calls on integers and on buffers on this stack;
    // the descriptors closed are never used again, since the process ends
    // in this block (see the function's safety section), and `read_fd`,
    // borrowed, stays open until then.
    unsafe {
        // Out of the supervisor's group and deaf to the signals aimed at
        // it, so that only the supervisor's end can set it off.
        libc::setpgid(0, 0);
        for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Hold nothing of the supervisor's: not its lock descriptors (the
        // lock must go when the supervisor releases it), not its output.
        super::close_all_but(read_fd);
        let pipe = std::os::fd::BorrowedFd::borrow_raw(read_fd);
        let mut group = [0u8; 4];
        if read_full(pipe, &mut group) == 4 {
            // Then the supervisor's byte (dismissed), or its end.
            let mut byte = [0u8; 1];
            if read_full(pipe, &mut byte) == 0 {
                libc::kill(-i32::from_ne_bytes(group), libc::SIGKILL);
            }
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
    // A timeout too long to add to the clock never ends.
    let deadline = std::time::Instant::now().checked_add(timeout);
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
        if deadline.is_some_and(|at| std::time::Instant::now() >= at) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
