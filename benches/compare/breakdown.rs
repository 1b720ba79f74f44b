//! Where onlyone's time goes: each step of the file backend's acquire +
//! release, and of `onlyone run`, redone here in isolation with the same
//! system calls, timed interleaved with the whole. The steps' medians add
//! up to roughly the whole; the table shows which ones matter.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use onlyone::{Attempt, FileBackend, LockName, Record, internals};

use crate::report::{Detail, Report};
use crate::stats::{Samples, fmt_ns};
use crate::{Config, Env};

type Step<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// Times `steps` interleaved, `rounds` × `batch` samples each.
fn time_steps(steps: &mut [(&str, Step<'_>)], rounds: usize, batch: usize) -> Result<Vec<Samples>> {
    let mut samples = vec![Samples::default(); steps.len()];
    for round in 0..rounds {
        for i in 0..steps.len() {
            let which = (round + i) % steps.len();
            let step = &mut steps[which].1;
            for _ in 0..batch {
                let start = Instant::now();
                step()?;
                samples[which].push(start.elapsed());
            }
        }
    }
    Ok(samples)
}

pub fn acquire(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    let dir = env.onlyone_dir.clone();
    let path = dir.join("breakdown-steps.lock");
    let raw_path = dir.join("breakdown-raw.lock");
    let lock = env.onlyone_lock("breakdown")?;
    // One file held open, as the steps after open(2) work on it.
    let held = open_lock_file(&path)?;
    held.try_lock()?;
    let record = Record::for_current_process(&[], 1);
    let files = FileBackend::new(&dir);
    let name = LockName::new("breakdown")?;
    let socket_name = format!("onlyone-bench/{}", std::process::id());

    let mut steps: Vec<(&str, Step<'_>)> = vec![
        (
            "onlyone `try_acquire` + drop, the whole",
            Box::new(|| match lock.try_acquire()? {
                Attempt::Acquired(guard) => {
                    drop(guard);
                    Ok(())
                }
                Attempt::Held(_) => bail!("uncontended lock held"),
            }),
        ),
        (
            "open(2) + flock(2) + close(2) (the raw peer)",
            Box::new(|| {
                let file = open_lock_file(&raw_path)?;
                file.try_lock()?;
                Ok(())
            }),
        ),
        (
            "directory checks: lstat + owner, mode and filesystem (statfs)",
            Box::new(|| Ok(internals::prepare_dir(&files)?)),
        ),
        (
            "lock file checks: fstat + lstat of the path",
            Box::new(|| {
                let meta = held.metadata()?;
                let again = std::fs::symlink_metadata(&path)?;
                ensure!(meta.ino() == again.ino());
                Ok(())
            }),
        ),
        (
            "socket name: the directory's identity (lstat: the same directory as before, identity kept), SHA-256 of it + name, hex",
            Box::new(|| {
                std::hint::black_box(internals::socket_name(&files, &name)?);
                Ok(())
            }),
        ),
        (
            "holder socket: socket + bind (abstract) + listen + close",
            Box::new(
                || match internals::HolderSocket::bind(socket_name.as_bytes(), 0o600)? {
                    internals::Bind::Bound(socket) => {
                        drop(socket);
                        Ok(())
                    }
                    internals::Bind::Taken => bail!("the bench's socket name is taken"),
                    internals::Bind::Impossible(why) => bail!("no holder socket: {why}"),
                },
            ),
        ),
        (
            "record: `Record::for_current_process` (start time, boot id, user kept; uname)",
            Box::new(|| {
                std::hint::black_box(Record::for_current_process(&[], 1));
                Ok(())
            }),
        ),
        (
            "(once per process, not in the whole) read /proc/self/stat (start time)",
            Box::new(|| {
                std::hint::black_box(internals::process_start_time(std::process::id()));
                Ok(())
            }),
        ),
        (
            "(once per process, not in the whole) read /proc/sys/kernel/random/boot_id",
            Box::new(|| {
                std::hint::black_box(internals::boot_id());
                Ok(())
            }),
        ),
        (
            "(once per process, not in the whole) getpwuid_r (user name)",
            Box::new(|| {
                std::hint::black_box(internals::user_name(rustix::process::getuid().as_raw()));
                Ok(())
            }),
        ),
        (
            "record: read the previous one, serialize, pwrite (no ftruncate: not shorter)",
            Box::new(|| {
                let mut buf = [0u8; 512];
                let _ = held.read_at(&mut buf, 0)?;
                let line = record.to_line();
                held.write_all_at(line.as_bytes(), 0)?;
                Ok(())
            }),
        ),
        (
            "pool/plain check: no slot of the name held (read the directory; identity; sock_diag dump of listening Unix sockets)",
            Box::new(|| {
                ensure!(lock.slots()?.iter().all(|slot| !slot.held));
                Ok(())
            }),
        ),
        (
            "↳ sock_diag dump of listening Unix sockets (socket, sendto, 2 × recvfrom, close)",
            Box::new(|| {
                std::hint::black_box(internals::listening_abstract_names(b"onlyone-bench/"));
                Ok(())
            }),
        ),
    ];
    let samples = time_steps(
        &mut steps,
        config.inproc_rounds,
        (config.inproc_batch / 4).max(1),
    )?;
    let mut detail = Detail::new(
        "Where the in-process acquire + release time goes",
        "Each step of the file backend's `try_acquire` + drop (src/backend/file/), \
         redone in isolation (with the library's own functions, through \
         `onlyone::internals`, where it has one) and timed interleaved with the \
         whole; medians. The steps (rows marked ↳ are parts of the row above them) \
         make up the whole, within the noise; the rows marked once per process are not part of it. The process's facts in the record, the \
         directory's identity and the watcher thread are each made once per process; \
         registering with the watcher is a mutex and a push, not a row.",
        &["step", "median", "p90", "share of the whole"],
    );
    let whole = samples[0].clone().median();
    for ((name, _), mut samples) in steps.iter().zip(samples) {
        let median = samples.median();
        detail.row(vec![
            (*name).to_owned(),
            fmt_ns(median),
            fmt_ns(samples.quantile(0.9)),
            format!("{:.0} %", 100.0 * median / whole),
        ]);
    }
    report.detail(detail);
    Ok(())
}

/// The costs `onlyone run` adds to what flock(1) does: starting the
/// command with fork(2) (a `pre_exec` hook rules out posix_spawn), and the
/// threads of the supervisor.
pub fn run(config: &Config, env: &Env, report: &mut Report) -> Result<()> {
    let mut steps: Vec<(&str, Step<'_>)> = vec![
        (
            "`true` via posix_spawn (std's `Command` without `pre_exec`)",
            Box::new(|| spawn_true(env, false)),
        ),
        (
            "`true` via fork + exec (std's `Command` with a `pre_exec` hook, as onlyone)",
            Box::new(|| spawn_true(env, true)),
        ),
        (
            "`onlyone --version` (process start, flag parsing)",
            Box::new(|| quiet_ok(Command::new(&env.onlyone_bin).arg("--version"))),
        ),
        (
            "`flock -n f true`",
            Box::new(|| {
                quiet_ok(
                    Command::new(&env.flock_bin)
                        .arg("-n")
                        .arg(env.peer_file("breakdown"))
                        .arg(&env.true_bin),
                )
            }),
        ),
        (
            "`onlyone run --name x -- true`",
            Box::new(|| quiet_ok(&mut env.onlyone_run("breakdown", &[], &[&env.true_bin]))),
        ),
    ];
    let samples = time_steps(&mut steps, (config.wall_rounds / 5).max(1), 5)?;
    let mut detail = Detail::new(
        "Where `onlyone run` time goes",
        "Wall time of each command from this process, interleaved; medians. onlyone \
         starts its command with fork(2) because `Command::pre_exec` (for the \
         parent-death signal and the inherited lock descriptors) rules out \
         posix_spawn; besides that, `run` spawns three threads (lock watcher, signal \
         forwarder, exit waiter) and joins two of them before it exits.",
        &["command", "median", "p90"],
    );
    for ((name, _), mut samples) in steps.iter().zip(samples) {
        detail.row(vec![
            (*name).to_owned(),
            fmt_ns(samples.median()),
            fmt_ns(samples.quantile(0.9)),
        ]);
    }
    report.detail(detail);
    Ok(())
}

fn spawn_true(env: &Env, fork: bool) -> Result<()> {
    let mut command = Command::new(&env.true_bin);
    if fork {
        // SAFETY: the hook does nothing; it only makes std fork.
        unsafe { command.pre_exec(|| Ok(())) };
    }
    quiet_ok(&mut command)
}

fn quiet_ok(command: &mut Command) -> Result<()> {
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "{command:?} failed: {status}");
    Ok(())
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}
