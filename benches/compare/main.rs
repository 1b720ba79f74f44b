//! onlyone side by side with its peers (issue 5): in-process acquire +
//! release, `onlyone run` wall time, waiter wake-up, failover after
//! SIGKILL, supervisor memory, and 1,000 simultaneous starters; the same
//! against a throwaway PostgreSQL cluster and MariaDB server.
//!
//! Run through `scripts/bench`, which installs the peers and writes
//! docs/BENCHMARKS.md. By hand:
//!
//! ```text
//! cargo bench --bench compare -- [--smoke] [--out FILE] [--python PYTHON]
//! ```
//!
//! `--only NAME` runs the benchmarks whose name contains NAME. `--smoke` runs every benchmark a few times (seconds in all) to prove the
//! harness works; it checks the scale property (exactly one runs, all others
//! exit 75) but no timing goal. `--onlyone BINARY` measures another build
//! of the command (the in-process rows always use this build's library). `--python` names an interpreter that has
//! the `filelock` package; without it the Python rows are left out.
//! `compare helper MODE` is the command the benchmarks run under the locks
//! (see `procs::helper`). `compare profile [N]` only takes and releases an
//! onlyone lock N times, for perf, strace or callgrind.

#![deny(clippy::undocumented_unsafe_blocks)]

mod breakdown;
mod commands;
mod inproc;
mod mysql;
mod postgres;
mod procs;
mod python;
mod report;
mod stats;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail, ensure};

use report::{Report, Row};

/// How many times each benchmark runs.
pub struct Config {
    smoke: bool,
    inproc_rounds: usize,
    inproc_batch: usize,
    wall_rounds: usize,
    wakeup_runs: usize,
    failover_runs: usize,
    memory_runs: usize,
    scale_n: usize,
    scale_runs: usize,
    pg_rounds: usize,
    pg_batch: usize,
    pg_failover_runs: usize,
    pg_failover_short_runs: usize,
    pg_partition_runs: usize,
    pg_names: usize,
    pg_handoff_runs: usize,
    my_rounds: usize,
    my_batch: usize,
    my_failover_runs: usize,
    my_failover_short_runs: usize,
    my_partition_runs: usize,
}

impl Config {
    fn full() -> Config {
        Config {
            smoke: false,
            inproc_rounds: 30,
            inproc_batch: 1000,
            wall_rounds: 500,
            wakeup_runs: 200,
            failover_runs: 200,
            memory_runs: 7,
            scale_n: 1000,
            scale_runs: 3,
            pg_rounds: 10,
            pg_batch: 20,
            pg_failover_runs: 5,
            pg_failover_short_runs: 20,
            pg_partition_runs: 3,
            pg_names: 1000,
            pg_handoff_runs: 20,
            my_rounds: 10,
            my_batch: 20,
            my_failover_runs: 5,
            my_failover_short_runs: 20,
            my_partition_runs: 3,
        }
    }

    fn smoke() -> Config {
        Config {
            smoke: true,
            inproc_rounds: 2,
            inproc_batch: 20,
            wall_rounds: 3,
            wakeup_runs: 2,
            failover_runs: 2,
            memory_runs: 1,
            scale_n: 100,
            scale_runs: 1,
            pg_rounds: 1,
            pg_batch: 2,
            // A default failover waits 10 s and a partition over 20 s by
            // design: too long for a smoke run.
            pg_failover_runs: 0,
            pg_failover_short_runs: 1,
            pg_partition_runs: 0,
            pg_names: 10,
            pg_handoff_runs: 1,
            my_rounds: 1,
            my_batch: 2,
            // As for PostgreSQL: a default failover waits 10 s. The
            // partition runs once with the shortest timing (about 8 s).
            my_failover_runs: 0,
            my_failover_short_runs: 1,
            my_partition_runs: 1,
        }
    }
}

