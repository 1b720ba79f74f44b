//! `status`, `stop` and `wait`: looking at a lock, and at its holder,
//! without taking it.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::{HolderId, Lock, LockName, Status, Stop, Timing, Wait, exit};

use super::output::{Level, is_closed, say, show, show_exact};
use super::{BackendArgs, Place, parse_duration, where_locks_live};

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The lock's name (with --max: every slot of the pool), or one slot
    /// as NAME@N
    #[arg(value_name = "NAME")]
    name: String,

    #[command(flatten)]
    backend: BackendArgs,

    /// The signal to send (TERM, INT, HUP, QUIT or KILL, or its
    /// number)
    #[arg(long, short = 's', value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    signal: i32,

    /// How long to wait for the lock to become free
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The lock's name (with --max: until every slot of the pool is free),
    /// or one slot as NAME@N
    #[arg(value_name = "NAME")]
    name: String,

    #[command(flatten)]
    backend: BackendArgs,

    /// Wait at most this long [default: without limit]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One lock's name (with its pool's slots), or one slot as NAME@N;
    /// without it, every lock in the directory
    #[arg(value_name = "NAME")]
    name: Option<String>,

    #[command(flatten)]
    backend: BackendArgs,

    /// Print JSON (an object for NAME, else an array)
    #[arg(long)]
    json: bool,
}

/// The signals `stop` may send: those onlyone's supervisor forwards to its
/// command, and KILL (its guardian then kills the command's group). Any
/// other signal would kill or freeze the supervisor itself by its default
/// action and leave the command SIGKILLed with no grace, or stopped.
const STOP_SIGNALS: [(&str, i32); 5] = [
    ("TERM", libc::SIGTERM),
    ("INT", libc::SIGINT),
    ("HUP", libc::SIGHUP),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
];

fn parse_signal(text: &str) -> Result<i32, String> {
    let name = text.trim().trim_start_matches("SIG").to_ascii_uppercase();
    let number: Option<i32> = name.parse().ok();
    STOP_SIGNALS
        .iter()
        .find(|(known, signal)| *known == name || Some(*signal) == number)
        .map(|&(_, signal)| signal)
        .ok_or_else(|| {
            format!(
                "stop cannot send signal {text:?}: use TERM, INT, HUP, QUIT or KILL (or their \
                 numbers); onlyone forwards only these to its command"
            )
        })
}

/// The lock NAME (or slot NAME@N) where the flags say, for a command that
/// runs nothing under it.
fn lock(name: &str, args: &BackendArgs) -> anyhow::Result<Lock> {
    let name = LockName::lock_or_slot(name)?;
    let timing = args.timing(Timing::DEFAULT_KILL_GRACE);
    Ok(Place::new(args, timing)?.lock(name))
}

pub fn stop(args: StopArgs) -> anyhow::Result<u8> {
    let lock = lock(&args.name, &args.backend)?;
    let mut signalled = Vec::new();
    // Holders asked through the backend (PostgreSQL): ended the hard way
    // if they have not let go by the timeout.
    let mut asked = Vec::new();
    for member in lock.members()? {
        // Each holder is verified right before its signal, by the backend.
        match member.stop_holder(args.signal, None)? {
            Stop::Signalled(holder) => {
                log::info!(
                    "sent signal {} to the holder of lock '{}': {holder}",
                    args.signal,
                    member.name()
                );
                signalled.push((member, holder.id()));
            }
            Stop::Requested(holder, _) => {
                log::info!(
                    "asked the holder of lock '{}' to stop: {holder}",
                    member.name()
                );
                asked.push(member.name().clone());
                signalled.push((member, holder.id()));
            }
            Stop::Free | Stop::Changed(_) => {}
        }
    }
    if signalled.is_empty() {
        say(
            Level::Notice,
            format!("lock '{}' is free already", lock.name()),
        );
        return Ok(exit::FREE);
    }
    if wait_gone(&signalled, args.timeout)? {
        return Ok(exit::OK);
    }
    let waited = humantime::format_duration(args.timeout);
    if !asked.is_empty() {
        // Those asked that still hold after the timeout did not answer:
        // their sessions are ended (only the holder asked: a successor is
        // never hit), and the next holder waits the lock-delay.
        let mut ended = Vec::new();
        for (member, id) in &signalled {
            if !asked.contains(member.name()) {
                continue;
            }
            if let Stop::Signalled(holder) = member.stop_holder(libc::SIGKILL, id.as_ref())? {
                say(
                    Level::Warning,
                    format!(
                        "the holder of lock '{}' did not answer the stop request within {waited}; ended its database session (its command is stopped by its supervisor if it can still run, and the next holder waits the lock-delay): {holder}",
                        member.name()
                    ),
                );
                ended.push((member.clone(), holder.id()));
            }
        }
        if asked.len() == signalled.len() && wait_gone(&ended, ENDED_WAIT)? {
            return Ok(exit::OK);
        }
    }
    say(
        Level::Notice,
        format!("lock '{}' is still held after {waited}", lock.name()),
    );
    Ok(exit::CONFLICT)
}

/// How long `stop` waits for a lock whose holder's session it ended: the
/// server frees the lock with the session.
const ENDED_WAIT: Duration = Duration::from_secs(5);

