//! Issue 9, the file backend: ways a second instance got in beside a holder
//! (a lock directory spelled differently, a context with another default
//! directory, a plain lock beside a pool) and a way a lock file destroyed
//! someone's data (a hard link). Each test is named after its scenario.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::util::{Running, TestEnv, assert_exit, code, stderr};

/// How many times each deletion race is tried: before the fix a second
/// instance got in about one time in three.
const TRIES: usize = 20;

/// `onlyone run --dir DIR --name bot -- true`, run from `cwd`.
fn second_start(env: &TestEnv, dir: &Path, cwd: &Path) -> Output {
    env.onlyone(&["run", "--dir", dir.to_str().unwrap(), "--name", "bot"])
        .args(["--", "true"])
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Deletes (with `delete`) what the holder holds, starts a second instance,
/// which must be refused, and waits for the holder to restore its file;
/// `TRIES` times.
fn refused_after_each_deletion(
    holder: &mut Running,
    delete: impl Fn(),
    second: impl Fn() -> Output,
) {
    for attempt in 1..=TRIES {
        delete();
        let out = second();
        assert_eq!(
            code(out.status),
            75,
            "try {attempt}: a second instance ran beside the holder: {}",
            stderr(&out)
        );
        holder.expect_stderr_containing("restored it");
    }
}

/// Issue 9 item 3: after `rm -rf` of the lock directory while held, a
/// second instance whose `--dir` ends with a slash named the holder socket
/// after its raw spelling (the directory did not exist to be
/// canonicalized), missed the holder's socket, and ran.
#[test]
fn deleted_directory_then_trailing_slash_dir_is_refused() {
    linux_only!(
        "the lock directory deleted while held: no path-independent guard off Linux (the window is in docs/DESIGN.md)"
    );
    let env = TestEnv::new();
    let mut holder = env.hold_sleeping("bot");
    let spelled = format!("{}/", env.lock_dir().display());
    refused_after_each_deletion(
        &mut holder,
        || fs::remove_dir_all(env.lock_dir()).unwrap(),
        || second_start(&env, Path::new(&spelled), &env.path("")),
    );
}

/// Issue 9 item 3: the same with a relative `--dir`.
#[test]
fn deleted_directory_then_relative_dir_is_refused() {
    linux_only!(
        "the lock directory deleted while held: no path-independent guard off Linux (the window is in docs/DESIGN.md)"
    );
    let env = TestEnv::new();
    let mut holder = env.hold_sleeping("bot");
    refused_after_each_deletion(
        &mut holder,
        || fs::remove_dir_all(env.lock_dir()).unwrap(),
        || second_start(&env, Path::new("locks"), &env.path("")),
    );
}

/// Issue 9 item 3: the same with a `--dir` reached through a symlinked
/// parent directory.
#[test]
fn deleted_directory_then_symlinked_parent_dir_is_refused() {
    linux_only!(
        "the lock directory deleted while held: no path-independent guard off Linux (the window is in docs/DESIGN.md)"
    );
    let env = TestEnv::new();
    let mut holder = env.hold_sleeping("bot");
    symlink(env.path(""), env.path("link")).unwrap();
    let spelled = env.path("link").join("locks");
    refused_after_each_deletion(
        &mut holder,
        || fs::remove_dir_all(env.lock_dir()).unwrap(),
        || second_start(&env, &spelled, Path::new("/")),
    );
}

/// Issue 9 item 3: a holder that created a relative `--dir` on its first
/// run named its socket after the raw spelling; once its lock file was
/// deleted, a second instance (canonical spelling) did not see it and ran.
#[test]
fn holder_that_created_a_relative_dir_refuses_after_its_file_is_deleted() {
    let env = TestEnv::new();
    let mut holder = Running::spawn(
        env.onlyone(&["run", "--dir", "locks", "--name", "bot", "--"])
            .args(["sh", "-c", "echo ready; exec sleep 1000"])
            .current_dir(env.path(""))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    holder.expect_stdout_line("ready");
    refused_after_each_deletion(
        &mut holder,
        || fs::remove_file(env.lock_file("bot")).unwrap(),
        || second_start(&env, &env.lock_dir(), Path::new("/")),
    );
}

/// A lock in the real per-user default directory (`/dev/shm/onlyone-<uid>`),
/// which every test run on this machine shares: a name of its own, and its
/// file removed at the end.
struct DefaultDirLock {
    name: String,
}

impl DefaultDirLock {
    fn new(scenario: &str) -> DefaultDirLock {
        DefaultDirLock {
            name: format!("test-{scenario}-{}", std::process::id()),
        }
    }

    /// `WRAPPER... onlyone run --name NAME -- COMMAND...` (the wrapper sets
    /// up a context, such as `unshare -n`), with no `--dir` and no
    /// `ONLYONE_DIR`: the default directory.
    fn run(&self, wrapper: &[&str], command: &[&str]) -> Command {
        let onlyone_bin = env!("CARGO_BIN_EXE_onlyone");
        let mut onlyone = match wrapper.split_first() {
            Some((program, args)) => {
                let mut wrapped = Command::new(program);
                wrapped.args(args).arg(onlyone_bin);
                wrapped
            }
            None => Command::new(onlyone_bin),
        };
        onlyone
            .args(["run", "--name", &self.name, "--"])
            .args(command)
            .env_remove("ONLYONE_DIR")
            .stdin(Stdio::null());
        onlyone
    }

    /// Holds the lock in a context set up by `context` (environment).
    fn hold(&self, context: impl FnOnce(&mut Command)) -> Running {
        let mut command = self.run(&[], &["sh", "-c", "echo ready; exec sleep 1000"]);
        context(&mut command);
        let mut holder = Running::spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()));
        holder.expect_stdout_line("ready");
        holder
    }
}

