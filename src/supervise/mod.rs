//! Running a command under a held lock: spawn it in its own process group
//! (`spawn.rs`), forward signals to that group and stop it when the lock is
//! lost (`events.rs`), then reap what is left and pass its exit status
//! through (`reap.rs`). The supervisor knows nothing of files or SQL: it
//! only sees a [`Guard`].

use std::ffi::OsStr;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGCHLD, SIGCONT, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use crate::backend::Guard;
use crate::error::{Error, Result};
use crate::sys;
use crate::timing::Timing;

mod descendants;
mod events;
mod job;
mod reap;
mod spawn;
use self::events::{Notice, Wake};
use self::job::Job;
use self::spawn::Started;

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

/// Runs commands under a held lock, one after another (for restarts),
/// with the supervisor's signal handling in place for its whole life.
///
/// It runs on the caller's thread alone: the signal handlers write to a
/// pipe, the lock's loss is reported on another, and the command's stops
/// and exit come as SIGCHLD; the supervisor `poll`s both pipes. Under
/// `onlyone run` its waits also tick the file lock's checks, which then
/// have no thread of their own (`tick_on_this_thread`).
pub struct Supervisor {
    kill_grace: Duration,
    /// The signals that arrived (SIGCHLD included), through the handlers'
    /// pipe.
    signals: SignalDelivery<UnixStream, SignalOnly>,
    /// What the guard's watch tells (the lock lost, a stop requested);
    /// it then writes a byte to `wake`.
    notices: mpsc::Receiver<Notice>,
    wake: Wake,
    stop_signal: Option<i32>,
    /// The last run's guardian, told to stand down, reaped at the next
    /// run's start or when the supervisor is dropped: after the caller has
    /// released the lock, when the supervisor outlives the guard (as in
    /// `onlyone run`).
    stood_down: Option<sys::StoodDown>,
    /// A guardian forked before the lock was waited for (see
    /// [`Supervisor::adopt_guardian`]), for the next run.
    guardian: Option<sys::Guardian>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(guardian) = self.stood_down.take() {
            guardian.reap();
        }
        if let Some(guardian) = self.guardian.take() {
            guardian.dismiss();
        }
    }
}

impl Supervisor {
    /// Takes over SIGTERM, SIGINT, SIGHUP and SIGQUIT (but those of the
    /// last three that the process ignores, as under `nohup`): from now on they are
    /// forwarded to the running command, or end the supervisor between
    /// runs; they and SIGCHLD are unblocked in the calling thread, whatever
    /// mask onlyone inherited. On Linux the process also becomes a child subreaper: orphaned
    /// descendants of its commands are reparented to it, and at the end of
    /// each run they are stopped and reaped with the rest of the command,
    /// as is every child of this process that the run finds (but those it
    /// had before the command started). The timing's kill grace is the
    /// time between SIGTERM and SIGKILL; give the backend the same
    /// [`Timing`], whose lock-delay counts on it.
    ///
    /// # Errors
    ///
    /// The signal handlers cannot be installed.
    pub fn new(timing: Timing) -> Result<Supervisor> {
        let cannot = |e| Error::unavailable("cannot install signal handlers").with_source(e);
        // Orphans of the command's group become our children, so that we
        // can reap them and know when the group is gone.
        sys::become_subreaper();
        // SIGCONT tells that a shell continued onlyone's stopped job;
        // SIGCHLD that the command stopped or exited.
        // A hangup or keyboard signal that onlyone was started ignoring
        // (`nohup onlyone run ...`, a shell's background job) stays
        // ignored, for the command too (it inherits the disposition): taken
        // over, it was passed on and ended the command nohup was to keep.
        // SIGTERM is always taken: it is how `stop` asks.
        let handled: Vec<i32> = FORWARDED_SIGNALS
            .iter()
            .copied()
            .filter(|&signal| signal == SIGTERM || !sys::is_ignored(signal))
            .chain([SIGCONT, SIGCHLD])
            .collect();
        let (read, write) = UnixStream::pair().map_err(cannot)?;
        read.set_nonblocking(true).map_err(cannot)?;
        write.set_nonblocking(true).map_err(cannot)?;
        let signals = SignalDelivery::with_pipe(read, write, SignalOnly, handled.iter().copied())
            .map_err(cannot)?;
        // Handled from now on, and heard on this thread even when onlyone
        // was started with them blocked (a mask is inherited through exec):
        // a SIGCHLD never delivered would leave the command's exit unseen
        // and the lock held for good. Unblocked after the handlers are in,
        // so that one pending meanwhile reaches them. The command starts
        // with no signal blocked either way (as std's spawn makes it).
        sys::unblock_signals(&handled).map_err(cannot)?;
        let (wake, notices) = Wake::new().map_err(cannot)?;
        Ok(Supervisor {
            kill_grace: timing.kill_grace,
            signals,
            notices,
            wake,
            stop_signal: None,
            stood_down: None,
            guardian: None,
        })
    }

