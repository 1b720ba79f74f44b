//! What onlyone writes: a closed stdout ends it quietly, and with
//! `--log-format json` every line on stderr is one JSON object (issue 10,
//! defects 2 and 3).

use std::process::{Command, Output, Stdio};

use crate::util::{TestEnv, assert_exit, code, stderr};

/// Runs `command` with a stdout whose reader has already gone: every write
/// fails with EPIPE, as it does for `| head -1` once head has exited.
fn with_closed_stdout(command: &mut Command) -> Output {
    let (reader, writer) = rustix::pipe::pipe().expect("a pipe");
    drop(reader);
    command
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run onlyone")
}

/// Defect 2: `status | head -1`, `status NAME --json | head -1`, `man |
/// head -1` and `completions bash | head -1` panicked (101) or printed
/// "Broken pipe". Each ends as if it had shown everything: its own exit
/// code, nothing on stderr.
#[test]
fn a_closed_stdout_ends_quietly() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("held");
    for i in 0..50 {
        env.run(&["run", "--name", &format!("lock-{i}"), "--", "true"]);
    }
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "held"],
        &["status", "held", "--json"],
        &["man"],
        &["man", "run"],
        &["completions", "bash"],
        &["--help"],
        &["--version"],
    ] {
        let out = with_closed_stdout(&mut env.onlyone(args));
        assert_eq!(code(out.status), 0, "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

/// The same through a real `| head -1`: the list is longer than the pipe
/// holds, so that onlyone is still writing when head leaves.
#[test]
fn status_piped_into_head_ends_quietly() {
    let env = TestEnv::new();
    std::fs::create_dir(env.lock_dir()).unwrap();
    for i in 0..1500 {
        std::fs::write(env.lock_file(&format!("lock-{i:04}")), "").unwrap();
    }
    let script = format!(
        "set -o pipefail; '{}' status | head -1",
        env!("CARGO_BIN_EXE_onlyone")
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("ONLYONE_DIR", env.lock_dir())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(stderr(&out), "");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("lock-0000: free; "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every stderr line of `out` as a JSON object with the four keys; fails
/// on any line that is not one.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stderr(out)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line:?}"));
            for key in ["time", "level", "message", "pid"] {
                assert!(value.get(key).is_some(), "no {key:?} in {line}");
            }
            value
        })
        .collect()
}

/// The JSON line whose message contains `fragment`.
fn line_with<'a>(lines: &'a [serde_json::Value], fragment: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|line| line["message"].as_str().unwrap().contains(fragment))
        .unwrap_or_else(|| panic!("no line with {fragment:?} in {lines:?}"))
}

/// Defect 3: with `--log-format json`, the conflict line, the waiting and
/// giving-up lines, name errors, "command not found", connection errors,
/// usage errors and the final error line stayed text.
#[test]
fn with_json_every_stderr_line_is_one_object() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    let long_name = "a".repeat(300);
    // Exits cleanly once, then stops its own onlyone.
    let once = env.path("once");
    let restarted = format!(
        "if [ -e {0} ]; then kill -TERM $PPID; exec sleep 100; fi; touch {0}",
        once.display()
    );
    let cases: Vec<(Vec<&str>, i32, &str, &str)> = vec![
        (
            vec!["run", "--name", "bot", "--", "true"],
            75,
            "notice",
            "lock 'bot' is held by pid",
        ),
        (
            vec!["run", "--name", "bot", "--timeout", "200ms", "--", "true"],
            75,
            "notice",
            "gave up after 200ms: lock 'bot' is held by pid",
        ),
        (
            vec!["run", "--name", "a b", "--", "true"],
            64,
            "error",
            "invalid lock name 'a b'",
        ),
        (
            vec!["run", "--name", &long_name, "--", "true"],
            64,
            "error",
            "too long (300 characters, at most 128)",
        ),
        (
            vec!["run", "--name", "free", "--", "no-such-command-here"],
            127,
            "error",
            "command not found: no-such-command-here",
        ),
        (
            vec!["run", "--name", "x", "--timeout", "abc", "--", "true"],
            64,
            "error",
            "invalid value 'abc' for '--timeout <DURATION>'",
        ),
        (
            vec!["run", "--no-such-flag", "--name", "x", "--", "true"],
            64,
            "error",
            "unexpected argument '--no-such-flag'",
        ),
        (
            vec!["stop", "free"],
            3,
            "notice",
            "lock 'free' is free already",
        ),
        (
            vec!["wait", "bot", "--timeout", "100ms"],
            75,
            "notice",
            "lock 'bot' is still held after 100ms",
        ),
        (
            vec!["-v", "run", "--name", "free", "--", "true"],
            0,
            "info",
            "acquired lock 'free'",
        ),
        (
            vec![
                "-v",
                "run",
                "--name",
                "again",
                "--restart",
                "always",
                "--restart-delay",
                "10ms",
                "--",
                "sh",
                "-c",
                &restarted,
            ],
            143,
            "info",
            "the command exited with status 0; restarting it in 10ms",
        ),
    ];
    for (args, expected_code, level, fragment) in cases {
        let mut all = vec!["--log-format", "json"];
        all.extend(&args);
        let out = env.run(&all);
        assert_eq!(
            code(out.status),
            expected_code,
            "{args:?}: {}",
            stderr(&out)
        );
        let lines = json_lines(&out);
        assert_eq!(line_with(&lines, fragment)["level"], level, "{args:?}");
    }

    // "waiting for ..." comes while the wait goes on.
    let mut waiter = env.start(&[
        "run",
        "--name",
        "bot",
        "--wait",
        "--log-format=json",
        "--",
        "true",
    ]);
    let line = waiter.expect_stderr_containing("waiting for lock 'bot' held by pid");
    let value: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(value["level"], "notice");
}

/// A PostgreSQL server that cannot be reached, with a password on the
/// command line: the warning and the connection error are JSON too. No
/// server is needed: nothing listens on port 1.
#[cfg(feature = "postgres")]
#[test]
fn with_json_postgres_errors_are_objects_too() {
    let env = TestEnv::new();
    let out = env.run(&[
        "--log-format",
        "json",
        "run",
        "--postgres",
        "postgres://bot:secret@127.0.0.1:1/app",
        "--name",
        "x",
        "--",
        "true",
    ]);
    assert_exit(&out, 69);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        line_with(&lines, "the password in --postgres")["level"],
        "warning"
    );
    assert_eq!(
        line_with(&lines, "cannot connect to PostgreSQL at")["level"],
        "error"
    );
    assert!(!stderr(&out).contains("secret"));
}
