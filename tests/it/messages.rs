//! Messages a new user met (issue 10, defect 8), each as it read before
//! and as it must read now.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::pty::Pty;
use crate::util::{TestEnv, assert_exit, code, stderr};

/// `mysql://...` was read as a broken `key=value` string ("missing '='").
#[test]
fn a_url_of_another_database_is_not_a_postgresql_url() {
    let env = TestEnv::new();
    let out = env.run(&[
        "run",
        "--postgres",
        "mysql://bot:secret@db1/app",
        "--name",
        "x",
        "--",
        "true",
    ]);
    assert_exit(&out, 64);
    assert_eq!(
        stderr(&out),
        "onlyone: error: not a PostgreSQL URL: it starts with mysql://, and a PostgreSQL URL starts with postgres:// or postgresql:// (or is a key=value string)\n"
    );
}

/// `--postgres ""` (or an empty `ONLYONE_POSTGRES_URL`) connected with
/// libpq's defaults alone, to a server nobody chose.
#[test]
fn an_empty_postgresql_url_is_refused() {
    let env = TestEnv::new();
    let flag = env.run(&["run", "--postgres", "", "--name", "x", "--", "true"]);
    let mut variable = env.onlyone(&["run", "--name", "x", "--", "true"]);
    let variable = variable.env("ONLYONE_POSTGRES_URL", "").output().unwrap();
    for out in [flag, variable] {
        assert_exit(&out, 64);
        assert!(
            stderr(&out).contains("the PostgreSQL URL is empty"),
            "{}",
            stderr(&out)
        );
    }
}

/// `--timeout -5s` gave clap's "to pass '-5' as a value, use '-- -5'";
/// `--timeout abc` began with humantime's "expected number at 0;".
#[test]
fn bad_durations_say_what_is_wrong_in_plain_words() {
    let env = TestEnv::new();
    let negative = env.run(&["run", "--name", "x", "--timeout", "-5s", "--", "true"]);
    assert_exit(&negative, 64);
    let text = stderr(&negative);
    assert!(
        text.starts_with(
            "error: invalid value '-5s' for '--timeout <DURATION>': a duration cannot be negative\n"
        ),
        "{text}"
    );
    assert!(!text.contains("tip"), "{text}");

    let words = env.run(&["run", "--name", "x", "--timeout", "abc", "--", "true"]);
    assert_exit(&words, 64);
    assert!(
        stderr(&words).starts_with(
            "error: invalid value 'abc' for '--timeout <DURATION>': a duration is a number with a unit, such as 500ms, 30s, 5m or 1h 30m\n"
        ),
        "{}",
        stderr(&words)
    );
}

/// A 300-character name was echoed whole, and nothing said it was too
/// long.
#[test]
fn a_long_name_is_called_too_long_and_not_echoed_whole() {
    let env = TestEnv::new();
    let name = "n".repeat(300);
    let out = env.run(&["run", "--name", &name, "--", "true"]);
    assert_exit(&out, 64);
    let text = stderr(&out);
    assert!(
        text.contains("too long (300 characters, at most 128)"),
        "{text}"
    );
    assert!(!text.contains(&"n".repeat(129)), "{text}");
}

/// Lock names are quoted the same way ('x') in every message.
#[test]
fn lock_names_are_quoted_alike() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    for (args, expected) in [
        (&["run", "--name", "bot", "--", "true"][..], 75),
        (
            &["run", "--name", "bot", "--timeout", "10ms", "--", "true"],
            75,
        ),
        (&["wait", "bot", "--timeout", "10ms"], 75),
        (&["run", "--name", "bot", "--max", "2", "--", "true"], 77),
        (&["run", "--name", "b t", "--", "true"], 64),
    ] {
        let out = env.run(args);
        assert_eq!(code(out.status), expected, "{args:?}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(
            text.contains("lock 'bot'") || text.contains("lock name 'b t'"),
            "{args:?}: {text}"
        );
        assert!(!text.contains("\"bot\""), "{text}");
    }
}

