//! The library API, with the file backend.

use std::time::{Duration, Instant};

use onlyone::{Attempt, FileBackend, Lock};

use crate::util::TestEnv;

fn lock(env: &TestEnv, name: &str) -> Lock {
    Lock::new(name, FileBackend::new(env.lock_dir())).unwrap()
}

#[test]
fn try_acquire_reports_the_holder_as_a_value() {
    let env = TestEnv::new();
    let first = lock(&env, "lib");
    let Attempt::Acquired(guard) = first.try_acquire().unwrap() else {
        panic!("the first attempt acquires");
    };
    assert_eq!(guard.token(), Some(1));
    assert_eq!(guard.record().pid, std::process::id());
    assert_eq!(guard.lost(), None);

    // A second Lock in the same process opens the file again: a flock on
    // another open file description excludes it like another process.
    let Attempt::Held(holder) = lock(&env, "lib").try_acquire().unwrap() else {
        panic!("the second attempt is refused");
    };
    assert_eq!(holder.record.unwrap().pid, std::process::id());

    drop(guard);
    let Attempt::Acquired(again) = first.try_acquire().unwrap() else {
        panic!("released on drop");
    };
    assert_eq!(again.token(), Some(2));
}

#[test]
fn acquire_with_timeout_returns_held_after_the_timeout() {
    let env = TestEnv::new();
    let Attempt::Acquired(_guard) = lock(&env, "lib").try_acquire().unwrap() else {
        panic!("acquires");
    };
    let started = Instant::now();
    let attempt = lock(&env, "lib")
        .acquire(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(matches!(attempt, Attempt::Held(_)));
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn acquire_wakes_when_the_holder_releases() {
    let env = TestEnv::new();
    let Attempt::Acquired(guard) = lock(&env, "lib").try_acquire().unwrap() else {
        panic!("acquires");
    };
    let waiter_lock = lock(&env, "lib");
    let waiter = std::thread::spawn(move || {
        matches!(waiter_lock.acquire(None).unwrap(), Attempt::Acquired(_))
    });
    guard.release().unwrap();
    assert!(waiter.join().unwrap());
}

/// Regression (issue 10): on files, a timeout too long to add to the clock
/// panicked (`Instant::now() + t`) instead of waiting without limit, as on
/// PostgreSQL.
#[test]
fn a_timeout_too_long_to_represent_waits_without_limit() {
    let env = TestEnv::new();
    let Attempt::Acquired(guard) = lock(&env, "lib").try_acquire().unwrap() else {
        panic!("acquires");
    };
    let waiter_lock = lock(&env, "lib");
    let waiter = std::thread::spawn(move || {
        matches!(
            waiter_lock.acquire(Some(Duration::MAX)).unwrap(),
            Attempt::Acquired(_)
        )
    });
    guard.release().unwrap();
    assert!(waiter.join().expect("the waiter does not panic"));
}

#[test]
fn status_reports_the_guard_holder() {
    let env = TestEnv::new();
    let lock = lock(&env, "lib").command(vec!["worker".into(), "--fast".into()]);
    let Attempt::Acquired(guard) = lock.try_acquire().unwrap() else {
        panic!("acquires");
    };
    let status = lock.status().unwrap();
    assert!(status.held);
    let record = status.holder.unwrap().record.unwrap();
    assert_eq!(record.command, vec!["worker", "--fast"]);
    assert_eq!(record.token, guard.token().unwrap());
    drop(guard);
    assert!(!lock.status().unwrap().held);
}

#[test]
fn bad_names_are_usage_errors() {
    let err = Lock::file("../etc/passwd").unwrap_err();
    assert!(err.is_usage());
    assert_eq!(err.exit_code(), 64);
}

/// The descriptors of this process open on `path`.
fn descriptors_open_on(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

/// A bounded wait that gives up leaves nothing behind: it used to leave a
/// thread blocked in flock(2) with the lock file open, which took the lock
/// the moment it was released — for nobody, refusing others meanwhile —
/// and a caller that waited in short slices (the Python package) piled up
/// one thread and one descriptor per slice.
#[test]
fn a_bounded_wait_that_gives_up_leaves_no_waiter_behind() {
    let env = TestEnv::new();
    let Attempt::Acquired(guard) = lock(&env, "lib").try_acquire().unwrap() else {
        panic!("acquires");
    };
    let path = env.lock_file("lib");
    let waiter = lock(&env, "lib");
    for _ in 0..20 {
        let attempt = waiter.acquire(Some(Duration::from_millis(5))).unwrap();
        assert!(matches!(attempt, Attempt::Held(_)));
    }
    assert_eq!(descriptors_open_on(&path), 1, "only the holder's");
    drop(guard);
    // Nobody else is waiting: the lock is free at once.
    let Attempt::Acquired(_again) = lock(&env, "lib").try_acquire().unwrap() else {
        panic!("an abandoned wait took the released lock");
    };
}

/// A bounded wait still wakes on the release, not at its deadline.
#[test]
fn a_bounded_wait_wakes_when_the_holder_releases() {
    let env = TestEnv::new();
    let Attempt::Acquired(guard) = lock(&env, "lib").try_acquire().unwrap() else {
        panic!("acquires");
    };
    let waiter_lock = lock(&env, "lib");
    let (ready, waiting) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        ready.send(()).unwrap();
        let started = Instant::now();
        let attempt = waiter_lock.acquire(Some(Duration::from_secs(60))).unwrap();
        (matches!(attempt, Attempt::Acquired(_)), started.elapsed())
    });
    waiting.recv().unwrap();
    drop(guard);
    let (acquired, waited) = waiter.join().unwrap();
    assert!(acquired);
    assert!(waited < Duration::from_secs(30), "woke at the deadline");
}
