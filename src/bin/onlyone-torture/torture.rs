//! The torture run: flags, setting up the work directory, starting the
//! contenders and the chaos thread, stopping them all, and judging the
//! result.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::analysis::{self, Analysis};
use crate::chaos::{self, Chaos, Event};
use crate::contenders::{Contenders, Supervisors};
use crate::fenced;
use crate::procs;
use crate::rng::{self, Rng};
use crate::stop::{Stop, StopReason};
use crate::summary::{self, ChaosCounts, Latency, Machine, Summary, TokenCounts};
use crate::witness::WitnessArgs;
use crate::witness_log::{self, monotonic_ns};

/// Exit status when the run found a failure (an overlap, ...).
const EXIT_FAILED: u8 = 1;
/// Exit status when the run could not be made (bad setup).
const EXIT_BROKEN: u8 = 2;
/// Exit status when interrupted (as a shell reports SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// How often a long run says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long processes of the run may take to die after the final sweep.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

const AFTER_HELP: &str = "\
Exit status:
  0    passed
  1    failed: an overlap, a fencing-token regression or a supervisor exit
       that no chaos explains, a leaked process, nothing acquired, or
       fewer acquisitions than --acquisitions within --seconds
  2    could not run (no onlyone binary, work directory not empty, ...)
  130  interrupted

The work directory keeps witness.log (ENTER/EXIT/OVERLAP/LATE lines),
chaos.log (what the chaos did, when) and onlyone.stderr.";

/// Torture-test onlyone: many contenders loop `onlyone run --wait` over one
/// lock while a chaos thread kills holders and supervisors, stops holders
/// and deletes the lock file and directory. A witness under the lock
/// detects any overlap of two holders.
#[derive(Debug, Parser)]
#[command(
    name = "onlyone-torture",
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub witness: Option<Hidden>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Hidden {
    /// The protected command (run by onlyone, not by people)
    #[command(hide = true)]
    Witness(WitnessArgs),
    /// A fenced writer that left the witness's process group (run by a
    /// witness, not by people)
    #[command(hide = true)]
    Escapee(fenced::EscapeeArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// How many processes contend for the lock at once
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1000))]
    contenders: u64,

    /// Stop after this many seconds [default: 10, or 600 as a bound when
    /// --acquisitions is given]
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,

    /// Stop once this many holders have entered and every kind named by
    /// --chaos has landed at least once
    #[arg(long, value_name = "K")]
    acquisitions: Option<u64>,

    /// Seed of the random choices [default: from the clock; always printed]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// The onlyone binary [default: `onlyone` next to this program]
    #[arg(long, value_name = "PATH")]
    onlyone: Option<PathBuf>,

    /// A new or empty directory for the run's lock directory, witness file
    /// and logs [default: a new temporary directory, removed after a run
    /// that passed]
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,

    /// Write the summary as JSON to this file
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,

    /// Mean milliseconds between two chaos acts
    #[arg(long, value_name = "MS", default_value_t = 20)]
    chaos_ms: u64,

    /// Only these kinds of chaos (comma-separated) [default: all that
    /// apply to the backend]
    #[arg(long, value_name = "KINDS", value_delimiter = ',')]
    chaos: Vec<chaos::Kind>,

    /// No chaos at all (a baseline for the handoff latency)
    #[arg(long)]
    no_chaos: bool,

    /// Longest hold of a holder in milliseconds (each is random in 0..=MS)
    #[arg(long, value_name = "MS", default_value_t = 5)]
    max_hold_ms: u64,

    /// Use the PostgreSQL backend at URL (passed to `onlyone run
    /// --postgres`); chaos then terminates holder sessions instead of
    /// deleting files
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,

    /// Use the MySQL/MariaDB backend at URL (passed to `onlyone run
    /// --mysql`); chaos then ends holder sessions (KILL CONNECTION, with
    /// the `mariadb` client) instead of deleting files
    #[arg(long, value_name = "URL", conflicts_with = "postgres")]
    mysql: Option<String>,

    /// One more argument for every `onlyone run`, before its `--`
    /// (repeatable): with --postgres, say --onlyone-arg=--heartbeat=200ms
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    onlyone_arg: Vec<String>,

    /// Give each `onlyone run` one of these kill graces (comma-separated
    /// durations), chosen at random: holders with different bounds, as
    /// the lock-delay must cover the longest of them
    #[arg(long, value_name = "DURATIONS", value_delimiter = ',')]
    kill_graces: Vec<String>,

    /// The witness ignores SIGTERM: a holder that loses the lock stops its
    /// command only with SIGKILL, at the end of its kill grace
    #[arg(long)]
    witness_ignores_term: bool,

    /// With --postgres: every witness writes rows through the fence while
    /// it holds, and the run checks from the database that none was
    /// committed under a stale token (uses a state table of its own)
    #[arg(long, requires = "postgres")]
    fenced_writes: bool,
}

