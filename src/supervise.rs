//! Running a command under a held lock: spawn it in its own process group,
//! forward signals to that group, stop it when the lock is lost, and pass
//! its exit status through. The supervisor knows nothing of files or SQL:
//! it only sees a [`Guard`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::backend::Guard;
use crate::error::{Error, Result};
use crate::sys;

/// Signals that the supervisor passes on to the command's process group.
pub const FORWARDED_SIGNALS: [i32; 4] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT];

/// How a supervised command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited on its own (or after a forwarded signal), with this exit
    /// code: its own status, or 128 + N when killed by signal N.
    Exited(u8),
    /// The lock was lost while it ran; it was stopped (SIGTERM to its
    /// group, then SIGKILL after the grace period).
    Lost {
        /// Why the lock was lost.
        reason: String,
        /// How the command ended once stopped, as in [`Outcome::Exited`].
        code: u8,
    },
    /// The lock was lost before the command could start; it was not
    /// started.
    LostBeforeStart {
        /// Why the lock was lost.
        reason: String,
    },
}

/// What happened while a command ran, in the order it happened.
enum Event {
    Signal(i32),
    Lost(String),
    /// The process with this pid exited (and is not reaped yet).
    Exited(u32),
}

/// Runs commands under a held lock, one after another (for restarts),
/// with the supervisor's signal handling in place for its whole life.
pub struct Supervisor {
    kill_grace: Duration,
    events: mpsc::Sender<Event>,
    receive: mpsc::Receiver<Event>,
    signals: signal_hook::iterator::Handle,
    forwarder: Option<thread::JoinHandle<()>>,
    stop_signal: Option<i32>,
}

impl Supervisor {
    /// Takes over SIGTERM, SIGINT, SIGHUP and SIGQUIT: from now on they are
    /// forwarded to the running command, or end the supervisor between
    /// runs. On Linux the process also becomes a child subreaper: orphaned
    /// descendants of its commands are reparented to it (and reaped at the
    /// end of each run). `kill_grace` is the time between SIGTERM and SIGKILL when the
    /// lock is lost.
    ///
    /// # Errors
    ///
    /// The signal handlers cannot be installed.
    pub fn new(kill_grace: Duration) -> Result<Supervisor> {
        // Orphans of the command's group become our children, so that we
        // can reap them and know when the group is gone.
        sys::become_subreaper();
        let mut signals = Signals::new(FORWARDED_SIGNALS)
            .map_err(|e| Error::unavailable("cannot install signal handlers").with_source(e))?;
        let handle = signals.handle();
        let (events, receive) = mpsc::channel();
        let signal_events = events.clone();
        let forwarder = thread::spawn(move || {
            for signal in signals.forever() {
                if signal_events.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        });
        Ok(Supervisor {
            kill_grace,
            events,
            receive,
            signals: handle,
            forwarder: Some(forwarder),
            stop_signal: None,
        })
    }

    /// The signal that asked the supervisor to stop, if one arrived (it was
    /// forwarded to the command; a restart loop must not start another).
    pub fn stop_signal(&self) -> Option<i32> {
        self.stop_signal
    }

    /// Waits `delay` between runs; false if a signal asked to stop meanwhile.
    pub fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        while self.stop_signal.is_none() {
            match self
                .receive
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Signal(signal)) => self.stop_signal = Some(signal),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.stop_signal.is_none()
    }

