//! Issue 14's cooperative handoff: `stop` and `run --replace` on
//! PostgreSQL ask the holder through the database (a request naming its
//! token in the state row, announced by `NOTIFY`); its supervisor stops
//! its command and releases cleanly, so the next holder needs no
//! lock-delay. Only a holder that does not answer is ended the hard way
//! (its session terminated), and then the lock-delay applies.

#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};

use crate::postgres_lib::{Fixture, admin, url};
use crate::postgres_run::{LOCK_DELAY, T_PLUS_G, documented_key, run_args, start};
use crate::util::{Running, TestEnv, code, signal_pid, stderr};
use onlyone::STALE_TOKEN_SQLSTATE;

/// How long `--replace` waits for an answer with the tests' timings: its
/// heartbeat deadline + kill grace + 1 s.
const ANSWER_BOUND: Duration = Duration::from_millis(2500);

/// A handoff on loopback, with a debug build on a busy machine: well
/// under the lock-delay, near the goal of 1 s.
const QUICK: Duration = Duration::from_millis(1500);

/// `-v` (info logs) and the tests' timings, against the fixture's table.
fn args(fixture: &Fixture, name: &str, extra: &[&str], script: &str) -> Vec<String> {
    let table = ["--table", fixture.table.as_str()];
    let mut args = vec!["-v".to_owned()];
    args.extend(run_args(
        &url(),
        name,
        &[&table[..], extra].concat(),
        script,
    ));
    args
}

/// A holder whose command honours SIGTERM, says its fence and its pid,
/// then `ready`.
fn holder(env: &TestEnv, fixture: &Fixture, name: &str) -> (Running, String, u32) {
    let mut holder = start(
        env,
        &args(
            fixture,
            name,
            &[],
            "echo \"$ONLYONE_FENCE\"; echo $$; echo ready; exec sleep 1000",
        ),
    );
    let fence = holder.expect_stdout_any();
    let pid = holder.expect_stdout_any().parse().unwrap();
    holder.expect_stdout_line("ready");
    (holder, fence, pid)
}

fn cli(env: &TestEnv, fixture: &Fixture, words: &[&str]) -> std::process::Output {
    let table = ["--table", fixture.table.as_str()];
    env.run(&[&["-v"][..], words, &["--postgres", &url()], &table[..]].concat())
}

