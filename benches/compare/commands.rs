//! Benchmarks of the `onlyone` command against flock(1) and Python
//! filelock: wall time, wake-up of a waiter, failover after SIGKILL,
//! supervisor memory, and 1,000 simultaneous starters.

use std::os::unix::fs::DirBuilderExt;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rustix::process::Signal;

use crate::procs::{
    Jitter, Proc, flock_waiters, kill, kill_group, memory_kb, monotonic_ns, run_quiet, wait_until,
};
use crate::report::{Detail, Report, Row, Verdict};
use crate::stats::{Samples, Summary, fmt_kb, fmt_ns, fmt_ratio};
use crate::{Config, Env};

/// `onlyone run --name x -- true`: wall time against flock(1) and a bare
/// `true`, interleaved one run each per round.
pub fn wall(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    // Issue 15's goal (issue 5 asked for 1.10×).
    const GOAL: f64 = 1.15;
    let flock_file = env.peer_file("wall");
    let mut samples = [Samples::default(), Samples::default(), Samples::default()];
    for round in 0..config.wall_rounds {
        for i in 0..samples.len() {
            let which = (round + i) % samples.len();
            let mut command = match which {
                0 => env.onlyone_run("wall", &[], &[&env.true_bin]),
                1 => {
                    let mut flock = Command::new(&env.flock_bin);
                    flock.arg("-n").arg(&flock_file).arg(&env.true_bin);
                    flock
                }
                _ => Command::new(&env.true_bin),
            };
            let start = Instant::now();
            let status = run_quiet(&mut command)?;
            samples[which].push(start.elapsed());
            ensure!(status.success(), "{command:?} failed: {status}");
        }
    }
    let [mut ours, mut flock, mut bare] = samples;
    let mut detail = Detail::new(
        "`onlyone run --name x -- true`, wall time",
        &format!(
            "Wall time from spawn to exit as seen by the parent, release build, default \
             lock directory; {} rounds, each running the three commands once in a rotating \
             order. flock(1): `flock -n FILE true`.",
            config.wall_rounds
        ),
        &[
            "command",
            "n",
            "p10",
            "median",
            "p90",
            "p99",
            "median vs flock(1)",
        ],
    );
    let flock_median = flock.median();
    for (name, samples) in [
        ("`onlyone run --name x -- true`", &mut ours),
        ("`flock -n f true`", &mut flock),
        ("`true`", &mut bare),
    ] {
        let s = samples.summary();
        detail.row(quantile_cells(name, &s, Some(flock_median)));
    }
    report.detail(detail);
    let ratio = ours.median() / flock_median;
    report.row(Row {
        what: "`onlyone run --name x -- true`, wall".into(),
        onlyone: fmt_ns(ours.median()),
        peers: format!(
            "flock(1) {}, `true` {}",
            fmt_ns(flock_median),
            fmt_ns(bare.median())
        ),
        ratio: format!("{} flock(1)", fmt_ratio(ratio)),
        goal: format!("≤ {GOAL:.2}× flock(1)"),
        verdict: Verdict::goal(ratio <= GOAL),
    });
    Ok(())
}

/// Who holds or waits in a wake-up measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Onlyone,
    Flock,
    Python,
}

/// One kind of wake-up measurement: a holder and a waiter, or the floor.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pair {
    /// `holder` releases, `waiter` starts its command. Mixed onlyone and
    /// flock(1) pairs share onlyone's lock file: they tell the cost of
    /// onlyone's release from the cost of its start.
    Lock { holder: Side, waiter: Side },
    /// No lock at all: the bench starts the helper itself. How long a
    /// command takes to start, which every waiter pays on top of its wake-up.
    Floor,
}