/// Where things are: the binaries compared, and a scratch directory that
/// holds every lock file timed: the peers', and onlyone's in a directory of
/// its own made as onlyone makes its default one (0700). The default
/// directory itself (`/dev/shm/onlyone-<uid>`) cannot be pointed elsewhere,
/// and would put onlyone on another filesystem than its peers.
pub struct Env {
    _scratch: tempfile::TempDir,
    root: PathBuf,
    onlyone_dir: PathBuf,
    peers_dir: PathBuf,
    onlyone_bin: PathBuf,
    me: PathBuf,
    flock_bin: PathBuf,
    true_bin: PathBuf,
    python: Option<PathBuf>,
}

impl Env {
    fn new(python: Option<PathBuf>) -> Result<Env> {
        let scratch = tempfile::Builder::new()
            .prefix("onlyone-bench-")
            .tempdir()?;
        let root = scratch.path().to_owned();
        let onlyone_dir = root.join("onlyone");
        let peers_dir = root.join("peers");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&onlyone_dir)?;
        std::fs::create_dir(&peers_dir)?;
        Ok(Env {
            _scratch: scratch,
            root,
            onlyone_dir,
            peers_dir,
            onlyone_bin: PathBuf::from(env!("CARGO_BIN_EXE_onlyone")),
            me: std::env::current_exe()?,
            flock_bin: find_program("flock")?,
            true_bin: find_program("true")?,
            python,
        })
    }

    /// `onlyone run --name NAME FLAGS -- COMMAND` in onlyone's directory.
    fn onlyone_run(
        &self,
        name: &str,
        flags: &[&str],
        command: &[impl AsRef<std::ffi::OsStr>],
    ) -> Command {
        let mut onlyone = Command::new(&self.onlyone_bin);
        onlyone
            .args(["run", "--name", name])
            .args(flags)
            .arg("--")
            .args(command)
            .env("ONLYONE_DIR", &self.onlyone_dir);
        onlyone
    }

    /// The lock file that `onlyone run --name NAME` uses.
    fn onlyone_lock_file(&self, name: &str) -> PathBuf {
        self.onlyone_dir.join(format!("{name}.lock"))
    }

    /// The in-process lock `name` in onlyone's directory.
    fn onlyone_lock(&self, name: &str) -> Result<onlyone::Lock> {
        let backend = onlyone::FileBackend::new(&self.onlyone_dir);
        Ok(onlyone::Lock::new(name, backend)?)
    }

    /// A lock file for a peer (flock(1), fd-lock, Python).
    fn peer_file(&self, name: &str) -> PathBuf {
        self.peers_dir.join(format!("{name}.lock"))
    }

    /// This binary in helper mode `mode`, as a command line.
    fn helper(&self, mode: &str) -> Vec<String> {
        vec![self.me.display().to_string(), "helper".into(), mode.into()]
    }

    fn has_python(&self) -> bool {
        self.python.is_some()
    }

    /// The Python peer script with `args`, when there is a Python.
    fn python(&self, args: &[&str]) -> Option<Command> {
        let mut command = Command::new(self.python.as_ref()?);
        command
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/filelock_peer.py"
            ))
            .args(args);
        Some(command)
    }
}

fn find_program(name: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("{name} not found in PATH"))
}

struct Args {
    smoke: bool,
    /// Only the benchmarks whose name contains this.
    only: Option<String>,
    out: Option<PathBuf>,
    python: Option<PathBuf>,
    /// Another `onlyone` binary to measure (say, a patched build).
    onlyone: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut parsed = Args {
        smoke: false,
        only: None,
        out: None,
        python: None,
        onlyone: None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => parsed.smoke = true,
            "--only" => parsed.only = Some(args.next().context("--only NAME")?),
            "--out" => parsed.out = Some(args.next().context("--out FILE")?.into()),
            "--python" => parsed.python = Some(args.next().context("--python PYTHON")?.into()),
            "--onlyone" => parsed.onlyone = Some(args.next().context("--onlyone BINARY")?.into()),
            // What `cargo bench` passes to every bench binary.
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(parsed)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("helper") {
        let mode = args.next().unwrap_or_default();
        procs::helper(&mode, args.next().as_deref());
    }
    if first.as_deref() == Some("profile") {
        let count = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
        std::process::exit(match inproc::profile(count) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("bench: error: {err:#}");
                2
            }
        });
    }
    let code = match parse_args(first.into_iter().chain(args)).and_then(run) {
        Ok(failed) => i32::from(failed),
        Err(err) => {
            eprintln!("bench: error: {err:#}");
            2
        }
    };
    std::process::exit(code);
}

