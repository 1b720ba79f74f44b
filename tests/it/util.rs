//! The test harness: a temporary directory per test, the `onlyone` binary,
//! and helpers that start real processes and wait for what they print
//! instead of sleeping.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use onlyone::internals;

/// Returns early from a test of what only Linux's own path does (abstract
/// sockets, /proc, bind mounts, namespaces, a subreaper), saying why, when
/// the suite runs on the portable path (`RUSTFLAGS='--cfg onlyone_portable'`,
/// as `scripts/test` does a second time).
macro_rules! linux_only {
    ($reason:literal) => {
        if cfg!(onlyone_portable) {
            eprintln!("skipped on the portable path: {}", $reason);
            return;
        }
    };
}

/// Returns early from a test of what only the portable path has (the
/// holder's socket as a file in the lock directory), saying why, on
/// Linux's own path.
macro_rules! portable_only {
    ($reason:literal) => {
        if !cfg!(onlyone_portable) {
            eprintln!("skipped on Linux's own path: {}", $reason);
            return;
        }
    };
}

/// The longest any single event in a test may take before the test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A temporary directory with a lock directory inside.
pub struct TestEnv {
    root: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv {
            root: tempfile::Builder::new()
                .prefix("onlyone-test-")
                .tempdir()
                .expect("create a temp dir"),
        }
    }

    /// The directory of the test's lock files (`--dir`).
    pub fn lock_dir(&self) -> PathBuf {
        self.root.path().join("locks")
    }

    /// The lock file of `name`.
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.lock_dir().join(format!("{name}.lock"))
    }

    /// A path inside the test's directory, outside the lock directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    /// `onlyone ARGS` with the test's lock directory.
    pub fn onlyone(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_onlyone"));
        command
            .args(args)
            .env("ONLYONE_DIR", self.lock_dir())
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null());
        command
    }

    /// Runs `onlyone ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.onlyone(args).output().expect("run onlyone")
    }

    /// Starts `onlyone run --name NAME -- sh -c SCRIPT` where the script
    /// prints `ready` once it runs under the lock, and waits for that line.
    pub fn hold(&self, name: &str, script: &str) -> Running {
        let mut running = self.start(&["run", "--name", name, "--", "sh", "-c", script]);
        running.expect_stdout_line("ready");
        running
    }

    /// Holds `name` with a command that prints `ready` and then sleeps.
    pub fn hold_sleeping(&self, name: &str) -> Running {
        self.hold(name, "echo ready; exec sleep 1000")
    }

    /// Starts `onlyone ARGS` with stdout and stderr piped.
    pub fn start(&self, args: &[&str]) -> Running {
        Running::spawn(
            self.onlyone(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }
}

/// A process started by a test, with its output read line by line.
pub struct Running {
    pub child: Child,
    stdout: LineReader,
    stderr: LineReader,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command.spawn().expect("spawn");
        let stdout = LineReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = LineReader::new(child.stderr.take().expect("piped stderr"));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line equal to `expected`; fails on EOF or timeout.
    pub fn expect_stdout_line(&mut self, expected: &str) {
        self.stdout.expect_line(|line| line == expected, expected);
    }

    /// Waits for the next stdout line, whatever it says.
    pub fn expect_stdout_any(&mut self) -> String {
        self.stdout.expect_line(|_| true, "any line")
    }

    /// Waits for a stdout line equal to `expected`: true when it came, false
    /// when stdout closed first (the process exited without printing it).
    pub fn try_expect_stdout_line(&mut self, expected: &str) -> bool {
        loop {
            match self.stdout.lines.recv_timeout(EVENT_TIMEOUT) {
                Ok(line) if line == expected => return true,
                Ok(line) => self.stdout.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(err) => panic!("no line {expected:?} ({err})"),
            }
        }
    }

    /// Waits for a stderr line containing `fragment`; returns the line.
    pub fn expect_stderr_containing(&mut self, fragment: &str) -> String {
        self.stderr
            .expect_line(|line| line.contains(fragment), fragment)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        signal_pid(self.pid(), signal);
    }

    /// Waits for the process to exit, then returns its status and the rest
    /// of its output.
    pub fn finish(mut self) -> (ExitStatus, String, String) {
        let status = wait_with_timeout(&mut self.child);
        (status, self.stdout.rest(), self.stderr.rest())
    }

    /// Kills the process (SIGKILL), reaps it, and waits until its own
    /// children (the supervised command, which the kernel kills when its
    /// supervisor dies) have exited too.
    pub fn kill(mut self) {
        let children = children_of(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for child in children {
            wait_for_exit(child);
        }
    }

    /// Kills the process and all its descendants (for programs whose
    /// children do not die with them, such as flock(1)). The whole tree is
    /// read before any of it is killed: a grandchild orphaned by a kill
    /// comes to onlyone (a subreaper) only after the list was made, and
    /// would outlive the test.
    pub fn kill_tree(self) {
        let mut tree = Vec::new();
        let mut parents = vec![self.pid()];
        while let Some(parent) = parents.pop() {
            for child in children_of(parent) {
                tree.push(child);
                parents.push(child);
            }
        }
        for pid in &tree {
            signal_pid(*pid, libc::SIGKILL);
        }
        self.kill();
        for pid in tree {
            wait_for_exit(pid);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines from a pipe, read by a thread so that waits can time out.
struct LineReader {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl LineReader {
    fn new(pipe: impl Read + Send + 'static) -> LineReader {
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader {
            lines,
            seen: Vec::new(),
        }
    }

    fn expect_line(&mut self, matches: impl Fn(&str) -> bool, what: &str) -> String {
        loop {
            match self.lines.recv_timeout(EVENT_TIMEOUT) {
                Ok(line) if matches(&line) => return line,
                Ok(line) => self.seen.push(line),
                Err(err) => panic!(
                    "no line matching {what:?} ({err}); lines so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Every line not yet consumed, until the pipe closes.
    fn rest(&mut self) -> String {
        let mut text = String::new();
        for line in self.seen.drain(..) {
            text.push_str(&line);
            text.push('\n');
        }
        while let Ok(line) = self.lines.recv_timeout(EVENT_TIMEOUT) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

/// Waits for a child, failing the test if it takes longer than
/// [`EVENT_TIMEOUT`].
pub fn wait_with_timeout(child: &mut Child) -> ExitStatus {
    let pid = child.id();
    let (done, waited) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if waited.recv_timeout(EVENT_TIMEOUT).is_err() {
            // Still running: kill it so the test fails instead of hanging.
            signal_pid(pid, libc::SIGKILL);
            return true;
        }
        false
    });
    let status = child.wait().expect("wait for child");
    let _ = done.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    assert!(
        !timed_out,
        "process {pid} did not exit within {EVENT_TIMEOUT:?}"
    );
    status
}

/// Sends `signal` to `pid`.
pub fn signal_pid(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// The exit code a shell would report: the code, or 128 + signal.
pub fn code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Asserts that `out` exited with `expected` (as [`code`] counts), and
/// shows its stderr when it did not.
#[track_caller]
pub fn assert_exit(out: &Output, expected: i32) {
    assert_eq!(code(out.status), expected, "stderr: {}", stderr(out));
}

/// The text of a process's stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// True when a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    internals::stat_field(pid, 3).is_some_and(|state| state != "Z")
}

/// The children of `pid`: the library's own reading of /proc.
pub use onlyone::internals::children_of;

/// Waits until process `pid` (not necessarily our child) has exited and its
/// descriptors are closed: a pidfd becomes readable then.
pub fn wait_for_exit(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return; // already gone
    };
    let mut poll = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::time::Timespec {
        tv_sec: EVENT_TIMEOUT.as_secs() as i64,
        tv_nsec: 0,
    };
    let ready = rustix::event::poll(&mut poll, Some(&timeout)).unwrap_or(0);
    assert_eq!(
        ready, 1,
        "process {pid:?} did not exit within {EVENT_TIMEOUT:?}"
    );
}