impl Pair {
    fn label(self) -> &'static str {
        use Side::*;
        match self {
            Pair::Lock {
                holder: Onlyone,
                waiter: Onlyone,
            } => "onlyone → `onlyone run --wait`",
            Pair::Lock {
                holder: Flock,
                waiter: Flock,
            } => "flock(1) → `flock -w 10` (kernel wait)",
            Pair::Lock {
                holder: Onlyone,
                waiter: Flock,
            } => "onlyone → `flock -w 10` (onlyone's release)",
            Pair::Lock {
                holder: Flock,
                waiter: Onlyone,
            } => "flock(1) → `onlyone run --wait` (onlyone's start)",
            Pair::Lock {
                holder: Python,
                waiter: Python,
            } => "Python filelock → `acquire()` (50 ms poll)",
            Pair::Lock { .. } => "other",
            Pair::Floor => "floor: no lock, the bench starts the command itself",
        }
    }
}

/// The holder's command exits (or releases) → the waiting command starts.
pub fn wakeup(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    // Issue 15's goals, as ratios to `flock -w` in the same run (issue 5
    // asked for p50 ≤ 1 ms, below the cost of starting a command here).
    const GOAL_P50: f64 = 1.15;
    const GOAL_P99: f64 = 1.4;
    use Side::*;
    let mut pairs = vec![
        Pair::Lock {
            holder: Onlyone,
            waiter: Onlyone,
        },
        Pair::Lock {
            holder: Flock,
            waiter: Flock,
        },
        Pair::Lock {
            holder: Onlyone,
            waiter: Flock,
        },
        Pair::Lock {
            holder: Flock,
            waiter: Onlyone,
        },
        Pair::Floor,
    ];
    if env.has_python() {
        pairs.push(Pair::Lock {
            holder: Python,
            waiter: Python,
        });
    }
    let mut samples = vec![Samples::default(); pairs.len()];
    let mut jitter = Jitter::new();
    for run in 0..config.wakeup_runs {
        for i in 0..pairs.len() {
            let which = (run + i) % pairs.len();
            let latency = wakeup_once(env, pairs[which], &mut jitter)
                .with_context(|| format!("wake-up, {}", pairs[which].label()))?;
            samples[which].push_ns(latency);
        }
    }
    let mut detail = Detail::new(
        "Waiter wake-up after release",
        &format!(
            "Latency from the holder's command printing CLOCK_MONOTONIC right before it \
             exits to the waiting command printing CLOCK_MONOTONIC as it starts; {} runs \
             per pair, interleaved. The commands are this bench binary in a helper mode \
             (a compiled program: Python's interpreter would take longer to start than \
             what is measured). onlyone: holder `onlyone run --name w -- HELPER`, waiter \
             `onlyone run --wait --name w -- HELPER`, started once the holder runs and \
             timed once /proc/locks shows it blocked. flock(1): `flock f HELPER` and \
             `flock -w 10 f HELPER`. The mixed pairs lock onlyone's lock file with \
             flock(1) on one side, which tells what onlyone's release and onlyone's start \
             each add. Python filelock: the holder releases right after its stamp; the \
             waiter stamps right after `acquire()` returns (it polls every 50 ms; the \
             release comes 60-110 ms after it starts waiting, at random). The floor is \
             the time from the bench's stamp to the helper's when the bench starts the \
             helper itself: what starting a command costs at all.",
            config.wakeup_runs
        ),
        &["holder → waiter", "n", "p10", "median", "p90", "p99", "max"],
    );
    let mut summaries = Vec::new();
    for (pair, samples) in pairs.iter().zip(samples.iter_mut()) {
        let s = samples.summary();
        detail.row(vec![
            pair.label().to_owned(),
            s.n.to_string(),
            fmt_ns(s.p10),
            fmt_ns(s.p50),
            fmt_ns(s.p90),
            fmt_ns(s.p99),
            fmt_ns(s.max),
        ]);
        summaries.push(s);
    }
    report.detail(detail);
    let (ours, flock, floor) = (summaries[0], summaries[1], summaries[4]);
    let mut peers = format!(
        "flock -w p50 {} / p99 {}; floor (command start alone) p50 {}",
        fmt_ns(flock.p50),
        fmt_ns(flock.p99),
        fmt_ns(floor.p50)
    );
    if let Some(python) = summaries.get(5) {
        peers.push_str(&format!(
            "; Python filelock p50 {} / p99 {}",
            fmt_ns(python.p50),
            fmt_ns(python.p99)
        ));
    }
    report.row(Row {
        what: "waiter wake-up after release".into(),
        onlyone: format!("p50 {} / p99 {}", fmt_ns(ours.p50), fmt_ns(ours.p99)),
        peers,
        ratio: format!(
            "p50 {}, p99 {} flock -w",
            fmt_ratio(ours.p50 / flock.p50),
            fmt_ratio(ours.p99 / flock.p99)
        ),
        goal: format!("p50 ≤ {GOAL_P50:.2}×, p99 ≤ {GOAL_P99:.1}× flock -w"),
        verdict: Verdict::goal(
            ours.p50 <= GOAL_P50 * flock.p50 && ours.p99 <= GOAL_P99 * flock.p99,
        ),
    });
    Ok(())
}