/// Runs every benchmark; true when one of them failed.
fn run(args: Args) -> Result<bool> {
    let config = if args.smoke {
        Config::smoke()
    } else {
        Config::full()
    };
    if let Some(python) = &args.python {
        let status = Command::new(python)
            .args(["-c", "import filelock"])
            .status()
            .with_context(|| format!("run {}", python.display()))?;
        ensure!(
            status.success(),
            "{} cannot import filelock",
            python.display()
        );
    }
    let mut env = Env::new(args.python.clone())?;
    if let Some(onlyone) = &args.onlyone {
        env.onlyone_bin = onlyone.clone();
    }

    let load_at_start = load_average();
    let mut report = Report::new(config.smoke);
    type Bench = fn(&Config, &Env, &mut Report) -> Result<()>;
    let benches: [(&str, Bench); 9] = [
        ("in-process acquire + release", inproc::run),
        ("Python acquire + release", python::run),
        ("where the acquire time goes", breakdown::acquire),
        ("onlyone run wall time", commands::wall),
        ("where the run time goes", breakdown::run),
        ("waiter wake-up", commands::wakeup),
        ("failover after SIGKILL", commands::failover),
        ("supervisor memory", commands::memory),
        ("scale", commands::scale),
    ];
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, bench) in benches {
        if args
            .only
            .as_ref()
            .is_some_and(|only| !name.contains(only.as_str()))
        {
            continue;
        }
        ran += 1;
        println!("bench: {name}");
        if let Err(err) = bench(&config, &env, &mut report) {
            eprintln!("bench: {name} FAILED: {err:#}");
            failed.push(name);
        }
    }
    let pg_rows = [
        ("PostgreSQL acquire + release", "≤ 1.3× raw (connect)"),
        (
            "PostgreSQL acquire + release over TLS",
            "≤ 1.3× raw (connect)",
        ),
        (
            "failover after SIGKILL of the holder, PostgreSQL",
            "p99 ≤ 50 ms on loopback",
        ),
        (
            "partition failover, PostgreSQL (frozen proxy)",
            "≤ 20 s with 0 overlap",
        ),
        (
            "supervisor memory while the command runs, PostgreSQL",
            "RSS ≤ 8 MB",
        ),
        (
            "scale: names held by one process, PostgreSQL (library)",
            "≤ 8 sessions, ≤ 4 threads, ≤ +10 MB, all acquired ≤ 2 s",
        ),
        (
            "--replace on PostgreSQL, and stop then run on PostgreSQL",
            "≤ 1 s on loopback",
        ),
    ];
    let wanted = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|only| name.contains(only.as_str()))
    };
    if pg_rows.iter().any(|(name, _)| wanted(name)) {
        println!("bench: starting a throwaway PostgreSQL cluster");
        match postgres::start_cluster(&config) {
            Ok(cluster) => {
                type PgBench = fn(&Config, &Env, &postgres::PgCluster, &mut Report) -> Result<()>;
                let benches: [(&str, PgBench); 7] = [
                    (pg_rows[0].0, postgres::acquire),
                    (pg_rows[1].0, postgres::acquire_tls),
                    (pg_rows[2].0, postgres::failover),
                    (pg_rows[3].0, postgres::partition),
                    (pg_rows[4].0, postgres::memory),
                    (pg_rows[5].0, postgres::many_names),
                    (pg_rows[6].0, postgres::handoff),
                ];
                for (name, bench) in benches.iter().filter(|(name, _)| wanted(name)) {
                    println!("bench: {name}");
                    ran += 1;
                    if let Err(err) = bench(&config, &env, &cluster, &mut report) {
                        eprintln!("bench: {name} FAILED: {err:#}");
                        failed.push(name);
                    }
                }
            }
            Err(why) => {
                eprintln!("bench: {why}; the PostgreSQL rows are not measured");
                for (name, goal) in pg_rows.iter().filter(|(name, _)| wanted(name)) {
                    report.row(Row::not_measured(name, goal, &why));
                }
            }
        }
    }

    let my_rows = [
        ("MySQL acquire + release", "≤ 1.3× raw (connect)"),
        (
            "failover after SIGKILL of the holder, MySQL",
            "p99 ≤ 50 ms on loopback",
        ),
        (
            "partition failover, MySQL (frozen proxy)",
            "≤ 20 s with 0 overlap",
        ),
    ];
    if my_rows.iter().any(|(name, _)| wanted(name)) {
        println!("bench: starting a throwaway MariaDB server");
        match mysql::start_server() {
            Ok(server) => {
                type MyBench = fn(&Config, &Env, &mysql::MariaDbServer, &mut Report) -> Result<()>;
                let benches: [(&str, MyBench); 3] = [
                    (my_rows[0].0, mysql::acquire),
                    (my_rows[1].0, mysql::failover),
                    (my_rows[2].0, mysql::partition),
                ];
                for (name, bench) in benches.iter().filter(|(name, _)| wanted(name)) {
                    println!("bench: {name}");
                    ran += 1;
                    if let Err(err) = bench(&config, &env, &server, &mut report) {
                        eprintln!("bench: {name} FAILED: {err:#}");
                        failed.push(name);
                    }
                }
            }
            Err(why) => {
                eprintln!("bench: {why}; the MySQL rows are not measured");
                for (name, goal) in my_rows.iter().filter(|(name, _)| wanted(name)) {
                    report.row(Row::not_measured(name, goal, &why));
                }
            }
        }
    }

    if let Some(out) = &args.out {
        let preamble = preamble(&config, &env, &load_at_start)?;
        let analysis = include_str!("findings.md");
        std::fs::write(out, report.markdown(&preamble, analysis))
            .with_context(|| format!("write {}", out.display()))?;
        println!("bench: wrote {}", out.display());
    }
    // A closing line in the plain form that test runners are read by.
    println!(
        "bench{}: {} passed, {} failed",
        if config.smoke { "-smoke" } else { "" },
        ran - failed.len(),
        failed.len()
    );
    Ok(!failed.is_empty())
}