fn row_state(fixture: &Fixture, name: &str) -> (i64, String) {
    let row = admin()
        .query_one(
            &format!("SELECT token, state FROM {} WHERE key = $1", fixture.table),
            &[&documented_key(name)],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// `--replace` of a holder whose command honours SIGTERM: the old holder
/// is asked, stops its command and releases cleanly; the new command runs
/// at once (no lock-delay); the old onlyone exits with its command's
/// status (143, SIGTERM) and logs the request at info, not as an error.
#[test]
fn replace_asks_the_holder_and_needs_no_lock_delay() {
    let env = TestEnv::new();
    let fixture = Fixture::new("handoff_replace");
    let name = fixture.name("lock").to_string();
    let (old, _, _) = holder(&env, &fixture, &name);
    let started = Instant::now();
    let mut new = start(
        &env,
        &args(&fixture, &name, &["--replace"], "echo new; exec sleep 1000"),
    );
    new.expect_stdout_line("new");
    let took = started.elapsed();
    let (status, _, err) = old.finish();
    assert_eq!(code(status), 143, "{err}");
    assert!(took < QUICK, "the replace took {took:?}");
    assert!(err.contains("stopped by a request from "), "{err}");
    assert!(!err.contains("lost lock"), "{err}");
    assert!(!err.contains("error"), "{err}");
    assert_eq!(row_state(&fixture, &name), (2, "held".to_owned()));
    new.kill_tree();
}

/// `stop` asks the holder and returns once it let go; `run` right after
/// needs no lock-delay (the row says `released`).
#[test]
fn stop_asks_the_holder_and_the_next_run_needs_no_lock_delay() {
    let env = TestEnv::new();
    let fixture = Fixture::new("handoff_stop");
    let name = fixture.name("lock").to_string();
    let (old, _, _) = holder(&env, &fixture, &name);
    let started = Instant::now();
    let out = cli(&env, &fixture, &["stop", &name]);
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("asked the holder of lock"),
        "{}",
        stderr(&out)
    );
    let (status, _, err) = old.finish();
    assert_eq!(code(status), 143, "{err}");
    assert!(err.contains("stopped by a request from "), "{err}");
    assert_eq!(row_state(&fixture, &name), (1, "released".to_owned()));
    let next = env.run(
        &args(&fixture, &name, &[], "echo ran")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let took = started.elapsed();
    assert_eq!(code(next.status), 0, "{}", stderr(&next));
    assert!(took < QUICK, "stop then run took {took:?}");
}

/// A holder whose supervisor and command are frozen (SIGSTOP) cannot
/// answer: `--replace` waits its bound, says why, ends the holder's
/// session, and starts only after the lock-delay. Once continued, the old
/// supervisor finds its lock lost and stops its command within T + G
/// (74), and the old token's fenced writes fail.
#[test]
fn an_unanswered_replace_ends_the_session_and_waits_the_lock_delay() {
    let env = TestEnv::new();
    let fixture = Fixture::new("handoff_frozen");
    let name = fixture.name("lock").to_string();
    let (old, fence, command) = holder(&env, &fixture, &name);
    signal_pid(old.pid(), libc::SIGSTOP);
    signal_pid(command, libc::SIGSTOP);
    let started = Instant::now();
    let mut new = start(
        &env,
        &args(&fixture, &name, &["--replace"], "echo new; exec sleep 1000"),
    );
    let said = new.expect_stderr_containing("did not answer the stop request within");
    assert!(said.contains("lock-delay"), "{said}");
    new.expect_stdout_line("new");
    let took = started.elapsed();
    assert!(
        took >= ANSWER_BOUND + LOCK_DELAY,
        "the replace took {took:?}"
    );

    let continued = Instant::now();
    signal_pid(old.pid(), libc::SIGCONT);
    signal_pid(command, libc::SIGCONT);
    let (status, _, err) = old.finish();
    assert_eq!(code(status), 74, "{err}");
    assert!(
        continued.elapsed() <= T_PLUS_G + Duration::from_millis(500),
        "stopped {:?} after SIGCONT",
        continued.elapsed()
    );
    let mut client = admin();
    let mut tx = client.transaction().unwrap();
    let stale = tx
        .batch_execute(&fence)
        .expect_err("the old token is stale");
    assert_eq!(
        stale.as_db_error().unwrap().code().code(),
        STALE_TOKEN_SQLSTATE
    );
    drop(tx);
    new.kill_tree();
}

/// `stop --timeout` of a frozen holder: it ends the session after the
/// timeout and says why; the next `run` waits the lock-delay.
#[test]
fn an_unanswered_stop_ends_the_session_after_its_timeout() {
    let env = TestEnv::new();
    let fixture = Fixture::new("handoff_frozen_stop");
    let name = fixture.name("lock").to_string();
    let (old, _, command) = holder(&env, &fixture, &name);
    signal_pid(old.pid(), libc::SIGSTOP);
    signal_pid(command, libc::SIGSTOP);
    let out = cli(&env, &fixture, &["stop", "--timeout", "500ms", &name]);
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("did not answer the stop request within 500ms; ended its database session"),
        "{}",
        stderr(&out)
    );
    let started = Instant::now();
    let next = env.run(
        &args(&fixture, &name, &[], "echo ran")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(code(next.status), 0, "{}", stderr(&next));
    assert!(started.elapsed() >= LOCK_DELAY, "{:?}", started.elapsed());
    signal_pid(old.pid(), libc::SIGCONT);
    signal_pid(command, libc::SIGCONT);
    let (status, _, err) = old.finish();
    assert_eq!(code(status), 74, "{err}");
}

/// A request that names an older token never reaches the holder that
/// replaced it: an announcement with the old token is ignored, one with
/// the new token but no request in the row (anyone who may connect can
/// `NOTIFY`) is ignored too, and the row's guard refuses a mark of any
/// token but the current one (here a future one: the old token is marked
/// already, by the replace).
#[test]
fn a_stop_request_for_an_older_token_does_not_hit_the_new_holder() {
    let env = TestEnv::new();
    let fixture = Fixture::new("handoff_old_token");
    let name = fixture.name("lock").to_string();
    let (old, _, _) = holder(&env, &fixture, &name);
    let mut new = start(
        &env,
        &args(&fixture, &name, &["--replace"], "echo new; exec sleep 1000"),
    );
    new.expect_stdout_line("new");
    let _ = old.finish();
    let key = documented_key(&name);
    let mut client = admin();
    client
        .batch_execute(&format!(
            "NOTIFY \"onlyone_stop_{key}\", '1 old:1'; NOTIFY \"onlyone_stop_{key}\", '2 spoof:1'"
        ))
        .unwrap();
    let refused = client
        .batch_execute(&format!(
            "UPDATE {} SET stopped_token = token + 1 WHERE key = {key}",
            fixture.table
        ))
        .expect_err("the guard refuses a mark of an older token");
    let refused = refused
        .as_db_error()
        .expect("raised by the guard")
        .message();
    assert!(refused.contains("can only be changed"), "{refused}");
    // Still held by the new holder after several of its heartbeats.
    let out = cli(&env, &fixture, &["wait", "--timeout", "1s", &name]);
    assert_eq!(code(out.status), 75, "{}", stderr(&out));
    let status = cli(&env, &fixture, &["status", &name]);
    let shown = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(shown.contains("last token 2"), "{shown}");
    assert!(!shown.contains("asked to stop"), "{shown}");
    new.kill_tree();
}

/// `status` shows a request the holder has not answered (its supervisor is
/// frozen); once continued, the holder finds the request in its row at a
/// heartbeat (no announcement reached it: the mark was written by hand)
/// and stops as asked.
#[test]
fn status_shows_a_pending_stop_request_and_the_heartbeat_finds_it() {
    let env = TestEnv::new();
    let fixture = Fixture::new("handoff_pending");
    let name = fixture.name("lock").to_string();
    let (old, _, _) = holder(&env, &fixture, &name);
    signal_pid(old.pid(), libc::SIGSTOP);
    admin()
        .batch_execute(&format!(
            "UPDATE {} SET stopped_token = token WHERE key = {}",
            fixture.table,
            documented_key(&name)
        ))
        .unwrap();
    let status = cli(&env, &fixture, &["status", &name]);
    let shown = String::from_utf8_lossy(&status.stdout).to_string();
    signal_pid(old.pid(), libc::SIGCONT);
    assert!(
        shown.contains("asked to stop (token 1), not answered yet"),
        "{shown}"
    );
    let (status, _, err) = old.finish();
    assert_eq!(code(status), 143, "{err}");
    assert!(
        err.contains("stopped by a request from a requester whose announcement was missed"),
        "{err}"
    );
    assert_eq!(row_state(&fixture, &name), (1, "released".to_owned()));
}

/// `stop NAME` reads the rows of NAME and its slots only, not the server's
/// view of every lock in the table: beside 1,000 other names it took 4 s
/// (a `pg_locks` query for each row, one round trip each).
#[test]
fn stop_does_not_look_at_the_other_names_in_the_table() {
    let env = TestEnv::new();
    let fixture = Fixture::new("handoff_others");
    let name = fixture.name("lock").to_string();
    let (old, _, _) = holder(&env, &fixture, &name);
    // Other names' rows, released (the guard lets rows be inserted).
    let others = 60;
    admin()
        .batch_execute(&format!(
            "INSERT INTO {} (key, name, token, state) \
             SELECT i, 'other-' || i, 1, 'released' FROM generate_series(1, {others}) i",
            fixture.table
        ))
        .unwrap();
    let table = ["--table", fixture.table.as_str()];
    let out = env.run(
        &[
            &["-vv", "stop", &name, "--postgres", &url()][..],
            &table[..],
        ]
        .concat(),
    );
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    let views = stderr(&out)
        .lines()
        .filter(|line| line.contains("executing statement") && line.contains("parameters"))
        .count();
    assert!(
        views < 20,
        "stop ran {views} statements beside {others} other names:\n{}",
        stderr(&out)
    );
    let (status, _, err) = old.finish();
    assert_eq!(code(status), 143, "{err}");
}