fn wakeup_once(env: &Env, pair: Pair, jitter: &mut Jitter) -> Result<u64> {
    let stamp = env.helper("stamp");
    let (holder_side, waiter_side) = match pair {
        Pair::Lock { holder, waiter } => (holder, waiter),
        Pair::Floor => {
            let mut command = Command::new(&stamp[0]);
            command.args(&stamp[1..]);
            let start = monotonic_ns();
            let mut proc = Proc::start(command, "helper")?;
            let started = proc.stamp()?;
            proc.wait_ok()?;
            return Ok(started.saturating_sub(start));
        }
    };
    // Any pair with onlyone in it uses onlyone's lock file.
    let path = if holder_side == Side::Onlyone || waiter_side == Side::Onlyone {
        env.onlyone_lock_file("wake")
    } else if holder_side == Side::Python {
        env.peer_file("wake-python")
    } else {
        env.peer_file("wake")
    };
    let mut holder = match holder_side {
        Side::Onlyone => Proc::start(
            env.onlyone_run("wake", &[], &env.helper("hold")),
            "onlyone holder",
        )?,
        Side::Flock => {
            if let Some(dir) = path.parent() {
                // onlyone's directory, when flock(1) is the first to use it.
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .recursive(true)
                    .create(dir)?;
            }
            let mut command = Command::new(&env.flock_bin);
            command.arg(&path).args(env.helper("hold"));
            Proc::start(command, "flock holder")?
        }
        Side::Python => {
            let mut command = env.python(&["hold"]).context("no Python")?;
            command.arg(&path);
            Proc::start(command, "Python holder")?
        }
    };
    holder.ready()?;
    let mut waiting = match waiter_side {
        Side::Onlyone => Proc::start(
            env.onlyone_run("wake", &["--wait"], &stamp),
            "onlyone waiter",
        )?,
        Side::Flock => {
            let mut command = Command::new(&env.flock_bin);
            command.args(["-w", "10"]).arg(&path).args(&stamp);
            Proc::start(command, "flock waiter")?
        }
        Side::Python => {
            let mut command = env.python(&["wait"]).context("no Python")?;
            command.arg(&path);
            Proc::start(command, "Python waiter")?
        }
    };
    if waiter_side == Side::Python {
        ensure!(
            waiting.line()? == "waiting",
            "the Python waiter did not start"
        );
        // It polls: release at a random phase of its 50 ms sleep.
        thread::sleep(Duration::from_millis(60 + jitter.below(50)));
    } else {
        wait_until("the waiter blocks in flock(2)", || {
            Ok(flock_waiters(&path)? > 0)
        })?;
    }
    holder.poke()?;
    let released = holder.stamp()?;
    let started = waiting.stamp()?;
    holder.wait_ok()?;
    waiting.wait_ok()?;
    ensure!(
        started >= released,
        "the waiter started before the holder exited"
    );
    Ok(started - released)
}