/// The 1, 5 and 15 minute load averages: how busy the shared machine was.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the numbers were measured on, and how to get them again.
fn preamble(config: &Config, env: &Env, load_at_start: &str) -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let date = humantime::format_rfc3339_seconds(SystemTime::now());
    let version = |program: &Path, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into())
    };
    let flock_version = version(&env.flock_bin, &["--version"]);
    let python = match &env.python {
        Some(python) => format!(
            "{}, filelock {}",
            version(python, &["--version"]),
            version(
                python,
                &["-c", "import filelock; print(filelock.__version__)"]
            )
        ),
        None => "not installed".into(),
    };
    let rustc = version(Path::new("rustc"), &["--version"]);
    Ok(format!(
        "# Benchmarks\n\
         \n\
         onlyone side by side with its peers (issue 5). Generated by `scripts/bench` \
         (`benches/compare/`, `benches/filelock_peer.py`); do not edit by hand.\n\
         \n\
         - Date: {date}\n\
         - Machine: {cores} cores, {cpu}, Linux {kernel}; load average {load_at_start} \
           at the start, {load_at_end} at the end\n\
         - Build: release (`cargo bench`), {rustc}\n\
         - Peers: {flock_version}; {python}; fd-lock 4\n\
         - Lock files on the scratch directory's filesystem (`$TMPDIR`); onlyone uses \
           a 0700 directory of its own there (`--dir`).\n\
         - Mode: {mode}\n\
         \n\
         Times are medians with p10/p90 (or p50/p99 for latencies) over many \
         samples; peers were measured in the same run, interleaved with onlyone, \
         and every ratio is against numbers from this run. The machine is shared \
         with other work, so single samples are noisy; medians are not.\n",
        load_at_end = load_average(),
        mode = if config.smoke {
            "smoke (timings meaningless)"
        } else {
            "full"
        },
    ))
}
