//! The event loop of a running command, on the supervisor's own thread:
//! signals to pass on, the loss of the lock, stops and continues of the
//! job, and the command's exit. The signal handlers and the loss watch
//! each write to a pipe; the loop `poll`s both and then looks at what
//! arrived. The command's stops and exit arrive as SIGCHLD, after which
//! its state is read with a `waitid` that does not block.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use signal_hook::consts::{SIGCHLD, SIGCONT, SIGKILL, SIGTERM};

use super::Supervisor;
use super::job::Job;
use crate::backend::{Guard, ticker};
use crate::sys;

/// How long after the last check stopped vouching for a lock held through
/// checks the supervisor declares the loss itself: the checker (the
/// heartbeat thread) declares it at the deadline, with its own reason,
/// unless it is stuck. Well under the 2 s by which the lock-delay exceeds
/// the deadline and the kill grace.
const CHECKER_SLACK: std::time::Duration = std::time::Duration::from_millis(250);

/// What the guard's watch (another thread) tells the supervisor.
pub(super) enum Notice {
    /// The lock was lost, and why.
    Lost(String),
    /// Someone asked the holder to stop, through the backend (who, as
    /// `HOST:PID`).
    StopRequested(String),
}

/// The pipe on which the guard's watch (another thread) wakes the
/// supervisor.
pub(super) struct Wake {
    read: UnixStream,
    write: Arc<UnixStream>,
    send: mpsc::Sender<Notice>,
}

impl Wake {
    pub(super) fn new() -> io::Result<(Wake, mpsc::Receiver<Notice>)> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let (send, receive) = mpsc::channel();
        Ok((
            Wake {
                read,
                write: Arc::new(write),
                send,
            },
            receive,
        ))
    }

    /// Empties the pipe (what it carries is in the channel).
    pub(super) fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.read).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// What the command did, as `waitid` tells without blocking.
enum Child {
    /// Nothing new.
    Running,
    /// Stopped by this signal.
    Stopped(i32),
    /// Exited (not reaped).
    Exited,
}

impl Supervisor {
    /// Has the loss of the lock, and a stop request, reported on the wake
    /// pipe.
    pub(super) fn report_events(&self, guard: &Guard) {
        let send = self.wake.send.clone();
        let write = Arc::clone(&self.wake.write);
        guard.loss_watch().on_loss(move |reason| {
            // The notice first: the byte wakes a supervisor that then
            // finds it in the channel.
            let _ = send.send(Notice::Lost(reason));
            let _ = (&*write).write(&[1]);
        });
        let send = self.wake.send.clone();
        let write = Arc::clone(&self.wake.write);
        guard.loss_watch().on_stop_request(move |from| {
            let _ = send.send(Notice::StopRequested(from));
            let _ = (&*write).write(&[1]);
        });
    }

