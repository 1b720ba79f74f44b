//! `status`, `stop` and `wait`: looking at a lock, and at its holder,
//! without taking it.

use std::time::Duration;

use clap::Args;
use onlyone::{LockName, Status};

use super::{BackendArgs, DEFAULT_KILL_GRACE, EXIT_CONFLICT, EXIT_FREE, backend, parse_duration};

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The lock's name
    #[arg(value_name = "NAME")]
    name: String,

    #[command(flatten)]
    backend: BackendArgs,

    /// The signal to send (TERM, INT, HUP, QUIT, KILL, USR1, USR2, or a
    /// number)
    #[arg(long, short = 's', value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    signal: i32,

    /// How long to wait for the lock to become free
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The lock's name
    #[arg(value_name = "NAME")]
    name: String,

    #[command(flatten)]
    backend: BackendArgs,

    /// Wait at most this long [default: without limit]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One lock's name; without it, every lock in the directory
    #[arg(value_name = "NAME")]
    name: Option<String>,

    #[command(flatten)]
    backend: BackendArgs,

    /// Print JSON (an object for NAME, else an array)
    #[arg(long)]
    json: bool,
}

fn parse_signal(text: &str) -> Result<i32, String> {
    let name = text.trim().trim_start_matches("SIG").to_ascii_uppercase();
    let signal = match name.as_str() {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        number => number.parse().map_err(|_| {
            format!(
                "unknown signal {text:?}; use TERM, INT, HUP, QUIT, KILL, USR1, USR2 or a number"
            )
        })?,
    };
    if (1..=64).contains(&signal) {
        Ok(signal)
    } else {
        Err(format!("signal {signal} is out of range 1-64"))
    }
}

pub fn stop(args: StopArgs, quiet: bool) -> anyhow::Result<u8> {
    let name = LockName::new(&args.name)?;
    let backend = backend(&args.backend, DEFAULT_KILL_GRACE)?;
    if !backend.stop_holder(&name, args.signal)? {
        if !quiet {
            eprintln!("onlyone: lock '{name}' is free already");
        }
        return Ok(EXIT_FREE);
    }
    if backend.wait_free(&name, Some(args.timeout))? {
        return Ok(0);
    }
    if !quiet {
        let waited = humantime::format_duration(args.timeout);
        eprintln!("onlyone: lock '{name}' is still held after {waited}");
    }
    Ok(EXIT_CONFLICT)
}

pub fn wait(args: WaitArgs, quiet: bool) -> anyhow::Result<u8> {
    let name = LockName::new(&args.name)?;
    let backend = backend(&args.backend, DEFAULT_KILL_GRACE)?;
    if backend.wait_free(&name, args.timeout)? {
        return Ok(0);
    }
    if !quiet {
        let waited = humantime::format_duration(args.timeout.unwrap_or_default());
        eprintln!("onlyone: lock '{name}' is still held after {waited}");
    }
    Ok(EXIT_CONFLICT)
}

pub fn status(args: StatusArgs) -> anyhow::Result<u8> {
    let backend = backend(&args.backend, DEFAULT_KILL_GRACE)?;
    let Some(name) = &args.name else {
        let all = backend.list()?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else if all.is_empty() {
            println!("no locks");
        } else {
            for status in &all {
                println!("{}", status_line(status));
            }
        }
        return Ok(0);
    };
    let name = LockName::new(name)?;
    let status = backend.status(&name)?;
    // The slots of `run --max` belong to the name too.
    let slots: Vec<Status> = backend
        .list()?
        .into_iter()
        .filter(|slot| {
            LockName::from_stored(&slot.name)
                .is_some_and(|slot| slot.slot_number().is_some() && slot.base() == name.as_str())
        })
        .collect();
    if args.json {
        let mut value = serde_json::to_value(&status)?;
        if !slots.is_empty() {
            value["slots"] = serde_json::to_value(&slots)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", status_line(&status));
        for slot in &slots {
            println!("{}", status_line(slot));
        }
    }
    let held = status.held || slots.iter().any(|slot| slot.held);
    Ok(if held { 0 } else { EXIT_FREE })
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
    for waiter in &status.waiters {
        line.push_str(&format!("; waiting: {waiter}"));
    }
    line.push_str(&format!("; {}", status.location));
    line
}
