//! An attack on the portable Unix path (issue 11: macOS and the BSDs, built
//! on Linux with `RUSTFLAGS='--cfg onlyone_portable'`), where the holder's
//! socket is a file `.onlyone-HASH` in the lock directory. Each test is one
//! finding and fails on the portable build as the attack found it; the
//! scripts that found them are in scripts/attack/portable/.
//!
//! Tests of a promise both paths make run on both (Linux's abstract socket
//! keeps them green there); tests that need the socket file skip
//! themselves on Linux's own path (`portable_only!`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util::{Running, TestEnv, code, stderr};

/// How many times a deletion is tried: a starter races the holder's
/// watcher (every 25 ms), and won most of the tries in the attack.
const TRIES: usize = 10;

/// A lock directory whose holder socket path (the directory, `/.onlyone-`
/// and 32 hex digits) is longer than a socket address may be: 108 bytes on
/// Linux, 104 on macOS, where a `--dir` of 62 characters is enough
/// (`/Users/alice/Library/Application Support/com.example.app/locks`).
fn too_long_for_a_socket(env: &TestEnv) -> PathBuf {
    let dir = env.path(&"d".repeat(70));
    fs::create_dir(&dir).unwrap();
    dir
}

/// `onlyone run --dir DIR --name bot -- flock -n -E 99 WITNESS ...`: the
/// witness flock, outside onlyone, catches two commands at once (99).
fn run_with_witness(env: &TestEnv, dir: &Path, command: &[&str]) -> Command {
    let mut run = env.onlyone(&["run", "--dir", dir.to_str().unwrap(), "--name", "bot", "--"]);
    run.args(["flock", "-n", "-E", "99"])
        .arg(env.path("witness"))
        .args(command);
    run
}

/// Holds `bot` in `dir` with a command that holds the witness.
fn hold_with_witness(env: &TestEnv, dir: &Path) -> Running {
    let mut holder = Running::spawn(
        run_with_witness(env, dir, &["sh", "-c", "echo ready; exec sleep 1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    holder.expect_stdout_line("ready");
    holder
}

/// Deletes (with `delete`) what the holder of `bot` in `dir` holds and
/// starts a second instance at once, `TRIES` times; each must be refused
/// (75), not run beside the holder (0, or 99 when the witness caught it).
fn refused_after_each_deletion(env: &TestEnv, dir: &Path, delete: impl Fn()) {
    let mut holder = hold_with_witness(env, dir);
    for attempt in 1..=TRIES {
        delete();
        let second = run_with_witness(env, dir, &["true"]).output().unwrap();
        assert_eq!(
            code(second.status),
            75,
            "try {attempt}: a second instance ran beside the holder (99: the witness caught it): {}",
            stderr(&second)
        );
        holder.expect_stderr_containing("restored it");
    }
    holder.kill();
}

/// The holder socket files in `dir` (`.onlyone-HASH`), sorted.
fn socket_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with(".onlyone-") && !name.starts_with(".onlyone-new-")
        })
        .collect();
    files.sort();
    files
}

/// The socket file of lock `name` in the test's lock directory: read off
/// a holder, which then exits; the released socket file is removed.
fn socket_file_of(env: &TestEnv, name: &str) -> PathBuf {
    let before = if env.lock_dir().exists() {
        socket_files(&env.lock_dir())
    } else {
        Vec::new()
    };
    let holder = env.hold_sleeping(name);
    let mut new: Vec<PathBuf> = socket_files(&env.lock_dir())
        .into_iter()
        .filter(|path| !before.contains(path))
        .collect();
    holder.kill();
    assert_eq!(new.len(), 1, "{new:?}");
    let file = new.pop().unwrap();
    fs::remove_file(&file).unwrap();
    file
}