/// SIGKILL of the holder → the waiting command starts.
pub fn failover(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    const GOAL_P99: f64 = 5e6;
    // Killing only the supervisor is the usual `kill -9 PID`: the kernel
    // then kills the command through its parent-death signal, and the lock
    // is free once both are gone. Killing the whole group is what an OOM
    // kill of a cgroup or systemd's KillMode=control-group does.
    let mut supervisor_only = Samples::default();
    let mut whole = Samples::default();
    for run in 0..config.failover_runs {
        for i in 0..2 {
            let kill_command_too = (run + i) % 2 == 1;
            let latency = failover_once(env, kill_command_too)?;
            if kill_command_too {
                whole.push_ns(latency);
            } else {
                supervisor_only.push_ns(latency);
            }
        }
    }
    let mut detail = Detail::new(
        "Failover after SIGKILL of the holder, file backend",
        &format!(
            "A holder `onlyone run --name f -- HELPER` runs; a waiter `onlyone run --wait \
             --name f -- HELPER` blocks in flock(2) (seen in /proc/locks). The bench \
             reads CLOCK_MONOTONIC, sends SIGKILL, and the waiter's command prints \
             CLOCK_MONOTONIC as it starts. {} runs per variant, interleaved.",
            config.failover_runs
        ),
        &["SIGKILL to", "n", "p10", "median", "p90", "p99", "max"],
    );
    let mut worst_p99: f64 = 0.0;
    let mut cells = Vec::new();
    for (name, samples) in [
        (
            "the supervisor only (the command dies by its parent-death signal)",
            &mut supervisor_only,
        ),
        ("the supervisor and the command's process group", &mut whole),
    ] {
        let s = samples.summary();
        worst_p99 = worst_p99.max(s.p99);
        cells.push(format!("p50 {} / p99 {}", fmt_ns(s.p50), fmt_ns(s.p99)));
        detail.row(vec![
            name.to_owned(),
            s.n.to_string(),
            fmt_ns(s.p10),
            fmt_ns(s.p50),
            fmt_ns(s.p90),
            fmt_ns(s.p99),
            fmt_ns(s.max),
        ]);
    }
    report.detail(detail);
    report.row(Row {
        what: "failover after SIGKILL of the holder, file".into(),
        onlyone: format!("supervisor: {}; + group: {}", cells[0], cells[1]),
        peers: "—".into(),
        ratio: "—".into(),
        goal: "p99 ≤ 5 ms".into(),
        verdict: Verdict::goal(worst_p99 <= GOAL_P99),
    });
    Ok(())
}

fn failover_once(env: &Env, kill_command_too: bool) -> Result<u64> {
    let mut holder = Proc::start(
        env.onlyone_run("failover", &[], &env.helper("sleep")),
        "onlyone holder",
    )?;
    let command_pid = holder.ready()?;
    let mut waiter = Proc::start(
        env.onlyone_run("failover", &["--wait"], &env.helper("stamp")),
        "onlyone waiter",
    )?;
    let path = env.onlyone_lock_file("failover");
    wait_until("the onlyone waiter blocks in flock(2)", || {
        Ok(flock_waiters(&path)? > 0)
    })?;
    let killed = monotonic_ns();
    if kill_command_too {
        // The command leads its own process group.
        kill_group(command_pid, Signal::KILL);
    }
    kill(holder.pid(), Signal::KILL);
    let started = waiter.stamp()?;
    waiter.wait_ok()?;
    let status = holder.wait()?;
    ensure!(
        !status.success(),
        "the killed holder exited with success: {status}"
    );
    ensure!(started >= killed, "the waiter started before the kill");
    Ok(started - killed)
}

