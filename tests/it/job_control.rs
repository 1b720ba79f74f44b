//! Job control on an interactive terminal (issue 9, item 12). The command
//! runs in a process group of its own that holds the terminal; Ctrl-Z used
//! to stop only that group while onlyone waited on, so the shell never got
//! the terminal back, Ctrl-C did nothing and the lock stayed held. Here a
//! real interactive shell (bash with job control) runs on a
//! pseudo-terminal, and the test types on it.

use std::process::Command;
use std::time::Instant;

use crate::harness::pty::Pty;
use crate::util::{EVENT_TIMEOUT, TestEnv, code};

const PROMPT: &str = "PROMPT> ";

/// An interactive bash with job control on a new terminal, at its prompt.
fn shell(env: &TestEnv) -> Pty {
    let mut shell = Pty::spawn(
        Command::new("bash")
            .args(["--norc", "--noprofile", "--noediting", "-i"])
            .env("PS1", PROMPT)
            .env("TERM", "dumb")
            .env("HISTFILE", "/dev/null")
            .env("ONLYONE_DIR", env.lock_dir())
            .env_remove("XDG_RUNTIME_DIR"),
    );
    shell.expect(PROMPT);
    shell
}

/// `onlyone run --name job -- COMMAND`, typed at the prompt.
fn run_line(command: &str) -> String {
    format!(
        "{} run --name job -- {command}",
        env!("CARGO_BIN_EXE_onlyone")
    )
}

/// Fields of `/proc/PID/stat`: state, process group, and the foreground
/// process group of its terminal.
fn proc_state(pid: u32) -> Option<(char, u32, u32)> {
    let field = |n| onlyone::internals::stat_field(pid, n);
    Some((
        field(3)?.chars().next()?,
        field(5)?.parse().ok()?,
        field(8)?.parse().ok()?,
    ))
}

/// Waits until `condition` holds. There is no event for "a process
/// stopped or got the terminal" that a bystander can wait on, so this
/// looks every few milliseconds, up to the event deadline.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The supervised command of lock `job` (the child of the holder that
/// leads its own process group and runs `program`), once it runs.
fn command_pid(env: &TestEnv, program: &str) -> u32 {
    command_pid_named(env, "job", &[], program)
}

/// [`command_pid`], for the lock `name` in the backend `backend` flags
/// name.
fn command_pid_named(env: &TestEnv, name: &str, backend: &[&str], program: &str) -> u32 {
    let mut found = None;
    wait_until("the command runs under the lock", || {
        let mut args = vec!["status", name, "--json"];
        args.extend(backend);
        let out = env.run(&args);
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        let Some(supervisor) = status["holder"]["record"]["pid"].as_u64() else {
            return false;
        };
        found = crate::util::children_of(supervisor as u32)
            .into_iter()
            .find(|&pid| onlyone::internals::process_name(pid).is_some_and(|c| c == program));
        found.is_some()
    });
    found.unwrap()
}

/// The command runs, not stopped, and holds the terminal.
fn wait_in_foreground(pty: &Pty, pid: u32) {
    wait_until("the command runs in the foreground", || {
        proc_state(pid).is_some_and(|(state, group, _)| {
            state != 'T' && group == pid && pty.foreground_group() == pid
        })
    });
}