    /// Sleeps until a signal or a loss arrives, or until `until`. When this
    /// thread ticks the lock's checks (`onlyone run`: see
    /// [`tick_on_this_thread`](super::tick_on_this_thread)), the sleep
    /// ends by the next one too, which is made here; a loss it finds
    /// arrives as any other (a notice and a byte in the wake pipe).
    pub(super) fn sleep_until(&self, until: Option<Instant>) {
        let until = until.into_iter().chain(ticker::next_tick()).min();
        let timeout = until.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: left.subsec_nanos().into(),
            }
        });
        let mut fds = [
            PollFd::new(self.signals.get_read(), PollFlags::IN),
            PollFd::new(&self.wake.read, PollFlags::IN),
        ];
        // EINTR (a signal's handler ran) is a wake-up like any other.
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
        ticker::tick_if_due();
    }

    /// Handles what happens while the command `pgid` runs, until it exits:
    /// signals to pass on, the loss of the lock, stops and continues of
    /// the job. Returns why the lock was lost, if it was.
    pub(super) fn watch(&mut self, guard: &Guard, job: &mut Job, pgid: u32) -> Option<String> {
        let mut lost: Option<String> = None;
        let mut kill_at: Option<Instant> = None;
        let mut asked = false;
        let mut look_at = job.next_look();
        loop {
            // Every source is emptied before the next sleep; what arrives
            // after it is emptied leaves a byte in its pipe, so that the
            // sleep ends at once.
            let signals: Vec<i32> = self.signals.pending().collect();
            // The group leader is not reaped until it has exited, so its
            // pid (our pgid) cannot be reused while we may still signal it.
            for signal in signals {
                match signal {
                    SIGCHLD => {}
                    SIGCONT if lost.is_none() => lost = self.resume(guard, job, pgid),
                    SIGCONT => {}
                    signal => {
                        self.stop_signal.get_or_insert(signal);
                        let _ = sys::signal_group(pgid, signal);
                    }
                }
            }
            self.wake.drain();
            // Each run's watch reports the loss (restarts hold the same
            // lock): only the first report counts.
            while let Ok(notice) = self.notices.try_recv() {
                match notice {
                    Notice::Lost(reason) if lost.is_none() => {
                        // The signal before the line: a write to a stderr
                        // that takes no more (a stalled logger's pipe)
                        // blocks, and must not keep the command running
                        // beside the next holder.
                        if self.kill_grace.is_zero() {
                            let _ = sys::signal_group(pgid, SIGKILL);
                            log::error!("{reason}; killing the command (SIGKILL)");
                        } else {
                            let _ = sys::signal_group(pgid, SIGTERM);
                            // A grace too long to add to the clock never ends.
                            kill_at = Instant::now().checked_add(self.kill_grace);
                            log::error!("{reason}; stopping the command");
                        }
                        lost = Some(reason);
                    }
                    // As `stop` does with a holder it can signal: the
                    // command is stopped (SIGTERM, then SIGKILL after the
                    // grace), and its status is onlyone's; the lock is then
                    // released cleanly.
                    Notice::StopRequested(from) if lost.is_none() && !asked => {
                        asked = true;
                        self.stop_signal.get_or_insert(SIGTERM);
                        let name = guard.name();
                        // The signal first: once the line is out, the
                        // command has it (a supervisor frozen right after
                        // saying so has not left its command running).
                        if self.kill_grace.is_zero() {
                            let _ = sys::signal_group(pgid, SIGKILL);
                            log::info!(
                                "lock '{name}': stopped by a request from {from}; killing the command (SIGKILL)"
                            );
                        } else {
                            let _ = sys::signal_group(pgid, SIGTERM);
                            kill_at = Instant::now().checked_add(self.kill_grace);
                            log::info!(
                                "lock '{name}': stopped by a request from {from}; stopping the command"
                            );
                        }
                    }
                    // Each run's watch reports (restarts hold the same
                    // lock): only the first report counts.
                    Notice::Lost(_) | Notice::StopRequested(_) => {}
                }
            }
            // A lock held through checks (a database session) whose last
            // check no longer vouches for it: its checker is stuck (a
            // heartbeat thread blocked on a full stderr) and declared
            // nothing, while the server ends its silent session and a
            // successor may start after its lock-delay. Stopped as on a
            // loss (adv-run finding 2).
            let expires = guard
                .loss_watch()
                .proof_expires()
                .and_then(|at| at.checked_add(CHECKER_SLACK));
            if lost.is_none() && expires.is_some_and(|at| at <= Instant::now()) {
                let reason =
                    "the lock was not proven held within its heartbeat deadline".to_owned();
                if self.kill_grace.is_zero() {
                    let _ = sys::signal_group(pgid, SIGKILL);
                } else {
                    let _ = sys::signal_group(pgid, SIGTERM);
                    kill_at = Instant::now().checked_add(self.kill_grace);
                }
                guard.loss_watch().fire(reason.clone());
                log::error!("{reason}; stopping the command");
                lost = Some(reason);
            }
            // Checked after the signals were read: a SIGCHLD that comes
            // after this look leaves its byte for the sleep.
            loop {
                match child_change(pgid) {
                    Child::Running => break,
                    // A command being stopped for a lost lock stays
                    // stopped until SIGKILL; so does onlyone's watch.
                    Child::Stopped(signal) if lost.is_none() => job.command_stopped(pgid, signal),
                    Child::Stopped(_) => {}
                    Child::Exited => return lost,
                }
            }
            if kill_at.is_some_and(|at| at <= Instant::now()) {
                log::warn!(
                    "the command did not stop within {} after SIGTERM; sending SIGKILL",
                    humantime::format_duration(self.kill_grace)
                );
                let _ = sys::signal_group(pgid, SIGKILL);
                kill_at = None;
            }
            // Looks at the terminal every interval while there is a shell.
            look_at = match look_at {
                Some(at) if at > Instant::now() => Some(at),
                Some(_) => {
                    job.look_at_terminal(pgid);
                    job.next_look()
                }
                None => job.next_look(),
            };
            let expires = lost.is_none().then_some(expires).flatten();
            let wake = kill_at.into_iter().chain(look_at).chain(expires).min();
            self.sleep_until(wake);
        }
    }

    /// onlyone was continued (SIGCONT), maybe after a long stop (its own
    /// job's, or a SIGSTOP): its watch over the lock was paused too. The
    /// command goes on only once the lock is known to be held now (a
    /// database lock may have been lost meanwhile, and a successor may
    /// run). Returns the reason when the lock was lost; the command, if
    /// stopped, is then killed where it stands.
    fn resume(&mut self, guard: &Guard, job: &mut Job, pgid: u32) -> Option<String> {
        if let Some(reason) = guard.loss_watch().wait_held() {
            log::error!("{reason}; killing the command");
            let _ = sys::signal_group(pgid, SIGKILL);
            return Some(reason);
        }
        job.continued(pgid);
        None
    }
}

/// The child's next stop (taken off the kernel's list) or its exit (left
/// there: the child stays a zombie, its pid reserved, until reaped).
fn child_change(pid: u32) -> Child {
    match sys::child_change_now(pid) {
        None => Child::Running,
        Some(sys::ChildChange::Stopped(signal)) => Child::Stopped(signal),
        Some(sys::ChildChange::Exited) => Child::Exited,
    }
}
