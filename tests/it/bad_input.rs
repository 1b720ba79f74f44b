//! The bad-input matrix: each row is something a user (or a hostile
//! neighbour) can put in onlyone's way, with the exit code and the message
//! the user sees. No row may panic. Rows that change ownership, mount
//! filesystems or make files immutable need root; without it they say so
//! and are skipped.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output};

use crate::util::{TestEnv, assert_exit, code, stderr};

const NOBODY: u32 = 65534;

/// One row: prepare the environment, run onlyone with `args` (`{dir}` is the
/// test's lock directory), expect `exit` and `message` in stderr.
struct Row {
    what: &'static str,
    setup: fn(&TestEnv),
    args: &'static [&'static str],
    exit: i32,
    message: &'static str,
    needs_root: bool,
}

fn nothing(_: &TestEnv) {}

fn mkdir(env: &TestEnv) {
    fs::create_dir(env.lock_dir()).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const ROWS: &[Row] = &[
    // Names.
    Row {
        what: "empty name",
        setup: nothing,
        args: &["run", "--name", "", "--", "true"],
        exit: 64,
        message: "invalid lock name '': a name is 1-128 characters of A-Z a-z 0-9 . _ -, not starting with '.'",
        needs_root: false,
    },
    Row {
        what: "129-character name",
        setup: nothing,
        args: &[
            "run",
            "--name",
            "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
            "--",
            "true",
        ],
        exit: 64,
        message: "too long (129 characters, at most 128); a name is 1-128 characters",
        needs_root: false,
    },
    Row {
        what: "name with a slash",
        setup: nothing,
        args: &["run", "--name", "a/b", "--", "true"],
        exit: 64,
        message: "invalid lock name 'a/b'",
        needs_root: false,
    },
    // glibc keeps 32 and 33 for its threads (issue 10: they were accepted);
    // stop sends only what onlyone forwards to its command or acts on
    // (the attack on issue 10's restructuring, finding 2).
    Row {
        what: "stop --signal 32",
        setup: nothing,
        args: &["stop", "x", "--signal", "32"],
        exit: 64,
        message: "stop cannot send signal \"32\": use TERM, INT, HUP, QUIT or KILL",
        needs_root: false,
    },
    Row {
        what: "stop --signal 33",
        setup: nothing,
        args: &["stop", "x", "--signal", "SIG33"],
        exit: 64,
        message: "stop cannot send signal \"SIG33\": use TERM, INT, HUP, QUIT or KILL",
        needs_root: false,
    },
    Row {
        what: "stop --signal 65",
        setup: nothing,
        args: &["stop", "x", "--signal", "65"],
        exit: 64,
        message: "stop cannot send signal \"65\": use TERM, INT, HUP, QUIT or KILL",
        needs_root: false,
    },
    Row {
        what: "name ..",
        setup: nothing,
        args: &["run", "--name", "..", "--", "true"],
        exit: 64,
        message: "invalid lock name '..'",
        needs_root: false,
    },
    Row {
        what: "name with a leading dot",
        setup: nothing,
        args: &["status", ".bot"],
        exit: 64,
        message: "invalid lock name '.bot'",
        needs_root: false,
    },
    Row {
        what: "name with a space",
        setup: nothing,
        args: &["run", "--name", "my bot", "--", "true"],
        exit: 64,
        message: "invalid lock name 'my bot'",
        needs_root: false,
    },
    Row {
        what: "non-ASCII name",
        setup: nothing,
        args: &["run", "--name", "bøt", "--", "true"],
        exit: 64,
        message: "invalid lock name 'bøt'",
        needs_root: false,
    },
    // Directories.
    Row {
        what: "missing parent directory",
        setup: nothing,
        args: &[
            "run",
            "--dir",
            "{dir}/missing/locks",
            "--name",
            "x",
            "--",
            "true",
        ],
        exit: 69,
        message: "cannot create the lock directory: ",
        needs_root: false,
    },
    Row {
        what: "a file instead of a directory",
        setup: |env| fs::write(env.lock_dir(), b"").unwrap(),
        args: &["run", "--name", "x", "--", "true"],
        exit: 69,
        message: "the lock directory is not a directory: ",
        needs_root: false,
    },
    Row {
        what: "directory is a symlink",
        setup: |env| {
            fs::create_dir(env.path("real")).unwrap();
            symlink(env.path("real"), env.lock_dir()).unwrap();
        },
        args: &["run", "--name", "x", "--", "true"],
        exit: 77,
        message: "refusing a lock directory that is a symlink: ",
        needs_root: false,
    },
    Row {
        what: "directory owned by another user",
        setup: |env| {
            mkdir(env);
            std::os::unix::fs::chown(env.lock_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
        },
        args: &["run", "--name", "x", "--", "true"],
        exit: 77,
        message: "refusing a lock directory owned by another user (uid 65534)",
        needs_root: true,
    },
    Row {
        what: "directory mode 0777",
        setup: |env| {
            mkdir(env);
            chmod(&env.lock_dir(), 0o777);
        },
        args: &["run", "--name", "x", "--", "true"],
        exit: 77,
        message: "refusing a lock directory that anyone may write to without the sticky bit (mode 0777)",
        needs_root: false,
    },
    Row {
        what: "directory mode 1777 (sticky, like /tmp) is accepted",
        setup: |env| {
            mkdir(env);
            chmod(&env.lock_dir(), 0o1777);
        },
        args: &["run", "--name", "x", "--", "true"],
        exit: 0,
        message: "",
        needs_root: false,
    },
    // Lock files.
    Row {
        what: "lock file is a symlink",
        setup: |env| {
            mkdir(env);
            fs::write(env.path("target"), b"precious").unwrap();
            symlink(env.path("target"), env.lock_file("x")).unwrap();
        },
        args: &["run", "--name", "x", "--", "true"],
        exit: 77,
        message: "refusing to follow a symlink where the lock file should be: ",
        needs_root: false,
    },
    Row {
        what: "lock file is a FIFO",
        setup: |env| {
            mkdir(env);
            let made = Command::new("mkfifo")
                .arg(env.lock_file("x"))
                .status()
                .unwrap();
            assert!(made.success());
        },
        args: &["run", "--name", "x", "--", "true"],
        exit: 77,
        message: "refusing to lock something that is not a regular file: ",
        needs_root: false,
    },
    Row {
        what: "lock file is a directory",
        setup: |env| fs::create_dir_all(env.lock_file("x")).unwrap(),
        args: &["run", "--name", "x", "--", "true"],
        exit: 77,
        message: "refusing to lock something that is not a regular file: ",
        needs_root: false,
    },
    Row {
        what: "lock file with garbage content",
        setup: |env| {
            mkdir(env);
            fs::write(env.lock_file("x"), b"\x00\xffnot json\n{\"format\":").unwrap();
        },
        args: &[
            "run",
            "--name",
            "x",
            "--",
            "sh",
            "-c",
            "test -z \"${ONLYONE_TOKEN+set}\"",
        ],
        exit: 0,
        message: "that are not an onlyone record; it is locked all the same, but not written over",
        needs_root: false,
    },
    Row {
        what: "10 MB lock file",
        setup: |env| {
            mkdir(env);
            fs::write(env.lock_file("x"), vec![b'7'; 10 << 20]).unwrap();
        },
        args: &[
            "run",
            "--name",
            "x",
            "--",
            "sh",
            "-c",
            "test -z \"${ONLYONE_TOKEN+set}\"",
        ],
        exit: 0,
        message: "that are not an onlyone record; it is locked all the same, but not written over",
        needs_root: false,
    },
    Row {
        what: "lock file owned by another user",
        setup: |env| {
            mkdir(env);
            fs::write(env.lock_file("x"), b"").unwrap();
            std::os::unix::fs::chown(env.lock_file("x"), Some(NOBODY), Some(NOBODY)).unwrap();
        },
        args: &["run", "--name", "x", "--", "true"],
        exit: 77,
        message: "refusing a lock file owned by another user (uid 65534): ",
        needs_root: true,
    },
    // Commands.
    Row {
        what: "command not found",
        setup: nothing,
        args: &["run", "--name", "x", "--", "no-such-command-onlyone"],
        exit: 127,
        message: "command not found: no-such-command-onlyone",
        needs_root: false,
    },
    Row {
        what: "command not executable",
        setup: |env| {
            fs::write(env.path("script"), b"#!/bin/sh\n").unwrap();
            chmod(&env.path("script"), 0o644);
        },
        args: &["run", "--name", "x", "--", "{root}/script"],
        exit: 126,
        message: "command cannot be executed: ",
        needs_root: false,
    },
    Row {
        what: "empty command",
        setup: nothing,
        args: &["run", "--name", "x", "--", ""],
        exit: 127,
        message: "command not found: ",
        needs_root: false,
    },
    Row {
        what: "no command",
        setup: nothing,
        args: &["run", "--name", "x", "--"],
        exit: 64,
        message: "the following required arguments were not provided",
        needs_root: false,
    },
    // Durations and numbers.
    Row {
        what: "--timeout abc",
        setup: nothing,
        args: &["run", "--name", "x", "--timeout", "abc", "--", "true"],
        exit: 64,
        message: "invalid value 'abc' for '--timeout <DURATION>'",
        needs_root: false,
    },
    Row {
        what: "negative --timeout",
        setup: nothing,
        args: &["run", "--name", "x", "--timeout=-1s", "--", "true"],
        exit: 64,
        message: "invalid value '-1s' for '--timeout <DURATION>'",
        needs_root: false,
    },
    Row {
        what: "--conflict-exit-code 300",
        setup: nothing,
        args: &[
            "run",
            "--name",
            "x",
            "--conflict-exit-code",
            "300",
            "--",
            "true",
        ],
        exit: 64,
        message: "invalid value '300' for '--conflict-exit-code <N>': 300 is not in 0..=255",
        needs_root: false,
    },
    Row {
        what: "unknown flag",
        setup: nothing,
        args: &["run", "--nmae", "x", "--", "true"],
        exit: 64,
        message: "unexpected argument '--nmae' found",
        needs_root: false,
    },
];

fn run_row(env: &TestEnv, row: &Row) -> Output {
    let dir = env.lock_dir().display().to_string();
    let root = env.path("").display().to_string();
    let args: Vec<String> = row
        .args
        .iter()
        .map(|arg| arg.replace("{dir}", &dir).replace("{root}/", &root))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.run(&args)
}

#[test]
fn bad_input_matrix() {
    let mut failures = Vec::new();
    for row in ROWS {
        if row.needs_root && !is_root() {
            eprintln!("skipped (needs root): {}", row.what);
            continue;
        }
        let env = TestEnv::new();
        (row.setup)(&env);
        let out = run_row(&env, row);
        let text = stderr(&out);
        if code(out.status) != row.exit || !text.contains(row.message) || text.contains("panicked")
        {
            failures.push(format!(
                "{}: expected exit {} with {:?}, got {} with {:?}",
                row.what,
                row.exit,
                row.message,
                code(out.status),
                text
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A NUL cannot pass through argv; the library refuses it like any other
/// bad character.
#[test]
fn name_with_nul_is_refused_by_the_library() {
    let err = onlyone::LockName::new("a\0b").unwrap_err();
    assert!(err.is_usage());
    assert_eq!(err.exit_code(), 64);
}

/// A directory this user may not write to: the error says so (run as an
/// unprivileged user, since root may write anywhere).
#[test]
fn directory_without_write_permission_is_unavailable() {
    if !is_root() {
        eprintln!("skipped (needs root to switch to an unprivileged user)");
        return;
    }
    let env = TestEnv::new();
    mkdir(&env);
    std::os::unix::fs::chown(env.lock_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&env.lock_dir(), 0o500);
    chmod(&env.path(""), 0o755);
    let out = as_nobody(&env, &["run", "--name", "x", "--", "true"]);
    assert_exit(&out, 69);
    assert!(
        stderr(&out).contains("cannot open the lock file: ")
            && stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

/// On a read-only filesystem an existing lock file still locks (flock
/// needs no write access), the record just cannot be written; a missing
/// one cannot be created.
#[test]
fn read_only_filesystem() {
    if !is_root() {
        eprintln!("skipped (needs root to mount)");
        return;
    }
    let env = TestEnv::new();
    mkdir(&env);
    fs::write(env.lock_file("existing"), b"").unwrap();
    let script = format!(
        "mount --bind -o ro {dir} {dir} && mount -o remount,bind,ro {dir} && \
         {bin} run --dir {dir} --name existing -- sh -c 'echo token=${{ONLYONE_TOKEN-none}}' && \
         {bin} run --dir {dir} --name missing -- true",
        dir = env.lock_dir().display(),
        bin = env!("CARGO_BIN_EXE_onlyone"),
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "token=none\n",
        "{text}"
    );
    assert!(text.contains("cannot write the holder record"), "{text}");
    assert_eq!(code(out.status), 69, "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
}

/// On a full filesystem the lock is taken and the command runs; the record
/// cannot be written, so no fencing token is given.
#[test]
fn full_filesystem() {
    if !is_root() {
        eprintln!("skipped (needs root to mount)");
        return;
    }
    let env = TestEnv::new();
    mkdir(&env);
    let script = format!(
        "mount -t tmpfs -o size=16k tmpfs {dir} && \
         (head -c 1M /dev/zero > {dir}/filler 2>/dev/null; true) && \
         {bin} run --dir {dir} --name x -- sh -c 'echo token=${{ONLYONE_TOKEN-none}}'",
        dir = env.lock_dir().display(),
        bin = env!("CARGO_BIN_EXE_onlyone"),
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(code(out.status), 0, "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "token=none\n",
        "{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
}

fn as_nobody(env: &TestEnv, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_onlyone"))
        .args(args)
        .env("ONLYONE_DIR", env.lock_dir())
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap()
}

/// A directory shared by a group (setgid, group-writable): members who are
/// different users exclude each other instead of being refused, and lock
/// files are created group-writable so every member can lock them.
#[test]
fn group_shared_directory_works_for_every_member() {
    if !is_root() {
        eprintln!("skipped (needs root to switch users)");
        return;
    }
    const GROUP: u32 = 4242;
    let env = TestEnv::new();
    mkdir(&env);
    std::os::unix::fs::chown(env.lock_dir(), Some(0), Some(GROUP)).unwrap();
    chmod(&env.lock_dir(), 0o2770);
    chmod(&env.path(""), 0o755);
    let member = |uid: u32| {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg(format!("--groups={GROUP}"))
            .arg(env!("CARGO_BIN_EXE_onlyone"))
            .env("ONLYONE_DIR", env.lock_dir())
            .env_remove("XDG_RUNTIME_DIR");
        command
    };
    let mut holder = crate::util::Running::spawn(
        member(2001)
            .args([
                "run",
                "--name",
                "shared",
                "--",
                "sh",
                "-c",
                "echo ready; exec sleep 1000",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    holder.expect_stdout_line("ready");
    let mode = fs::metadata(env.lock_file("shared"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);

    let other = member(2002)
        .args(["run", "--name", "shared", "--", "true"])
        .output()
        .unwrap();
    assert_exit(&other, 75);
    holder.kill();
    let after = member(2002)
        .args(["run", "--name", "shared", "--", "true"])
        .output()
        .unwrap();
    assert_exit(&after, 0);
}