/// RSS of the `onlyone run` supervisor while its command runs, against
/// flock(1) doing the same.
pub fn memory(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    // Issue 15's goal (issue 5 asked for 4 MB).
    const GOAL_KB: u64 = 3 * 1024;
    let mut ours = Vec::new();
    let mut flock = Vec::new();
    for _ in 0..config.memory_runs {
        let mut holder = Proc::start(
            env.onlyone_run("memory", &[], &env.helper("sleep")),
            "onlyone",
        )?;
        holder.ready()?;
        // Let the supervisor settle into its steady state.
        thread::sleep(Duration::from_millis(50));
        ours.push(memory_kb(holder.pid())?);
        drop(holder);

        let mut command = Command::new(&env.flock_bin);
        command
            .arg(env.peer_file("memory"))
            .args(env.helper("sleep"));
        let mut holder = Proc::start(command, "flock")?;
        holder.ready()?;
        thread::sleep(Duration::from_millis(50));
        flock.push(memory_kb(holder.pid())?);
    }
    let median = |values: &mut Vec<(u64, u64)>| {
        values.sort_unstable();
        values[values.len() / 2]
    };
    let (our_rss, our_hwm) = median(&mut ours);
    let (flock_rss, flock_hwm) = median(&mut flock);
    let mut detail = Detail::new(
        "Supervisor memory while the command runs",
        &format!(
            "VmRSS and VmHWM (peak) from /proc/PID/status of the supervising process \
             while its command sleeps, 50 ms after the command started; median of {} \
             runs. Release build, file backend only (no `postgres` feature).",
            config.memory_runs
        ),
        &["supervisor", "VmRSS", "VmHWM", "RSS vs flock(1)"],
    );
    detail.row(vec![
        "`onlyone run --name m -- CMD`".into(),
        fmt_kb(our_rss),
        fmt_kb(our_hwm),
        fmt_ratio(our_rss as f64 / flock_rss as f64),
    ]);
    detail.row(vec![
        "`flock f CMD`".into(),
        fmt_kb(flock_rss),
        fmt_kb(flock_hwm),
        fmt_ratio(1.0),
    ]);
    report.detail(detail);
    report.row(Row {
        what: "supervisor memory while the command runs, file".into(),
        onlyone: format!("RSS {} (peak {})", fmt_kb(our_rss), fmt_kb(our_hwm)),
        peers: format!("flock(1) RSS {}", fmt_kb(flock_rss)),
        ratio: format!("{} flock(1)", fmt_ratio(our_rss as f64 / flock_rss as f64)),
        goal: "RSS ≤ 3 MB".into(),
        verdict: Verdict::goal(our_rss <= GOAL_KB),
    });
    Ok(())
}

/// What one scale run found.
struct ScaleRun {
    spawned: Duration,
    last_exit: Duration,
}

/// N simultaneous `onlyone run` on one name: exactly one runs, all others
/// exit 75. This is a correctness check as much as a benchmark: the smoke
/// run checks it too.
pub fn scale(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    let mut runs = Vec::new();
    for run in 0..config.scale_runs {
        runs.push(
            scale_once(env, config.scale_n, run)
                .with_context(|| format!("{} simultaneous `onlyone run`", config.scale_n))?,
        );
    }
    let mut spawned = Samples::default();
    let mut last_exit = Samples::default();
    for run in &runs {
        spawned.push(run.spawned);
        last_exit.push(run.last_exit);
    }
    let mut detail = Detail::new(
        &format!(
            "Scale: {} simultaneous `onlyone run` on one name, file",
            config.scale_n
        ),
        &format!(
            "The bench spawns {n} `onlyone run --name s -- HELPER` as fast as it can; the \
             helper appends its pid to a file and sleeps. Checked: exactly one command ran, \
             the {others} others exited 75, and the one that ran exits 143 on SIGTERM. \
             Times from the first spawn; {runs} runs.",
            n = config.scale_n,
            others = config.scale_n - 1,
            runs = config.scale_runs
        ),
        &["run", "all spawned after", "last exit after"],
    );
    for (i, run) in runs.iter().enumerate() {
        detail.row(vec![
            (i + 1).to_string(),
            fmt_ns(run.spawned.as_nanos() as f64),
            fmt_ns(run.last_exit.as_nanos() as f64),
        ]);
    }
    report.detail(detail);
    report.row(Row {
        what: format!(
            "scale: {} simultaneous `run` on one name, file",
            config.scale_n
        ),
        onlyone: format!(
            "exactly 1 ran, {} exited 75; last exit after {} (median of {})",
            config.scale_n - 1,
            fmt_ns(last_exit.median()),
            runs.len()
        ),
        peers: "—".into(),
        ratio: "—".into(),
        goal: "exactly 1 runs, all others exit 75".into(),
        verdict: Verdict::Correct,
    });
    Ok(())
}