    /// Gives the next run a guardian forked already: `onlyone run` forks
    /// it before it waits for the lock, so that the grant is not followed
    /// by that fork too. It was forked holding none of the lock's
    /// descriptors (and closes what it inherited first thing), and
    /// guards nothing until the command tells it its group.
    #[cfg(feature = "cli")]
    pub(crate) fn adopt_guardian(&mut self, guardian: sys::Guardian) {
        if let Some(old) = self.guardian.replace(guardian) {
            old.dismiss();
        }
    }

    /// The signal that asked the supervisor to stop, if one arrived (it was
    /// forwarded to the command; a restart loop must not start another).
    pub fn stop_signal(&self) -> Option<i32> {
        self.stop_signal
    }

    /// Waits `delay` between runs; false if a signal asked to stop meanwhile.
    pub fn pause(&mut self, delay: Duration) -> bool {
        // A delay too long to add to the clock waits for a signal alone.
        let until = Instant::now().checked_add(delay);
        while self.stop_signal.is_none() {
            for signal in self.signals.pending() {
                if !matches!(signal, SIGCONT | SIGCHLD) {
                    self.stop_signal.get_or_insert(signal);
                }
            }
            // A loss between runs is for the next run's start to find
            // (`wait_held`); emptied here, or its byte would end every
            // sleep at once. A stop request ends the restarts.
            self.wake.drain();
            while let Ok(notice) = self.notices.try_recv() {
                if let Notice::StopRequested(from) = notice {
                    log::info!("stopped by a request from {from}, between runs");
                    self.stop_signal.get_or_insert(SIGTERM);
                }
            }
            if self.stop_signal.is_some() || until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            self.sleep_until(until);
        }
        self.stop_signal.is_none()
    }

    /// Runs `command` while `guard` holds the lock, and returns how it
    /// ended. The words are passed to the command as they are, bytes that
    /// are not UTF-8 included. The guard is not released here: the caller drops it once
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
    pub fn run(&mut self, guard: &Guard, command: &[impl AsRef<OsStr>]) -> Result<Outcome> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Error::usage("no command given to run"))?;
        if let Some(guardian) = self.stood_down.take() {
            guardian.reap();
        }
        // A lock lost before the start (during a lock-delay or between
        // restarts, or while onlyone was stopped) protects nothing: do not
        // start.
        if let Some(reason) = guard.loss_watch().wait_held() {
            return Ok(Outcome::LostBeforeStart { reason });
        }
        // Asked to stop before the start (during a lock-delay, or between
        // restarts): nothing is started, as if SIGTERM had ended it.
        if let Some(from) = guard.loss_watch().stop_requested() {
            log::info!(
                "lock '{}': stopped by a request from {from}; the command was not started",
                guard.name()
            );
            self.stop_signal = Some(SIGTERM);
            return Ok(Outcome::Exited(128 + SIGTERM as u8));
        }
        // An interactive command gets the terminal: it can read it, and
        // Ctrl-C and Ctrl-Z reach its group directly.
        let mut job = Job::detect();
        let started = Started::spawn(guard, program.as_ref(), args, self.guardian.take())?;
        self.report_events(guard);
        let lost = self.watch(guard, &mut job, started.pgid);
        // Before the leader is reaped, its group id is still its own.
        job.take_terminal_from(started.pgid);
        // Lost: the command was given its grace already.
        let grace = match lost {
            Some(_) => Duration::ZERO,
            None => self.kill_grace,
        };
        let (code, guardian) = started.reap(grace)?;
        self.stood_down = Some(guardian);
        Ok(match lost {
            Some(reason) => Outcome::Lost { reason, code },
            None => Outcome::Exited(code),
        })
    }
}

/// From now on, the locks this process takes are checked from the calling
/// thread's waits instead of a thread of the file backend's: call it before
/// the lock is taken, on the thread that then runs the [`Supervisor`] and
/// releases the lock (`onlyone run`). Every wait of that thread while the
/// lock is held must end by [`ticker::next_tick`] and tick
/// ([`ticker::tick_if_due`]): the supervisor's polls, the waits for what
/// is left of the command's group and descendants. Any other wait there is
/// short (the spawn, the guardian's exit once dismissed); a stop of the
/// whole job (SIGTSTP) stops a thread of the backend's as well.
///
/// [`ticker::next_tick`]: crate::backend::ticker::next_tick
/// [`ticker::tick_if_due`]: crate::backend::ticker::tick_if_due
#[cfg(feature = "cli")]
pub(crate) fn tick_on_this_thread() {
    crate::backend::ticker::tick_on_this_thread();
}

/// Runs `command` once under `guard`: [`Supervisor::run`] with a supervisor
/// of its own.
///
/// # Errors
///
/// As [`Supervisor::run`], or the signal handlers cannot be installed.
pub fn run(guard: &Guard, command: &[impl AsRef<OsStr>], timing: Timing) -> Result<Outcome> {
    Supervisor::new(timing)?.run(guard, command)
}
