//! Attacks on many names on few shared sessions
//! ([`PostgresBackend::share_sessions`]): threads racing for one name over
//! one pool and two pools, and a shared session terminated again and again
//! while takes and releases are queued on it. The witness of a guard is
//! the server: a guard not told of a loss must have its key granted.

#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::postgres_lib::{Fixture, admin};
use onlyone::{Attempt, Backend, Guard, LockName, PostgresBackend};

/// The server processes holding any of `keys` granted (advisory, bigint).
fn holders_of(keys: &[i64]) -> Vec<(i32, i64)> {
    admin()
        .query(
            "SELECT l.pid, ((l.classid::bigint << 32) | l.objid::bigint) FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = ANY($1)",
            &[&keys],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Threads of one process race for one name: through one shared
/// backend (one pool, one session: re-entrant advisory locks) and over a
/// second shared backend to the same server (another pool). At most one
/// guard at a time, counted by the holders themselves.
#[test]
fn racing_threads_never_hold_one_name_twice_on_shared_sessions() {
    let fixture = Fixture::new("atk_shared_race");
    let one = Arc::new(fixture.backend().share_sessions(1).unwrap());
    let two = Arc::new(fixture.backend().share_sessions(2).unwrap());
    let name = fixture.name("lock");
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let wins = Arc::new(AtomicUsize::new(0));
    let threads = 6;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let backend = if i % 3 == 2 { two.clone() } else { one.clone() };
            let name = name.clone();
            let (holding, most, wins, barrier) =
                (holding.clone(), most.clone(), wins.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for round in 0..40 {
                    if let Attempt::Acquired(guard) = backend.try_acquire(&name, &[]).unwrap() {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        wins.fetch_add(1, Ordering::SeqCst);
                        std::thread::yield_now();
                        holding.fetch_sub(1, Ordering::SeqCst);
                        if round % 2 == 0 {
                            guard.release().unwrap();
                        } else {
                            drop(guard);
                        }
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert!(wins.load(Ordering::SeqCst) > 0);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two holders of one name at once"
    );
}

/// A shared session terminated again and again while threads take and
/// let go of names on it: every guard that was never told of a loss holds
/// its key on the server once the heartbeat deadline has passed.
#[test]
fn a_shared_session_terminated_under_queued_takes_leaves_no_unproven_guard() {
    let fixture = Fixture::new("atk_shared_kill");
    let backend = Arc::new(fixture.backend().share_sessions(1).unwrap());
    let deadline = backend.heartbeat_deadline();
    let threads = 4;
    let per_thread = 30;
    let names: Vec<Vec<LockName>> = (0..threads)
        .map(|t| {
            (0..per_thread)
                .map(|j| fixture.name(&format!("t{t}n{j}")))
                .collect()
        })
        .collect();
    let keys: Vec<i64> = names
        .iter()
        .flatten()
        .map(PostgresBackend::key_for)
        .collect();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = names
        .iter()
        .cloned()
        .map(|names| {
            let backend = backend.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut kept: Vec<Guard> = Vec::new();
                let mut errors = 0;
                for (j, name) in names.iter().enumerate() {
                    match backend.try_acquire(name, &[]) {
                        Ok(Attempt::Acquired(guard)) => {
                            // Every third is let go of at once.
                            if j % 3 == 0 {
                                let _ = guard.release();
                            } else {
                                kept.push(guard);
                            }
                        }
                        Ok(Attempt::Held(_)) => {}
                        Err(_) => errors += 1,
                    }
                }
                (kept, errors)
            })
        })
        .collect();
    barrier.wait();
    let mut terminated = HashSet::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for (pid, _) in holders_of(&keys) {
            if terminated.insert(pid) {
                let _ = admin().query_one("SELECT pg_terminate_backend($1)", &[&pid]);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut guards = Vec::new();
    let mut errors = 0;
    for handle in handles {
        let (kept, failed) = handle.join().unwrap();
        guards.extend(kept);
        errors += failed;
    }
    // A loss is told within T of the last proof.
    std::thread::sleep(deadline + Duration::from_millis(500));
    let granted: HashSet<i64> = holders_of(&keys).into_iter().map(|(_, key)| key).collect();
    let unproven: Vec<String> = guards
        .iter()
        .filter(|guard| guard.lost().is_none())
        .filter(|guard| !granted.contains(&PostgresBackend::key_for(guard.name())))
        .map(|guard| guard.name().to_string())
        .collect();
    eprintln!(
        "{} guards kept, {errors} errors, {} sessions terminated, {} keys granted",
        guards.len(),
        terminated.len(),
        granted.len()
    );
    assert!(
        unproven.is_empty(),
        "guards neither lost nor held: {unproven:?}"
    );
}

/// Finding 1: the loss callbacks of every name on a lost shared session
/// ran one after another on one thread, so one callback that panics (a
/// `send(..).unwrap()` to a receiver gone) kept every later name's
/// callback from running: those holders were never told, and went on
/// while their successors started after the lock-delay. With a session
/// per name, a panicking callback costs only its own name.
#[test]
fn a_panicking_loss_callback_does_not_silence_the_other_names() {
    let fixture = Fixture::new("atk_shared_panic");
    let backend = fixture.backend().share_sessions(1).unwrap();
    let names: Vec<LockName> = (0..6).map(|i| fixture.name(&format!("n{i}"))).collect();
    let guards: Vec<Guard> = names
        .iter()
        .map(|name| crate::postgres_lib::acquired(backend.try_acquire(name, &[]).unwrap()))
        .collect();
    let (told, heard) = std::sync::mpsc::channel();
    for guard in &guards {
        let told = told.clone();
        let name = guard.name().to_string();
        // Each one tells, then fails (whichever runs first).
        guard.loss_watch().on_loss(move |_| {
            told.send(name).unwrap();
            panic!("a loss callback that fails after telling");
        });
    }
    drop(told);
    let pid = crate::postgres_lib::holder_backend_pid(&backend, &names[0]);
    crate::postgres_lib::terminate(pid);
    let until = Instant::now() + backend.heartbeat_deadline() * 2;
    let mut heard_from = HashSet::new();
    while heard_from.len() < names.len() {
        let left = until.saturating_duration_since(Instant::now());
        match heard.recv_timeout(left) {
            Ok(name) => heard_from.insert(name),
            Err(_) => break,
        };
    }
    assert_eq!(
        heard_from.len(),
        names.len(),
        "loss callbacks run: {heard_from:?}"
    );
}

/// Finding 2: the pool kept its lock while it opened a new shared session,
/// so with the network frozen, letting go of a name already lost (which
/// should take no time: its session is gone) waited for another thread's
/// connection attempt to time out (10 s without `connect_timeout`), and so
/// did every other acquisition and release of the backend. The dedicated
/// frozen-network test expects such a release within 2 s.
#[test]
fn a_release_does_not_wait_for_another_threads_new_shared_session() {
    use crate::harness::proxy::Proxy;
    let fixture = Fixture::new("atk_shared_open");
    let proxy = Proxy::start(crate::postgres_lib::upstream());
    let url =
        crate::postgres_lib::url_through(proxy.addr().port()).replace("?connect_timeout=1", "");
    let backend = Arc::new(
        PostgresBackend::new(onlyone::PostgresConfig {
            url,
            ..fixture.config()
        })
        .unwrap()
        .share_sessions(1)
        .unwrap(),
    );
    let a = fixture.name("a");
    let guard = crate::postgres_lib::acquired(backend.try_acquire(&a, &[]).unwrap());
    proxy.freeze();
    guard
        .loss_watch()
        .wait(Some(backend.heartbeat_deadline() * 2))
        .expect("the frozen session is lost");
    // Another thread needs a new session: its connection hangs.
    let accepted = proxy.accepted();
    let opener = {
        let backend = backend.clone();
        let b = fixture.name("b");
        std::thread::spawn(move || backend.try_acquire(&b, &[]).map(|_| ()))
    };
    // Its connection attempt has reached the (frozen) network.
    assert!(
        proxy.wait_accepted_beyond(accepted, Duration::from_secs(10)),
        "the other thread's new session never reached the proxy"
    );
    let released_at = Instant::now();
    drop(guard);
    let took = released_at.elapsed();
    proxy.thaw();
    let _ = opener.join();
    assert!(
        took < Duration::from_secs(2),
        "letting go of a lost name took {took:?}"
    );
}

/// Another transaction holds one name's row (an operator's `SELECT ... FOR
/// UPDATE` left open, a long `LOCK TABLE`): the take of that name on a
/// shared session must not cost the other names on the session their
/// locks (with a session per name, only that take fails).
#[test]
fn a_row_locked_elsewhere_does_not_lose_the_other_names_on_the_session() {
    let fixture = Fixture::new("atk_shared_rowlock");
    let backend = fixture.backend().share_sessions(1).unwrap();
    let [a, b] = ["a", "b"].map(|suffix| fixture.name(suffix));
    // B's row exists (taken and let go of once).
    crate::postgres_lib::acquired(backend.try_acquire(&b, &[]).unwrap())
        .release()
        .unwrap();
    let guard_a = crate::postgres_lib::acquired(backend.try_acquire(&a, &[]).unwrap());
    let mut operator = admin();
    let mut open = operator.transaction().unwrap();
    open.execute(
        &format!("SELECT 1 FROM {} WHERE key = $1 FOR UPDATE", fixture.table),
        &[&PostgresBackend::key_for(&b)],
    )
    .unwrap();
    let attempt = backend.try_acquire(&b, &[]);
    let deadline = backend.heartbeat_deadline();
    let lost = guard_a.loss_watch().wait(Some(deadline * 2));
    open.rollback().unwrap();
    eprintln!(
        "take of b: {:?}",
        attempt.as_ref().map(|a| matches!(a, Attempt::Acquired(_)))
    );
    assert_eq!(
        lost, None,
        "a name lost because another name's row was locked"
    );
}

/// Finding 4: the state table locked against writes by another
/// transaction (`LOCK TABLE ... IN EXCLUSIVE MODE` by an operator; reads
/// go on, so that other tests are not held up): a clean release on a
/// shared session waited for it past the session's cutoff, and every
/// other name on the session was lost; held names alone are not (their
/// row checks only read).
#[test]
fn a_locked_state_table_does_not_lose_the_names_on_the_session() {
    let fixture = Fixture::new("atk_shared_tablelock");
    let backend = fixture.backend().share_sessions(1).unwrap();
    let [a, b, c] = ["a", "b", "c"].map(|suffix| fixture.name(suffix));
    let guard_a = crate::postgres_lib::acquired(backend.try_acquire(&a, &[]).unwrap());
    let guard_c = crate::postgres_lib::acquired(backend.try_acquire(&c, &[]).unwrap());
    let mut operator = admin();
    let mut open = operator.transaction().unwrap();
    open.batch_execute(&format!("LOCK TABLE {} IN EXCLUSIVE MODE", fixture.table))
        .unwrap();
    let attempt = backend.try_acquire(&b, &[]);
    let released = guard_c.release();
    let deadline = backend.heartbeat_deadline();
    let lost = guard_a.loss_watch().wait(Some(deadline * 2));
    open.rollback().unwrap();
    eprintln!(
        "take of b: {:?}, release of c: {released:?}",
        attempt.as_ref().map(|a| matches!(a, Attempt::Acquired(_)))
    );
    assert_eq!(lost, None, "a name lost because the table was locked");
}

/// a-final: plain takes of a name on a shared session (two threads, one
/// shared backend) race slot takes of the same name by its slot name on
/// the same shared backend and by a pool on dedicated sessions: never a
/// plain holder beside a slot holder, counted by the holders themselves;
/// every refusal is the 77-kind pool/plain one.
#[test]
fn plain_takes_on_a_shared_session_never_run_beside_slot_takes() {
    let fixture = Fixture::new("atk_shared_mix");
    let shared = Arc::new(fixture.backend().share_sessions(2).unwrap());
    let name = fixture.name("job");
    let (plain_in, slots_in) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (held, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (shared, name, barrier) = (shared.clone(), name.clone(), barrier.clone());
            let (plain_in, slots_in) = (plain_in.clone(), slots_in.clone());
            let (held, refused) = (held.clone(), refused.clone());
            let fixture_backend = fixture.backend();
            std::thread::spawn(move || {
                let plain = onlyone::Lock::with_backend(name.clone(), shared.clone());
                let pool = onlyone::Lock::with_backend(name.clone(), Arc::new(fixture_backend))
                    .max(2)
                    .unwrap();
                barrier.wait();
                for _ in 0..60 {
                    let (attempt, mine, theirs) = match i {
                        0 | 1 => (plain.try_acquire(), &plain_in, &slots_in),
                        2 => (shared.try_acquire(&name.slot(1), &[]), &slots_in, &plain_in),
                        _ => (pool.try_acquire(), &slots_in, &plain_in),
                    };
                    match attempt {
                        Ok(Attempt::Acquired(guard)) => {
                            mine.fetch_add(1, Ordering::SeqCst);
                            held.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(theirs.load(Ordering::SeqCst), 0, "plain beside slot");
                            std::thread::sleep(Duration::from_millis(2));
                            assert_eq!(theirs.load(Ordering::SeqCst), 0, "plain beside slot");
                            mine.fetch_sub(1, Ordering::SeqCst);
                            guard.release().unwrap();
                        }
                        Ok(Attempt::Held(_)) => {}
                        Err(err) => {
                            assert_eq!(err.kind(), onlyone::ErrorKind::Unsafe, "{err}");
                            assert!(err.to_string().contains("used as a pool of slots"), "{err}");
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(held.load(Ordering::SeqCst) > 0);
    eprintln!(
        "held {} refused {}",
        held.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
}