/// `--restart always` warned "the command exited with status 0" at every
/// clean exit: that is what it is for. A failure still warns.
#[test]
fn restart_always_warns_only_about_failures() {
    let env = TestEnv::new();
    let runs = env.path("runs");
    // Exits cleanly, then fails, then stops its own onlyone.
    let script = format!(
        "echo x >> {0}; case $(wc -l < {0}) in 1) exit 0;; 2) exit 3;; esac; kill -TERM $PPID; exec sleep 100",
        runs.display()
    );
    let out = env.run(&[
        "run",
        "--name",
        "job",
        "--restart",
        "always",
        "--restart-delay",
        "10ms",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_exit(&out, 143);
    assert_eq!(
        stderr(&out),
        "onlyone: warning: the command exited with status 3; restarting it in 20ms\n"
    );
}

/// On a terminal the waiting line is drawn again every second. The
/// holder's "(0s ago)" stayed as it was first drawn while the counter
/// beside it ran; now both come from one clock.
#[test]
fn the_waiting_line_keeps_one_time() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    let mut command = Command::new(env!("CARGO_BIN_EXE_onlyone"));
    command
        .args(["run", "--name", "bot", "--wait", "--", "true"])
        .env("ONLYONE_DIR", env.lock_dir())
        .env_remove("XDG_RUNTIME_DIR");
    let started = Instant::now();
    let mut terminal = Pty::spawn(&mut command);
    // Each drawing starts with "\r\x1b[K"; take one made after 2.5 s.
    terminal.expect("\x1b[K");
    let line = loop {
        terminal.expect("\x1b[K");
        if started.elapsed() > Duration::from_millis(2500) {
            break terminal.expect("\x1b[K");
        }
    };
    let age = line
        .rsplit_once("s ago)")
        .and_then(|(before, _)| before.rsplit_once('(')?.1.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no holder age in {line:?}"));
    assert!(age >= 2, "the holder's age did not move: {line:?}");
}

/// The server's message was repeated by its driver's error: 'schema "x"
/// does not exist: db error: ERROR: schema "x" does not exist'.
#[cfg(feature = "postgres")]
#[test]
fn a_postgresql_error_says_the_servers_message_once() {
    let env = TestEnv::new();
    let url = crate::postgres_lib::url();
    let out = env.run(&[
        "run",
        "--postgres",
        &url,
        "--table",
        "no_such_schema.locks",
        "--name",
        "x",
        "--",
        "true",
    ]);
    assert_exit(&out, 69);
    let text = stderr(&out);
    assert_eq!(
        text.matches("schema \"no_such_schema\" does not exist")
            .count(),
        1,
        "{text}"
    );
    assert!(!text.contains("db error"), "{text}");
}

/// The library says what is wrong; only the command line names its flags
/// (issue 10: `--postgres` and `--max` were in library errors, wrong for a
/// program that uses the library). Every string literal outside src/cli,
/// src/main.rs and the torture binary is checked.
#[test]
fn library_messages_name_no_command_line_flag() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if ["cli", "bin", "main.rs"].contains(&relative.as_str()) {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (number, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                // A flag inside a string literal: `"... --postgres ..."`.
                let in_string = code.split('"').skip(1).step_by(2);
                if in_string
                    .clone()
                    .any(|text| text.split_whitespace().any(names_a_flag))
                {
                    found.push(format!("src/{relative}:{}: {code}", number + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// `--postgres`, `(--max`, `` `--dir` ``; not `-----BEGIN`, nor a flag of
/// another program that a message tells the user to run (the `mariadb`
/// client's `--delimiter`, for the statements an admin must run).
fn names_a_flag(word: &str) -> bool {
    const OTHER_PROGRAMS: [&str; 1] = ["--delimiter="];
    let word = word.trim_start_matches(['(', '`', '\'']);
    !OTHER_PROGRAMS.iter().any(|flag| word.starts_with(flag))
        && word
            .strip_prefix("--")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_lowercase()))
}
