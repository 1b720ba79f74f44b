//! `stop` and `wait` on a pool (issue 9, item 15): with every slot of a
//! `--max` pool held, `wait NAME` returned 0 at once and `stop NAME` said
//! "free already". They act on the whole pool, or on one slot as `NAME@N`.

use crate::util::{Running, TestEnv, assert_exit, code, stderr};

/// `run --name pool --max 2 EXTRA -- sh -c ...`: the next member of the
/// pool, started once the previous one runs, so that it takes slot `slot`
/// (slots are tried in order).
fn member(env: &TestEnv, slot: u32, extra: &[&str]) -> Running {
    let mut args = vec!["run", "--name", "pool", "--max", "2"];
    args.extend(extra);
    args.extend([
        "--",
        "sh",
        "-c",
        "echo \"ready $ONLYONE_SLOT\"; exec sleep 1000",
    ]);
    let mut member = env.start(&args);
    member.expect_stdout_line(&format!("ready {slot}"));
    member
}

#[test]
fn wait_on_a_full_pool_waits_for_every_slot() {
    let env = TestEnv::new();
    let first = member(&env, 1, &[]);
    let second = member(&env, 2, &[]);
    let out = env.run(&["wait", "pool", "--timeout", "200ms"]);
    assert_exit(&out, 75);
    assert_eq!(
        stderr(&out),
        "onlyone: lock 'pool' is still held after 200ms\n"
    );

    let waiter = env.start(&["wait", "pool"]);
    first.kill();
    let still = env.run(&["wait", "pool", "--timeout", "200ms"]);
    assert_eq!(code(still.status), 75, "slot 2 is still held");
    second.kill();
    let (status, _, err) = waiter.finish();
    assert_eq!(code(status), 0, "{err}");
}

#[test]
fn stop_on_a_pool_stops_every_slot() {
    let env = TestEnv::new();
    let first = member(&env, 1, &[]);
    let second = member(&env, 2, &[]);
    let out = env.run(&["stop", "pool"]);
    assert_exit(&out, 0);
    for member in [first, second] {
        let (status, _, _) = member.finish();
        assert_eq!(code(status), 143, "each slot's holder got SIGTERM");
    }
    let status = env.run(&["status", "pool"]);
    assert_eq!(code(status.status), 3, "the pool is free");
    let again = env.run(&["stop", "pool"]);
    assert_exit(&again, 3);
    assert_eq!(stderr(&again), "onlyone: lock 'pool' is free already\n");
}

#[test]
fn one_slot_is_addressed_as_name_at_n() {
    let env = TestEnv::new();
    let first = member(&env, 1, &[]);
    let second = member(&env, 2, &[]);

    let held = env.run(&["status", "pool@2"]);
    assert_exit(&held, 0);
    let line = String::from_utf8_lossy(&held.stdout).into_owned();
    assert!(line.starts_with("pool@2: held by pid"), "{line}");
    assert_eq!(line.lines().count(), 1, "one slot, one line: {line}");

    let out = env.run(&["stop", "pool@2"]);
    assert_exit(&out, 0);
    let (status, _, _) = second.finish();
    assert_eq!(code(status), 143);
    assert_eq!(code(env.run(&["status", "pool@2"]).status), 3);
    assert_eq!(code(env.run(&["wait", "pool@2"]).status), 0);

    let waited = env.run(&["wait", "pool@1", "--timeout", "100ms"]);
    assert_eq!(code(waited.status), 75, "slot 1 is untouched");
    assert_eq!(code(env.run(&["status", "pool"]).status), 0);
    first.kill();
}

#[test]
fn slot_syntax_is_validated_and_only_for_status_stop_wait() {
    let env = TestEnv::new();
    for bad in [
        "pool@0",
        "pool@02",
        "pool@x",
        "pool@",
        "pool@10001",
        "a b@1",
    ] {
        for command in ["status", "stop", "wait"] {
            let out = env.run(&[command, bad]);
            assert_eq!(code(out.status), 64, "{command} {bad}: {}", stderr(&out));
            assert!(
                stderr(&out).starts_with("onlyone: error: invalid "),
                "{}",
                stderr(&out)
            );
        }
    }
    let run = env.run(&["run", "--name", "pool@1", "--", "true"]);
    assert_eq!(code(run.status), 64, "a slot is never taken by name");
}

/// The same on PostgreSQL: the slots are the state table's `NAME@N` rows.
#[cfg(feature = "postgres")]
#[test]
fn postgres_stop_and_wait_act_on_the_pool() {
    let url = crate::postgres_lib::url();
    let env = TestEnv::new();
    let name = format!("pg-pool-{}", std::process::id());
    let pg_member = |slot: u32| {
        let mut member = env.start(&[
            "run",
            "--postgres",
            &url,
            "--name",
            &name,
            "--max",
            "2",
            "--heartbeat",
            "100ms",
            "--",
            "sh",
            "-c",
            "echo \"ready $ONLYONE_SLOT\"; exec sleep 1000",
        ]);
        member.expect_stdout_line(&format!("ready {slot}"));
        member
    };
    let first = pg_member(1);
    let second = pg_member(2);
    // The pool is held when its slots are (issue 10, defect 5).
    let status = env.run(&["status", "--postgres", &url, &name]);
    assert_exit(&status, 0);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.starts_with(&format!("{name}: held (2 of 2 slots)\n")),
        "{text}"
    );
    let waited = env.run(&["wait", "--postgres", &url, &name, "--timeout", "300ms"]);
    assert_exit(&waited, 75);

    let slot = format!("{name}@2");
    let out = env.run(&["stop", "--postgres", &url, &slot]);
    assert_exit(&out, 0);
    let (status, _, err) = second.finish();
    assert_eq!(
        code(status),
        143,
        "it was asked, and stopped its command: {err}"
    );
    let still = env.run(&["wait", "--postgres", &url, &name, "--timeout", "300ms"]);
    assert_eq!(code(still.status), 75, "slot 1 is still held");

    let out = env.run(&["stop", "--postgres", &url, &name]);
    assert_exit(&out, 0);
    let (status, _, err) = first.finish();
    assert_eq!(code(status), 143, "{err}");
    let free = env.run(&["wait", "--postgres", &url, &name, "--timeout", "5s"]);
    assert_exit(&free, 0);
}
