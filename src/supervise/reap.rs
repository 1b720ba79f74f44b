//! The end of a run: the command's exit status, and whatever of its
//! process group or descendants outlived it, stopped before the lock is
//! released.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGCONT, SIGKILL, SIGTERM};

use super::descendants::stop_descendants;
use super::spawn::Started;
use crate::backend::ticker;
use crate::error::{Error, Result};
use crate::exit;
use crate::sys;

impl Started {
    /// Collects the command's exit code once it has exited, then stops
    /// what is left of it, giving each process `grace` between SIGTERM and
    /// SIGKILL. The guardian is told to stand down, and returned to be
    /// reaped once the lock is released: it holds nothing of the lock's by
    /// then, and waiting for its exit would delay the release.
    pub(super) fn reap(mut self, grace: Duration) -> Result<(u8, sys::StoodDown)> {
        let status = self.child.wait().map_err(|e| {
            Error::unavailable("cannot collect the command's exit status").with_source(e)
        })?;
        // The lock covers the command's whole process group: whatever of
        // it outlived the leader must be gone before the lock is released
        // (a database lock cannot be inherited by it).
        stop_group(self.pgid, grace);
        // And what left the group but was handed to us, the subreaper.
        stop_descendants(&self.spared, grace);
        let guardian = self.guardian.stand_down();
        Ok((exit_code(status), guardian))
    }
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
    // A stopped process acts on SIGTERM only once continued.
    let _ = sys::signal_group(pgid, SIGCONT);
    // With no grace SIGKILL is already sent: there is no SIGTERM to report.
    if !grace.is_zero() {
        if wait_group_gone(pgid, grace) {
            return;
        }
        log::warn!(
            "processes of the command's group did not stop within {} after SIGTERM; sending SIGKILL",
            humantime::format_duration(grace)
        );
        let _ = sys::signal_group(pgid, SIGKILL);
    }
    if !wait_group_gone(pgid, Duration::from_secs(10)) {
        log::error!("processes of the command's group {pgid} survive SIGKILL");
    }
}

/// [`sys::wait_group_gone`], in slices that end by each of the lock's
/// checks when this thread ticks them (`onlyone run`), which are made in
/// between: a kill grace is longer than a tick.
fn wait_group_gone(pgid: u32, timeout: Duration) -> bool {
    // A timeout too long to add to the clock never ends.
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let until = deadline.into_iter().chain(ticker::next_tick()).min();
        let slice = until.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        });
        if sys::wait_group_gone(pgid, slice) {
            return true;
        }
        ticker::tick_if_due();
        if deadline.is_some_and(|at| Instant::now() >= at) {
            return false;
        }
    }
}

/// The shell's convention: the exit code, or 128 + N for signal N.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => exit::SIGNALLED.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}
