//! An attack on the file backend from outside, after issue 9's fixes: each
//! test is one finding, named after its scenario, and failed before its
//! fix (docs/RELIABILITY.md, "An attack from outside, after issue 9").

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{Running, TestEnv, assert_exit, code, pid_alive, signal_pid, stderr};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Finding 1: `--dir .` in a project with `--name Cargo` (or `yarn`,
/// `poetry`, `flake`, `Gemfile`, `composer`, `uv`...): the lock file's
/// path is the project's `Cargo.lock`, and the first holder wrote its
/// record over it and made it 0600. A lock file with content that is not an
/// onlyone record is locked all the same, but never written to or
/// chmodded, and no fencing token is given.
#[test]
fn lock_file_with_foreign_content_is_locked_but_not_overwritten() {
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    let content = "[[package]]\nname = \"app\"\nversion = \"1.0.0\"\n";
    fs::write(env.lock_file("Cargo"), content).unwrap();
    fs::set_permissions(env.lock_file("Cargo"), fs::Permissions::from_mode(0o644)).unwrap();

    let mut holder = env.hold("Cargo", "echo ready; exec sleep 1000");
    assert_eq!(fs::read_to_string(env.lock_file("Cargo")).unwrap(), content);
    let second = env.run(&["run", "--name", "Cargo", "--", "echo", "RAN"]);
    assert_exit(&second, 75);
    holder.expect_stderr_containing("not an onlyone record");
    holder.kill();

    let out = env.run(&[
        "run",
        "--name",
        "Cargo",
        "--",
        "sh",
        "-c",
        "echo token=${ONLYONE_TOKEN-none}",
    ]);
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "token=none\n");
    assert_eq!(fs::read_to_string(env.lock_file("Cargo")).unwrap(), content);
    let mode = fs::metadata(env.lock_file("Cargo"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644);
}

/// Finding 5: a holder whose command line is longer than 64 KiB (an
/// `xargs`-built argument list) wrote a record longer than a record may be
/// read back; the next holder read no record and started the fencing
/// tokens again at 1. The record is bounded, so the token goes on.
#[test]
fn long_command_line_does_not_restart_the_fencing_token() {
    let env = TestEnv::new();
    let long_argument = "a".repeat(70_000);
    let first = env.run(&["run", "--name", "bot", "--", "true", &long_argument]);
    assert_exit(&first, 0);
    let second = env.run(&[
        "run",
        "--name",
        "bot",
        "--",
        "sh",
        "-c",
        "echo token=${ONLYONE_TOKEN-none}",
    ]);
    assert_exit(&second, 0);
    assert_eq!(String::from_utf8_lossy(&second.stdout), "token=2\n");
}

/// True when `unshare -m` works here (root, util-linux); else says why the
/// test is skipped.
fn private_mounts_work() -> bool {
    let works = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !works {
        eprintln!("skipped: `unshare -m` is not available here (needs root)");
    }
    works
}

/// Finding 2: one lock directory reached through a bind mount (a
/// container's volume with `--network host`, `mount --bind`) has two
/// canonical paths, so two holder sockets. Once the lock file is deleted,
/// a starter through the other path finds the file free and its socket
/// free, and runs beside the holder.
///
/// The holder's supervisor is stopped only so that it cannot restore its
/// file first: the same starter coming within the holder's 25 ms gets in
/// the same way. The canonical spelling is refused meanwhile.
#[test]
fn deleted_lock_file_then_bind_mounted_dir_is_refused() {
    linux_only!(
        "bind mounts, and a directory named by its filesystem and inode path (/proc/self/mountinfo), are Linux's"
    );
    if !private_mounts_work() {
        return;
    }
    let env = TestEnv::new();
    let holder = env.hold_sleeping("bot");
    signal_pid(holder.pid(), libc::SIGSTOP);
    fs::remove_file(env.lock_file("bot")).unwrap();

    let canonical = env.run(&["run", "--name", "bot", "--", "echo", "RAN"]);
    assert_exit(&canonical, 75);

    let mount_point = env.path("volume");
    fs::create_dir(&mount_point).unwrap();
    let script = format!(
        "mount --bind '{dir}' '{mnt}' && exec '{bin}' run --dir '{mnt}' --name bot -- echo RAN",
        dir = env.lock_dir().display(),
        mnt = mount_point.display(),
        bin = env!("CARGO_BIN_EXE_onlyone"),
    );
    let through_mount = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    holder.kill();
    assert_eq!(
        code(through_mount.status),
        75,
        "a second instance ran beside the holder through a bind mount: {}{}",
        String::from_utf8_lossy(&through_mount.stdout),
        stderr(&through_mount)
    );
}

/// Finding 3: a plain lock looks for held slots of its name by listing
/// the slot files. Once a member's slot file is deleted (a cleanup script;
/// the member restores it 25 ms later), a plain lock started meanwhile
/// finds none and runs beside the member: 41 times in 300 starts against a
/// deletion loop. Slots are found by their holder sockets too, which share
/// a prefix. Here the member's supervisor is stopped so that it cannot
/// restore the file first.
#[test]
fn plain_lock_is_refused_while_a_slot_of_its_name_is_held_without_its_file() {
    let env = TestEnv::new();
    let mut member = env.start(&[
        "run",
        "--name",
        "job",
        "--max",
        "2",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 1000",
    ]);
    member.expect_stdout_line("ready");
    signal_pid(member.pid(), libc::SIGSTOP);
    fs::remove_file(env.lock_dir().join("job@1.lock")).unwrap();

    let plain = env.run(&["run", "--name", "job", "--", "echo", "RAN"]);
    // `status` finds the slot by its socket too.
    let status = env.run(&["status", "job"]);
    member.kill();
    assert_eq!(
        code(plain.status),
        77,
        "a plain lock ran beside a member of its pool: {}{}",
        String::from_utf8_lossy(&plain.stdout),
        stderr(&plain)
    );
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("job@1: held"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// The abstract holder socket names that process `pid` has open, as
/// `/proc/net/unix` shows them (without the leading `@`).
fn abstract_sockets_of(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| {
            let link = fs::read_link(fd.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = fields.get(7)?.strip_prefix('@')?;
            inodes
                .contains(&fields[6].to_owned())
                .then(|| name.to_owned())
        })
        .collect()
}

/// The abstract socket name onlyone binds for lock `name` in the test's
/// lock directory: read off a holder, which then exits.
fn holder_socket_name(env: &TestEnv, name: &str) -> String {
    let holder = env.hold_sleeping(name);
    let names = abstract_sockets_of(holder.pid());
    holder.kill();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

/// Python that binds the abstract socket `name` as `how` says, prints
/// `ready`, and sleeps.
fn squat_script(name: &str, how: &str) -> String {
    format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         s.bind(b'\\0{name}')\n\
         {how}\n\
         print('ready', flush=True)\n\
         time.sleep(1000)\n"
    )
}

/// Runs `script` (Python) as the user `nobody`, and waits for its `ready`.
fn as_nobody(script: &str) -> Running {
    let mut running = Running::spawn(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    running.expect_stdout_line("ready");
    running
}

/// Finding 6: the holder socket's name can be computed by anyone, and an
/// abstract socket has no owner or mode. Any local user (here `nobody`)
/// who binds it blocked the lock of another user (here root's, in a 0700
/// directory nobody can even enter) for as long as they liked, and every
/// start said it was "held by an unknown holder ... locked by pid N",
/// though that process locked nothing. A socket bound by a user who may
/// not hold locks in the directory is no holder: the start runs (with a
/// warning naming the squatter's uid), and `status` says free. So it is
/// whether the squatter listens and accepts, listens with a full backlog
/// (no probe can connect), only binds the name, or connects from it.
#[test]
fn holder_socket_squatted_by_another_user_is_not_taken_for_a_holder() {
    linux_only!(
        "an abstract socket name can be bound by anyone; a socket file in the lock directory cannot"
    );
    if !is_root() || !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped (needs root and /usr/bin/python3)");
        return;
    }
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    let name = holder_socket_name(&env, "backup");
    for how in [
        "s.listen(8)",
        "s.listen(0); c = socket.socket(socket.AF_UNIX); c.connect(b'\\0' + s.getsockname()[1:])",
        "pass",
        "l = socket.socket(socket.AF_UNIX); l.bind(b'\\0' + s.getsockname()[1:] + b'-x'); l.listen(1); s.connect(l.getsockname())",
    ] {
        let squatter = as_nobody(&squat_script(&name, how));
        let out = env.run(&["run", "--name", "backup", "--", "echo", "RAN"]);
        let status = env.run(&["status", "backup"]);
        squatter.kill();
        let text = stderr(&out);
        assert_eq!(
            code(out.status),
            0,
            "another user's socket passed for the holder ({how}): {text}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "RAN\n");
        assert!(
            text.contains("is bound by uid 65534") && text.contains("running without that guard"),
            "{how}: {text}"
        );
        assert_eq!(code(status.status), 3, "{how}: {}", stderr(&status));
    }
}

/// Finding 6's fix must not hide a real holder of another user. In a
/// directory shared by a group (2770), a member holds the lock; the
/// directory is deleted (`rm -rf`) and made again by another member, with
/// mode 0700, who then starts the same name. The holder's socket is bound
/// by a user the new directory does not admit, but who holds a file lock
/// on the directory's filesystem (the one on its deleted file): it still
/// counts as the holder, and the start is refused. (The holder's
/// supervisor is stopped so that it cannot make the directory again
/// first.)
#[test]
fn group_member_holding_in_a_directory_made_again_by_another_member_still_counts() {
    linux_only!(
        "the lock directory deleted while held: no path-independent guard off Linux (the window is in docs/DESIGN.md)"
    );
    if !is_root() {
        eprintln!("skipped (needs root)");
        return;
    }
    let env = TestEnv::new();
    let (alice, bob, group) = (4201, 4202, 4242);
    // Anyone may make the lock directory again in the test's directory.
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(env.lock_dir()).unwrap();
    std::os::unix::fs::chown(env.lock_dir(), Some(0), Some(group)).unwrap();
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o2770)).unwrap();
    let as_user = |uid: u32, args: &[&str]| {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={group}"))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_onlyone"))
            .args(args)
            .env("ONLYONE_DIR", env.lock_dir())
            .stdin(Stdio::null());
        command
    };
    let mut holder = Running::spawn(
        as_user(
            alice,
            &[
                "run",
                "--name",
                "job",
                "--",
                "sh",
                "-c",
                "echo ready; exec sleep 1000",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    holder.expect_stdout_line("ready");
    signal_pid(holder.pid(), libc::SIGSTOP);
    fs::remove_dir_all(env.lock_dir()).unwrap();

    let second = as_user(bob, &["run", "--name", "job", "--", "echo", "RAN"])
        .output()
        .unwrap();
    holder.kill();
    assert_eq!(
        code(second.status),
        75,
        "a start ran beside a holder of the directory's group: {}{}",
        String::from_utf8_lossy(&second.stdout),
        stderr(&second)
    );
    let mode = fs::metadata(env.lock_dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700, "the directory was made again by bob");
}

/// Finding 7: a command that daemonizes (it leaves its process group with
/// `setsid` and closes the descriptors it inherited, as `daemon(3)`,
/// `redis-server --daemonize yes` or an init script do) outlives the lock:
/// onlyone exits 0, the daemon runs on, and a second instance starts beside
/// it. onlyone is the daemon's subreaper while it runs, so it could stop
/// it with the rest of the command; the README says an escaped process
/// "keeps the file lock held until it exits too", which holds only while
/// it keeps the descriptors.
#[test]
fn daemonized_descendant_does_not_run_beside_the_next_instance() {
    linux_only!(
        "no subreaper off Linux: a descendant that leaves the command's group and closes its descriptors is not followed"
    );
    let env = TestEnv::new();
    let pid_file = env.path("daemon.pid");
    let fifo = env.path("daemon.fifo");
    // The daemon says its pid through a FIFO once it has closed what it
    // inherited; the command waits for that line, writes it down, exits.
    let daemon = format!(
        "mkfifo {fifo} || exit 1; \
         setsid sh -c 'exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; echo $$ > {fifo}; exec sleep 1000' \
         </dev/null >/dev/null 2>&1 & \
         read pid < {fifo} && echo $pid > {pid}",
        fifo = fifo.display(),
        pid = pid_file.display()
    );
    let first = env.run(&["run", "--name", "bot", "--", "sh", "-c", &daemon]);
    assert_exit(&first, 0);
    let daemon_pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let second = env.run(&["run", "--name", "bot", "--", "echo", "RAN"]);
    let daemon_still_ran = pid_alive(daemon_pid);
    signal_pid(daemon_pid, libc::SIGKILL);
    assert!(
        code(second.status) == 75 || !daemon_still_ran,
        "a second instance ran beside the first one's daemon (exit {}): {}",
        code(second.status),
        stderr(&second)
    );
}

/// Finding 8: a lock directory that is a symlink is refused (77), but the
/// same directory spelled with a trailing slash (`--dir /srv/link/`,
/// `ONLYONE_DIR=/srv/link/`) was looked at through the symlink (lstat
/// follows a symlink before a trailing slash) and accepted.
#[test]
fn symlinked_lock_directory_is_refused_with_a_trailing_slash_too() {
    let env = TestEnv::new();
    fs::create_dir(env.path("real")).unwrap();
    fs::set_permissions(env.path("real"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(env.path("real"), env.path("link")).unwrap();
    let spelled = format!("{}/", env.path("link").display());
    let out = env.run(&[
        "run", "--dir", &spelled, "--name", "bot", "--", "echo", "RAN",
    ]);
    assert_exit(&out, 77);
    assert!(
        stderr(&out).contains("refusing a lock directory that is a symlink"),
        "{}",
        stderr(&out)
    );
    assert!(!env.path("real").join("bot.lock").exists());
}

/// `onlyone run --dir DIR ARGS...` in a mount namespace of its own where
/// DIR is a fresh tmpfs: a container with a `/dev/shm` of its own.
fn in_own_tmpfs(dir: &Path, args: &str) -> Command {
    let script = format!(
        "mount -t tmpfs -o mode=700 tmpfs '{dir}' && exec '{bin}' run --dir '{dir}' {args}",
        dir = dir.display(),
        bin = env!("CARGO_BIN_EXE_onlyone"),
    );
    let mut command = Command::new("unshare");
    command
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null());
    command
}

/// Finding 6, its other half: two containers that share the network
/// namespace (containers of one Kubernetes pod, `--network host`,
/// `hostNetwork` pods on one node) but each have their own `/dev/shm`
/// share no lock directory, as the README says, yet a lock of one blocks
/// the same name in the other (75, "held by an unknown holder ... locked by
/// pid N"): the holder socket is named after the directory's path, which
/// is the same in both. With `--conflict-exit-code 0` the second job then
/// silently never runs.
#[test]
fn same_path_in_another_mount_namespace_is_another_lock() {
    if !private_mounts_work() {
        return;
    }
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    let mut first = Running::spawn(
        in_own_tmpfs(
            &env.lock_dir(),
            "--name nightly -- sh -c 'echo ready; exec sleep 1000'",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    first.expect_stdout_line("ready");
    let second = in_own_tmpfs(&env.lock_dir(), "--name nightly -- echo RAN")
        .output()
        .unwrap();
    first.kill_tree();
    assert_exit(&second, 0);
    assert_eq!(String::from_utf8_lossy(&second.stdout), "RAN\n");
}

/// Issue 15 (the loss, now found by the supervisor's own ticks): a holder
/// whose socket is squatted by another user holds by its file alone. When
/// that file is replaced by one another process locks, the lock is lost:
/// the command is stopped, and onlyone exits with 74, saying so.
#[test]
fn lock_file_replaced_and_locked_by_another_while_held_without_socket_stops_the_command() {
    linux_only!(
        "an abstract socket name can be bound by anyone; a socket file in the lock directory cannot"
    );
    if !is_root() || !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped (needs root and /usr/bin/python3)");
        return;
    }
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    let name = holder_socket_name(&env, "bot");
    let squatter = as_nobody(&squat_script(&name, "s.listen(8)"));
    let mut holder = env.hold_sleeping("bot");
    holder.expect_stderr_containing("running without that guard");
    let other = env.lock_dir().join("other");
    fs::write(&other, b"").unwrap();
    let mut locker = Running::spawn(
        Command::new("flock")
            .arg(&other)
            .args(["-c", "echo locked; exec sleep 1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    locker.expect_stdout_line("locked");
    fs::rename(&other, env.lock_file("bot")).unwrap();
    let (status, _, err) = holder.finish();
    locker.kill_tree();
    squatter.kill();
    assert_eq!(code(status), 74, "{err}");
    assert!(
        err.contains("onlyone: error: lost lock 'bot'") && err.contains("the command was stopped"),
        "{err}"
    );
}

/// Attack on the one-thread supervisor (adv-run, finding 1): a lost lock
/// must stop the command even when onlyone's stderr cannot take another
/// line (a pipe to a stalled logger or a full `2>&1 | tee`). The
/// supervisor said "...; stopping the command" first and signalled after:
/// blocked in that write, it never sent SIGTERM, and the command ran on
/// beside the new holder. The signal now goes first, as for a stop
/// request.
#[test]
fn lost_lock_stops_the_command_even_when_stderr_is_blocked() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    linux_only!(
        "an abstract socket name can be bound by anyone; a socket file in the lock directory cannot"
    );
    if !is_root() || !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped (needs root and /usr/bin/python3)");
        return;
    }
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    let name = holder_socket_name(&env, "bot");
    let squatter = as_nobody(&squat_script(&name, "s.listen(8)"));
    // onlyone's stderr: a pipe the test reads only when it says so.
    let (read, write) = std::io::pipe().unwrap();
    let pid_file = env.path("pid");
    let mut holder = env
        .onlyone(&[
            "run",
            "--name",
            "bot",
            "--kill-grace",
            "200ms",
            "--",
            "sh",
            "-c",
            "echo $$ > \"$0\"; exec sleep 1000",
            pid_file.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(write.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert!(line.contains("running without that guard"), "{line}");
    let start = std::time::Instant::now();
    let command = loop {
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(
            start.elapsed() < crate::util::EVENT_TIMEOUT,
            "never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // Fill the pipe through a file description of our own (O_NONBLOCK on
    // onlyone's would make its writes fail instead of block).
    let mut filler = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", write.as_raw_fd()))
        .unwrap();
    while filler.write(&[b'x'; 4096]).is_ok() {}
    // The lock is lost: its file replaced by one another process locks.
    let other = env.lock_dir().join("other");
    fs::write(&other, b"").unwrap();
    let mut locker = Running::spawn(
        Command::new("flock")
            .arg(&other)
            .args(["-c", "echo locked; exec sleep 1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    locker.expect_stdout_line("locked");
    fs::rename(&other, env.lock_file("bot")).unwrap();
    // A tick (25 ms) and the grace (200 ms), with room to spare.
    let lost_at = std::time::Instant::now();
    while pid_alive(command) && lost_at.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let survived = pid_alive(command);
    // Let onlyone write again, and end what is left.
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    drop(write);
    signal_pid(command, libc::SIGKILL);
    let status = crate::util::wait_with_timeout(&mut holder);
    locker.kill_tree();
    squatter.kill();
    assert!(
        !survived,
        "the command ran on for {:?} after the lock was lost, while stderr was blocked",
        lost_at.elapsed()
    );
    assert_eq!(code(status), 74);
}
