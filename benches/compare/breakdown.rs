//! Where onlyone's time goes: each step of the file backend's acquire +
//! release, and of `onlyone run`, redone here in isolation with the same
//! system calls, timed interleaved with the whole. The steps' medians add
//! up to roughly the whole; the table shows which ones matter.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use onlyone::{Attempt, Lock, Record};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use sha2::{Digest, Sha256};

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
    let dir = env.runtime_dir.join("onlyone");
    let path = dir.join("breakdown-steps.lock");
    let raw_path = dir.join("breakdown-raw.lock");
    // The default directory, made as onlyone makes it (run alone, this
    // benchmark comes first).
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)?;
    let lock = Lock::file("breakdown")?;
    // One file held open, as the steps after open(2) work on it.
    let held = open_lock_file(&path)?;
    held.try_lock()?;
    let record = Record::for_current_process(&[], 1);
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
            "directory checks: mkdir (EEXIST) + lstat + statfs",
            Box::new(|| {
                let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
                let meta = std::fs::symlink_metadata(&dir)?;
                ensure!(meta.is_dir());
                rustix::fs::statfs(&dir)?;
                Ok(())
            }),
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
            "socket name: SHA-256 of dir + name, hex",
            Box::new(|| {
                let scope = format!("default-dir-of-uid-{}", rustix::process::getuid().as_raw());
                let digest = Sha256::digest(format!("{scope}\0breakdown").as_bytes());
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                std::hint::black_box(format!("onlyone/v1/{hex}"));
                Ok(())
            }),
        ),
        (
            "holder socket: socket + bind (abstract) + listen + close",
            Box::new(|| {
                let addr = SocketAddrUnix::new_abstract_name(socket_name.as_bytes())?;
                let fd = rustix::net::socket_with(
                    AddressFamily::UNIX,
                    SocketType::STREAM,
                    SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                    None,
                )?;
                rustix::net::bind(&fd, &addr)?;
                rustix::net::listen(&fd, 64)?;
                Ok(())
            }),
        ),
        (
            "record: `Record::for_current_process` (/proc/self/stat, boot_id, uname, getpwuid_r)",
            Box::new(|| {
                std::hint::black_box(Record::for_current_process(&[], 1));
                Ok(())
            }),
        ),
        (
            "↳ read /proc/self/stat (start time)",
            Box::new(|| {
                std::hint::black_box(std::fs::read_to_string(format!(
                    "/proc/{}/stat",
                    std::process::id()
                ))?);
                Ok(())
            }),
        ),
        (
            "↳ read /proc/sys/kernel/random/boot_id",
            Box::new(|| {
                std::hint::black_box(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?);
                Ok(())
            }),
        ),
        (
            "↳ getpwuid_r (user name)",
            Box::new(|| {
                std::hint::black_box(user_name(rustix::process::getuid().as_raw()));
                Ok(())
            }),
        ),
        (
            "record: read the previous one, serialize, pwrite + ftruncate",
            Box::new(|| {
                let mut buf = [0u8; 512];
                let _ = held.read_at(&mut buf, 0)?;
                let line = record.to_line();
                held.write_all_at(line.as_bytes(), 0)?;
                held.set_len(line.len() as u64)?;
                Ok(())
            }),
        ),
        (
            "watcher thread: spawn, park in a timed condvar wait, wake + join",
            Box::new(|| {
                let stop = Arc::new((Mutex::new(false), Condvar::new()));
                let theirs = stop.clone();
                let handle = thread::Builder::new().spawn(move || {
                    let (stopped, changed) = &*theirs;
                    let guard = stopped.lock().unwrap();
                    let _ = changed
                        .wait_timeout_while(guard, Duration::from_millis(25), |s| !*s)
                        .unwrap();
                })?;
                *stop.0.lock().unwrap() = true;
                stop.1.notify_all();
                handle.join().expect("the thread does not panic");
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
        "Each step of the file backend's `try_acquire` + drop (src/backend/file.rs), \
         redone in isolation with the same system calls and timed interleaved with the \
         whole; medians. The steps (rows marked ↳ are parts of the row above them) \
         make up the whole, within the noise. The record's fields are re-read from /proc and \
         /etc/passwd on every acquisition, and the watcher thread is created and \
         joined on every acquisition.",
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

/// What `sys::user_name` does: getpwuid_r into a fresh 4 KiB buffer.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: plain C structs; getpwuid_r only writes into them and buf,
    // which outlive the call.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    // SAFETY: on success pw_name points to a NUL-terminated string in buf.
    (rc == 0 && !result.is_null()).then(|| {
        unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned()
    })
}
