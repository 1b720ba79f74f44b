//! Job control on an interactive terminal. The command runs in a process
//! group of its own and, when onlyone is in the foreground, holds the
//! terminal: Ctrl-C and Ctrl-Z reach the command's group, not onlyone's.
//! A shell only sees onlyone, though. So, as sudo and script do, when the
//! command's group stops on the terminal, onlyone takes the terminal back
//! and stops its own group with the same signal (the shell sees its job
//! stopped and shows its prompt); when the shell continues the job (`fg`,
//! `bg`), onlyone hands the terminal back if it is in the foreground and
//! continues the command's group.

use std::time::{Duration, Instant};

use signal_hook::consts::{SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU};

use crate::sys;

/// How often onlyone looks whether a shell brought it to the foreground.
const LOOK_INTERVAL: Duration = Duration::from_millis(100);

/// True when onlyone's own process group is the terminal's foreground.
fn onlyone_has_terminal() -> bool {
    sys::own_process_group().is_some() && sys::terminal_foreground() == sys::own_process_group()
}

/// How the supervisor deals with the terminal for one run of a command.
#[derive(Debug)]
pub(super) struct Job {
    /// A job-control shell can stop and continue onlyone.
    shell: bool,
    /// onlyone stopped itself after its command did, and waits to be
    /// continued.
    suspended: bool,
}

impl Job {
    /// Looks at the terminal and the process group onlyone runs in.
    pub fn detect() -> Job {
        Job {
            shell: sys::job_control_available(),
            suspended: false,
        }
    }

    /// Whether the command should get the terminal when it starts: onlyone
    /// is in the foreground of the terminal on its standard input.
    pub fn gives_terminal() -> bool {
        sys::owns_terminal()
    }

    /// When to look at the terminal next: while the job runs under a
    /// shell, every [`LOOK_INTERVAL`]. A shell that brings a running job
    /// to the foreground (bash's `fg` after `bg`) gives the terminal to
    /// onlyone's group without a signal, and nothing else tells.
    pub fn next_look(&self) -> Option<Instant> {
        (self.shell && !self.suspended).then(|| Instant::now() + LOOK_INTERVAL)
    }

    /// If onlyone's group has the terminal, the command's group `pgid`
    /// gets it: onlyone was brought to the foreground.
    pub fn look_at_terminal(&self, pgid: u32) {
        if self.shell && !self.suspended && onlyone_has_terminal() {
            let _ = sys::hand_terminal_to(pgid);
        }
    }

    /// The command's group `pgid` was stopped by `signal`.
    pub fn command_stopped(&mut self, pgid: u32, signal: i32) {
        // SIGSTOP from someone (a debugger, a test) is theirs to undo.
        if !matches!(signal, SIGTSTP | SIGTTIN | SIGTTOU) {
            return;
        }
        if self.shell && signal != SIGTSTP && onlyone_has_terminal() {
            // It touched the terminal just before it was handed over (onlyone
            // was brought to the foreground): let it have it, and go on.
            let _ = sys::hand_terminal_to(pgid);
            let _ = sys::signal_group(pgid, SIGCONT);
            return;
        }
        if !self.shell {
            // No shell can continue onlyone, and the bare command, in
            // onlyone's orphaned group, would have ignored Ctrl-Z: so does
            // the command. (A read of the terminal from the background,
            // SIGTTIN, is left stopped: continuing it would only repeat.)
            if signal == SIGTSTP {
                let _ = sys::signal_group(pgid, SIGCONT);
            }
            return;
        }
        self.take_terminal_from(pgid);
        log::debug!("the command was stopped by signal {signal}; stopping onlyone's job too");
        self.suspended = sys::stop_own_group(signal).is_ok();
    }

    /// onlyone was continued (SIGCONT): in the foreground (`fg`) the
    /// command's group gets the terminal again; either way it is
    /// continued.
    pub fn continued(&mut self, pgid: u32) {
        self.suspended = false;
        if !self.shell {
            return;
        }
        if onlyone_has_terminal() {
            let _ = sys::hand_terminal_to(pgid);
        }
        let _ = sys::signal_group(pgid, SIGCONT);
    }

    /// The terminal goes back to onlyone's group if the command's group
    /// `pgid` has it; never taken from anyone else (the shell, when
    /// onlyone runs in the background).
    pub fn take_terminal_from(&self, pgid: u32) {
        if let Some(own) = sys::own_process_group()
            && sys::terminal_foreground() == Some(pgid)
        {
            let _ = sys::hand_terminal_to(own);
        }
    }
}
