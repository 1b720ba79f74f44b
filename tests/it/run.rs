//! `onlyone run`: exit codes, signals, waiting, the command's environment.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::util::{TestEnv, assert_exit, code, stderr};

#[test]
fn exit_status_is_passed_through() {
    let env = TestEnv::new();
    let out = env.run(&["run", "--name", "x", "--", "sh", "-c", "exit 42"]);
    assert_exit(&out, 42);
    let out = env.run(&["run", "--name", "x", "--", "true"]);
    assert_exit(&out, 0);
}

#[test]
fn command_killed_by_signal_gives_128_plus_signal() {
    let env = TestEnv::new();
    let out = env.run(&["run", "--name", "x", "--", "sh", "-c", "kill -9 $$"]);
    assert_exit(&out, 137);
}

#[test]
fn command_not_found_gives_127() {
    let env = TestEnv::new();
    let out = env.run(&["run", "--name", "x", "--", "no-such-command-onlyone"]);
    assert_exit(&out, 127);
    assert_eq!(
        stderr(&out),
        "onlyone: error: command not found: no-such-command-onlyone: No such file or directory (os error 2)\n"
    );
}

#[test]
fn command_not_executable_gives_126() {
    let env = TestEnv::new();
    let script = env.path("script");
    fs::write(&script, "#!/bin/sh\ntrue\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["run", "--name", "x", "--", script.to_str().unwrap()]);
    assert_exit(&out, 126);
    assert!(
        stderr(&out).contains("command cannot be executed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_command_is_a_usage_error() {
    let env = TestEnv::new();
    let out = env.run(&["run", "--name", "x"]);
    assert_exit(&out, 64);
}

#[test]
fn conflict_prints_one_line_naming_the_holder() {
    let env = TestEnv::new();
    let holder = env.hold_sleeping("bot");
    let out = env.run(&["run", "--name", "bot", "--", "true"]);
    assert_exit(&out, 75);
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    let expected = format!(
        "onlyone: lock 'bot' is held by pid {} on {} since ",
        holder.pid(),
        hostname()
    );
    assert!(message.starts_with(&expected), "{message}");
    assert!(
        message.contains(" ago): sh -c 'echo ready; exec sleep 1000'"),
        "{message}"
    );
}

#[test]
fn conflict_exit_code_overrides_75_and_quiet_silences() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    let out = env.run(&[
        "run",
        "--name",
        "bot",
        "--conflict-exit-code",
        "0",
        "--quiet",
        "--",
        "true",
    ]);
    assert_exit(&out, 0);
    assert_eq!(stderr(&out), "");
}

#[test]
fn command_sees_name_token_and_lock_file() {
    let env = TestEnv::new();
    let script = "echo \"$ONLYONE_NAME $ONLYONE_TOKEN $ONLYONE_LOCK_FILE\"";
    for token in 1..=3 {
        let out = env.run(&["run", "--name", "job", "--", "sh", "-c", script]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("job {token} {}\n", env.lock_file("job").display())
        );
    }
}

#[test]
fn command_runs_in_its_own_process_group() {
    let env = TestEnv::new();
    let out = env.run(&[
        "run",
        "--name",
        "x",
        "--",
        "sh",
        "-c",
        "ps -o pgid= -p $$; echo $$",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(|l| l.trim().to_owned());
    assert_eq!(lines.next(), lines.next(), "pgid equals the command's pid");
}

#[test]
fn forwarded_signals_reach_the_command() {
    for (signal, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
    ] {
        let env = TestEnv::new();
        let script = format!(
            "trap 'echo got {name}; exit 7' {name}; echo ready; while :; do sleep 0.01; done"
        );
        let mut holder = env.hold("x", &script);
        holder.signal(signal);
        holder.expect_stdout_line(&format!("got {name}"));
        let (status, _, _) = holder.finish();
        assert_eq!(code(status), 7, "{name}");
    }
}

#[test]
fn sigterm_kills_a_command_that_does_not_handle_it_and_gives_143() {
    let env = TestEnv::new();
    let holder = env.hold_sleeping("x");
    holder.signal(libc::SIGTERM);
    let (status, _, _) = holder.finish();
    assert_eq!(code(status), 143);
}

#[test]
fn wait_takes_the_lock_when_the_holder_exits() {
    let env = TestEnv::new();
    let holder = env.hold_sleeping("bot");
    let mut waiter = env.start(&[
        "run", "--name", "bot", "--wait", "--", "sh", "-c", "echo ran",
    ]);
    waiter.expect_stderr_containing(&format!(
        "onlyone: waiting for lock 'bot' held by pid {}",
        holder.pid()
    ));
    holder.kill();
    waiter.expect_stdout_line("ran");
    let (status, _, _) = waiter.finish();
    assert_eq!(code(status), 0);
}

/// Issue 15: a waiter does before its wait what does not need the lock,
/// so that only what must follow the grant is between the release and its
/// command's start. Two parts of it are visible while the waiter is
/// blocked in flock(2): the lock watch's thread runs, and the command's
/// guardian is its one child (both used to be started after the grant,
/// with the record's /proc and user-database reads).
#[cfg(target_os = "linux")]
#[test]
fn a_waiter_forks_its_guardian_before_it_waits_and_has_one_thread() {
    let env = TestEnv::new();
    let holder = env.hold_sleeping("early");
    let mut waiter = env.start(&[
        "run", "--name", "early", "--wait", "--", "sh", "-c", "echo ran",
    ]);
    let blocked = format!(" -> FLOCK  ADVISORY  WRITE {} ", waiter.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string("/proc/locks")
        .expect("read /proc/locks")
        .lines()
        .any(|line| line.contains(&blocked))
    {
        assert!(Instant::now() < deadline, "the waiter never blocked");
        std::thread::yield_now();
    }
    let mut tasks = 0;
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", waiter.pid())).unwrap() {
        tasks += 1;
        let listed = std::fs::read_to_string(task.unwrap().path().join("children"));
        children.extend(
            listed
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned),
        );
    }
    // The supervisor ticks the lock's checks itself: no watch thread,
    // before the grant or after it.
    assert_eq!(tasks, 1, "the waiter's threads while it waits");
    assert_eq!(children.len(), 1, "the waiter's children: {children:?}");
    holder.kill();
    waiter.expect_stdout_line("ran");
    let (status, _, err) = waiter.finish();
    assert_eq!(code(status), 0, "{err}");
}

#[test]
fn timeout_gives_up_with_75() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    let started = Instant::now();
    let out = env.run(&["run", "--name", "bot", "--timeout", "300ms", "--", "true"]);
    assert_exit(&out, 75);
    assert!(started.elapsed().as_millis() >= 300);
    assert!(
        stderr(&out).contains("onlyone: gave up after 300ms: lock 'bot' is held by pid"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_durations_and_codes_are_usage_errors() {
    let env = TestEnv::new();
    for args in [
        &["run", "--name", "x", "--timeout", "abc", "--", "true"][..],
        &["run", "--name", "x", "--timeout", "-5s", "--", "true"],
        &[
            "run",
            "--name",
            "x",
            "--conflict-exit-code",
            "300",
            "--",
            "true",
        ],
        &[
            "run",
            "--name",
            "x",
            "--wait",
            "--timeout",
            "1s",
            "--",
            "true",
        ],
    ] {
        let out = env.run(args);
        assert_eq!(code(out.status), 64, "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn huge_timeout_waits_like_wait() {
    let env = TestEnv::new();
    let out = env.run(&[
        "run",
        "--name",
        "x",
        "--timeout",
        "500000000years",
        "--",
        "true",
    ]);
    assert_exit(&out, 0);
}

#[test]
fn invalid_names_are_usage_errors_that_state_the_rule() {
    let env = TestEnv::new();
    for name in ["", ".hidden", "a/b", "..", "a b", "é"] {
        let out = env.run(&["run", "--name", name, "--", "true"]);
        assert_eq!(code(out.status), 64, "{name:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "onlyone: error: invalid lock name '{name}': a name is 1-128 characters of A-Z a-z 0-9 . _ -, not starting with '.'\n"
            )
        );
    }
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// On a terminal the command runs in its own process group, which would be
/// stopped (SIGTTIN) on reading the terminal unless it is handed the
/// foreground. script(1) gives the run a pseudo-terminal.
#[test]
fn interactive_command_can_read_the_terminal() {
    read_the_terminal_through(&[]);
}

/// In a pid namespace (a container, a CI runner) the sessions and groups
/// of processes outside it have id 0: looking for a job-control shell must
/// not take that for an error, nor panic on it.
#[test]
fn interactive_command_can_read_the_terminal_in_a_pid_namespace() {
    let namespace = ["unshare", "--pid", "--fork"];
    if !std::process::Command::new(namespace[0])
        .args(&namespace[1..])
        .arg("true")
        .status()
        .is_ok_and(|status| status.success())
    {
        eprintln!("skipped: this machine does not let us make a pid namespace");
        return;
    }
    read_the_terminal_through(&namespace);
}

fn read_the_terminal_through(prefix: &[&str]) {
    use std::io::Write;
    let env = TestEnv::new();
    let run = format!(
        "ONLYONE_DIR={} {} run --name tty -- sh -c 'read x; echo got $x'",
        env.lock_dir().display(),
        env!("CARGO_BIN_EXE_onlyone")
    );
    let mut command = std::process::Command::new(prefix.first().copied().unwrap_or("script"));
    if !prefix.is_empty() {
        command.args(&prefix[1..]).arg("script");
    }
    let mut script = crate::util::Running::spawn(
        command
            .args(["-qec", &run, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    let mut stdin = script.child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    script.expect_stdout_line("got hello");
    drop(stdin);
    let (status, _, _) = script.finish();
    assert_eq!(code(status), 0);
}

/// Issue 15: the supervisor runs the command from its own thread (signals,
/// the command's stops and exit, and the loss all reach it through pipes
/// it polls), and checks its file lock from its own waits too: one thread
/// in all. It used to start a signal forwarder and an exit waiter (4
/// threads), then still had the file backend's lock watch (2).
#[cfg(target_os = "linux")]
#[test]
fn the_supervisor_runs_on_one_thread() {
    let env = TestEnv::new();
    let holder = env.hold_sleeping("threads");
    let tasks = std::fs::read_dir(format!("/proc/{}/task", holder.pid()))
        .expect("read the supervisor's threads")
        .count();
    holder.signal(libc::SIGTERM);
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 128 + libc::SIGTERM, "{err}");
    assert_eq!(tasks, 1, "the supervisor has {tasks} threads");
}

/// Issue 15: with no thread of the backend's, the supervisor checks the
/// lock file from each of its waits. After the command exited, while what
/// is left of its group gets its kill grace (here 1 h), the lock is still
/// held, and its file, deleted, is restored at once.
#[test]
fn the_lock_file_is_kept_while_the_commands_group_gets_its_grace() {
    let env = TestEnv::new();
    // The command exits once the process it leaves in its group has set
    // its trap (it says so through a FIFO).
    let up = env.path("up");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &up,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let leftover = r#"sh -c 'trap "echo got-term" TERM; echo left $$; echo up > "$0"; while :; do sleep 0.1; done' "$0" & read up < "$0""#;
    let mut holder = env.start(&[
        "run",
        "--name",
        "bot",
        "--kill-grace",
        "1h",
        "--",
        "sh",
        "-c",
        leftover,
        up.to_str().unwrap(),
    ]);
    let left = holder.expect_stdout_any();
    let pid: u32 = left
        .strip_prefix("left ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{left:?}"));
    // The supervisor is in the grace: it sent SIGTERM to the group.
    holder.expect_stdout_line("got-term");
    let deleted_at = Instant::now();
    fs::remove_file(env.lock_file("bot")).unwrap();
    holder.expect_stderr_containing("was deleted or replaced while held; restored it");
    let restored_after = deleted_at.elapsed();
    crate::util::signal_pid(pid, libc::SIGKILL);
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 0, "{err}");
    assert!(
        restored_after < std::time::Duration::from_secs(5),
        "restored after {restored_after:?}"
    );
}

/// Issue 15: between restarts (here a delay of 1 h) the lock is held, and
/// the supervisor, waiting for the next start, keeps its file.
#[test]
fn the_lock_file_is_kept_between_restarts() {
    let env = TestEnv::new();
    let mut holder = env.start(&[
        "run",
        "--name",
        "bot",
        "--restart",
        "on-failure",
        "--restart-delay",
        "1h",
        "--",
        "sh",
        "-c",
        "echo ran; exit 1",
    ]);
    holder.expect_stdout_line("ran");
    holder.expect_stderr_containing("restarting it in 1h");
    let deleted_at = Instant::now();
    fs::remove_file(env.lock_file("bot")).unwrap();
    holder.expect_stderr_containing("was deleted or replaced while held; restored it");
    let restored_after = deleted_at.elapsed();
    holder.signal(libc::SIGTERM);
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 1, "{err}");
    assert!(
        restored_after < std::time::Duration::from_secs(5),
        "restored after {restored_after:?}"
    );
}
