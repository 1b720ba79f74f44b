//! The torture run (`src/bin/onlyone-torture`) as a test: 32 contenders,
//! 2,000 acquisitions, holders and supervisors killed, holders stopped, the
//! lock file and directory deleted, and never two holders at once. Plus the
//! failures that torture runs found, each as a small test.

use std::fs;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::util::{TestEnv, code, signal_pid, stderr};

/// The torture run bounds itself (`--seconds`); this bounds the test in
/// case the harness itself hangs.
const WATCHDOG: Duration = Duration::from_secs(300);

/// Runs onlyone-torture with `args` against this build of onlyone, fails
/// the test if the run fails, and returns its JSON summary and its table.
fn torture(args: &[&str]) -> (serde_json::Value, String) {
    let env = TestEnv::new();
    let summary_path = env.path("summary.json");
    let mut torture = Command::new(env!("CARGO_BIN_EXE_onlyone-torture"));
    torture
        .args(args)
        .arg("--onlyone")
        .arg(env!("CARGO_BIN_EXE_onlyone"))
        .arg("--work")
        .arg(env.path("work"))
        .arg("--summary")
        .arg(&summary_path);
    let output = output_within(&mut torture, WATCHDOG);
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(code(output.status), 0, "{table}{}", stderr(&output));
    let summary = serde_json::from_str(&fs::read_to_string(&summary_path).unwrap()).unwrap();
    (summary, table)
}

#[test]
fn two_thousand_acquisitions_under_chaos_never_overlap() {
    let (summary, table) = torture(&["--acquisitions", "2000", "--seconds", "150"]);
    let number = |pointer: &str| {
        summary
            .pointer(pointer)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("{pointer} missing from the summary:\n{table}"))
    };
    assert_eq!(number("/overlaps"), 0, "{table}");
    assert!(number("/acquisitions") >= 2000, "{table}");
    for chaos in [
        "holder_sigkill",
        "supervisor_sigkill",
        "holder_sigstop",
        "lock_file_deletions",
        "lock_dir_deletions",
    ] {
        assert!(
            number(&format!("/chaos/{chaos}")) > 0,
            "no {chaos}:\n{table}"
        );
    }
    assert_eq!(number("/tokens/regressions_unexplained"), 0, "{table}");
    assert_eq!(number("/unexpected_supervisor_exits"), 0, "{table}");
    assert_eq!(number("/leftover_processes"), 0, "{table}");
    assert_eq!(summary["passed"], true, "{table}");
}

/// The PostgreSQL mode, short: 500 acquisitions while holders' sessions
/// are terminated (holder kills are the file run's and the fault tests'
/// business). Every unclean loss makes
/// the next holder wait the lock-delay (3.5 s with these timings), so the
/// chaos comes every 0.8 s on average but lands only while a command runs.
#[cfg(feature = "postgres")]
#[test]
fn postgres_mode_under_chaos_never_overlaps() {
    let url = crate::postgres_lib::url();
    let (summary, table) = torture(&[
        "--acquisitions=500",
        "--seconds=150",
        "--chaos-ms=800",
        "--max-hold-ms=20",
        "--chaos=session-termination",
        "--postgres",
        &url,
        // The timings of tests/it/postgres_run.rs: a lock-delay of 3.5 s.
        "--onlyone-arg=--heartbeat=100ms",
        "--onlyone-arg=--kill-grace=300ms",
        "--onlyone-arg=--lock-delay=2s",
    ]);
    assert_eq!(summary["overlaps"], 0, "{table}");
    assert_eq!(summary["backend"], "postgres", "{table}");
    assert!(summary["acquisitions"].as_u64() >= Some(500), "{table}");
    assert!(
        summary["chaos"]["session_terminations"].as_u64() > Some(0),
        "{table}"
    );
}

/// Found by the torture run: a cleanup script that deletes the lock
/// directory just as a starter makes it (or opens the file in it) made
/// `onlyone run` fail with 69 ("cannot read the lock directory: No such
/// file or directory") instead of making the directory again.
#[test]
fn lock_directory_deleted_over_and_over_never_fails_a_start() {
    let env = TestEnv::new();
    let deleting = Arc::new(AtomicBool::new(true));
    let deleter = {
        let (deleting, dir) = (deleting.clone(), env.lock_dir());
        thread::spawn(move || {
            while deleting.load(Ordering::Relaxed) {
                let _ = fs::remove_dir_all(&dir);
            }
        })
    };
    let mut failures = Vec::new();
    for _ in 0..100 {
        let run = env.run(&["run", "--name", "bot", "--timeout", "20s", "--", "true"]);
        if code(run.status) != 0 {
            failures.push(format!("exit {}: {}", code(run.status), stderr(&run)));
        }
    }
    deleting.store(false, Ordering::Relaxed);
    deleter.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of 100 starts failed:\n{}",
        failures.len(),
        failures.join("")
    );
}

/// Runs `command` to completion with its output captured; kills it and
/// fails the test if it takes longer than `bound`.
fn output_within(command: &mut Command, bound: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start onlyone-torture");
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(bound) {
        Ok(output) => output.expect("wait for onlyone-torture"),
        Err(_) => {
            // SIGINT: the harness stops and kills its contenders first.
            signal_pid(pid, libc::SIGINT);
            panic!("onlyone-torture did not finish within {bound:?}");
        }
    }
}
