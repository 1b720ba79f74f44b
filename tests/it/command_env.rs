//! The command's environment (issue 9, item 9): what onlyone gives the
//! command replaces what it inherited, so that a missing token is really
//! missing; and a token count that is exhausted never wraps.

use std::fs;
use std::process::Command;

use crate::util::{TestEnv, assert_exit, stderr};

/// Prints every `ONLYONE_*` variable the command sees, sorted, on one line
/// (but onlyone's setting `ONLYONE_DIR`, and the test harness's own).
const SHOW_ENV: &str =
    "env | grep '^ONLYONE_' | grep -v -e '^ONLYONE_DIR=' -e '^ONLYONE_TEST_' | sort | tr '\\n' ' '";

/// `onlyone run --name NAME EXTRA -- sh -c SHOW_ENV` with `inherited`
/// variables in its environment; what the command saw.
fn seen(env: &TestEnv, name: &str, extra: &[&str], inherited: &[(&str, &str)]) -> String {
    let mut args = vec!["run", "--name", name];
    args.extend(extra);
    args.extend(["--", "sh", "-c", SHOW_ENV]);
    let mut command = env.onlyone(&args);
    command.envs(inherited.iter().copied());
    let out = command.output().unwrap();
    assert_exit(&out, 0);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the immutable flag again when the test ends, however it ends.
struct Mutable(std::path::PathBuf);

impl Drop for Mutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// The record cannot be written, so onlyone gives no token, and says so;
/// the caller's `ONLYONE_TOKEN=999` must not reach the command in its place.
#[test]
fn unwritable_record_leaves_no_inherited_token() {
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    fs::write(env.lock_file("bot"), b"").unwrap();
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(env.lock_file("bot"))
        .status()
        .unwrap();
    assert!(immutable.success(), "chattr +i is needed for this test");
    let _undo = Mutable(env.lock_file("bot"));

    let seen = seen(
        &env,
        "bot",
        &[],
        &[("ONLYONE_TOKEN", "999"), ("ONLYONE_SLOT", "7")],
    );
    let lock_file = env.lock_file("bot");
    assert_eq!(
        seen,
        format!(
            "ONLYONE_LOCK={0} ONLYONE_LOCK_FILE={0} ONLYONE_NAME=bot ",
            lock_file.display()
        )
    );
}

/// A plain lock has no slot: an inherited `ONLYONE_SLOT` is removed.
#[test]
fn inherited_slot_is_absent_on_a_plain_lock() {
    let env = TestEnv::new();
    let seen = seen(&env, "job", &[], &[("ONLYONE_SLOT", "1")]);
    assert!(!seen.contains("ONLYONE_SLOT"), "{seen}");
    assert!(seen.contains("ONLYONE_NAME=job ONLYONE_TOKEN=1"), "{seen}");
}

/// `onlyone run` inside `onlyone run`: the inner command sees the inner
/// lock's name, token and file, and no slot of the outer pool.
#[test]
fn nested_run_sees_its_own_values() {
    let env = TestEnv::new();
    for _ in 0..2 {
        let out = env.run(&["run", "--name", "inner", "--", "true"]);
        assert_exit(&out, 0);
    }
    let inner = format!(
        "{} run --name inner -- sh -c \"{SHOW_ENV}\"",
        env!("CARGO_BIN_EXE_onlyone")
    );
    let out = env
        .onlyone(&[
            "run", "--name", "outer", "--max", "2", "--", "sh", "-c", &inner,
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "ONLYONE_LOCK={0} ONLYONE_LOCK_FILE={0} ONLYONE_NAME=inner ONLYONE_TOKEN=3 ",
            env.lock_file("inner").display()
        )
    );
}

/// Issue 10, defect 8: `ONLYONE_LOCK_FILE` is only given on files; every
/// backend gives `ONLYONE_LOCK`, where the lock lives as `status` says
/// (here the lock file), and an inherited one is replaced.
#[test]
fn onlyone_lock_names_where_the_lock_lives() {
    let env = TestEnv::new();
    let seen = seen(&env, "job", &[], &[("ONLYONE_LOCK", "inherited")]);
    let path = env.lock_file("job");
    assert!(
        seen.starts_with(&format!(
            "ONLYONE_LOCK={0} ONLYONE_LOCK_FILE={0} ",
            path.display()
        )),
        "{seen}"
    );
}

/// On PostgreSQL `ONLYONE_LOCK` is the server, database and key, as in
/// `status`, and there is no `ONLYONE_LOCK_FILE`.
#[cfg(feature = "postgres")]
#[test]
fn onlyone_lock_on_postgres_is_the_status_location() {
    let env = TestEnv::new();
    let url = crate::postgres_lib::url();
    let name = format!("env-lock-{}", std::process::id());
    let seen = seen(
        &env,
        &name,
        &["--postgres", &url],
        &[("ONLYONE_LOCK_FILE", "x")],
    );
    let status = env.run(&["status", &name, "--json", "--postgres", &url]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let location = status["location"].as_str().unwrap();
    assert!(location.contains(" key "), "{location}");
    // The fence call, with this acquisition's token, comes first.
    let fence = format!("ONLYONE_FENCE=SELECT \"public\".onlyone_fence('{name}'::text, ");
    assert!(seen.starts_with(&fence), "{seen}");
    let (_, seen) = seen.split_once(") ").unwrap();
    assert!(
        seen.starts_with(&format!("ONLYONE_LOCK={location} ONLYONE_NAME={name} ")),
        "{seen}"
    );
    assert!(!seen.contains("ONLYONE_LOCK_FILE"), "{seen}");
}

/// A record whose token is the largest u64: the next token would wrap to
/// 0 (and repeat every token since). No token is given, with a warning,
/// and the count stays at its maximum for the next holder too.
#[test]
fn exhausted_token_is_not_given_and_never_wraps() {
    let env = TestEnv::new();
    let out = env.run(&["run", "--name", "bot", "--", "true"]);
    assert_exit(&out, 0);
    let line = fs::read_to_string(env.lock_file("bot")).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&line).unwrap();
    record["token"] = serde_json::json!(u64::MAX);
    fs::write(env.lock_file("bot"), format!("{record}\n")).unwrap();

    for _ in 0..2 {
        let out = env
            .onlyone(&["run", "--name", "bot", "--", "sh", "-c", SHOW_ENV])
            .env("ONLYONE_TOKEN", "1")
            .output()
            .unwrap();
        assert_exit(&out, 0);
        let seen = String::from_utf8_lossy(&out.stdout);
        assert!(!seen.contains("ONLYONE_TOKEN"), "{seen}");
        assert!(
            stderr(&out).contains("is 18446744073709551615, the largest there is"),
            "{}",
            stderr(&out)
        );
        let line = fs::read_to_string(env.lock_file("bot")).unwrap();
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["token"], serde_json::json!(u64::MAX));
    }
}