/// Finding 1: README ("Platforms") says a lock file deleted while held
/// leaves "no window" off Linux, "the socket file beside it keeps starters
/// out". A holder whose `--dir` is too long for a socket path had no
/// socket file (only a warning said so): after `rm LOCKFILE`, a starter
/// made a new file, locked it and ran beside the holder (28 of 30 in the
/// attack, 27 caught by the witness). Now such a holder refuses to run
/// (77, fail closed), saying why; Linux's abstract socket does not depend
/// on the path, and runs.
#[test]
fn a_dir_too_long_for_a_socket_is_refused_rather_than_unguarded() {
    let env = TestEnv::new();
    let dir = too_long_for_a_socket(&env);
    let run = run_with_witness(&env, &dir, &["echo", "RAN"])
        .output()
        .unwrap();
    if cfg!(all(target_os = "linux", not(onlyone_portable))) {
        assert_eq!(code(run.status), 0, "{}", stderr(&run));
        return;
    }
    assert_eq!(code(run.status), 77, "{}", stderr(&run));
    assert!(run.stdout.is_empty(), "the command ran");
    assert!(
        stderr(&run).contains(
            "too long a path for a Unix socket; use a lock directory with a shorter path"
        ),
        "{}",
        stderr(&run)
    );
}

/// Finding 1, second way in: something that is not a socket at
/// `.onlyone-HASH` (an empty file: a `touch`, a restore from a backup
/// that does not keep sockets) leaves every later holder without a
/// socket, and a deleted lock file lets a starter run beside it (22 of
/// 30 caught by the witness).
#[test]
fn deleted_lock_file_keeps_starters_out_when_a_plain_file_is_at_the_socket_path() {
    portable_only!("the holder socket is a file in the lock directory off Linux only");
    let env = TestEnv::new();
    let socket = socket_file_of(&env, "bot");
    fs::write(&socket, "").unwrap();
    let dir = env.lock_dir();
    refused_after_each_deletion(&env, &dir, || {
        fs::remove_file(dir.join("bot.lock")).unwrap()
    });
}

/// Finding 2: a cleanup that deletes a lock directory's files but keeps
/// the directory (`find DIR -mindepth 1 -delete`, `find DIR -type s,f
/// -mtime +7 -delete`: a held lock's files are as old as its holder)
/// takes the socket file with the lock file, as deleting the directory
/// does, but README and DESIGN.md promise "no window" for a deleted lock
/// file and name only the directory's deletion as the gap: a starter ran
/// beside the holder 28 times in 30 (22 caught by the witness). Linux: 0.
/// Off Linux nothing that a starter can find survives the deletion (the
/// socket is a file too): this is the gap of a deleted directory, now
/// documented as such (README "Platforms", DESIGN.md, RELIABILITY.md;
/// `scripts/attack/portable/file_deletion_without_socket.py B cleaned`
/// measures it), and the promise is Linux's only.
#[test]
fn deleting_the_files_of_the_lock_dir_keeps_starters_out() {
    linux_only!(
        "deleting the socket file with the lock file is the documented gap of a deleted directory"
    );
    let env = TestEnv::new();
    let dir = env.lock_dir();
    refused_after_each_deletion(&env, &dir, || {
        for entry in fs::read_dir(&dir).unwrap() {
            let _ = fs::remove_file(entry.unwrap().path());
        }
    });
}

