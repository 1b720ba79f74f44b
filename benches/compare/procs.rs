//! Child processes for the benchmarks: the bench binary's own helper modes
//! (tiny commands that print CLOCK_MONOTONIC), a wrapper that reads a
//! child's output without ever blocking forever, and /proc readers.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};

/// How long any one expected event may take before the run is declared
/// broken (a hung harness must fail, not hang).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Helper commands never outlive a broken run by more than this.
const HELPER_LIFETIME: Duration = Duration::from_secs(60);

/// CLOCK_MONOTONIC in nanoseconds: the clock shared by every process on the
/// machine (Python's `time.monotonic_ns` reads it too).
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// `compare helper MODE [ARG]`: the commands that run under the locks.
/// Started as the first thing in `main`, so that the stamp is taken as soon
/// as the process runs.
pub fn helper(mode: &str, arg: Option<&str>) -> ! {
    let mut out = std::io::stdout().lock();
    match mode {
        // The waiting command: when it prints, it has started.
        "stamp" => {
            let _ = writeln!(out, "{}", monotonic_ns());
        }
        // The holding command: holds until a line (or EOF) on stdin, then
        // prints the time it exits at.
        "hold" => {
            let _ = writeln!(out, "ready {}", std::process::id());
            let _ = out.flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            let _ = writeln!(out, "{}", monotonic_ns());
        }
        // A command that is stopped: prints the time SIGTERM ends it.
        "hold-term" => {
            let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])
                .expect("catch SIGTERM");
            let _ = writeln!(out, "ready {}", std::process::id());
            let _ = out.flush();
            thread::spawn(|| {
                thread::sleep(HELPER_LIFETIME);
                std::process::exit(1);
            });
            signals.forever().next();
            let _ = writeln!(out, "{}", monotonic_ns());
        }
        // A command that only has to be running: for SIGKILL and memory.
        "sleep" => {
            let _ = writeln!(out, "ready {}", std::process::id());
            let _ = out.flush();
            thread::sleep(HELPER_LIFETIME);
        }
        // The scale test's command: counts that it ran, then holds.
        "ran" => {
            let path = arg.expect("helper ran FILE");
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .expect("open the marker file");
            // One short O_APPEND write per run: lines never interleave.
            let _ = file.write_all(format!("{}\n", std::process::id()).as_bytes());
            thread::sleep(HELPER_LIFETIME);
        }
        _ => {
            eprintln!("unknown helper mode {mode}");
            std::process::exit(2);
        }
    }
    let _ = out.flush();
    std::process::exit(0)
}

/// A running child in its own process group, whose stdout lines arrive
/// through a channel. Dropping it kills the group.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Proc {
    /// Starts `command` with stdin and stdout piped, stderr discarded.
    pub fn start(mut command: Command, what: impl Into<String>) -> Result<Proc> {
        let what = what.into();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {what}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            stdin,
            lines,
            what,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of stdout.
    pub fn line(&mut self) -> Result<String> {
        self.line_within(EVENT_TIMEOUT)
    }

    /// The next line of stdout, waiting at most `timeout`.
    pub fn line_within(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "{}: no output within {timeout:?} (exit status: {status:?})",
                    self.what
                )
            }
        }
    }

    /// The next line, which must be `ready PID`; the pid of the command.
    pub fn ready(&mut self) -> Result<u32> {
        let line = self.line()?;
        line.strip_prefix("ready ")
            .and_then(|pid| pid.parse().ok())
            .with_context(|| format!("{}: expected 'ready PID', got {line:?}", self.what))
    }

    /// The next line, which must be a CLOCK_MONOTONIC stamp.
    pub fn stamp(&mut self) -> Result<u64> {
        self.stamp_within(EVENT_TIMEOUT)
    }

    /// A stamp, waiting at most `timeout` for it.
    pub fn stamp_within(&mut self, timeout: Duration) -> Result<u64> {
        let line = self.line_within(timeout)?;
        line.trim()
            .parse()
            .with_context(|| format!("{}: expected a time stamp, got {line:?}", self.what))
    }

    /// Sends a line to stdin (the `hold` helper's cue to exit).
    pub fn poke(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the child to exit.
    pub fn wait(mut self) -> Result<ExitStatus> {
        self.stdin.take();
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {EVENT_TIMEOUT:?}", self.what);
            }
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// The exit status, which must be success.
    pub fn wait_ok(self) -> Result<()> {
        let what = self.what.clone();
        let status = self.wait()?;
        if !status.success() {
            bail!("{what} failed: {status}");
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_group(self.child.id(), Signal::KILL);
            let _ = self.child.wait();
        }
    }
}

pub fn kill(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

pub fn kill_group(pgid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Runs `command` to completion with all output discarded.
pub fn run_quiet(command: &mut Command) -> Result<ExitStatus> {
    Ok(command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?)
}

/// Polls `check` until it is true, failing after [`EVENT_TIMEOUT`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !check()? {
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

/// How many processes are blocked in flock(2) on the file at `path`, from
/// /proc/locks (a blocked waiter's line reads `N: -> FLOCK ... MAJ:MIN:INO`).
pub fn flock_waiters(path: &Path) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let ino = match std::fs::metadata(path) {
        Ok(meta) => meta.ino().to_string(),
        Err(_) => return Ok(0),
    };
    let mut locks = String::new();
    std::fs::File::open("/proc/locks")?.read_to_string(&mut locks)?;
    Ok(locks
        .lines()
        .filter(|line| line.contains("-> FLOCK"))
        .filter(|line| {
            line.split_whitespace().any(|field| {
                field.matches(':').count() == 2 && field.rsplit(':').next() == Some(&ino)
            })
        })
        .count())
}

/// VmRSS and VmHWM of `pid` in kB.
pub fn memory_kb(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A small fast generator for jitter; no need for a random crate.
pub struct Jitter(u64);

impl Jitter {
    pub fn new() -> Jitter {
        Jitter(monotonic_ns() | 1)
    }

    /// Uniform in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}
