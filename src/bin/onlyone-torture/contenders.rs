//! The contenders: each loops `onlyone run --wait -- <witness>` until the
//! run stops. Their supervisors (the `onlyone run` processes) are
//! registered while alive so that chaos and the final sweep can signal
//! them without ever hitting a reused pid.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use crate::procs;
use crate::rng::Rng;
use crate::stop::{Stop, StopReason};

/// The supervisors alive now: children that have not been reaped, so
/// their pids (and process groups: each leads its own) are still theirs.
#[derive(Debug, Default)]
pub struct Supervisors(Mutex<Registered>);

#[derive(Debug, Default)]
struct Registered {
    pids: Vec<u32>,
    /// Set by the final sweep: supervisors started later are killed at once.
    closed: bool,
}

impl Supervisors {
    fn state(&self) -> MutexGuard<'_, Registered> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a supervisor just started; false when the run is over.
    fn register(&self, pid: u32) -> bool {
        let mut state = self.state();
        if !state.closed {
            state.pids.push(pid);
        }
        !state.closed
    }

    /// Unregisters a supervisor that has exited but is not reaped yet.
    /// True when it ended before the final sweep (its status is its own).
    fn unregister(&self, pid: u32) -> bool {
        let mut state = self.state();
        state.pids.retain(|&p| p != pid);
        !state.closed
    }

    /// Signals the supervisor `pid` if it is one of ours and still alive.
    pub fn signal(&self, pid: u32, signal: Signal) -> bool {
        let state = self.state();
        state.pids.contains(&pid) && procs::signal_group(pid, signal)
    }

    /// Signals a random live supervisor; its pid, if there was one.
    pub fn signal_random(&self, rng: &mut Rng, signal: Signal) -> Option<u32> {
        let state = self.state();
        if state.pids.is_empty() {
            return None;
        }
        let pid = state.pids[rng.between(0, state.pids.len() as u64 - 1) as usize];
        procs::signal_group(pid, signal).then_some(pid)
    }

    /// Kills every supervisor, and any started from now on. On Linux each
    /// one's command then dies of its parent-death signal.
    pub fn close_and_kill_all(&self) {
        let mut state = self.state();
        state.closed = true;
        for &pid in &state.pids {
            procs::signal_group(pid, Signal::KILL);
        }
    }
}

/// What every contender runs, and where the results go.
#[derive(Debug)]
pub struct Contenders {
    pub onlyone: PathBuf,
    /// The lock every contender fights for.
    pub lock_name: String,
    /// `--dir DIR` or `--postgres URL`, and any more arguments for
    /// `onlyone run`.
    pub run_args: Vec<OsString>,
    /// Kill graces to choose from, one per `onlyone run` (empty: its
    /// default, or the one in `run_args`).
    pub kill_graces: Vec<String>,
    /// `onlyone run --quiet`: only errors on stderr.
    pub quiet: bool,
    /// The witness command, without `--hold-ms`.
    pub witness: Vec<OsString>,
    pub max_hold_ms: u64,
    /// Where the supervisors' stderr goes (their warnings, any errors).
    pub stderr: File,
    pub supervisors: Supervisors,
    /// How supervisors ended: "exit N" or "signal N" -> count.
    pub exits: Mutex<BTreeMap<String, u64>>,
}

impl Contenders {
    /// One contender: start a supervisor, wait for it, repeat until the run
    /// stops.
    pub fn contend(&self, stop: &Stop, mut rng: Rng) {
        while !stop.is_stopped() {
            let hold_ms = rng.between(0, self.max_hold_ms);
            let kill_grace = match self.kill_graces.len() {
                0 => None,
                n => Some(self.kill_graces[rng.between(0, n as u64 - 1) as usize].as_str()),
            };
            let mut child = match self.spawn_supervisor(hold_ms, kill_grace) {
                Ok(child) => child,
                Err(err) => {
                    let program = self.onlyone.display();
                    stop.stop(StopReason::Failed(format!("cannot start {program}: {err}")));
                    return;
                }
            };
            let pid = child.id();
            if !self.supervisors.register(pid) {
                procs::signal_group(pid, Signal::KILL);
            }
            wait_for_exit_without_reaping(pid);
            let own_status = self.supervisors.unregister(pid);
            match child.wait() {
                Ok(status) if own_status => self.count_exit(status),
                Ok(_) => {}
                Err(err) => {
                    stop.stop(StopReason::Failed(format!("cannot reap pid {pid}: {err}")));
                    return;
                }
            }
        }
    }

    fn spawn_supervisor(&self, hold_ms: u64, kill_grace: Option<&str>) -> io::Result<Child> {
        let mut command = Command::new(&self.onlyone);
        command
            .args(["run", "--name", &self.lock_name, "--wait"])
            .args(self.quiet.then_some("--quiet"))
            .args(&self.run_args)
            .args(
                kill_grace
                    .map(|grace| ["--kill-grace", grace])
                    .into_iter()
                    .flatten(),
            )
            .arg("--")
            .args(&self.witness)
            .args(["--hold-ms", &hold_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.stderr.try_clone()?)
            // Its own group: a Ctrl-C at the terminal reaches only this
            // harness, which then stops everything in order.
            .process_group(0);
        let harness = std::process::id();
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe system calls (prctl, getppid) and allocates
        // nothing.
        unsafe {
            command.pre_exec(move || die_with_parent(harness));
        }
        command.spawn()
    }

    fn count_exit(&self, status: ExitStatus) {
        let key = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "unknown".to_owned(),
        };
        let mut exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        *exits.entry(key).or_default() += 1;
    }
}

/// In the forked child: be killed when the harness dies, even by SIGKILL,
/// so that no supervisor (and through its own parent-death signal, no
/// witness) outlives it.
fn die_with_parent(parent: u32) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    let now = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
    if now != Some(parent) {
        return Err(io::Error::other(
            "the harness exited before the contender started",
        ));
    }
    Ok(())
}

/// Blocks until the child `pid` has exited, leaving it unreaped so that its
/// pid stays reserved while it is unregistered.
fn wait_for_exit_without_reaping(pid: u32) {
    let Some(pid) = Pid::from_raw(pid as i32) else {
        return;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(WaitId::Pid(pid), options) {}
}