/// The lock is free (`status` exits 3).
fn assert_free(env: &TestEnv) {
    let out = env.run(&["status", "job"]);
    assert_eq!(
        code(out.status),
        3,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Ctrl-C on the command in the foreground ends it and onlyone with 130,
/// back at the prompt.
fn interrupt_in_foreground(shell: &mut Pty, env: &TestEnv, pid: u32) {
    wait_in_foreground(shell, pid);
    shell.send(b"\x03");
    shell.expect(PROMPT);
    shell.send_line("echo status=$?");
    shell.expect("status=130");
    shell.expect(PROMPT);
    assert_free(env);
}

/// Ctrl-Z stops the job and gives the prompt back; `fg` continues it with
/// the terminal; Ctrl-C then ends it (130) and frees the lock.
#[test]
fn ctrl_z_then_fg_then_ctrl_c() {
    let env = TestEnv::new();
    let mut shell = shell(&env);
    shell.send_line(&run_line("sleep 1000"));
    let sleep = command_pid(&env, "sleep");
    wait_in_foreground(&shell, sleep);

    shell.send(b"\x1a");
    shell.expect("Stopped");
    shell.expect(PROMPT);
    assert_eq!(
        shell.foreground_group(),
        shell.pid(),
        "the shell has the terminal"
    );
    assert_eq!(proc_state(sleep).map(|s| s.0), Some('T'));
    shell.send_line("jobs");
    shell.expect("Stopped");
    shell.expect(PROMPT);
    let held = env.run(&["status", "job"]);
    assert_eq!(code(held.status), 0, "a stopped job still holds its lock");

    shell.send_line("fg");
    interrupt_in_foreground(&mut shell, &env, sleep);
}

/// Ctrl-Z, then `bg`: the command runs on in the background while the
/// shell keeps the terminal; `fg` brings it back, Ctrl-C ends it.
#[test]
fn ctrl_z_then_bg_then_fg() {
    let env = TestEnv::new();
    let mut shell = shell(&env);
    shell.send_line(&run_line("sleep 1000"));
    let sleep = command_pid(&env, "sleep");
    wait_in_foreground(&shell, sleep);

    shell.send(b"\x1a");
    shell.expect("Stopped");
    shell.expect(PROMPT);
    shell.send_line("bg");
    shell.expect(PROMPT);
    wait_until("the command runs in the background", || {
        proc_state(sleep).is_some_and(|(state, _, _)| state != 'T')
    });
    assert_eq!(
        shell.foreground_group(),
        shell.pid(),
        "the shell keeps the terminal"
    );
    shell.send_line("jobs");
    shell.expect("Running");
    shell.expect(PROMPT);

    shell.send_line("fg");
    interrupt_in_foreground(&mut shell, &env, sleep);
}

/// Started in the background (`&`), a command that reads the terminal is
/// stopped (SIGTTIN) and so is its job; `fg` gives it the terminal, and it
/// reads what is typed.
#[test]
fn background_read_stops_the_job_until_fg() {
    let env = TestEnv::new();
    let mut shell = shell(&env);
    // bash learns of a background job's stop asynchronously: `set -b`
    // makes it say so at once, so that `jobs` is not asked too early.
    shell.send_line("set -b");
    shell.expect(PROMPT);
    shell.send_line(&format!("{} &", run_line("sh -c 'read x; echo got-$x'")));
    shell.expect(PROMPT);
    let sh = command_pid(&env, "sh");
    shell.expect("Stopped");
    assert_eq!(proc_state(sh).map(|s| s.0), Some('T'));
    shell.send_line("jobs");
    shell.expect("Stopped");
    shell.expect(PROMPT);

    shell.send_line("fg");
    wait_in_foreground(&shell, sh);
    shell.send_line("hello");
    shell.expect("got-hello");
    shell.expect(PROMPT);
    shell.send_line("echo status=$?");
    shell.expect("status=0");
    assert_free(&env);
}

/// With PostgreSQL, a stopped job's heartbeat is stopped too: the lock can
/// be lost while the job is suspended, and a successor may run by the time
/// the shell continues it. The old command must then not run a moment
/// longer: on `fg`, onlyone continues it only while its last heartbeat
/// still vouches for the lock, else once a new one succeeded; here the
/// session was terminated and a successor runs, so the command is killed
/// where it stands (SIGKILL, not continued to see a SIGTERM) and onlyone
/// exits 74. (Without the check this is a race between the SIGCONT and the
/// heartbeat thread's wake-up: the command was continued in about half the
/// runs.)
#[cfg(feature = "postgres")]
#[test]
fn postgres_lock_lost_while_suspended_is_not_continued() {
    let url = crate::postgres_lib::url();
    let env = TestEnv::new();
    let name = format!("pg-job-{}", std::process::id());
    let timing = "--heartbeat 100ms --kill-grace 300ms";
    let mut shell = shell(&env);
    let backend = ["--postgres", url.as_str()];
    shell.send_line(&format!(
        "{} run --postgres {url} --name {name} {timing} -- sleep 1000",
        env!("CARGO_BIN_EXE_onlyone"),
    ));
    let sleep = command_pid_named(&env, &name, &backend, "sleep");
    wait_in_foreground(&shell, sleep);
    shell.send(b"\x1a");
    shell.expect("Stopped");
    shell.expect(PROMPT);

    let status = env.run(&["status", &name, "--json", "--postgres", &url]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let session = status["holder"]["server_pid"].as_i64().unwrap() as i32;
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&session])
        .unwrap();
    let mut args = vec!["run", "--postgres", &url, "--name", &name, "--wait"];
    args.extend(timing.split(' '));
    args.extend(["--", "sh", "-c", "echo started; exec sleep 1000"]);
    let mut successor = env.start(&args);
    successor.expect_stdout_line("started");

    shell.send_line("fg");
    let lost = shell.expect(PROMPT);
    assert!(
        lost.contains(&format!("onlyone: error: lost lock '{name}'"))
            && lost.contains("(its status was 137)"),
        "{lost}"
    );
    shell.send_line("echo status=$?");
    shell.expect("status=74");
    assert!(
        matches!(successor.child.try_wait(), Ok(None)),
        "the successor runs on"
    );
    successor.kill();
}
