//! Bytes and text onlyone does not control (issue 9, item 16): a command's
//! arguments pass through byte for byte, whatever their encoding; text from
//! a record (a command line, a host name) is printed with its control
//! characters escaped, one line per line, and kept exact in JSON.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::util::{Running, TestEnv, assert_exit, stderr};

/// Fails when `text` has a control character other than the newlines that
/// end its lines, or has other than `lines` lines.
fn assert_safe_lines(text: &str, lines: usize) {
    let raw: Vec<char> = text
        .chars()
        .filter(|&c| c != '\n' && (c.is_control() || c == '\u{202e}'))
        .collect();
    assert!(raw.is_empty(), "raw control characters {raw:?} in {text:?}");
    assert_eq!(text.lines().count(), lines, "{text:?}");
}

#[test]
fn non_utf8_arguments_reach_the_command_exactly() {
    let env = TestEnv::new();
    let bytes: &[u8] = b"caf\xe9 \xff\xfe";
    let out = env
        .onlyone(&["run", "--name", "bytes", "--", "printf", "%s"])
        .arg(OsStr::from_bytes(bytes))
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(out.stdout, bytes);
}

#[test]
fn non_utf8_command_name_runs() {
    let env = TestEnv::new();
    fs::create_dir_all(env.path("bin")).unwrap();
    let mut path = env.path("bin").into_os_string();
    path.push(OsStr::from_bytes(b"/tool-\xff"));
    fs::write(&path, "#!/bin/sh\necho \"ran $1\"\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    let out = env
        .onlyone(&["run", "--name", "bytes", "--"])
        .arg(&path)
        .arg("x")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran x\n");
}

/// A holder whose arguments hold a newline and a clear-screen sequence.
fn hostile_holder(env: &TestEnv) -> Running {
    let mut holder = env.start(&[
        "run",
        "--name",
        "bot",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 1000",
        "a\nforged line",
        "\x1b[2J\u{202e}",
    ]);
    holder.expect_stdout_line("ready");
    holder
}

#[test]
fn control_characters_in_a_command_line_are_escaped() {
    let env = TestEnv::new();
    let holder = hostile_holder(&env);

    let conflict = env.run(&["run", "--name", "bot", "--", "true"]);
    assert_exit(&conflict, 75);
    let line = stderr(&conflict);
    assert_safe_lines(&line, 1);
    assert!(
        line.contains(r"sh -c 'echo ready; exec sleep 1000' $'a\nforged line' $'\x1b[2J\u202e'"),
        "{line}"
    );

    let waiting = env.run(&["run", "--name", "bot", "--timeout", "100ms", "--", "true"]);
    assert_exit(&waiting, 75);
    assert_safe_lines(&stderr(&waiting), 2);

    let status = env.run(&["status", "bot"]);
    assert_exit(&status, 0);
    assert_safe_lines(&String::from_utf8_lossy(&status.stdout), 1);
    let all = env.run(&["status"]);
    assert_safe_lines(&String::from_utf8_lossy(&all.stdout), 1);

    let json = env.run(&["status", "bot", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        value["holder"]["record"]["command"],
        serde_json::json!([
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
            "a\nforged line",
            "\x1b[2J\u{202e}"
        ])
    );
    holder.kill();
}

/// A record written by another member of a shared lock directory, with
/// escape sequences in its host name (here planted beside a flock(1)
/// holder): what others print of it stays one harmless line.
#[test]
fn control_characters_in_a_recorded_host_are_escaped() {
    linux_only!(
        "a holder that is not onlyone (flock(1)) is named only in /proc/locks, and its record with it"
    );
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    fs::write(env.lock_file("bot"), b"").unwrap();
    let mut flock = Running::spawn(
        Command::new("flock")
            .arg(env.lock_file("bot"))
            .args(["sh", "-c", "echo ready; exec sleep 1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    flock.expect_stdout_line("ready");
    let record = serde_json::json!({
        "format": "onlyone/1", "token": 1, "pid": flock.pid(), "start_time": null,
        "boot_id": null, "host": "h\x1b]0;pwned\x07\nonlyone: fake line", "user": "u",
        "uid": 0, "command": ["x"], "acquired_at": "2025-10-18T14:43:00.123Z",
    });
    fs::write(env.lock_file("bot"), format!("{record}\n")).unwrap();

    let conflict = env.run(&["run", "--name", "bot", "--", "true"]);
    assert_exit(&conflict, 75);
    let line = stderr(&conflict);
    assert_safe_lines(&line, 1);
    assert!(
        line.contains(r"on h\x1b]0;pwned\x07\nonlyone: fake line"),
        "{line}"
    );
    let status = env.run(&["status", "bot"]);
    assert_safe_lines(&String::from_utf8_lossy(&status.stdout), 1);
    flock.kill_tree();
}
