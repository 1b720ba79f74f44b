//! Starting the command: in its own process group, with the lock's
//! environment and descriptors, and with a guardian that stops its group
//! if onlyone dies.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use super::descendants::Spared;
use super::job::Job;
use crate::backend::{COMMAND_ENV, Guard};
use crate::error::{Error, Result};
use crate::escape;
use crate::exit;
use crate::sys;

/// A command started under the lock, with what its end must clean up.
pub(super) struct Started {
    pub(super) child: Child,
    /// The command's process group (its leader's pid).
    pub(super) pgid: u32,
    pub(super) guardian: sys::Guardian,
    /// Our children from before the command: not its to stop.
    pub(super) spared: Spared,
}

impl Started {
    /// Starts `program` with `args` under `guard`, with `guardian` if one
    /// was forked already (before a wait for the lock), else a new one.
    pub(super) fn spawn(
        guard: &Guard,
        program: &OsStr,
        args: &[impl AsRef<OsStr>],
        guardian: Option<sys::Guardian>,
    ) -> Result<Started> {
        let mut spared = Spared::current_children();
        // The kernel (Linux) kills only the command itself if we die; the
        // guardian kills its whole group. It exists before the command,
        // which tells it its group before exec: no moment is left in which
        // the command runs unguarded.
        let guardian = match guardian {
            // A child already: among those spared.
            Some(guardian) => guardian,
            None => {
                let guardian = sys::Guardian::watch().map_err(|err| {
                    Error::unavailable(
                        "cannot start the process that stops the command if onlyone dies",
                    )
                    .with_source(err)
                })?;
                spared.add(guardian.pid());
                guardian
            }
        };
        let child = match spawn(guard, program, args, Job::gives_terminal(), &guardian) {
            Ok(child) => child,
            Err(err) => {
                guardian.dismiss();
                return Err(err);
            }
        };
        let pgid = child.id();
        Ok(Started {
            child,
            pgid,
            guardian,
            spared,
        })
    }
}

fn spawn(
    guard: &Guard,
    program: &OsStr,
    args: &[impl AsRef<OsStr>],
    interactive: bool,
    guardian: &sys::Guardian,
) -> Result<Child> {
    let supervisor = std::process::id();
    let channel = guardian.channel();
    let inherited: Vec<RawFd> = guard
        .inheritable_fds()
        .iter()
        .map(|fd| fd.as_raw_fd())
        .collect();
    let mut command = Command::new(program);
    command.args(args).process_group(0);
    // What onlyone gives the command replaces what it inherited: a token
    // or slot from an enclosing run (or the caller) must not pass for ours.
    for variable in COMMAND_ENV {
        command.env_remove(variable);
    }
    for (variable, value) in guard.env() {
        debug_assert!(COMMAND_ENV.contains(&variable.as_str()), "{variable}");
        command.env(variable, value);
    }
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (write, prctl, getppid, fcntl,
    // tcsetpgrp, sigprocmask); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // First the guardian learns the group, then the supervisor is
            // checked to be alive: if it dies after, the guardian acts.
            if let Some(channel) = channel {
                sys::Guardian::tell(channel, std::process::id())?;
            }
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

fn spawn_error(program: &OsStr, err: io::Error) -> Error {
    let program = program.to_string_lossy();
    let program = escape::shell_word(&program);
    match err.kind() {
        io::ErrorKind::NotFound => {
            Error::command(exit::NOT_FOUND, format!("command not found: {program}"))
                .with_source(err)
        }
        io::ErrorKind::PermissionDenied => Error::command(
            exit::CANNOT_EXECUTE,
            format!("command cannot be executed: {program}"),
        )
        .with_source(err),
        _ => Error::command(
            exit::CANNOT_EXECUTE,
            format!("cannot start command {program}"),
        )
        .with_source(err),
    }
}
