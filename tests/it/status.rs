//! `onlyone status`: held or free, by whom, never taking the lock.

use std::process::Command;

use crate::util::{TestEnv, code, stderr};

#[test]
fn status_of_a_held_lock_exits_0_and_names_the_holder() {
    let env = TestEnv::new();
    let holder = env.hold_sleeping("bot");
    let out = env.run(&["status", "bot"]);
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
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
    assert_eq!(code(out.status), 3);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("never-used: free; "));

    env.run(&["run", "--name", "used", "--", "true"]);
    let out = env.run(&["status", "used"]);
    assert_eq!(code(out.status), 3);
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
    assert_eq!(code(out.status), 0);
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