    /// Runs `command` while `guard` holds the lock, and returns how it
    /// ended. The guard is not released here: the caller drops it once
    /// this returns, after the command is gone.
    ///
    /// The command runs in a new process group with the guard's variables
    /// (`ONLYONE_NAME`, `ONLYONE_TOKEN`, ...) in its environment. It inherits
    /// the guard's lock descriptors, so that a lock on an open file stays
    /// held for as long as the command runs even if the supervisor is
    /// killed; on Linux the kernel also kills the command with SIGKILL when
    /// the supervisor dies.
    ///
    /// # Errors
    ///
    /// The command could not be started: [`Error::exit_code`] is 127 when
    /// it was not found, 126 when it could not be executed.
    pub fn run(&mut self, guard: &Guard, command: &[String]) -> Result<Outcome> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Error::usage("no command given to run"))?;
        // A lock lost before the start (during a lock-delay or between
        // restarts) protects nothing: do not start.
        if let Some(reason) = guard.lost() {
            return Ok(Outcome::LostBeforeStart { reason });
        }
        // An interactive command gets the terminal: it can read it, and
        // Ctrl-C reaches its group directly.
        let interactive = sys::owns_terminal();
        let mut child = spawn(guard, program, args, interactive)?;
        let pgid = child.id();
        // The kernel kills only the command itself if we die; the guardian
        // kills the rest of its group.
        let guardian = match sys::Guardian::watch(pgid) {
            Ok(guardian) => guardian,
            Err(err) => {
                let _ = sys::signal_group(pgid, SIGKILL);
                let _ = child.wait();
                return Err(Error::unavailable(
                    "cannot start the process that stops the command if onlyone dies",
                )
                .with_source(err));
            }
        };

        let loss_events = self.events.clone();
        guard.loss_watch().on_loss(move |reason| {
            let _ = loss_events.send(Event::Lost(reason));
        });
        let exit_events = self.events.clone();
        thread::spawn(move || {
            wait_for_exit_without_reaping(pgid);
            let _ = exit_events.send(Event::Exited(pgid));
        });

        let mut lost: Option<String> = None;
        let mut kill_at: Option<Instant> = None;
        loop {
            let event = match kill_at {
                None => self.receive.recv().ok(),
                Some(at) => match self
                    .receive
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                {
                    Ok(event) => Some(event),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        log::warn!(
                            "the command did not stop within {} after SIGTERM; sending SIGKILL",
                            humantime::format_duration(self.kill_grace)
                        );
                        let _ = sys::signal_group(pgid, SIGKILL);
                        kill_at = None;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                },
            };
            // The group leader is not reaped until it has exited, so its
            // pid (our pgid) cannot be reused while we may still signal it.
            match event {
                Some(Event::Signal(signal)) => {
                    self.stop_signal.get_or_insert(signal);
                    let _ = sys::signal_group(pgid, signal);
                }
                Some(Event::Lost(reason)) if lost.is_none() => {
                    log::error!("{reason}; stopping the command");
                    let _ = sys::signal_group(pgid, SIGTERM);
                    kill_at = Some(Instant::now() + self.kill_grace);
                    lost = Some(reason);
                }
                Some(Event::Exited(pid)) if pid == pgid => break,
                // A loss reported after an earlier run, or that run's exit.
                Some(Event::Lost(_) | Event::Exited(_)) => {}
                None => break,
            }
        }
        let status = child.wait().map_err(|e| {
            Error::unavailable("cannot collect the command's exit status").with_source(e)
        })?;
        // The lock covers the command's whole process group: whatever of
        // it outlived the leader must be gone before the lock is released
        // (a database lock cannot be inherited by it).
        let grace = if lost.is_some() {
            Duration::ZERO
        } else {
            self.kill_grace
        };
        stop_group(pgid, grace);
        guardian.dismiss();
        if interactive {
            let _ = sys::hand_terminal_to(sys::own_process_group());
        }
        let code = exit_code(status);
        Ok(match lost {
            Some(reason) => Outcome::Lost { reason, code },
            None => Outcome::Exited(code),
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.signals.close();
        if let Some(forwarder) = self.forwarder.take() {
            let _ = forwarder.join();
        }
    }
}

/// Runs `command` once under `guard`: [`Supervisor::run`] with a supervisor
/// of its own.
///
/// # Errors
///
/// As [`Supervisor::run`], or the signal handlers cannot be installed.
pub fn run(guard: &Guard, command: &[String], kill_grace: Duration) -> Result<Outcome> {
    Supervisor::new(kill_grace)?.run(guard, command)
}

/// Stops what is left of the process group `pgid` after its leader
/// exited: SIGTERM, `grace` to exit, then SIGKILL; returns once the group
/// is empty.
fn stop_group(pgid: u32, grace: Duration) {
    if sys::group_is_gone(pgid) {
        return;
    }
    log::info!("the command exited, but processes of its group remain; stopping them");
    let _ = sys::signal_group(pgid, if grace.is_zero() { SIGKILL } else { SIGTERM });
    if sys::wait_group_gone(pgid, grace) {
        return;
    }
    log::warn!(
        "processes of the command's group did not stop within {} after SIGTERM; sending SIGKILL",
        humantime::format_duration(grace)
    );
    let _ = sys::signal_group(pgid, SIGKILL);
    if !sys::wait_group_gone(pgid, Duration::from_secs(10)) {
        log::error!("processes of the command's group {pgid} survive SIGKILL");
    }
}

fn spawn(guard: &Guard, program: &str, args: &[String], interactive: bool) -> Result<Child> {
    let supervisor = std::process::id();
    let inherited: Vec<RawFd> = guard
        .inheritable_fds()
        .iter()
        .map(|fd| fd.as_raw_fd())
        .collect();
    let mut command = Command::new(program);
    command.args(args).envs(guard.env()).process_group(0);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid, fcntl, tcsetpgrp,
    // sigprocmask); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            sys::die_with_parent(supervisor)?;
            if interactive {
                sys::hand_terminal_to(std::process::id())?;
            }
            for &fd in &inherited {
                let fd = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    command.spawn().map_err(|err| spawn_error(program, err))
}

fn spawn_error(program: &str, err: io::Error) -> Error {
    match err.kind() {
        io::ErrorKind::NotFound => {
            Error::command(127, format!("command not found: {program}")).with_source(err)
        }
        io::ErrorKind::PermissionDenied => {
            Error::command(126, format!("command cannot be executed: {program}")).with_source(err)
        }
        _ => Error::command(126, format!("cannot start command {program}")).with_source(err),
    }
}

/// Blocks until the child has exited, leaving it a zombie so that its pid
/// stays reserved until the supervisor reaps it.
fn wait_for_exit_without_reaping(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let options = rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT;
    loop {
        match rustix::process::waitid(rustix::process::WaitId::Pid(pid), options) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// The shell's convention: the exit code, or 128 + N for signal N.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        (None, None) => 1,
    }
}
