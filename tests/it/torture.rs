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
    // On the portable path a run also fails (1) on token resets that come
    // later after a deletion than the analysis excuses: there the
    // summary's numbers decide (see two_thousand_acquisitions_...).
    let passed = code(output.status) == 0 || (cfg!(onlyone_portable) && code(output.status) == 1);
    assert!(passed, "{table}{}", stderr(&output));
    let summary = serde_json::from_str(&fs::read_to_string(&summary_path).unwrap()).unwrap();
    (summary, table)
}

#[test]
fn two_thousand_acquisitions_under_chaos_never_overlap() {
    // Off Linux a deleted lock directory takes the holder's socket with it:
    // the portable path is tortured with every other act (docs/DESIGN.md).
    let mut args = vec!["--acquisitions", "2000", "--seconds", "150"];
    if cfg!(onlyone_portable) {
        args.extend([
            "--chaos",
            "holder-sigkill,holder-supervisor-sigkill,random-supervisor-sigkill,holder-sigstop,lock-file-deletion",
        ]);
    }
    let (summary, table) = torture(&args);
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
        if cfg!(onlyone_portable) && chaos == "lock_dir_deletions" {
            continue;
        }
        assert!(
            number(&format!("/chaos/{chaos}")) > 0,
            "no {chaos}:\n{table}"
        );
    }
    // Off Linux a restoration after a deletion can come later (no inotify,
    // a socket file to wait on): a token started again from 1 up to ~60 ms
    // after a deletion falls outside the window the analysis excuses.
    if !cfg!(onlyone_portable) {
        assert_eq!(number("/tokens/regressions_unexplained"), 0, "{table}");
    }
    assert_eq!(number("/unexpected_supervisor_exits"), 0, "{table}");
    assert_eq!(number("/leftover_processes"), 0, "{table}");
    if !cfg!(onlyone_portable) {
        assert_eq!(summary["passed"], true, "{table}");
    }
}

/// The PostgreSQL mode, short: 300 acquisitions while holders' sessions are
/// terminated, their supervisors killed or stopped for up to 2 s, also
/// while they wait out their lock-delay (a chain of unclean holders), with
/// kill graces of 300 ms and 1 s and commands that ignore SIGTERM. Every
/// unclean loss makes the next holder wait its lock-delay (3.5 to 4.2 s
/// with these timings). The chaos comes every 3 s on average: with every
/// 2 s, a holder got through its delay only about one time in ten, and
/// runs of 40 s without an acquisition made the time bound a matter of
/// luck. The bound is generous for the same reason (a run takes 50 to
/// 100 s here).
#[cfg(feature = "postgres")]
#[test]
fn postgres_mode_under_chaos_never_overlaps() {
    let url = crate::postgres_lib::url();
    let (summary, table) = torture(&[
        "--acquisitions=300",
        "--seconds=300",
        "--chaos-ms=3000",
        // Holds long enough that the chaos meets running commands: with
        // 20 ms, once handoffs took about 20 ms (issue 15), 300
        // acquisitions were done in 12 s, after four acts of chaos and
        // no unclean loss of a running command (no lock-delay waited).
        "--max-hold-ms=200",
        "--chaos=session-termination,holder-supervisor-sigkill,supervisor-sigstop",
        "--kill-graces=300ms,1s",
        "--witness-ignores-term",
        "--postgres",
        &url,
        // The timings of tests/it/postgres_run.rs: a lock-delay of 3.5 s.
        "--onlyone-arg=--heartbeat=100ms",
        "--onlyone-arg=--lock-delay=2s",
    ]);
    assert_eq!(summary["overlaps"], 0, "{table}");
    assert_eq!(summary["backend"], "postgres", "{table}");
    assert!(summary["acquisitions"].as_u64() >= Some(300), "{table}");
    assert!(summary["lock_delays_waited"].as_u64() > Some(0), "{table}");
    for chaos in [
        "session_terminations",
        "holder_supervisor_sigkill",
        "supervisor_sigstop",
    ] {
        assert!(
            summary["chaos"][chaos].as_u64() > Some(0),
            "no {chaos}:\n{table}"
        );
    }
}

/// The MySQL/MariaDB backend under the same chaos (issue 16): its holders'
/// sessions ended with KILL CONNECTION, their supervisors SIGKILLed and
/// SIGSTOPped, the witnesses ignoring SIGTERM. Short (MySQL hands over in
/// about 10 ms: more acquisitions and longer holds than in the PostgreSQL
/// run above, for the chaos to land; an act every 4 s, longer than a
/// lock-delay, so that chains of delays do not stall it): the long run is
/// in docs/RELIABILITY.md.
#[cfg(feature = "mysql")]
#[test]
fn mysql_mode_under_chaos_never_overlaps() {
    let url = std::env::var("ONLYONE_TEST_MYSQL_URL").expect(
        "ONLYONE_TEST_MYSQL_URL is not set: run the tests with scripts/test (or scripts/with-mariadb)",
    );
    let (summary, table) = torture(&[
        "--acquisitions=400",
        "--seconds=300",
        "--chaos-ms=4000",
        "--max-hold-ms=50",
        "--chaos=session-termination,holder-supervisor-sigkill,supervisor-sigstop",
        "--kill-graces=300ms,1s",
        "--witness-ignores-term",
        "--mysql",
        &url,
        "--onlyone-arg=--heartbeat=100ms",
        "--onlyone-arg=--lock-delay=2s",
    ]);
    assert_eq!(summary["overlaps"], 0, "{table}");
    assert_eq!(summary["backend"], "mysql", "{table}");
    assert!(summary["acquisitions"].as_u64() >= Some(400), "{table}");
    assert!(summary["lock_delays_waited"].as_u64() > Some(0), "{table}");
    for chaos in [
        "session_terminations",
        "holder_supervisor_sigkill",
        "supervisor_sigstop",
    ] {
        assert!(
            summary["chaos"][chaos].as_u64() > Some(0),
            "no {chaos}:\n{table}"
        );
    }
}

/// Issue 14: every holder's command writes rows through the fence while
/// holders are SIGKILLed and SIGSTOPped (supervisor and command apart) and
/// their sessions terminated; the database shows no row committed under a
/// token that was stale at commit time. Short: the long run is in
/// docs/RELIABILITY.md.
#[cfg(feature = "postgres")]
#[test]
fn postgres_fenced_writes_never_commit_under_a_stale_token() {
    let url = crate::postgres_lib::url();
    let (summary, table) = torture(&[
        "--acquisitions=30",
        "--seconds=240",
        "--chaos-ms=3000",
        "--max-hold-ms=200",
        "--chaos=session-termination,holder-supervisor-sigkill,supervisor-sigstop,holder-sigstop,holder-sigkill",
        "--kill-graces=300ms,1s",
        "--postgres",
        &url,
        "--fenced-writes",
        "--onlyone-arg=--heartbeat=100ms",
        "--onlyone-arg=--lock-delay=2s",
    ]);
    assert_eq!(summary["overlaps"], 0, "{table}");
    let fenced = &summary["fenced_writes"];
    assert_eq!(fenced["stale_commits"], 0, "{table}");
    assert_eq!(fenced["early_commits"], 0, "{table}");
    assert!(fenced["writes"].as_u64() >= Some(30), "{table}");
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
