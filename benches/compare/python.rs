//! The Python row (issue 13): the `onlyone` Python package's
//! `Lock.acquire` + `release` beside `filelock.FileLock` and
//! `tendo.singleton.SingleInstance`, all in one interpreter, round by round
//! (benches/python_peers.py).

use std::os::unix::fs::DirBuilderExt;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

use crate::report::{Detail, Report, Row, Verdict};
use crate::stats::{Samples, fmt_ns, fmt_ratio};
use crate::{Config, Env};

const WHAT: &str = "Python: acquire + release, file, uncontended";
const GOAL_VS_FILELOCK: f64 = 3.0;

pub fn run(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    let goal = format!("≥ {GOAL_VS_FILELOCK}× faster than filelock");
    let Some(python) = &env.python else {
        report.row(Row::not_measured(WHAT, &goal, "no Python with filelock"));
        return Ok(());
    };
    // A private directory, as onlyone makes its default one.
    let dir = env.root.join("python");
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/python_peers.py"
        ))
        .arg(&dir)
        .arg(config.inproc_rounds.to_string())
        .arg(config.inproc_batch.to_string())
        .stdin(Stdio::null())
        .output()
        .context("start the Python benchmark")?;
    ensure!(
        output.status.success(),
        "the Python benchmark failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let found: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("read the Python benchmark's samples")?;
    let samples = |name: &str| -> Samples {
        let mut samples = Samples::default();
        for ns in found[name].as_array().into_iter().flatten() {
            samples.push_ns(ns.as_u64().unwrap_or_default());
        }
        samples
    };
    let (mut ours, mut filelock, mut tendo) =
        (samples("onlyone"), samples("filelock"), samples("tendo"));
    if ours.is_empty() || filelock.is_empty() {
        let missing = found["missing"].to_string();
        report.row(Row::not_measured(
            WHAT,
            &goal,
            &format!("not installed in {}: {missing}", python.display()),
        ));
        return Ok(());
    }

    let mut detail = Detail::new(
        "Python: acquire + release, file backend, uncontended",
        &format!(
            "Each sample is one acquire + release of an uncontended lock file in one \
             Python interpreter, timed with `perf_counter_ns`; {} rounds of {} samples per \
             contender, interleaved round by round. onlyone: one `onlyone.Lock(name, \
             dir=...)`, `acquire(blocking=False)` + `release()` of the guard (the wheel \
             built in release mode, `pip install ./python`). filelock: one `FileLock(path)`, \
             `acquire()` + `release()`. tendo: `SingleInstance(lockfile=path)` then `del` \
             (its `__del__` unlocks and unlinks). onlyone writes its holder record and binds \
             its holder socket on every acquisition; the peers do neither.",
            config.inproc_rounds, config.inproc_batch
        ),
        &[
            "contender",
            "n",
            "p10",
            "median",
            "p90",
            "p99",
            "median vs onlyone",
        ],
    );
    let ours_median = ours.median();
    let mut add = |name: &str, samples: &mut Samples| {
        if samples.is_empty() {
            return;
        }
        let s = samples.summary();
        detail.row(vec![
            name.to_owned(),
            s.n.to_string(),
            fmt_ns(s.p10),
            fmt_ns(s.p50),
            fmt_ns(s.p90),
            fmt_ns(s.p99),
            fmt_ratio(s.p50 / ours_median),
        ]);
    };
    add("onlyone `Lock.acquire` + `release`", &mut ours);
    add("filelock `acquire` + `release`", &mut filelock);
    add("tendo `SingleInstance` + `del`", &mut tendo);
    report.detail(detail);

    let speedup = filelock.median() / ours_median;
    let tendo_part = match tendo.is_empty() {
        true => String::new(),
        false => format!(", tendo {}", fmt_ns(tendo.median())),
    };
    let tendo_ratio = match tendo.is_empty() {
        true => String::new(),
        false => format!(", {} vs tendo", fmt_ratio(tendo.median() / ours_median)),
    };
    report.row(Row {
        what: WHAT.into(),
        onlyone: fmt_ns(ours_median),
        peers: format!("filelock {}{tendo_part}", fmt_ns(filelock.median())),
        ratio: format!("{} faster than filelock{tendo_ratio}", fmt_ratio(speedup)),
        goal,
        verdict: Verdict::goal(speedup >= GOAL_VS_FILELOCK),
    });
    Ok(())
}
