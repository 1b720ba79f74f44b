//! In-process acquire + release on an uncontended lock file: onlyone's
//! `Lock::try_acquire` + drop against a bare open + `File::try_lock` + close,
//! the fd-lock crate, and Python filelock (in a child interpreter).

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use onlyone::{Attempt, FileBackend, Lock};

use crate::report::{Detail, Report, Row, Verdict};
use crate::stats::{Samples, fmt_ns, fmt_ratio};
use crate::{Config, Env};

// Issue 15's goal (issue 5 asked for 1.5×).
const GOAL_VS_RAW: f64 = 6.0;
const GOAL_VS_PYTHON: f64 = 10.0;

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// One acquire + release of each contender; all take an uncontended lock.
#[derive(Clone, Copy, Debug)]
enum Contender {
    Raw,
    FdLock,
    Onlyone,
}

pub fn run(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    let raw_path = env.peer_file("inproc-raw");
    let fd_lock_path = env.peer_file("inproc-fd-lock");
    let python_path = env.peer_file("inproc-python");
    let lock = env.onlyone_lock("inproc")?;

    let mut raw = Samples::default();
    let mut fd_lock = Samples::default();
    let mut ours = Samples::default();
    let mut python = Samples::default();
    let mut python_skipped = None;

    let contenders = [Contender::Raw, Contender::FdLock, Contender::Onlyone];
    for round in 0..config.inproc_rounds {
        // Rotate the order so that no contender always runs first (or
        // always right after the Python child exits).
        for i in 0..contenders.len() {
            let contender = contenders[(round + i) % contenders.len()];
            for _ in 0..config.inproc_batch {
                match contender {
                    Contender::Raw => {
                        let start = Instant::now();
                        let file = open_rw(&raw_path)?;
                        file.try_lock()?;
                        drop(file);
                        raw.push(start.elapsed());
                    }
                    Contender::FdLock => {
                        let start = Instant::now();
                        let mut file = fd_lock::RwLock::new(open_rw(&fd_lock_path)?);
                        drop(file.try_write()?);
                        drop(file);
                        fd_lock.push(start.elapsed());
                    }
                    Contender::Onlyone => {
                        let start = Instant::now();
                        match lock.try_acquire()? {
                            Attempt::Acquired(guard) => drop(guard),
                            Attempt::Held(holder) => bail!("uncontended lock held by {holder}"),
                        }
                        ours.push(start.elapsed());
                    }
                }
            }
        }
        match python_round(config, env, &python_path) {
            Ok(Some(samples)) => samples.into_iter().for_each(|ns| python.push_ns(ns)),
            Ok(None) => python_skipped = Some("Python filelock is not installed"),
            Err(err) => return Err(err.context("Python filelock")),
        }
    }

    let mut detail = Detail::new(
        "In-process acquire + release, file backend, uncontended",
        &format!(
            "Each sample is one acquire + release of an uncontended lock file, timed with \
             `Instant` (Python: `perf_counter_ns`). {} rounds of {} samples per contender, \
             interleaved round by round. onlyone: `Lock::new(name, FileBackend::new(dir)).try_acquire()` then \
             dropping the guard, in the default per-user directory. Raw: \
             `OpenOptions::open` (create, no truncate) + `File::try_lock` + close. \
             fd-lock: `RwLock::new(file).try_write()`, guard and file dropped. Python: \
             one `FileLock(path)` object, `acquire()` + `release()`.",
            config.inproc_rounds, config.inproc_batch
        ),
        &[
            "contender",
            "n",
            "p10",
            "median",
            "p90",
            "p99",
            "median vs raw",
        ],
    );
    let raw_median = raw.median();
    let mut add = |name: &str, samples: &mut Samples| {
        let s = samples.summary();
        detail.row(vec![
            name.to_owned(),
            s.n.to_string(),
            fmt_ns(s.p10),
            fmt_ns(s.p50),
            fmt_ns(s.p90),
            fmt_ns(s.p99),
            fmt_ratio(s.p50 / raw_median),
        ]);
    };
    add("onlyone `try_acquire` + drop", &mut ours);
    add("raw open + `File::try_lock` + close", &mut raw);
    add("fd-lock 4 `try_write`", &mut fd_lock);
    if !python.is_empty() {
        add("Python filelock `acquire` + `release`", &mut python);
    }
    report.detail(detail);

    let ours_median = ours.median();
    let vs_raw = ours_median / raw_median;
    report.row(Row {
        what: "in-process acquire + release, file, uncontended".into(),
        onlyone: fmt_ns(ours_median),
        peers: format!(
            "raw {}, fd-lock {}",
            fmt_ns(raw_median),
            fmt_ns(fd_lock.median())
        ),
        ratio: format!("{} raw", fmt_ratio(vs_raw)),
        goal: format!("≤ {GOAL_VS_RAW}× raw"),
        verdict: Verdict::goal(vs_raw <= GOAL_VS_RAW),
    });
    let python_row = if python.is_empty() {
        Row::not_measured(
            "in-process acquire + release vs Python filelock",
            &format!("≥ {GOAL_VS_PYTHON}× faster"),
            python_skipped.unwrap_or("no samples"),
        )
    } else {
        let speedup = python.median() / ours_median;
        Row {
            what: "in-process acquire + release vs Python filelock".into(),
            onlyone: fmt_ns(ours_median),
            peers: format!("Python filelock {}", fmt_ns(python.median())),
            ratio: format!("{} faster", fmt_ratio(speedup)),
            goal: format!("≥ {GOAL_VS_PYTHON}× faster"),
            verdict: Verdict::goal(speedup >= GOAL_VS_PYTHON),
        }
    };
    report.row(python_row);
    Ok(())
}

/// One batch in a Python child; `None` when there is no Python filelock.
fn python_round(config: &Config, env: &Env, path: &Path) -> Result<Option<Vec<u64>>> {
    let Some(mut command) = env.python(&["acquire"]) else {
        return Ok(None);
    };
    let output = command
        .arg(path)
        .arg(config.inproc_batch.to_string())
        .stdin(Stdio::null())
        .output()
        .context("start the Python peer")?;
    ensure!(
        output.status.success(),
        "the Python peer failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let samples: Vec<u64> = String::from_utf8(output.stdout)?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parse the Python peer's samples")?;
    ensure!(
        samples.len() == config.inproc_batch,
        "the Python peer gave {} samples, not {}",
        samples.len(),
        config.inproc_batch
    );
    Ok(Some(samples))
}

/// `compare profile N`: onlyone's acquire + release alone, N times, in a
/// scratch directory, for a profiler to look at.
pub fn profile(count: usize) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("onlyone-profile-")
        .tempdir()?;
    let lock = Lock::new("profile", FileBackend::new(scratch.path().join("onlyone")))?;
    let start = Instant::now();
    for _ in 0..count {
        match lock.try_acquire()? {
            Attempt::Acquired(guard) => drop(guard),
            Attempt::Held(holder) => bail!("uncontended lock held by {holder}"),
        }
    }
    println!(
        "{}/op",
        fmt_ns(start.elapsed().as_nanos() as f64 / count as f64)
    );
    Ok(())
}