/// Where a run keeps its files. The lock directory is the one the chaos
/// deletes; the witness file and the log live beside it, out of reach.
struct Paths {
    work: PathBuf,
    lock_dir: PathBuf,
    witness: PathBuf,
    log: PathBuf,
    /// What the chaos thread did, one line per act.
    chaos: PathBuf,
    stderr: PathBuf,
}

impl Paths {
    fn new(work: PathBuf) -> Paths {
        Paths {
            lock_dir: work.join("locks"),
            witness: work.join("witness"),
            log: work.join("witness.log"),
            chaos: work.join("chaos.log"),
            stderr: work.join("onlyone.stderr"),
            work,
        }
    }
}

pub fn run(args: &RunArgs) -> ExitCode {
    match torture(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("onlyone-torture: {err:#}");
            ExitCode::from(EXIT_BROKEN)
        }
    }
}

fn torture(args: &RunArgs) -> anyhow::Result<u8> {
    let seed = args.seed.unwrap_or_else(rng::seed_from_clock);
    println!("onlyone-torture: seed {seed}");
    let onlyone = onlyone_binary(args)?;
    check_backend_support(&onlyone, args)?;
    let default_work = args.work.is_none();
    let paths = Paths::new(prepare_work_dir(match &args.work {
        Some(work) => work.clone(),
        None => std::env::temp_dir().join(format!("onlyone-torture-{}", std::process::id())),
    })?);
    println!("onlyone-torture: work dir {}", paths.work.display());

    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let fenced = fenced_tables(args);
    if let Some(tables) = &fenced {
        prepare_fenced(&onlyone, tables)?;
    }
    let outcome = contend_under_chaos(args, seed, &onlyone, &paths, fenced.as_ref())?;
    let chaos_log: String = outcome.events.iter().map(Event::to_line).collect();
    fs::write(&paths.chaos, chaos_log).context("cannot write the chaos log")?;
    let lines = witness_log::read_all(&paths.log).context("cannot read the witness log")?;
    let analysis = analysis::analyze(&lines, &outcome.events, outcome.stop_ns);
    let mut summary = summarize(args, seed, started_at, &paths, &outcome, &analysis);
    if let Some(tables) = &fenced {
        let mut counts = tables.check()?;
        counts.refused = fenced::refused(&paths.log);
        if counts.stale_commits > 0 {
            summary.failures.push(format!(
                "{} rows committed under a stale fencing token",
                counts.stale_commits
            ));
        }
        if counts.early_commits > 0 {
            summary.failures.push(format!(
                "{} rows committed before their token",
                counts.early_commits
            ));
        }
        if counts.writes == 0 {
            summary
                .failures
                .push("no fenced write committed".to_owned());
        }
        summary.passed = summary.failures.is_empty();
        summary.fenced_writes = Some(counts);
    }

    print!("{}", summary.table());
    if let Some(path) = &args.summary {
        let json = serde_json::to_string_pretty(&summary)? + "\n";
        fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if summary.passed && default_work {
        let _ = fs::remove_dir_all(&paths.work);
    }
    if summary.passed
        && let Some(tables) = &fenced
    {
        tables.drop_all()?;
    }
    Ok(match outcome.stop_reason {
        StopReason::Interrupted => EXIT_INTERRUPTED,
        _ if summary.passed => 0,
        _ => EXIT_FAILED,
    })
}

/// The tables of a `--fenced-writes` run, named after it.
fn fenced_tables(args: &RunArgs) -> Option<fenced::Tables> {
    let url = args.postgres.clone().filter(|_| args.fenced_writes)?;
    Some(fenced::Tables {
        url,
        prefix: format!("torture_{}", std::process::id()),
    })
}

/// Has onlyone make the run's state table (one acquisition), then adds the
/// tables and the trigger that record the commit order.
fn prepare_fenced(onlyone: &Path, tables: &fenced::Tables) -> anyhow::Result<()> {
    let status = Command::new(onlyone)
        .args(["run", "--quiet", "--postgres", &tables.url, "--table"])
        .arg(tables.state())
        .args(["--name", &format!("torture-{}", std::process::id())])
        .args(["--", "true"])
        .status()
        .context("cannot run onlyone")?;
    if !status.success() {
        bail!("onlyone could not make the state table {}", tables.state());
    }
    tables.create()
}

fn onlyone_binary(args: &RunArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.onlyone {
        Some(path) => path.clone(),
        None => {
            let me = std::env::current_exe().context("cannot find this program's path")?;
            me.with_file_name("onlyone")
        }
    };
    if !path.is_file() {
        bail!(
            "no onlyone binary at {} (build it, or give --onlyone PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// Refuses `--postgres` with an onlyone built without that backend, which
/// would fail every attempt with a usage error, or without `psql`, which
/// the chaos needs to terminate sessions.
fn check_backend_support(onlyone: &Path, args: &RunArgs) -> anyhow::Result<()> {
    if args.mysql.is_some() {
        let help = Command::new(onlyone).args(["run", "--help"]).output()?;
        if !String::from_utf8_lossy(&help.stdout).contains("--mysql") {
            bail!(
                "{} has no --mysql flag (built without the MySQL backend?)",
                onlyone.display()
            );
        }
        if Command::new("mariadb").arg("--version").output().is_err() {
            bail!("--mysql needs the mariadb client on PATH, to end holder sessions");
        }
        return Ok(());
    }
    if args.postgres.is_none() {
        return Ok(());
    }
    let help = Command::new(onlyone).args(["run", "--help"]).output()?;
    if !String::from_utf8_lossy(&help.stdout).contains("--postgres") {
        bail!(
            "{} has no --postgres flag (built without the PostgreSQL backend?)",
            onlyone.display()
        );
    }
    if Command::new("psql").arg("--version").output().is_err() {
        bail!("--postgres needs psql on PATH, to terminate holder sessions");
    }
    Ok(())
}

/// Creates the work directory, which must be new or empty (the leftover
/// check finds the run's processes by its witness file's path), and
/// returns its absolute path.
fn prepare_work_dir(work: PathBuf) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let work = work
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", work.display()))?;
    if fs::read_dir(&work)?.next().is_some() {
        bail!("the work directory {} is not empty", work.display());
    }
    Ok(work)
}

/// What happened while the contenders ran.
struct Outcome {
    events: Vec<Event>,
    exits: std::collections::BTreeMap<String, u64>,
    duration: Duration,
    stop_reason: StopReason,
    /// When the final sweep began (monotonic ns).
    stop_ns: u64,
    leftovers: Vec<u32>,
}

fn contend_under_chaos(
    args: &RunArgs,
    seed: u64,
    onlyone: &Path,
    paths: &Paths,
    fenced: Option<&fenced::Tables>,
) -> anyhow::Result<Outcome> {
    let torture = std::env::current_exe().context("cannot find this program's path")?;
    let mut witness: Vec<OsString> = vec![
        torture.clone().into(),
        "witness".into(),
        "--file".into(),
        paths.witness.clone().into(),
        "--log".into(),
        paths.log.clone().into(),
    ];
    if args.witness_ignores_term {
        witness.push("--ignore-term".into());
    }
    if let Some(tables) = fenced {
        witness.extend([
            "--fence-url".into(),
            tables.url.clone().into(),
            "--fence-prefix".into(),
            tables.prefix.clone().into(),
        ]);
    }
    let witness_prefix = format!(
        "{} witness --file {}",
        torture.display(),
        paths.witness.display()
    );
    let mut run_args: Vec<OsString> = match (&args.postgres, &args.mysql) {
        (Some(url), _) => vec!["--postgres".into(), url.into()],
        (None, Some(url)) => vec!["--mysql".into(), url.into()],
        (None, None) => vec!["--dir".into(), paths.lock_dir.clone().into()],
    };
    if let Some(tables) = fenced {
        run_args.extend(["--table".into(), tables.state().into()]);
    }
    run_args.extend(args.onlyone_arg.iter().map(OsString::from));
    // Named after this run, so that runs sharing a database (or a
    // database's state table) never meet.
    let lock_name = format!("torture-{}", std::process::id());
    let contenders = Contenders {
        onlyone: onlyone.to_owned(),
        lock_name: lock_name.clone(),
        run_args,
        kill_graces: args.kill_graces.clone(),
        // With PostgreSQL, onlyone's warnings count the lock-delays.
        quiet: args.postgres.is_none() && args.mysql.is_none(),
        witness,
        max_hold_ms: args.max_hold_ms,
        stderr: OpenOptions::new()
            .append(true)
            .create(true)
            .open(&paths.stderr)?,
        supervisors: Supervisors::default(),
        exits: Mutex::new(Default::default()),
    };
    let chaos_config = chaos::Config {
        log: paths.log.clone(),
        lock_file: paths.lock_dir.join(format!("{lock_name}.lock")),
        lock_dir: paths.lock_dir.clone(),
        witness_prefix,
        postgres: args.postgres.clone(),
        mysql: args.mysql.clone(),
        session_pattern: format!("onlyone:{lock_name}@%"),
        lock_name: lock_name.clone(),
        mean_interval: (!args.no_chaos).then(|| Duration::from_millis(args.chaos_ms)),
        kinds: args.chaos.clone(),
        target: args.acquisitions,
    };
    let seconds = args.seconds.unwrap_or(if args.acquisitions.is_some() {
        600.0
    } else {
        10.0
    });
    let stop = Stop::default();
    let entered = AtomicU64::new(0);
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let signals_handle = signals.handle();

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let (events, stop_ns) = thread::scope(|scope| {
        scope.spawn(|| {
            if signals.forever().next().is_some() {
                stop.stop(StopReason::Interrupted);
            }
        });
        let chaos = scope.spawn(|| {
            let rng = Rng::stream(seed, 0);
            Chaos::new(&chaos_config, &stop, &contenders.supervisors, &entered, rng).run()
        });
        let runners: Vec<_> = (1..=args.contenders)
            .map(|index| {
                let (contenders, stop) = (&contenders, &stop);
                scope.spawn(move || contenders.contend(stop, Rng::stream(seed, index)))
            })
            .collect();

        wait_for_the_end(&stop, deadline, started, &entered);
        let stop_ns = monotonic_ns();
        // The chaos thread lets stopped holders continue before it returns,
        // so nothing is left stopped when everything is killed.
        let events = chaos.join().expect("the chaos thread panicked");
        contenders.supervisors.close_and_kill_all();
        for runner in runners {
            runner.join().expect("a contender thread panicked");
        }
        signals_handle.close();
        (events, stop_ns)
    });
    let duration = started.elapsed();
    if fenced.is_some() {
        fenced::kill_escapees(&paths.log);
    }
    let leftovers = kill_leftovers(&paths.witness);
    Ok(Outcome {
        events,
        exits: contenders
            .exits
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        duration,
        stop_reason: stop.reason().unwrap_or(StopReason::Deadline),
        stop_ns,
        leftovers,
    })
}

/// Waits for the deadline or an earlier stop, telling how far the run got
/// every [`PROGRESS_EVERY`].
fn wait_for_the_end(stop: &Stop, deadline: Instant, started: Instant, entered: &AtomicU64) {
    loop {
        let next_report = Instant::now() + PROGRESS_EVERY;
        if stop.wait_until(next_report.min(deadline)) {
            return;
        }
        if Instant::now() >= deadline {
            stop.stop(StopReason::Deadline);
            return;
        }
        eprintln!(
            "onlyone-torture: {:.0} s, {} acquisitions",
            started.elapsed().as_secs_f64(),
            entered.load(Ordering::Relaxed)
        );
    }
}

/// Waits (a bounded time) for every process of the run to be gone, kills
/// any that is not, and returns those it found: each one is a leak.
fn kill_leftovers(witness_file: &Path) -> Vec<u32> {
    // Supervisors and witnesses all carry the witness file's path in their
    // command line. Witnesses are not our children (their supervisors' are,
    // and those are reaped): nothing to wait on, so poll.
    let marker = witness_file.display().to_string();
    let until = Instant::now() + LEFTOVER_GRACE;
    loop {
        let left = procs::processes_marked(&marker);
        if left.is_empty() {
            return left;
        }
        if Instant::now() >= until {
            for &pid in &left {
                if let Some(process) = procs::Pinned::ours(pid, "") {
                    process.signal(rustix::process::Signal::CONT);
                    process.signal(rustix::process::Signal::KILL);
                }
            }
            return left;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn summarize(
    args: &RunArgs,
    seed: u64,
    started_at: String,
    paths: &Paths,
    outcome: &Outcome,
    analysis: &Analysis,
) -> Summary {
    let (cpus, kernel) = procs::machine();
    let chaos = ChaosCounts::count(&outcome.events);
    let seconds = outcome.duration.as_secs_f64();
    let mut summary = Summary {
        passed: false,
        failures: Vec::new(),
        seed,
        backend: if args.postgres.is_some() {
            "postgres"
        } else if args.mysql.is_some() {
            "mysql"
        } else {
            "file"
        }
        .to_owned(),
        started_at,
        machine: Machine { cpus, kernel },
        duration_seconds: seconds,
        contenders: args.contenders as usize,
        acquisitions: analysis.acquisitions,
        acquisitions_per_second: analysis.acquisitions as f64 / seconds.max(1e-9),
        chaos,
        overlaps: analysis.overlaps.len() as u64,
        overlap_lines: analysis.overlaps.iter().take(10).cloned().collect(),
        late_releases: analysis.late_releases,
        late_release_max_ms: analysis.late_release_max_ns as f64 / 1e6,
        tokens: TokenCounts::from(analysis),
        handoff_latency_ms: Latency::from_sorted_ns(&analysis.latencies_ns),
        holders_ended_unexplained: analysis.unexplained_ends,
        lock_delays_waited: count_lines(&paths.stderr, "did not release it cleanly"),
        restarts_after_session_loss: count_lines(&paths.stderr, "the command never ran"),
        supervisor_exits: outcome.exits.clone(),
        unexpected_supervisor_exits: summary::unexpected_exits(
            &outcome.exits,
            args.postgres.is_some() || args.mysql.is_some(),
        ),
        leftover_processes: outcome.leftovers.len(),
        stop_reason: describe_stop(&outcome.stop_reason),
        work_dir: paths.work.display().to_string(),
        fenced_writes: None,
    };
    summary.failures = failures(&summary, args);
    summary.passed = summary.failures.is_empty();
    summary
}

/// How many lines of `path` contain `fragment` (0 if it cannot be read).
fn count_lines(path: &Path, fragment: &str) -> u64 {
    fs::read_to_string(path)
        .map(|text| text.lines().filter(|line| line.contains(fragment)).count() as u64)
        .unwrap_or(0)
}

fn describe_stop(reason: &StopReason) -> String {
    match reason {
        StopReason::Deadline => "time bound reached".to_owned(),
        StopReason::Target => "acquisition target reached".to_owned(),
        StopReason::Interrupted => "interrupted".to_owned(),
        StopReason::Failed(why) => format!("failed: {why}"),
    }
}

/// What makes a run fail: any overlap, a token regression no deletion
/// explains, a supervisor that failed for no reason the chaos gave it, a
/// leaked process, or a run that proved nothing.
fn failures(summary: &Summary, args: &RunArgs) -> Vec<String> {
    let mut failures = Vec::new();
    if summary.overlaps > 0 {
        failures.push(format!(
            "{} overlaps: two holders at once",
            summary.overlaps
        ));
    }
    if summary.tokens.regressions_unexplained > 0 {
        failures.push(format!(
            "{} fencing-token regressions with no deletion to explain them",
            summary.tokens.regressions_unexplained
        ));
    }
    if summary.leftover_processes > 0 {
        failures.push(format!(
            "{} processes of the run outlived it",
            summary.leftover_processes
        ));
    }
    if summary.unexpected_supervisor_exits > 0 {
        failures.push(format!(
            "{} supervisors ended in a way no chaos explains (see supervisor exits, and onlyone.stderr in the work dir)",
            summary.unexpected_supervisor_exits
        ));
    }
    if summary.acquisitions == 0 {
        failures.push("nothing was acquired".to_owned());
    }
    if let Some(target) = args.acquisitions
        && summary.acquisitions < target
    {
        failures.push(format!(
            "only {} of {target} acquisitions within the time bound",
            summary.acquisitions
        ));
    }
    if summary.stop_reason.starts_with("failed") {
        failures.push(summary.stop_reason.clone());
    }
    failures
}