fn scale_once(env: &Env, n: usize, run: usize) -> Result<ScaleRun> {
    let marker = env.root.join(format!("scale-{run}.ran"));
    let mut helper = env.helper("ran");
    helper.push(marker.display().to_string());
    let ran = || -> usize {
        std::fs::read_to_string(&marker)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    };

    let start = Instant::now();
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let child = env
            .onlyone_run("scale", &[], &helper)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(err) => {
                stop_all(&mut children);
                return Err(err).context("spawn");
            }
        }
    }
    let spawned = start.elapsed();

    let mut exits: Vec<Option<(ExitStatus, Duration)>> = vec![None; n];
    let deadline = start + Duration::from_secs(120);
    loop {
        for (child, exit) in children.iter_mut().zip(exits.iter_mut()) {
            if exit.is_none()
                && let Some(status) = child.try_wait()?
            {
                *exit = Some((status, start.elapsed()));
            }
        }
        let running = exits.iter().filter(|exit| exit.is_none()).count();
        if running <= 1 && ran() > 0 {
            break;
        }
        if running == 0 || Instant::now() > deadline {
            stop_all(&mut children);
            bail!(
                "{running} still running, {} commands ran, after {:?}",
                ran(),
                start.elapsed()
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
    let last_exit = exits.iter().flatten().map(|(_, at)| *at).max();
    let mut codes = std::collections::BTreeMap::new();
    for (status, _) in exits.iter().flatten() {
        *codes.entry(status.code()).or_insert(0usize) += 1;
    }
    let winner = exits.iter().position(Option::is_none);
    // Stop the one that runs; its supervisor forwards SIGTERM.
    if let Some(winner) = winner {
        kill(children[winner].id(), Signal::TERM);
        let status = children[winner].wait()?;
        ensure!(
            status.code() == Some(143),
            "the command that ran ended with {status} on SIGTERM, not 143"
        );
    }
    stop_all(&mut children);
    let ran = ran();
    ensure!(
        winner.is_some() && ran == 1,
        "{ran} commands ran (exactly 1 must); exit codes of the others: {codes:?}"
    );
    ensure!(
        codes.len() == 1 && codes.get(&Some(75)) == Some(&(n - 1)),
        "the {} that did not run must all exit 75; exit codes: {codes:?}",
        n - 1
    );
    Ok(ScaleRun {
        spawned,
        last_exit: last_exit.unwrap_or_default(),
    })
}

fn stop_all(children: &mut [std::process::Child]) {
    for child in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn quantile_cells(name: &str, s: &Summary, reference: Option<f64>) -> Vec<String> {
    let mut cells = vec![
        name.to_owned(),
        s.n.to_string(),
        fmt_ns(s.p10),
        fmt_ns(s.p50),
        fmt_ns(s.p90),
        fmt_ns(s.p99),
    ];
    if let Some(reference) = reference {
        cells.push(fmt_ratio(s.p50 / reference));
    }
    cells
}
