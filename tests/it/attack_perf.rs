//! An attack on issue 15's speed changes (the file acquire path, the
//! one-thread `run` supervisor, the PostgreSQL acquire): each test is one
//! finding, and failed on the code as it was found.

use std::fs;
use std::os::unix::fs::symlink;
use std::process::Stdio;

use onlyone::{Attempt, FileBackend, Lock};

use crate::util::{Running, TestEnv};

/// A command that holds a flock on `$WITNESS` while it runs (refusing to
/// run when another holds it), prints `ready`, and sleeps.
const WITNESSED: &str = "exec 9>>\"$WITNESS\"; flock -n 9 || exit 99; echo ready; exec sleep 1000";

/// Whether another process holds a flock on `witness` now (the kernel's
/// word, not onlyone's).
fn witness_taken(witness: &std::path::Path) -> bool {
    let file = fs::File::open(witness).unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
}

/// Finding 1: a long-lived process keeps a lock directory's identity
/// (what its holder sockets are named after) per path and inode. A parent
/// renamed while the path is kept (`mv a b && ln -s b a`) keeps the inode,
/// but not the directory's path inside its filesystem: the process named its sockets
/// after the old path at every later acquisition, while every other
/// process names them after the new one. With the lock file deleted while
/// another process held the lock (its watcher not yet run), the socket
/// that must refuse the starter was not the one looked at, and the lock
/// was taken beside the holder.
#[test]
fn an_identity_kept_across_a_parent_rename_does_not_admit_a_second_holder() {
    let env = TestEnv::new();
    let (a, b) = (env.path("a"), env.path("b"));
    fs::create_dir_all(a.join("locks")).unwrap();
    let lock = Lock::new("renamed", FileBackend::new(a.join("locks"))).unwrap();
    let Attempt::Acquired(guard) = lock.try_acquire().unwrap() else {
        panic!("the first acquisition acquires");
    };
    guard.release().unwrap();

    // The operator moves the tree and keeps the old path working.
    fs::rename(&a, &b).unwrap();
    symlink("b", &a).unwrap();

    let witness = env.path("witness");
    fs::write(&witness, "").unwrap();
    let mut holder = Running::spawn(
        env.onlyone(&["run", "--name", "renamed", "--", "sh", "-c", WITNESSED])
            .env("WITNESS", &witness)
            .env("ONLYONE_DIR", b.join("locks"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    holder.expect_stdout_line("ready");
    // The holder is frozen (its watcher cannot restore the file) and its
    // lock file deleted: only its holder socket says it holds the lock.
    holder.signal(libc::SIGSTOP);
    fs::remove_file(b.join("locks/renamed.lock")).unwrap();

    let attempt = lock.try_acquire();
    let two_at_once = matches!(attempt, Ok(Attempt::Acquired(_))) && witness_taken(&witness);
    holder.signal(libc::SIGCONT);
    drop(attempt);
    holder.kill();
    assert!(
        !two_at_once,
        "the lock was taken while the other holder's command ran"
    );
}

/// Finding 2: the one-thread supervisor learns of the command's exit from
/// SIGCHLD alone. A signal mask is inherited through exec: onlyone started
/// with SIGCHLD blocked (by a parent that blocked it and did not unblock
/// it for its children: a daemon's worker thread, a job runner) never
/// heard that its command exited, and held the lock forever after it. The
/// supervisor unblocks the signals it handles.
#[test]
fn a_command_exit_is_seen_when_onlyone_starts_with_sigchld_blocked() {
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    let mut command = env.onlyone(&[
        "run",
        "--name",
        "masked",
        "--",
        "sh",
        "-c",
        "echo ready; exit 7",
    ]);
    // SAFETY: signal-mask calls only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let mut blocked: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut blocked);
            libc::sigaddset(&mut blocked, libc::SIGCHLD);
            libc::sigaddset(&mut blocked, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut running = Running::spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()));
    running.expect_stdout_line("ready");
    let (status, _, err) = running.finish();
    assert_eq!(crate::util::code(status), 7, "{err}");
    // And the lock is free again.
    let again = env.run(&["run", "--name", "masked", "--", "true"]);
    crate::util::assert_exit(&again, 0);
}

/// Finding 5: `nohup onlyone run CMD` (SIGHUP ignored, as nohup leaves it)
/// took SIGHUP over and passed a hangup on to the command, which died of
/// it (status 129): the command nohup was to keep running was ended. A
/// hangup or keyboard signal onlyone was started ignoring stays ignored,
/// for the command too.
#[test]
fn a_hangup_under_nohup_does_not_end_the_command() {
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    let mut command = env.onlyone(&[
        "run",
        "--name",
        "nohup",
        "--",
        "sh",
        "-c",
        "trap 'echo term; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    // SAFETY: a signal disposition set between fork and exec, as nohup does.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut running = Running::spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()));
    running.expect_stdout_line("ready");
    // A hangup, then SIGTERM, which onlyone passes on and the command
    // traps: a hangup passed on would reach it first, and kill it.
    running.signal(libc::SIGHUP);
    running.signal(libc::SIGTERM);
    let (status, out, err) = running.finish();
    assert_eq!(crate::util::code(status), 0, "{err}");
    assert_eq!(out, "term\n");
}

/// Finding 5, the Rust side of the Python test of that name: a process's
/// first acquisition installed the at-fork hooks in a `std::sync::Once`,
/// and a child forked while another thread was inside it inherited the
/// `Once` "running", with no thread to finish it: the child's first
/// acquisition waited forever. One chance per process, and this test
/// binary has acquired before: the test runs again in a process of its
/// own, which makes 40 fresh processes, each forking children until its
/// thread has made its first acquisition. Each child takes a lock within
/// 5 s or dies of SIGALRM.
#[test]
fn children_forked_during_another_threads_first_acquisition_can_take_locks() {
    const FRESH: &str = "ONLYONE_TEST_FRESH_FORKS";
    if let Some(top) = std::env::var_os(FRESH) {
        let hung = fresh_forks(std::path::Path::new(&top));
        assert_eq!(hung, 0, "{hung} children hung taking a lock");
        return;
    }
    let env = TestEnv::new();
    let test =
        "attack_perf::children_forked_during_another_threads_first_acquisition_can_take_locks";
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .env(FRESH, env.path("locks"))
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Forks 40 processes that each fork children during a thread's first
/// acquisition; the number of those children that hung (or, for a
/// process that did not report, 100).
fn fresh_forks(top: &std::path::Path) -> i32 {
    fs::create_dir_all(top).unwrap();
    let take = |name: &str, dir: std::path::PathBuf| {
        let lock = Lock::new(name, FileBackend::new(dir)).unwrap();
        matches!(lock.try_acquire(), Ok(Attempt::Acquired(_)))
    };
    let wait = |pid: libc::pid_t| {
        let mut status = 0;
        // SAFETY: waits for a child of this process into a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    };
    let mut hung = 0;
    for i in 0..40 {
        // SAFETY: the child runs only the code below and ends with _exit.
        let fresh = unsafe { libc::fork() };
        if fresh == 0 {
            let first = top.join(format!("f{i}"));
            let thread = std::thread::spawn(move || take("first", first));
            // Children forked all through the thread's first acquisition.
            let mut children = Vec::new();
            for j in 0..64 {
                if thread.is_finished() {
                    break;
                }
                // SAFETY: as above.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: alarm and _exit take no pointers.
                    unsafe {
                        libc::alarm(5);
                        libc::_exit(i32::from(!take(&format!("c{i}-{j}"), top.into())));
                    }
                }
                children.push(pid);
            }
            let _ = thread.join();
            let bad = children
                .into_iter()
                .filter(|&pid| libc::WIFSIGNALED(wait(pid)))
                .count();
            // SAFETY: ends this forked process without running the test
            // harness's exit code.
            unsafe { libc::_exit(bad as i32) };
        }
        let status = wait(fresh);
        hung += if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            100
        };
    }
    hung
}
