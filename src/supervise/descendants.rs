//! What is left of a command outside its process group once the group is
//! gone: processes that left the group (`setsid`, a daemon that also closed
//! the lock's descriptors) and were handed to onlyone, the child subreaper,
//! when their parent exited. The lock covers them too: they are stopped
//! before it is released.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGCONT, SIGKILL, SIGTERM};

use crate::sys;

/// How long SIGKILLed processes may take to be gone before onlyone gives
/// up on them (as for the command's group).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// onlyone's children that are not the command's: its guardian, and those
/// it had before the command started (a program that uses the library may
/// have children of its own). Each by pid and start time, so that a later
/// process with a reused pid is not spared.
#[derive(Debug, Default)]
pub(super) struct Spared(Vec<(u32, Option<u64>)>);

impl Spared {
    /// This process's children now.
    pub(super) fn current_children() -> Spared {
        Spared(
            sys::children_of(std::process::id())
                .into_iter()
                .map(|pid| (pid, sys::process_start_time(pid)))
                .collect(),
        )
    }

    /// Spares the process `pid` too.
    pub(super) fn add(&mut self, pid: u32) {
        self.0.push((pid, sys::process_start_time(pid)));
    }

    fn contains(&self, pid: u32) -> bool {
        self.0
            .iter()
            .any(|&(spared, start)| spared == pid && start == sys::process_start_time(pid))
    }
}

/// Stops every child of onlyone but the `spared` ones, after the command's
/// group is gone: they are what the command left behind and onlyone
/// inherited. SIGTERM (and SIGCONT, for a stopped one), `grace` to exit,
/// then SIGKILL; without grace (a lost lock), SIGKILL at once. Looks again
/// until none is left, since each one that exits hands its own children to
/// onlyone, and returns once they are all reaped.
pub(super) fn stop_descendants(spared: &Spared, grace: Duration) {
    // A grace too long to add to the clock never ends.
    let kill_at = Instant::now().checked_add(grace);
    let give_up = kill_at.and_then(|at| at.checked_add(KILL_WAIT));
    let mut seen = HashSet::new();
    let mut killed = HashSet::new();
    loop {
        let mut left = Vec::new();
        for pid in sys::children_of(std::process::id()) {
            if spared.contains(pid) {
                continue;
            }
            if sys::reap_if_exited(pid) {
                // Gone: its pid may come back as another process.
                seen.remove(&pid);
                killed.remove(&pid);
            } else {
                left.push(pid);
            }
        }
        if left.is_empty() {
            return;
        }
        let new: Vec<u32> = left
            .iter()
            .copied()
            .filter(|&pid| seen.insert(pid))
            .collect();
        if !new.is_empty() {
            log::info!(
                "stopping what the command left running outside its process group: {}",
                describe(&new)
            );
        }
        let now = Instant::now();
        let killing = kill_at.is_some_and(|at| now >= at);
        if killing && !grace.is_zero() && killed.is_empty() {
            log::warn!(
                "what the command left behind did not stop within {} after SIGTERM; sending SIGKILL",
                humantime::format_duration(grace)
            );
        }
        // Our unreaped children: their pids cannot be reused meanwhile.
        for &pid in &left {
            if killing {
                if killed.insert(pid) {
                    let _ = sys::signal_process(pid, SIGKILL);
                }
            } else if new.contains(&pid) {
                let _ = sys::signal_process(pid, SIGTERM);
                // A stopped process acts on SIGTERM only once continued.
                let _ = sys::signal_process(pid, SIGCONT);
            }
        }
        if give_up.is_some_and(|at| now >= at) {
            log::error!(
                "processes the command left behind survive SIGKILL: {}",
                describe(&left)
            );
            return;
        }
        // There is no event for "a child exited" that does not also reap
        // it: look again in 2 ms, as for the process group, and tick the
        // lock's checks if this thread does (`onlyone run`) and one is due.
        crate::backend::ticker::tick_if_due();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `pid 123 (sleep), pid 456 (sh)`, for the log.
fn describe(pids: &[u32]) -> String {
    let described: Vec<String> = pids
        .iter()
        .map(|&pid| match sys::process_name(pid) {
            Some(name) => format!("pid {pid} ({name})"),
            None => format!("pid {pid}"),
        })
        .collect();
    described.join(", ")
}
