//! `onlyone status`: held or free, by whom, never taking the lock.

use std::process::Command;

use crate::util::{TestEnv, assert_exit};

#[test]
fn status_of_a_held_lock_exits_0_and_names_the_holder() {
    let env = TestEnv::new();
    let holder = env.hold_sleeping("bot");
    let out = env.run(&["status", "bot"]);
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("bot: held by pid {} on ", holder.pid())),
        "{text}"
    );
    assert!(text.contains("; last token 1; "), "{text}");
}

#[test]
fn status_of_a_free_lock_exits_3() {
    let env = TestEnv::new();
    let out = env.run(&["status", "never-used"]);
    assert_exit(&out, 3);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("never-used: free; "));

    env.run(&["run", "--name", "used", "--", "true"]);
    let out = env.run(&["status", "used"]);
    assert_exit(&out, 3);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("used: free; last token 1; "));
}

#[test]
fn status_json_carries_the_record() {
    let env = TestEnv::new();
    let holder = env.hold_sleeping("bot");
    let out = env.run(&["status", "bot", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["held"], true);
    assert_eq!(value["holder"]["record"]["pid"], holder.pid());
    assert_eq!(value["holder"]["record"]["token"], 1);
    assert_eq!(value["holder"]["record"]["format"], "onlyone/1");
}

#[test]
fn status_without_name_lists_every_lock() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("b-held");
    env.run(&["run", "--name", "a-free", "--", "true"]);
    let out = env.run(&["status"]);
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("a-free: free"), "{text}");
    assert!(lines[1].starts_with("b-held: held by pid"), "{text}");

    let out = env.run(&["status", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value.as_array().unwrap().len(), 2);
}

/// Probing by taking the lock can make a real starter fail at that instant
/// (and flock(1) -n is exactly such a probe). status must not lock: while
/// a status runs in a loop, a starter never sees a conflict.
#[test]
fn status_never_takes_the_lock() {
    linux_only!(
        "off Linux the kernel names no flock holders: with no holder socket, status tries a shared flock for an instant to see a holder that is not onlyone (README, Platforms); a flock -n at that instant fails"
    );
    let env = TestEnv::new();
    env.run(&["run", "--name", "bot", "--", "true"]);
    let file = env.lock_file("bot");
    // Run status many times while taking the lock with flock -n, which
    // would fail whenever status held it.
    let mut prober = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 200); do ONLYONE_DIR={} {} status bot >/dev/null; done",
            env.lock_dir().display(),
            env!("CARGO_BIN_EXE_onlyone")
        ))
        .spawn()
        .unwrap();
    let mut conflicts = 0;
    while prober.try_wait().unwrap().is_none() {
        let flock = Command::new("flock")
            .args(["-n", file.to_str().unwrap(), "true"])
            .status()
            .unwrap();
        if !flock.success() {
            conflicts += 1;
        }
    }
    assert_eq!(conflicts, 0);
}

/// Issue 10, defect 5: with every slot of a `--max` pool held, `status
/// pool` said "pool: free" above the slot lines, `--json` said `"held":
/// false`, and it exited 3. A pool is held when any slot is.
#[test]
fn a_pool_is_held_when_its_slots_are() {
    let env = TestEnv::new();
    let member = |slot: u32| {
        let mut member = env.start(&[
            "run",
            "--name",
            "pool",
            "--max",
            "3",
            "--",
            "sh",
            "-c",
            "echo \"ready $ONLYONE_SLOT\"; exec sleep 1000",
        ]);
        member.expect_stdout_line(&format!("ready {slot}"));
        member
    };
    let members: Vec<_> = (1..=3).map(member).collect();
    let out = env.run(&["status", "pool"]);
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines[0], "pool: held (3 of 3 slots)", "{text}");
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].starts_with("pool@1: held by pid "), "{text}");

    let out = env.run(&["status", "pool", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["held"], true);
    let slots = value["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 3);
    assert!(slots.iter().all(|slot| slot["held"] == true));

    let mut members = members.into_iter();
    let _first = members.next();
    for member in members {
        member.kill();
    }
    let out = env.run(&["status", "pool"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("pool: held (1 of 3 slots)\n"), "{text}");
}

/// Issue 10, defect 6: on files `status` showed no waiters while a `run
/// --wait` was queued. /proc/locks lists blocked flock(2) waiters; they
/// are shown with their pid, command and start, as PostgreSQL's are.
#[test]
fn status_shows_the_processes_waiting_for_a_file_lock() {
    linux_only!("the processes blocked in flock(2) are listed in /proc/locks only");
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    let mut waiter = env.start(&["run", "--name", "bot", "--wait", "--", "true"]);
    waiter.expect_stderr_containing("waiting for lock 'bot'");
    // The kernel lists the waiter once it blocks in flock(2): there is no
    // event for that, so look until it does.
    let deadline = std::time::Instant::now() + crate::util::EVENT_TIMEOUT;
    let waiters = loop {
        let out = env.run(&["status", "bot", "--json"]);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let waiters = value["waiters"].as_array().unwrap().clone();
        if !waiters.is_empty() || std::time::Instant::now() > deadline {
            break waiters;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(waiters.len(), 1, "{waiters:?}");
    let waiter_line = waiters[0].as_str().unwrap();
    let expected = format!(
        "pid {} ({} run --name bot --wait -- true), running since ",
        waiter.pid(),
        env!("CARGO_BIN_EXE_onlyone")
    );
    assert!(waiter_line.starts_with(&expected), "{waiter_line}");

    let out = env.run(&["status", "bot"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("; waiting: {expected}")), "{text}");
}

/// Issue 10, defect 7: `status NAME --json` printed its keys sorted, the
/// list in the order of the fields. Both print the same object the same
/// way.
#[test]
fn status_json_of_one_lock_is_its_entry_in_the_list() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    let one = env.run(&["status", "bot", "--json"]);
    let list = env.run(&["status", "--json"]);
    let list = String::from_utf8(list.stdout).unwrap();
    // The list's one entry, two spaces less indented.
    let entry: String = list
        .lines()
        .filter(|line| *line != "[" && *line != "]")
        .map(|line| format!("{}\n", line.strip_prefix("  ").unwrap_or(line)))
        .collect();
    assert_eq!(String::from_utf8(one.stdout).unwrap(), entry);
    let keys: Vec<&str> = entry
        .lines()
        .filter(|line| line.starts_with("  \"") && !line.starts_with("   "))
        .map(|line| line.trim().split('"').nth(1).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "name",
            "location",
            "held",
            "holder",
            "last_token",
            "waiters",
            "stop_requested"
        ]
    );
}

/// `status` in an empty directory says which directory it looked in.
#[test]
fn status_of_an_empty_directory_names_it() {
    let env = TestEnv::new();
    let out = env.run(&["status"]);
    assert_exit(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("no locks in {}\n", env.lock_dir().display())
    );
}