/// Finding 3: with no holder socket (a `--dir` too long for one), `status`
/// said the lock was free (exit 3) while onlyone held it, `wait` returned
/// 0 at once ("free"), and `stop` said "free already" (3): a script that
/// waits for the lock before maintenance ran beside the holder. onlyone
/// no longer holds a lock there (above), but any other holder of the
/// flock (here flock(1)) has no socket either: the flock says it is held,
/// and a held lock must not be reported free.
#[test]
fn status_and_wait_see_a_holder_without_a_socket() {
    let env = TestEnv::new();
    let dir = too_long_for_a_socket(&env);
    let dir_arg = dir.to_str().unwrap();
    let mut holder = Running::spawn(
        Command::new("flock")
            .arg(dir.join("bot.lock"))
            .args(["sh", "-c", "echo ready; exec sleep 1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    holder.expect_stdout_line("ready");
    let status = env.run(&["status", "--dir", dir_arg, "bot"]);
    let wait = env.run(&["wait", "--dir", dir_arg, "--timeout", "300ms", "bot"]);
    let stop = env.run(&["stop", "--dir", dir_arg, "bot"]);
    holder.kill_tree();
    assert_eq!(
        code(status.status),
        0,
        "status: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    assert_eq!(code(wait.status), 75, "wait: {}", stderr(&wait));
    assert_ne!(code(stop.status), 3, "stop: {}", stderr(&stop));
}

/// Finding 3, second way in: while a holder's socket file is missing
/// (deleted, and not yet bound again by the holder's watcher, every 25
/// ms; a stopped or busy holder takes longer), `status` says free (3) and
/// `wait` returns 0 though the holder still holds the flock. Deleting the
/// socket file and at once running `status` found it free 33 times in 40,
/// `wait` 36 times in 40. Here the holder is stopped (SIGSTOP) so that the
/// moment lasts.
#[test]
fn status_and_wait_see_a_holder_whose_socket_file_was_deleted() {
    portable_only!("the holder socket is a file in the lock directory off Linux only");
    let env = TestEnv::new();
    let holder = env.hold_sleeping("bot");
    let sockets = socket_files(&env.lock_dir());
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    holder.signal(libc::SIGSTOP);
    fs::remove_file(&sockets[0]).unwrap();
    let status = env.run(&["status", "bot"]);
    let wait = env.run(&["wait", "--timeout", "300ms", "bot"]);
    holder.signal(libc::SIGCONT);
    holder.kill();
    assert_eq!(
        code(status.status),
        0,
        "status: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    assert_eq!(code(wait.status), 75, "wait: {}", stderr(&wait));
}

/// Finding 3, third way in: a lock directory that the user may not write
/// to, with lock files made for everyone (`/var/lock/app`, root's, 0755,
/// with `job.lock` 0666: README lets root own a directory and its lock
/// files). A user's holder cannot make its socket file there; `status`
/// said free (3) and `wait` returned 0 while it held the lock. Off Linux
/// such a holder now refuses to run (77), saying why: it could not keep
/// starters out once its lock file is deleted.
#[test]
fn status_and_wait_see_a_holder_that_may_not_make_its_socket_file() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped (needs root, for setpriv)");
        return;
    }
    let env = TestEnv::new();
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = env.lock_dir();
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("job.lock"), "").unwrap();
    fs::set_permissions(dir.join("job.lock"), fs::Permissions::from_mode(0o666)).unwrap();
    let as_user = |args: &[&str]| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=4201", "--regid=4201", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_onlyone"))
            .args(args)
            .env("ONLYONE_DIR", &dir)
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null());
        command
    };
    if !cfg!(all(target_os = "linux", not(onlyone_portable))) {
        let run = as_user(&["run", "--name", "job", "--", "echo", "RAN"])
            .output()
            .unwrap();
        assert_eq!(code(run.status), 77, "{}", stderr(&run));
        assert!(run.stdout.is_empty(), "the command ran");
        assert!(stderr(&run).contains("cannot make"), "{}", stderr(&run));
        return;
    }
    let mut holder = Running::spawn(
        as_user(&[
            "run",
            "--name",
            "job",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    holder.expect_stdout_line("ready");
    let status = as_user(&["status", "job"]).output().unwrap();
    let wait = as_user(&["wait", "--timeout", "300ms", "job"])
        .output()
        .unwrap();
    holder.kill();
    assert_eq!(
        code(status.status),
        0,
        "status: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    assert_eq!(code(wait.status), 75, "wait: {}", stderr(&wait));
}

/// `setpriv` running onlyone as `uid` in group 4242, with the lock
/// directory `dir`.
fn as_member(uid: u32, dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg("--regid=4242")
        .arg("--clear-groups")
        .arg(env!("CARGO_BIN_EXE_onlyone"))
        .args(args)
        .env("ONLYONE_DIR", dir)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null());
    command
}

/// Finding 4: a group directory with the sticky bit (`install -d -m 3770
/// -g ops /srv/locks`, so that members cannot delete each other's files;
/// README allows it). A member's holder that was SIGKILLed (the OOM
/// killer; a power cut leaves every socket file on disk too) leaves its
/// socket file, which no other member may remove: every other member's
/// start failed with "cannot bind the socket of lock 'job': Operation not
/// permitted" (69), while `status` said free, until the first member ran
/// it again. Linux's abstract socket dies with its holder.
#[test]
fn a_killed_members_socket_file_in_a_sticky_group_dir_does_not_block_the_others() {
    portable_only!("the holder socket is a file in the lock directory off Linux only");
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped (needs root, for setpriv)");
        return;
    }
    let env = TestEnv::new();
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = env.lock_dir();
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(4242)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o3770)).unwrap();

    let mut alice = Running::spawn(
        as_member(4201, &dir, &["run", "--name", "job", "--"])
            .args(["sh", "-c", "echo ready; exec sleep 1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    alice.expect_stdout_line("ready");
    // The supervisor, its command and its guardian, all at once.
    alice.kill_tree();
    assert_eq!(
        socket_files(&dir).len(),
        1,
        "the killed holder's socket file"
    );

    let bob: Output = as_member(4202, &dir, &["run", "--name", "job", "--", "echo", "RAN"])
        .output()
        .unwrap();
    assert_eq!(code(bob.status), 0, "{}", stderr(&bob));
    assert_eq!(String::from_utf8_lossy(&bob.stdout), "RAN\n");
}

/// Finding 4, second way in: a private directory made shared as README
/// says (`chgrp ops DIR; chmod 2770 DIR; chmod 660 DIR/*`: the glob skips
/// dotfiles) keeps the released holder's socket file `.onlyone-HASH` with
/// mode 0600: another member cannot connect to it to see that nobody
/// listens, and every start of theirs failed with "cannot bind the socket
/// of lock 'job': Permission denied" (69) until the first member ran it
/// again.
#[test]
fn a_released_socket_file_from_before_the_dir_was_shared_does_not_block_members() {
    portable_only!("the holder socket is a file in the lock directory off Linux only");
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped (needs root, for setpriv)");
        return;
    }
    let env = TestEnv::new();
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = env.lock_dir();
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(4201), Some(4242)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let alice = as_member(4201, &dir, &["run", "--name", "job", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(alice.status), 0, "{}", stderr(&alice));
    assert_eq!(
        socket_files(&dir).len(),
        1,
        "the released holder's socket file"
    );

    fs::set_permissions(&dir, fs::Permissions::from_mode(0o2770)).unwrap();
    fs::set_permissions(dir.join("job.lock"), fs::Permissions::from_mode(0o660)).unwrap();
    let bob = as_member(4202, &dir, &["run", "--name", "job", "--", "echo", "RAN"])
        .output()
        .unwrap();
    assert_eq!(code(bob.status), 0, "{}", stderr(&bob));
    assert_eq!(String::from_utf8_lossy(&bob.stdout), "RAN\n");
}

/// Finding 5: a symlink at a lock's socket path (`.onlyone-A` ->
/// `.onlyone-B`, or to any socket of an admitted user: root's daemons
/// always are) made connect(2) reach another listener: lock `a`, free,
/// was refused (75) for as long as `b` was held, `--wait` never ran, and
/// `status a` said held, "locked by pid N" — `b`'s holder. A holder links
/// its socket file (link(2) makes no symlink): a symlink there is nobody's
/// holder.
#[test]
fn a_symlink_at_the_socket_path_is_not_taken_for_a_holder() {
    portable_only!("the holder socket is a file in the lock directory off Linux only");
    let env = TestEnv::new();
    let socket_a = socket_file_of(&env, "a");
    let b = env.hold_sleeping("b");
    let sockets = socket_files(&env.lock_dir());
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    std::os::unix::fs::symlink(sockets[0].file_name().unwrap(), &socket_a).unwrap();

    let run = env.run(&["run", "--name", "a", "--", "echo", "RAN"]);
    let status = env.run(&["status", "a"]);
    b.kill();
    assert_eq!(code(run.status), 0, "lock a is free: {}", stderr(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "RAN\n");
    assert_eq!(
        code(status.status),
        3,
        "status a: {}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// Finding 6: the holder binds its socket at a predictable name in the
/// lock directory (`.onlyone-new-PID-N`), then chmods it BY PATH, which
/// follows a symlink. In a group directory (2770), a member who swaps
/// that file for a symlink between the bind and the chmod has another
/// user's file chmodded to the lock files' mode: root's holder turned a
/// setuid file (4755) into 0600 (a member's holder would make a file
/// 0660), and the symlink was linked into place as the socket file,
/// leaving every later holder without one (finding 1). An inotify-driven
/// swapper (scripts/attack/portable/staging_swap.sh) won 27 of 300 starts
/// by itself; here strace widens the moment to 300 ms so that it is won
/// every time.
#[test]
fn a_member_cannot_get_a_file_chmodded_through_the_staging_socket() {
    portable_only!("the holder socket is a file in the lock directory off Linux only");
    let tools = ["/usr/bin/strace", "/usr/bin/python3", "/usr/bin/setpriv"];
    if !rustix::process::geteuid().is_root() || tools.iter().any(|t| !Path::new(t).exists()) {
        eprintln!("skipped (needs root, strace, python3 and setpriv)");
        return;
    }
    let env = TestEnv::new();
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = env.lock_dir();
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(4242)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o2770)).unwrap();
    let victim = env.path("victim");
    fs::write(&victim, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o4755)).unwrap();

    let swapper = "import os, sys, time\n\
                   d, victim = sys.argv[1:]\n\
                   print('ready', flush=True)\n\
                   while True:\n\
                   \x20   for n in os.listdir(d):\n\
                   \x20       if n.startswith('.onlyone-new-'):\n\
                   \x20           p = os.path.join(d, n)\n\
                   \x20           try:\n\
                   \x20               os.unlink(p); os.symlink(victim, p)\n\
                   \x20           except OSError:\n\
                   \x20               pass\n\
                   \x20   time.sleep(0.001)\n";
    let mut member = Running::spawn(
        Command::new("setpriv")
            .args(["--reuid=4202", "--regid=4242", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", swapper])
            .arg(&dir)
            .arg(&victim)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    member.expect_stdout_line("ready");
    let run = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "-e", "trace=fchmodat"])
        .args(["-e", "inject=fchmodat:delay_enter=300000"])
        .arg(env!("CARGO_BIN_EXE_onlyone"))
        .args([
            "run",
            "--dir",
            dir.to_str().unwrap(),
            "--name",
            "job",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    member.kill();
    assert_eq!(code(run.status), 0, "{}", stderr(&run));
    let mode = fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o4755, "the victim's mode was changed to {mode:04o}");
}

/// After finding 5: something at a user's socket path that is another
/// user's (here a plain file a member put at the other member's path in
/// a shared 2770 directory) is not removed; the start is refused (77),
/// naming the file, rather than run without the socket that guards a
/// deleted lock file.
#[test]
fn another_users_file_at_the_socket_path_is_left_alone_and_refused() {
    portable_only!("the holder socket is a file in the lock directory off Linux only");
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped (needs root, for setpriv)");
        return;
    }
    let env = TestEnv::new();
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = env.lock_dir();
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(4242)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o2770)).unwrap();
    let bob = |command: &str| {
        as_member(4202, &dir, &["run", "--name", "job", "--", command])
            .output()
            .unwrap()
    };
    assert_eq!(code(bob("true").status), 0);
    let sockets = socket_files(&dir);
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    fs::remove_file(&sockets[0]).unwrap();
    fs::write(&sockets[0], "alice's").unwrap();
    std::os::unix::fs::chown(&sockets[0], Some(4201), Some(4242)).unwrap();

    let run = bob("pwd");
    assert_eq!(code(run.status), 77, "{}", stderr(&run));
    assert!(run.stdout.is_empty(), "the command ran");
    assert!(
        stderr(&run).contains("another user's file"),
        "{}",
        stderr(&run)
    );
    assert_eq!(fs::read_to_string(&sockets[0]).unwrap(), "alice's");
}