/// Waits until each holder `stop` signalled is gone: its lock is free, or
/// another acquisition holds it (a waiter took over the moment it was
/// free, which is said). False when `timeout` passed first.
fn wait_gone(signalled: &[(Lock, Option<HolderId>)], timeout: Duration) -> anyhow::Result<bool> {
    let wait = Wait::at_most(Some(timeout));
    for (member, stopped) in signalled {
        loop {
            let status = member.status()?;
            let Some(holder) = status.holder.filter(|_| status.held) else {
                break;
            };
            let now = holder.id();
            if stopped.is_some() && now.is_some() && now != *stopped {
                say(
                    Level::Info,
                    format!(
                        "lock '{}' is held now by another holder: {holder}",
                        member.name()
                    ),
                );
                break;
            }
            let left = wait.left().unwrap_or(Duration::MAX);
            if left.is_zero() {
                return Ok(false);
            }
            // In short steps: a waiter may take the lock the moment it is
            // free, so the free lock itself may never be seen.
            member.wait_free(Some(left.min(Duration::from_millis(100))))?;
        }
    }
    Ok(true)
}

pub fn wait(args: WaitArgs) -> anyhow::Result<u8> {
    finish_wait(&lock(&args.name, &args.backend)?, args.timeout)
}

/// Waits until `lock` is free, as [`wait_all_free`]: 0, or 75 (and says
/// so) at the timeout.
fn finish_wait(lock: &Lock, timeout: Option<Duration>) -> anyhow::Result<u8> {
    if wait_all_free(lock, timeout)? {
        return Ok(exit::OK);
    }
    let waited = humantime::format_duration(timeout.unwrap_or_default());
    say(
        Level::Notice,
        format!("lock '{}' is still held after {waited}", lock.name()),
    );
    Ok(exit::CONFLICT)
}

/// Waits until every member of `lock` ([`Lock::members`]) is free at once
/// (the pool is read again each round: a slot may appear); false when
/// `timeout` passed first.
fn wait_all_free(lock: &Lock, timeout: Option<Duration>) -> anyhow::Result<bool> {
    let wait = Wait::at_most(timeout);
    loop {
        let mut held = None;
        for member in lock.members()? {
            if member.status()?.held {
                held = Some(member);
                break;
            }
        }
        let Some(held) = held else {
            return Ok(true);
        };
        if !held.wait_free(wait.left())? {
            return Ok(false);
        }
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<u8> {
    let Some(name) = &args.name else {
        let place = Place::new(
            &args.backend,
            args.backend.timing(Timing::DEFAULT_KILL_GRACE),
        )?;
        let all = place.list()?;
        if args.json {
            show_exact(&serde_json::to_string_pretty(&all)?)?;
        } else if all.is_empty() {
            show(format!("no locks in {}", where_locks_live(&args.backend)))?;
        } else {
            for status in &all {
                show(status_line(status))?;
            }
        }
        return Ok(exit::OK);
    };
    let lock = lock(name, &args.backend)?;
    let status = lock.status()?;
    // The slots of `run --max` belong to the name too (not to a slot).
    let slots = match lock.name().slot_number() {
        Some(_) => Vec::new(),
        None => lock.slots()?,
    };
    let pool = Pool::new(status, slots);
    let code = if pool.top.held { exit::OK } else { exit::FREE };
    match show_pool(&pool, args.json) {
        // The answer is the exit code, whoever stopped reading.
        Err(err) if is_closed(&err) => Ok(code),
        shown => shown.map(|()| code),
    }
}

/// A lock and the slots of its pool (`run --max`): the pool is held when
/// any of its slots is.
#[derive(Serialize)]
struct Pool {
    #[serde(flatten)]
    top: Status,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    slots: Vec<Status>,
}

impl Pool {
    fn new(mut top: Status, slots: Vec<Status>) -> Pool {
        top.held |= slots.iter().any(|slot| slot.held);
        Pool { top, slots }
    }

    /// "pool: held (2 of 3 slots)", or the plain lock's line.
    fn top_line(&self) -> String {
        let held = self.slots.iter().filter(|slot| slot.held).count();
        let total = self.slots.len();
        // A plain lock, or one held beside its slots (which a starter
        // refuses, but another program may do).
        if total == 0 || self.top.holder.is_some() {
            return status_line(&self.top);
        }
        let slots = if total == 1 { "slot" } else { "slots" };
        match held {
            0 => format!("{}: free ({total} {slots}, none held)", self.top.name),
            _ => format!("{}: held ({held} of {total} {slots})", self.top.name),
        }
    }
}

fn show_pool(pool: &Pool, json: bool) -> anyhow::Result<()> {
    if json {
        return show_exact(&serde_json::to_string_pretty(pool)?);
    }
    show(pool.top_line())?;
    for slot in &pool.slots {
        show(status_line(slot))?;
    }
    Ok(())
}

fn status_line(status: &Status) -> String {
    let mut line = match &status.holder {
        Some(holder) if status.held => format!("{}: held by {holder}", status.name),
        _ if status.held => format!("{}: held", status.name),
        _ => format!("{}: free", status.name),
    };
    if let Some(token) = status.last_token {
        line.push_str(&format!("; last token {token}"));
    }
    if let Some(token) = status.stop_requested.filter(|_| status.held) {
        line.push_str(&format!(
            "; asked to stop (token {token}), not answered yet"
        ));
    }
    for waiter in &status.waiters {
        line.push_str(&format!("; waiting: {waiter}"));
    }
    line.push_str(&format!("; {}", status.location));
    line
}
