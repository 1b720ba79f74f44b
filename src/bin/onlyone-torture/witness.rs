//! The protected command: `onlyone-torture witness --file W --log L
//! --hold-ms X`, run by `onlyone run` under the lock.
//!
//! It takes a non-blocking flock on the witness file, a file outside the
//! lock directory that onlyone knows nothing about. If onlyone is right, no
//! other witness holds it; if one does, two holders overlap. The kernel
//! releases a witness's flock however the witness dies, so crashes and
//! kills cannot fool the detector.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use crate::fenced;
use crate::procs;
use crate::witness_log::{self, Line, monotonic_ns};

/// The witness's exit status when it found another live holder.
pub const EXIT_OVERLAP: u8 = 86;
/// The witness's exit status when it could not do its job at all.
const EXIT_BROKEN: u8 = 70;

/// How long a witness waits for a dying holder to finish closing its
/// descriptors before calling it an overlap.
const DYING_HOLDER_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// The witness file to flock (outside the lock directory)
    #[arg(long)]
    file: PathBuf,
    /// The log to append ENTER/EXIT/OVERLAP lines to
    #[arg(long)]
    log: PathBuf,
    /// How long to hold, in milliseconds
    #[arg(long)]
    hold_ms: u64,
    /// Ignore SIGTERM (only SIGKILL ends the witness before its hold ends)
    #[arg(long)]
    ignore_term: bool,
    /// Write fenced rows to this database while holding (`ONLYONE_FENCE`)
    #[arg(long, requires = "fence_prefix")]
    fence_url: Option<String>,
    /// The prefix of the run's tables (see fenced.rs)
    #[arg(long)]
    fence_prefix: Option<String>,
}

pub fn run(args: &WitnessArgs) -> ExitCode {
    match witness(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("onlyone-torture witness: {err}");
            ExitCode::from(EXIT_BROKEN)
        }
    }
}

fn witness(args: &WitnessArgs) -> std::io::Result<u8> {
    if args.ignore_term {
        // SAFETY: setting a signal's disposition to "ignore" installs no
        // handler; nothing runs on the signal.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&args.log)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&args.file)?;
    let pid = std::process::id();
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    let token = std::env::var("ONLYONE_TOKEN")
        .ok()
        .and_then(|t| t.parse().ok());

    match take_witness_lock(&file)? {
        Taken::AtOnce => {}
        Taken::AfterDyingHolder { holders, waited } => {
            let line = Line::Late {
                pid,
                holders,
                waited_ns: waited.as_nanos() as u64,
            };
            witness_log::append(&log, &line)?;
        }
        Taken::Overlap(holders) => {
            let t = monotonic_ns();
            let line = Line::Overlap {
                pid,
                ppid,
                token,
                t,
                holders,
            };
            witness_log::append(&log, &line)?;
            return Ok(EXIT_OVERLAP);
        }
    }
    let t = monotonic_ns();
    witness_log::append(
        &log,
        &Line::Enter {
            pid,
            ppid,
            token,
            t,
        },
    )?;
    // The protected work.
    let until = Instant::now() + Duration::from_millis(args.hold_ms);
    match (&args.fence_url, &args.fence_prefix) {
        (Some(url), Some(prefix)) => {
            let fence = std::env::var("ONLYONE_FENCE")
                .map_err(|_| std::io::Error::other("no ONLYONE_FENCE"))?;
            fenced::escape(url, prefix, &args.log)?;
            let mut writer = fenced::Writer::start(url, prefix, fence, token.unwrap_or(0))?;
            let refused = writer.write_until(until)?;
            writer.finish()?;
            if refused > 0 {
                fenced::note_refused(&args.log, pid, token, refused)?;
            }
        }
        _ => thread::sleep(until.saturating_duration_since(Instant::now())),
    }
    witness_log::append(
        &log,
        &Line::Exit {
            pid,
            t: monotonic_ns(),
        },
    )?;
    Ok(0)
}

enum Taken {
    AtOnce,
    /// The previous witness had begun to exit (SIGKILL) but the kernel had
    /// not yet closed all of its descriptors: onlyone's lock was already
    /// free, the witness file's not yet. It could not run any more code.
    AfterDyingHolder {
        holders: String,
        waited: Duration,
    },
    /// A process that can still run holds the witness lock: an overlap.
    /// The string lists the holders and their states.
    Overlap(String),
}

/// Takes the witness lock without blocking on a live holder.
///
/// A killed process releases its descriptors one by one as it exits, in no
/// order that can be relied on: onlyone's lock file may be closed a moment
/// before the witness file. So when the witness lock is taken, its holders
/// are looked up: if one can still run, that is an overlap; if all are
/// exiting, the lock is retried until they are gone.
fn take_witness_lock(file: &File) -> std::io::Result<Taken> {
    match file.try_lock() {
        Ok(()) => return Ok(Taken::AtOnce),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(err)) => return Err(err),
    }
    let meta = file.metadata()?;
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let holders = procs::flock_holders(meta.dev(), meta.ino());
        if holders.iter().any(|&pid| !procs::is_exiting_or_gone(pid)) {
            return Ok(Taken::Overlap(describe(&holders)));
        }
        for pid in holders {
            if !seen.contains(&pid) {
                seen.push(pid);
            }
        }
        match file.try_lock() {
            Ok(()) => {
                return Ok(Taken::AfterDyingHolder {
                    holders: describe(&seen),
                    waited: started.elapsed(),
                });
            }
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(err)) => return Err(err),
        }
        if started.elapsed() > DYING_HOLDER_GRACE {
            return Ok(Taken::Overlap(format!(
                "still-held-after-{}ms:{}",
                DYING_HOLDER_GRACE.as_millis(),
                describe(&seen)
            )));
        }
        // Nothing to wait on for another process's exit but its pidfd,
        // which would not say when its descriptors are closed: poll.
        thread::sleep(Duration::from_micros(200));
    }
}

/// "pid:state,pid:state" for a report line.
fn describe(pids: &[u32]) -> String {
    if pids.is_empty() {
        return "none".to_owned();
    }
    pids.iter()
        .map(|&pid| format!("{pid}:{}", procs::state(pid)))
        .collect::<Vec<_>>()
        .join(",")
}