impl Drop for DefaultDirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(onlyone::default_dir().join(format!("{}.lock", self.name)));
    }
}

/// True when `unshare FLAGS true` works here; else says why the test is
/// skipped.
fn unshare_works(flags: &[&str]) -> bool {
    let works = Command::new("unshare")
        .args(flags)
        .arg("true")
        .status()
        .is_ok_and(|status| status.success());
    if !works {
        eprintln!(
            "skipped: `unshare {}` is not available here (needs root and util-linux)",
            flags.join(" ")
        );
    }
    works
}

/// Issue 9 item 4: the default directory is one per user, independent of
/// the environment: `/dev/shm/onlyone-<uid>` on Linux.
#[test]
fn default_directory_is_in_dev_shm_whatever_the_environment() {
    linux_only!("/dev/shm/onlyone-UID is the default directory on Linux only");
    let expected = format!("/dev/shm/onlyone-{}", rustix::process::getuid().as_raw());
    assert_eq!(onlyone::default_dir(), Path::new(&expected));
}

/// Issue 9 item 4: a holder started from a login shell (`XDG_RUNTIME_DIR`,
/// `TMPDIR`, `HOME` set) and a starter from cron (an environment with
/// almost nothing in it) use one lock file.
#[test]
fn login_shell_holder_refuses_a_cron_like_starter() {
    let lock = DefaultDirLock::new("login-vs-cron");
    let runtime = TestEnv::new();
    let holder = lock.hold(|command| {
        command
            .env("XDG_RUNTIME_DIR", runtime.path(""))
            .env("TMPDIR", runtime.path(""))
            .env("HOME", runtime.path(""));
    });
    let out = lock
        .run(&[], &["echo", "RAN"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert_exit(&out, 75);
    assert!(out.stdout.is_empty());
    holder.kill();
}

/// Issue 9 item 4: a starter in a network namespace of its own (systemd
/// `PrivateNetwork=yes`) cannot see the holder's abstract socket. Before,
/// the login-shell holder used `$XDG_RUNTIME_DIR/onlyone` and the starter
/// `/tmp/onlyone-<uid>`, and it ran beside the holder.
#[test]
fn starter_in_another_network_namespace_is_refused() {
    if !unshare_works(&["-n"]) {
        return;
    }
    let lock = DefaultDirLock::new("netns");
    let runtime = TestEnv::new();
    let holder = lock.hold(|command| {
        command.env("XDG_RUNTIME_DIR", runtime.path(""));
    });
    let out = lock
        .run(&["unshare", "-n"], &["echo", "RAN"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert_exit(&out, 75);
    assert!(out.stdout.is_empty());
    holder.kill();
}

/// Issue 9 item 4: a starter with a private `/tmp` (systemd `PrivateTmp=`)
/// and, so that the socket cannot help, its own network namespace. Before,
/// both used `/tmp/onlyone-<uid>`, two different directories, and the
/// starter ran.
#[test]
fn starter_with_a_private_tmp_is_refused() {
    linux_only!(
        "systemd PrivateTmp= is Linux's, and the default directory off Linux is under /tmp"
    );
    if !unshare_works(&["-m", "-n"]) {
        return;
    }
    let lock = DefaultDirLock::new("private-tmp");
    let holder = lock.hold(|command| {
        command.env_remove("XDG_RUNTIME_DIR");
    });
    // The binary is opened before /tmp is covered: a checkout under /tmp
    // (a fresh clone in /tmp/x) would be hidden by the mount.
    let script = format!(
        "exec 3< '{}' && mount -t tmpfs tmpfs /tmp && exec /proc/self/fd/3 run --name {} -- echo RAN",
        env!("CARGO_BIN_EXE_onlyone"),
        lock.name
    );
    let out = Command::new("unshare")
        .args(["-m", "-n", "sh", "-c", &script])
        .env_remove("ONLYONE_DIR")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_exit(&out, 75);
    assert!(out.stdout.is_empty());
    holder.kill();
}

/// A file of someone's with content and a mode onlyone would change.
fn precious(env: &TestEnv) -> std::path::PathBuf {
    let precious = env.path("precious.txt");
    fs::write(&precious, b"the only copy of something\n").unwrap();
    fs::set_permissions(&precious, fs::Permissions::from_mode(0o644)).unwrap();
    precious
}

/// Asserts that `precious` is as [`precious`] made it, byte for byte.
fn assert_untouched(precious: &Path) {
    assert_eq!(fs::read(precious).unwrap(), b"the only copy of something\n");
    let mode = fs::metadata(precious).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o644);
}

/// Issue 9 item 8: a lock file hard-linked to someone's file had its
/// content replaced by the record. A lock file with more than one link is
/// refused before anything is written to it.
#[test]
fn hard_linked_lock_file_is_refused_and_left_untouched() {
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    let precious = precious(&env);
    fs::hard_link(&precious, env.lock_file("bot")).unwrap();

    let out = env.run(&["run", "--name", "bot", "--", "echo", "RAN"]);
    assert_exit(&out, 77);
    assert_eq!(
        stderr(&out),
        format!(
            "onlyone: error: refusing a lock file that is a hard link (2 links): {}\n",
            env.lock_file("bot").display()
        )
    );
    assert!(out.stdout.is_empty());
    assert_untouched(&precious);
}

/// Issue 9 item 8: a hard link planted at the lock file's path while the
/// lock is held (the original unlinked first, or replaced by a rename).
/// The holder restored its file by writing its record into whatever the
/// path named; now it only creates a new file, or takes the empty one a
/// starter left, so the planted file is untouched. The holder still
/// excludes, and restores its file once the planted one is gone.
#[test]
fn hard_link_planted_while_held_is_not_written_and_the_holder_still_excludes() {
    type Plant = fn(&TestEnv, &Path);
    let plant_after_unlink: Plant = |env, precious| {
        fs::remove_file(env.lock_file("bot")).unwrap();
        fs::hard_link(precious, env.lock_file("bot")).unwrap();
    };
    let plant_by_rename: Plant = |env, precious| {
        let link = env.lock_dir().join("planted");
        fs::hard_link(precious, &link).unwrap();
        fs::rename(&link, env.lock_file("bot")).unwrap();
    };
    for plant in [plant_after_unlink, plant_by_rename] {
        let env = TestEnv::new();
        let mut holder = env.hold_sleeping("bot");
        let precious = precious(&env);
        plant(&env, &precious);
        holder.expect_stderr_containing("(it is a hard link (2 links)); still holding the lock");
        assert_untouched(&precious);

        let second = env.run(&["run", "--name", "bot", "--", "echo", "RAN"]);
        assert_exit(&second, 77);
        assert!(second.stdout.is_empty());
        assert_untouched(&precious);

        // The planted link removed: the holder makes a new file of its own.
        fs::remove_file(env.lock_file("bot")).unwrap();
        holder.expect_stderr_containing("restored it");
        let third = env.run(&["run", "--name", "bot", "--", "echo", "RAN"]);
        assert_exit(&third, 75);
        assert_untouched(&precious);
        holder.kill();
    }
}

/// How many times files named `file_name` in `dir` are opened while
/// `during` runs (inotify `IN_OPEN`): how many attempts or looks a waiter
/// made, counted from outside.
fn opens_during(dir: &Path, file_name: &str, during: impl FnOnce()) -> usize {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
    // Closes are watched too, only so that successive opens are not
    // coalesced into one event.
    let watched = WatchFlags::OPEN | WatchFlags::CLOSE_WRITE | WatchFlags::CLOSE_NOWRITE;
    inotify::add_watch(&fd, dir, watched).unwrap();
    during();
    let mut opens = 0;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(len @ 1..) = rustix::io::read(&fd, &mut buf) {
        // struct inotify_event: wd, mask, cookie, len (4 bytes each), name.
        let mut at = 0;
        while at + 16 <= len {
            let field = |from: usize| u32::from_ne_bytes(buf[from..from + 4].try_into().unwrap());
            let (mask, name_len) = (field(at + 4), field(at + 12) as usize);
            let name = &buf[at + 16..at + 16 + name_len];
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if mask & WatchFlags::OPEN.bits() != 0 && name == file_name.as_bytes() {
                opens += 1;
            }
            at += 16 + name_len;
        }
    }
    opens
}

/// Issue 9 item 14: a starter that finds the lock file free but the holder
/// socket bound (the holder's file was deleted, and the path now names a
/// file the holder does not write into) tried again every 5 ms: about 170
/// attempts a second here. Now it waits for the holder to write (an inotify
/// event), looking again every 100 ms at most: about a dozen attempts
/// in a second, whatever the load (a loaded machine only makes fewer).
/// And once the holder exits, which wakes no watch, it starts.
#[test]
fn waiter_behind_a_holder_without_its_file_waits_for_events_not_in_a_loop() {
    let env = TestEnv::new();
    let mut holder = env.hold_sleeping("bot");
    fs::remove_file(env.lock_file("bot")).unwrap();
    fs::write(env.lock_file("bot"), b"not a lock file\n").unwrap();
    holder.expect_stderr_containing("(it is not empty (16 bytes)); still holding the lock");

    let attempts = opens_during(&env.lock_dir(), "bot.lock", || {
        let out = env.run(&[
            "run",
            "--name",
            "bot",
            "--timeout",
            "1s",
            "--",
            "echo",
            "RAN",
        ]);
        assert_exit(&out, 75);
        assert!(out.stdout.is_empty());
    });
    assert!((2..=25).contains(&attempts), "{attempts} attempts in 1 s");

    let mut waiter = env.start(&["run", "--name", "bot", "--wait", "--", "echo", "RAN"]);
    waiter.expect_stderr_containing("onlyone: waiting for lock 'bot' held by");
    holder.kill();
    waiter.expect_stdout_line("RAN");
    let (status, _, _) = waiter.finish();
    assert_eq!(code(status), 0);
}

/// Found beside issue 9 item 14: `onlyone wait` made a watch, then looked
/// at the lock by opening its file, which woke the watch: it looked again
/// at once, over 2,000 file opens a second. Now it looks (two opens: the
/// record and the holder), then wakes only on a change, or after a second
/// (for `flock -u`).
#[test]
fn wait_command_waits_for_events_not_in_a_loop() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    let looks = opens_during(&env.lock_dir(), "bot.lock", || {
        let out = env.run(&["wait", "bot", "--timeout", "1s"]);
        assert_exit(&out, 75);
    });
    assert!((1..=8).contains(&looks), "{looks} looks in 1 s");
}

/// The same for a `--max` waiter, whose tries of each slot woke its own
/// watch (over 2,000 opens of one slot's file a second).
#[test]
fn max_waiter_waits_for_events_not_in_a_loop() {
    let env = TestEnv::new();
    let mut members = Vec::new();
    for _ in 0..2 {
        let mut member = env.start(&[
            "run",
            "--name",
            "pool",
            "--max",
            "2",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ]);
        member.expect_stdout_line("ready");
        members.push(member);
    }
    let looks = opens_during(&env.lock_dir(), "pool@1.lock", || {
        let out = env.run(&[
            "run",
            "--name",
            "pool",
            "--max",
            "2",
            "--timeout",
            "1s",
            "--",
            "true",
        ]);
        assert_exit(&out, 75);
    });
    // Two opens per look (the try, and reading the holder's record); one
    // look for the first try, two for the wait.
    assert!((2..=12).contains(&looks), "{looks} opens in 1 s");
}

/// Starts `onlyone run --name job EXTRA -- sh -c 'echo ready; exec sleep
/// 1000'`.
fn start_job(env: &TestEnv, extra: &[&str]) -> Running {
    let mut args = vec!["run", "--name", "job"];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", "echo ready; exec sleep 1000"]);
    env.start(&args)
}

/// Asserts that `starter` was refused because `job` is a pool and a plain
/// lock at once.
fn assert_refused_as_mixed(starter: Running) {
    let (status, stdout, stderr) = starter.finish();
    assert_eq!(code(status), 77, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with(
            "onlyone: error: lock 'job' is used as a pool of slots (job@1..) and as a plain lock; a name is one or the other, and 'job"
        ),
        "{stderr}"
    );
}

/// Issue 9 item 5: `--name job` and `--name job --max 2` took `job` and
/// `job@1`, two different locks, and ran side by side. The plain lock
/// started while a slot is held is refused.
#[test]
fn plain_lock_is_refused_while_a_slot_of_the_name_is_held() {
    let env = TestEnv::new();
    let mut member = start_job(&env, &["--max", "2"]);
    member.expect_stdout_line("ready");
    let plain = start_job(&env, &[]);
    assert_refused_as_mixed(plain);
    // Waiting does not change that: it is refused, not queued.
    let waiting = start_job(&env, &["--wait"]);
    assert_refused_as_mixed(waiting);
}

/// Issue 9 item 5, the other order: a slot taken while the plain lock is
/// held is refused.
#[test]
fn slot_is_refused_while_the_plain_lock_of_the_name_is_held() {
    let env = TestEnv::new();
    let mut plain = start_job(&env, &[]);
    plain.expect_stdout_line("ready");
    let member = start_job(&env, &["--max", "3"]);
    assert_refused_as_mixed(member);
}

/// Issue 9 item 5: `--max 1` is the plain lock itself: it and `--name job`
/// exclude each other as one lock (75, not 77), and its command gets no
/// `ONLYONE_SLOT`.
#[test]
fn max_one_is_the_plain_lock() {
    let env = TestEnv::new();
    let mut plain = start_job(&env, &[]);
    plain.expect_stdout_line("ready");
    let one = env.run(&["run", "--name", "job", "--max", "1", "--", "true"]);
    assert_exit(&one, 75);
    assert!(
        stderr(&one).starts_with("onlyone: lock 'job' is held by pid"),
        "{}",
        stderr(&one)
    );
    plain.kill();

    let script =
        "echo \"slot=${ONLYONE_SLOT-none} token=$ONLYONE_TOKEN\"; echo ready; exec sleep 1000";
    let mut one = env.start(&[
        "run", "--name", "job", "--max", "1", "--", "sh", "-c", script,
    ]);
    one.expect_stdout_line("slot=none token=2");
    one.expect_stdout_line("ready");
    let plain = env.run(&["run", "--name", "job", "--", "true"]);
    assert_exit(&plain, 75);
    assert!(!env.lock_file("job@1").exists());
}

/// Issue 9 item 5: a plain starter and two pool starters at once, again
/// and again. Whichever wins, a plain holder and a pool member never run
/// at the same time: each checks for the other after taking its own lock.
#[test]
fn plain_and_pool_starters_racing_never_run_together() {
    let env = TestEnv::new();
    for round in 1..=20 {
        let plain = start_job(&env, &[]);
        let members = [
            start_job(&env, &["--max", "2"]),
            start_job(&env, &["--max", "2"]),
        ];
        let mut plain_ran = false;
        let mut members_ran = 0;
        let mut running = Vec::new();
        for (is_plain, mut starter) in [(true, plain)]
            .into_iter()
            .chain(members.map(|m| (false, m)))
        {
            if starter.try_expect_stdout_line("ready") {
                if is_plain {
                    plain_ran = true;
                } else {
                    members_ran += 1;
                }
                running.push(starter);
            } else {
                assert_refused_as_mixed(starter);
            }
        }
        assert!(
            !(plain_ran && members_ran > 0),
            "round {round}: the plain lock and {members_ran} pool members ran together"
        );
        for starter in running {
            starter.kill();
        }
    }
}

/// Found beside issue 9 item 8: a starter that lost gave the holder's lock
/// file the mode its directory implies before trying the lock. Only the
/// holder touches the file now.
#[test]
fn losing_starter_leaves_the_lock_files_mode_alone() {
    let env = TestEnv::new();
    let _holder = env.hold_sleeping("bot");
    fs::set_permissions(env.lock_file("bot"), fs::Permissions::from_mode(0o640)).unwrap();
    let loser = env.run(&["run", "--name", "bot", "--", "true"]);
    assert_exit(&loser, 75);
    let mode = fs::metadata(env.lock_file("bot"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
}

/// Found beside issue 9 item 8: when the lock directory was replaced by a
/// symlink while held, the watcher found the directory refused, carried on
/// with the old rules, and made its lock file and record wherever the
/// symlink pointed. Now it makes nothing there and says why.
#[test]
fn lock_directory_replaced_by_a_symlink_while_held_gets_no_file() {
    let env = TestEnv::new();
    let mut holder = env.hold_sleeping("bot");
    let elsewhere = env.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::remove_dir_all(env.lock_dir()).unwrap();
    symlink(&elsewhere, env.lock_dir()).unwrap();
    holder.expect_stderr_containing(
        "cannot restore deleted lock file: refusing a lock directory that is a symlink",
    );
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// Runs `command` to its end; its exit code and the CPU time it used.
fn cpu_time_of(command: &mut Command) -> (i32, std::time::Duration) {
    // Reaped by wait4 below, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().unwrap();
    let mut status = 0;
    // SAFETY: rusage is a plain C struct of integers: all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain wait4(2) on our own child, into stack variables.
    let reaped = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(reaped, child.id() as i32);
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    let cpu = std::time::Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime));
    (libc::WEXITSTATUS(status), cpu)
}

/// `onlyone wait` while the holder's file is gone and cannot be restored
/// (an immutable directory): the socket says held, and the look without
/// opening must say so too, not "the file is gone, look again now", which
/// spins for as long as it lasts (about 110 ms of CPU in these 2 s, against
/// about 6 ms).
#[test]
fn wait_for_a_holder_whose_file_is_gone_does_not_spin() {
    let env = TestEnv::new();
    let mut holder = env.hold_sleeping("bot");
    fs::remove_file(env.lock_file("bot")).unwrap();
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(env.lock_dir())
        .status()
        .unwrap();
    assert!(immutable.success(), "chattr +i is needed for this test");
    let dir = env.lock_dir();
    let _undo = Defer(move || {
        let _ = Command::new("chattr").arg("-i").arg(&dir).status();
    });
    holder.expect_stderr_containing("cannot restore deleted lock file");

    let (code, cpu) = cpu_time_of(
        env.onlyone(&["wait", "bot", "--timeout", "2s"])
            .stderr(Stdio::null()),
    );
    assert_eq!(code, 75);
    assert!(
        cpu < std::time::Duration::from_millis(40),
        "{cpu:?} of CPU in 2 s"
    );
}

/// Runs a closure when dropped (undo a change even when a test fails).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
