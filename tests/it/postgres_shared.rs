//! Many names on few sessions ([`PostgresBackend::share_sessions`]),
//! against the server named by `ONLYONE_TEST_POSTGRES_URL`: the sessions
//! the server shows, a key never taken twice on one session, one release
//! leaving the others held, a terminated session losing every name on it
//! (and no successor starting before the lock-delay), and `stop` asking
//! a holder on a shared session before it ends the session.

#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};

use crate::postgres_lib::{Fixture, LOCK_DELAY, acquired, admin, terminate};
use onlyone::{Attempt, Backend, Guard, LockName, PostgresBackend, Stop, Wait};

fn shared(fixture: &Fixture, max: usize) -> PostgresBackend {
    fixture.backend().share_sessions(max).unwrap()
}

/// The server processes of this process's shared sessions, and how many
/// advisory keys each holds.
fn shared_sessions() -> Vec<(i32, i64)> {
    let pattern = format!("onlyone:shared@%:{}", std::process::id());
    admin()
        .query(
            "SELECT a.pid, (SELECT count(*) FROM pg_locks l \
                            WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted) \
             FROM pg_stat_activity a WHERE a.application_name LIKE $1 ORDER BY a.pid",
            &[&pattern],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// This test's shared sessions only: the fixture's names are in its keys.
fn keys_on(pid: i32) -> i64 {
    admin()
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND granted",
            &[&pid],
        )
        .unwrap()
        .get(0)
}

fn held_by(backend: &PostgresBackend, name: &LockName) -> i32 {
    crate::postgres_lib::holder_backend_pid(backend, name)
}

#[test]
fn a_thousand_names_are_held_on_a_few_sessions() {
    let fixture = Fixture::new("shared_many");
    let backend = shared(&fixture, 4);
    let names: Vec<LockName> = (0..1000).map(|i| fixture.name(&format!("n{i}"))).collect();
    let start = Instant::now();
    let guards: Vec<Guard> = names
        .iter()
        .map(|name| acquired(backend.try_acquire(name, &[]).unwrap()))
        .collect();
    let took = start.elapsed();
    // What the server shows: every key on a few of this process's shared
    // sessions (other tests of this process have their own).
    let keys: Vec<i64> = names.iter().map(PostgresBackend::key_for).collect();
    let holders: Vec<(i32, i64)> = admin()
        .query(
            "SELECT l.pid, count(*) FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = ANY($1) \
             GROUP BY l.pid",
            &[&keys],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(holders.len() <= 4, "{holders:?}");
    assert_eq!(backend.shared_sessions(), holders.len());
    assert_eq!(
        holders.iter().map(|(_, n)| n).sum::<i64>(),
        1000,
        "{holders:?}"
    );
    let pids: Vec<i32> = holders.iter().map(|(pid, _)| *pid).collect();
    let seen = shared_sessions();
    assert!(
        pids.iter()
            .all(|pid| seen.iter().any(|(shared, _)| shared == pid)),
        "named onlyone:shared: {seen:?} {pids:?}"
    );
    // Every name is proven by the one heartbeat per session.
    std::thread::sleep(backend.heartbeat_deadline() * 2);
    assert!(guards.iter().all(|guard| guard.lost().is_none()));
    // A contender elsewhere finds them held.
    let other = fixture.backend();
    assert!(matches!(
        other.try_acquire(&names[500], &[]).unwrap(),
        Attempt::Held(_)
    ));
    let tokens: Vec<u64> = guards.iter().map(|guard| guard.token().unwrap()).collect();
    assert!(tokens.iter().all(|token| *token == 1), "{tokens:?}");
    for guard in guards {
        guard.release().unwrap();
    }
    assert_eq!(pids.iter().map(|pid| keys_on(*pid)).sum::<i64>(), 0);
    eprintln!("1000 names acquired in {took:?} on {} sessions", pids.len());
}

#[test]
fn the_same_name_twice_in_one_process_is_refused_not_reentered() {
    let fixture = Fixture::new("shared_twice");
    let backend = shared(&fixture, 1);
    let name = fixture.name("lock");
    let first = acquired(backend.try_acquire(&name, &[]).unwrap());
    // Advisory locks are re-entrant per session: the server alone would
    // grant this one on the same session.
    match backend.try_acquire(&name, &[]).unwrap() {
        Attempt::Held(holder) => assert_eq!(holder.pids, [std::process::id()]),
        Attempt::Acquired(_) => panic!("the same name was taken twice on one session"),
    }
    // A wait waits (on a dedicated session) and times out.
    let waited = backend
        .acquire(
            &name,
            &[],
            Wait::Until(Some(Instant::now() + Duration::from_millis(300))),
        )
        .unwrap();
    assert!(matches!(waited, Attempt::Held(_)));
    assert_eq!(keys_on(held_by(&backend, &name)), 1);
    first.release().unwrap();
    let again = acquired(backend.try_acquire(&name, &[]).unwrap());
    assert_eq!(again.token(), Some(2));
}

#[test]
fn releasing_one_name_leaves_the_others_held() {
    let fixture = Fixture::new("shared_release");
    let backend = shared(&fixture, 1);
    let [a, b, c] = ["a", "b", "c"].map(|suffix| fixture.name(suffix));
    let guard_a = acquired(backend.try_acquire(&a, &[]).unwrap());
    let guard_b = acquired(backend.try_acquire(&b, &[]).unwrap());
    let guard_c = acquired(backend.try_acquire(&c, &[]).unwrap());
    let pid = held_by(&backend, &a);
    assert_eq!(held_by(&backend, &c), pid, "one session");
    guard_b.release().unwrap();
    assert_eq!(keys_on(pid), 2);
    let other = fixture.backend();
    // Released cleanly: no lock-delay.
    let started = Instant::now();
    let taken_b = acquired(other.try_acquire(&b, &[]).unwrap());
    assert!(started.elapsed() < LOCK_DELAY, "{:?}", started.elapsed());
    assert!(matches!(
        other.try_acquire(&a, &[]).unwrap(),
        Attempt::Held(_)
    ));
    // Dropping a guard releases its key only.
    drop(guard_c);
    assert_eq!(keys_on(pid), 1);
    let taken_c = acquired(other.try_acquire(&c, &[]).unwrap());
    std::thread::sleep(backend.heartbeat_deadline() * 2);
    assert_eq!(guard_a.lost(), None);
    drop((taken_b, taken_c));
    guard_a.release().unwrap();
}

#[test]
fn a_terminated_shared_session_loses_every_name_on_it() {
    let fixture = Fixture::new("shared_terminated");
    let backend = shared(&fixture, 1);
    let names: Vec<LockName> = (0..5).map(|i| fixture.name(&format!("n{i}"))).collect();
    let guards: Vec<Guard> = names
        .iter()
        .map(|name| acquired(backend.try_acquire(name, &[]).unwrap()))
        .collect();
    let pid = held_by(&backend, &names[0]);
    assert_eq!(keys_on(pid), 5);
    let terminated_at = Instant::now();
    terminate(pid);
    for guard in &guards {
        guard
            .loss_watch()
            .wait(Some(backend.heartbeat_deadline()))
            .expect("every name on the session is lost");
    }
    assert!(terminated_at.elapsed() <= backend.heartbeat_deadline());
    // No successor starts before the lock-delay.
    let other = fixture.backend();
    let mut successors = Vec::new();
    for name in &names[..2] {
        let started = Instant::now();
        let next = acquired(other.try_acquire(name, &[]).unwrap());
        assert!(started.elapsed() >= LOCK_DELAY, "{:?}", started.elapsed());
        assert_eq!(next.token(), Some(2));
        successors.push(next);
    }
    // The guards of the lost session let go of nothing held by others.
    drop(guards);
    assert!(matches!(
        other.try_acquire(&names[0], &[]).unwrap(),
        Attempt::Held(_)
    ));
    // The backend opens a new shared session for the next names.
    let again = acquired(backend.try_acquire(&names[4], &[]).unwrap());
    assert_ne!(held_by(&backend, &names[4]), pid);
    drop((again, successors));
}

/// `stop` with SIGKILL on a shared session asks first: a holder that lets
/// go in time costs the other names nothing.
#[test]
fn stop_on_a_shared_session_asks_before_it_ends_the_session() {
    let fixture = Fixture::new("shared_stop");
    let backend = shared(&fixture, 1);
    let [a, b] = ["a", "b"].map(|suffix| fixture.name(suffix));
    let guard_a = acquired(backend.try_acquire(&a, &[]).unwrap());
    let guard_b = acquired(backend.try_acquire(&b, &[]).unwrap());
    let watch_a = guard_a.loss_watch();
    let holder = std::thread::spawn(move || {
        let (tell, told) = std::sync::mpsc::channel();
        watch_a.on_stop_request(move |from| tell.send(from).unwrap());
        // Bounded: without the request, the test fails instead of hanging.
        let from = told.recv_timeout(Duration::from_secs(30));
        guard_a.release().unwrap();
        from
    });
    let stopper = fixture.backend();
    let stopped = stopper.stop_holder(&a, libc::SIGKILL, None).unwrap();
    assert!(matches!(stopped, Stop::Signalled(_)), "{stopped:?}");
    // Who asked: from the announcement, unless a heartbeat's row check
    // found the mark first.
    let from = holder.join().unwrap().expect("the holder was asked");
    assert!(
        from.ends_with(&format!(":{}", std::process::id())) || from.contains("missed"),
        "{from}"
    );
    // b was not touched.
    std::thread::sleep(backend.heartbeat_deadline());
    assert_eq!(guard_b.lost(), None);
    let started = Instant::now();
    drop(acquired(stopper.try_acquire(&a, &[]).unwrap()));
    assert!(started.elapsed() < LOCK_DELAY, "released cleanly");
    guard_b.release().unwrap();
}

/// A holder that does not answer is ended after its T + kill grace: then
/// every name on its session is lost, as after a failure.
#[test]
fn stop_ends_a_shared_session_whose_holder_does_not_answer() {
    let fixture = Fixture::new("shared_stop_end");
    let backend = shared(&fixture, 1);
    let [a, b] = ["a", "b"].map(|suffix| fixture.name(suffix));
    let guard_a = acquired(backend.try_acquire(&a, &[]).unwrap());
    let guard_b = acquired(backend.try_acquire(&b, &[]).unwrap());
    let stopper = fixture.backend();
    let started = Instant::now();
    let stopped = stopper.stop_holder(&a, libc::SIGKILL, None).unwrap();
    assert!(matches!(stopped, Stop::Signalled(_)), "{stopped:?}");
    assert!(
        started.elapsed() >= backend.heartbeat_deadline(),
        "asked first: {:?}",
        started.elapsed()
    );
    assert!(guard_a.loss_watch().stop_requested().is_some());
    for guard in [&guard_a, &guard_b] {
        guard
            .loss_watch()
            .wait(Some(backend.heartbeat_deadline()))
            .expect("both names are lost with the session");
    }
}

/// Asking (any signal but SIGKILL) on a shared session only asks.
#[test]
fn a_stop_request_reaches_the_one_name_on_a_shared_session() {
    let fixture = Fixture::new("shared_ask");
    let backend = shared(&fixture, 1);
    let [a, b] = ["a", "b"].map(|suffix| fixture.name(suffix));
    let guard_a = acquired(backend.try_acquire(&a, &[]).unwrap());
    let guard_b = acquired(backend.try_acquire(&b, &[]).unwrap());
    let stopper = fixture.backend();
    let stopped = stopper.stop_holder(&a, libc::SIGTERM, None).unwrap();
    assert!(matches!(stopped, Stop::Requested(..)), "{stopped:?}");
    let watch = guard_a.loss_watch();
    let (tell, told) = std::sync::mpsc::channel();
    watch.on_stop_request(move |from| tell.send(from).unwrap());
    told.recv_timeout(backend.heartbeat_deadline())
        .expect("the request reaches the holder");
    std::thread::sleep(backend.heartbeat_deadline());
    assert_eq!(guard_b.loss_watch().stop_requested(), None);
    assert_eq!(guard_a.lost(), None);
    assert_eq!(guard_b.lost(), None);
    guard_a.release().unwrap();
    guard_b.release().unwrap();
}

/// A name held by another process is waited for on a dedicated session
/// (a wait in the server's queue would block the shared one), and kept
/// there once granted.
#[test]
fn a_wait_for_a_name_held_elsewhere_waits_on_a_dedicated_session() {
    let fixture = Fixture::new("shared_wait");
    let backend = shared(&fixture, 1);
    let [a, b] = ["a", "b"].map(|suffix| fixture.name(suffix));
    let guard_b = acquired(backend.try_acquire(&b, &[]).unwrap());
    let other = fixture.backend();
    let elsewhere = acquired(other.try_acquire(&a, &[]).unwrap());
    let waiter = std::thread::spawn(move || {
        let attempt = backend
            .acquire(
                &a,
                &[],
                Wait::Until(Some(Instant::now() + Duration::from_secs(30))),
            )
            .unwrap();
        (backend, a, attempt)
    });
    // Released once the waiter is queued in the server.
    while other.status(&fixture.name("a")).unwrap().waiters.is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    elsewhere.release().unwrap();
    let (backend, a, attempt) = waiter.join().unwrap();
    let guard_a = acquired(attempt);
    assert_ne!(held_by(&backend, &a), held_by(&backend, &b));
    assert_eq!(guard_b.lost(), None);
    drop((guard_a, guard_b));
}

/// As on a dedicated session, every acquisition on a shared session sees
/// the catalog tampered with after an earlier one, although the session
/// (and its table check at opening) stays: a replaced fence function is
/// refused (unsafe), a disabled guard trigger is put back.
#[test]
fn every_acquisition_on_a_shared_session_sees_the_catalog_tampered_after_an_earlier_one() {
    let fixture = Fixture::new("shared_tamper");
    let table = &fixture.table;
    let backend = shared(&fixture, 1);
    let name = fixture.name("lock");
    // Another name keeps the shared session open throughout.
    let keeper = acquired(backend.try_acquire(&fixture.name("keeper"), &[]).unwrap());
    let take = || match backend.try_acquire(&name, &[]) {
        Ok(attempt) => acquired(attempt).release().map_err(|err| err.to_string()),
        Err(err) => {
            assert_eq!(err.kind(), onlyone::ErrorKind::Unsafe, "{err}");
            Err(err.to_string())
        }
    };
    take().unwrap();
    let mut admin = admin();
    let fence = format!("public.{table}_fence(text,bigint)");
    admin
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION public.{table}_fence(name text, token bigint) \
             RETURNS void LANGUAGE plpgsql SECURITY DEFINER \
             SET search_path = pg_catalog, pg_temp AS $$ BEGIN END $$"
        ))
        .unwrap();
    let err = take().expect_err("a replaced fence function was used");
    assert!(err.contains("is not the one onlyone creates"), "{err}");
    admin
        .batch_execute(&format!("DROP FUNCTION {fence}"))
        .unwrap();
    take().unwrap();
    admin
        .batch_execute(&format!(
            "ALTER TABLE public.{table} DISABLE TRIGGER onlyone_guard_rows"
        ))
        .unwrap();
    take().unwrap();
    let enabled: String = admin
        .query_one(
            "SELECT tgenabled::text FROM pg_trigger \
             WHERE tgrelid = to_regclass($1) AND tgname = 'onlyone_guard_rows'",
            &[&format!("public.{table}")],
        )
        .unwrap()
        .get(0);
    assert_eq!(enabled, "O", "the disabled guard trigger was left disabled");
    assert_eq!(keeper.lost(), None);
    keeper.release().unwrap();
}

/// Work on one name never delays the others' loss past the deadline: an
/// acquisition sent to a shared session whose network froze would wait
/// 10 s for its answers, but every statement of the session is cut off at
/// the last good heartbeat + T, so every name on it is lost by then.
#[test]
fn a_frozen_shared_session_loses_every_name_by_the_deadline_even_while_taking_another() {
    use crate::harness::proxy::Proxy;
    use crate::postgres_lib::{upstream, url_through};
    let fixture = Fixture::new("shared_frozen");
    let proxy = Proxy::start(upstream());
    let backend = PostgresBackend::new(onlyone::PostgresConfig {
        url: url_through(proxy.addr().port()),
        ..fixture.config()
    })
    .unwrap()
    .share_sessions(1)
    .unwrap();
    let backend = std::sync::Arc::new(backend);
    let guards: Vec<Guard> = (0..3)
        .map(|i| {
            acquired(
                backend
                    .try_acquire(&fixture.name(&format!("n{i}")), &[])
                    .unwrap(),
            )
        })
        .collect();
    let deadline = backend.heartbeat_deadline();
    proxy.freeze();
    let frozen_at = Instant::now();
    let taking = backend.clone();
    let late = fixture.name("late");
    let taker = std::thread::spawn(move || taking.try_acquire(&late, &[]).map(drop));
    for guard in &guards {
        guard
            .loss_watch()
            .wait(Some(deadline + Duration::from_secs(15)))
            .expect("every name on the frozen session is lost");
    }
    let noticed_after = frozen_at.elapsed();
    // At most T after the last good heartbeat, sent at most one interval
    // before the freeze.
    assert!(
        noticed_after <= deadline + Duration::from_millis(300),
        "{noticed_after:?}"
    );
    drop(guards);
    // The late acquisition ends too (a new session cannot connect through
    // the frozen proxy), without holding anything.
    let _ = taker.join().unwrap();
    drop(proxy);
}

/// A lost session's names are all lost before any loss callback runs: a
/// callback that blocks (here, every name's, until the end of the test)
/// does not hold up the others' loss.
#[test]
fn a_blocking_loss_callback_does_not_hold_up_the_other_names_loss() {
    let fixture = Fixture::new("shared_blocking_callback");
    let backend = shared(&fixture, 1);
    let guards: Vec<Guard> = (0..3)
        .map(|i| {
            acquired(
                backend
                    .try_acquire(&fixture.name(&format!("n{i}")), &[])
                    .unwrap(),
            )
        })
        .collect();
    let (unblock, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = std::sync::Arc::new(std::sync::Mutex::new(blocked));
    for guard in &guards {
        let blocked = blocked.clone();
        guard.loss_watch().on_loss(move |_| {
            let _ = blocked.lock().unwrap().recv();
        });
    }
    terminate(held_by(&backend, &fixture.name("n0")));
    for guard in &guards {
        guard
            .loss_watch()
            .wait(Some(backend.heartbeat_deadline() * 2))
            .expect("every name is lost, whatever its callbacks do");
    }
    for _ in 0..guards.len() {
        unblock.send(()).unwrap();
    }
    drop(guards);
}

/// A token that must wait for the previous holder's fenced transactions
/// (no deadline) is not waited for on the shared session: the name is
/// taken on a dedicated session, and the shared session's other names keep
/// being proven meanwhile.
#[test]
fn a_wait_for_fenced_transactions_does_not_stall_the_shared_session() {
    use crate::postgres_fence::{fence_key, wait_for_queue};
    let fixture = Fixture::new("shared_fenced");
    let name = fixture.name("fenced");
    // The previous holder, with a fenced transaction left open, lost.
    let previous_backend = fixture.backend();
    let previous = acquired(previous_backend.try_acquire(&name, &[]).unwrap());
    let mut client = admin();
    let mut stale = client.transaction().unwrap();
    stale.batch_execute(&previous.fence_sql().unwrap()).unwrap();
    terminate(held_by(&previous_backend, &name));
    previous
        .loss_watch()
        .wait(Some(previous_backend.heartbeat_deadline()))
        .expect("the previous holder is lost");
    drop(previous);

    let backend = std::sync::Arc::new(shared(&fixture, 1));
    let other = acquired(backend.try_acquire(&fixture.name("other"), &[]).unwrap());
    let taking = backend.clone();
    let fenced = name.clone();
    let taker = std::thread::spawn(move || taking.try_acquire(&fenced, &[]).unwrap());
    wait_for_queue(fence_key(name.as_str()));
    // Waiting with no deadline, for longer than T: the other name stays
    // proven.
    std::thread::sleep(backend.heartbeat_deadline() * 2);
    assert_eq!(other.lost(), None);
    assert_eq!(other.loss_watch().wait_held(), None);
    stale.commit().unwrap();
    let guard = acquired(taker.join().unwrap());
    assert_eq!(guard.token(), Some(2));
    assert_ne!(
        held_by(&backend, &name),
        held_by(&backend, &fixture.name("other")),
        "taken on a dedicated session"
    );
    assert_eq!(other.lost(), None);
}

/// A stop-request callback may release its guard (the natural answer to
/// a request): the callbacks of a shared session's names run apart from
/// the session's thread, which the release waits for.
#[test]
fn a_stop_request_callback_may_release_its_guard_on_a_shared_session() {
    let fixture = Fixture::new("shared_release_in_callback");
    let backend = shared(&fixture, 1);
    let [a, b] = ["a", "b"].map(|suffix| fixture.name(suffix));
    let guard_a = acquired(backend.try_acquire(&a, &[]).unwrap());
    let guard_b = acquired(backend.try_acquire(&b, &[]).unwrap());
    let watch = guard_a.loss_watch();
    let (released, was_released) = std::sync::mpsc::channel();
    watch.on_stop_request(move |_| {
        released.send(guard_a.release()).unwrap();
    });
    let stopper = fixture.backend();
    let stopped = stopper.stop_holder(&a, libc::SIGTERM, None).unwrap();
    assert!(matches!(stopped, Stop::Requested(..)), "{stopped:?}");
    was_released
        .recv_timeout(Duration::from_secs(30))
        .expect("the callback ran and released")
        .unwrap();
    assert!(stopper.wait_free(&a, Some(Duration::from_secs(5))).unwrap());
    std::thread::sleep(backend.heartbeat_deadline());
    assert_eq!(guard_b.lost(), None);
    guard_b.release().unwrap();
}

/// A child made by fork never uses its parent's shared sessions: it takes
/// its own names on a session of its own, and the guards it inherited let
/// nothing go; the parent's names stay held.
#[test]
fn a_forked_child_does_not_use_its_parents_shared_sessions() {
    let fixture = Fixture::new("shared_fork");
    let backend = shared(&fixture, 1);
    let a = fixture.name("a");
    let guard_a = acquired(backend.try_acquire(&a, &[]).unwrap());
    let parent_pid = held_by(&backend, &a);
    let child_name = fixture.name("child");
    // SAFETY: the child only uses the library and then _exits.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The parent's name: held by the parent's session, so refused by
            // the server on the child's own session, not by the parent's
            // key table (which the child does not inherit).
            let refused = matches!(backend.try_acquire(&a, &[]), Ok(Attempt::Held(_)));
            let own = match backend.try_acquire(&child_name, &[]) {
                Ok(Attempt::Acquired(guard)) => Some(guard),
                _ => None,
            };
            let separate = own.is_some() && held_by(&backend, &child_name) != parent_pid;
            // Inherited: lets nothing go.
            drop(guard_a);
            drop(own);
            refused && separate
        }));
        // SAFETY: ends the child at once, without running the parent's
        // exit handlers.
        unsafe { libc::_exit(if matches!(code, Ok(true)) { 0 } else { 1 }) };
    }
    // Bounded: a child stuck on its parent's sessions fails the test.
    let mut status = 0;
    let until = Instant::now() + Duration::from_secs(60);
    // SAFETY: waits for our own child; `status` is a valid int.
    while unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == 0 {
        if Instant::now() > until {
            // SAFETY: signals our own child, not yet reaped.
            unsafe { libc::kill(child, libc::SIGKILL) };
            panic!("the forked child is stuck");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child failed: {status}"
    );
    // The parent's name is still held, on its own session, not lost.
    assert_eq!(held_by(&backend, &a), parent_pid);
    assert_eq!(keys_on(parent_pid), 1);
    std::thread::sleep(backend.heartbeat_deadline());
    assert_eq!(guard_a.lost(), None);
    guard_a.release().unwrap();
}

/// The state of `name`'s row in the fixture's table.
fn row_state(fixture: &Fixture, name: &LockName) -> String {
    admin()
        .query_one(
            &format!("SELECT state FROM public.{} WHERE key = $1", fixture.table),
            &[&PostgresBackend::key_for(name)],
        )
        .unwrap()
        .get(0)
}

/// Lets `guard`'s holder lose its session (terminated): the row stays
/// `held`, nobody has waited the lock-delay it owes.
fn lose(backend: &PostgresBackend, name: &LockName, guard: Guard) {
    let watch = guard.loss_watch();
    terminate(held_by(backend, name));
    watch
        .wait(Some(backend.heartbeat_deadline()))
        .expect("the loss fires within the heartbeat deadline");
    drop(guard);
}

/// A slot taken on a shared session (by its name, `NAME@1`: a pool of a
/// [`onlyone::Lock`] takes its slots on dedicated sessions) beside a plain
/// lock whose holder lost its session (its command may still run) is
/// refused (77) as on a dedicated session, never run beside it; the
/// refused take leaves its own row released (nothing ran, no previous
/// holder) and the plain lock's row `held`, so that the plain lock's next
/// holder still waits its lock-delay. A pool of the name is refused too.
#[test]
fn a_slot_on_a_shared_session_beside_an_unreleased_plain_lock_is_refused() {
    let fixture = Fixture::new("shared_mix_plain");
    let backend = std::sync::Arc::new(shared(&fixture, 2));
    let name = fixture.name("lock");
    let slot = name.slot(1);
    let plain = onlyone::Lock::with_backend(name.clone(), backend.clone());
    let pool = onlyone::Lock::with_backend(name.clone(), backend.clone())
        .max(2)
        .unwrap();

    lose(&backend, &name, acquired(plain.try_acquire().unwrap()));
    // Another name on the shared session first: the slot's take is placed
    // on a session that already holds something.
    let other = acquired(backend.try_acquire(&fixture.name("other"), &[]).unwrap());
    for _ in 0..2 {
        let err = backend
            .try_acquire(&slot, &[])
            .expect_err("a slot beside an unreleased plain lock");
        assert_eq!(err.kind(), onlyone::ErrorKind::Unsafe, "{err}");
        assert!(
            err.to_string()
                .contains(&format!("'{name}' was not released cleanly")),
            "{err}"
        );
        let err = pool
            .try_acquire()
            .expect_err("a pool beside an unreleased plain lock");
        assert_eq!(err.kind(), onlyone::ErrorKind::Unsafe, "{err}");
    }
    assert_eq!(row_state(&fixture, &name), "held");
    assert_eq!(row_state(&fixture, &slot), "released");
    assert_eq!(other.lost(), None);

    let started = Instant::now();
    let next = acquired(plain.try_acquire().unwrap());
    assert!(
        started.elapsed() >= LOCK_DELAY,
        "the plain lock's next holder waited only {:?}",
        started.elapsed()
    );
    drop(next);
    // Released cleanly: the slot and the pool start now, at once.
    let started = Instant::now();
    drop(acquired(backend.try_acquire(&slot, &[]).unwrap()));
    drop(acquired(pool.try_acquire().unwrap()));
    assert!(started.elapsed() < LOCK_DELAY, "{:?}", started.elapsed());
    drop(other);
}

/// The reverse: a plain start on a shared session beside a slot whose
/// holder lost its session is refused (77); and a plain start refused
/// while its own previous holder had not released cleanly leaves its row
/// `held` (the lock-delay still owed), not marked released.
#[test]
fn a_plain_start_on_a_shared_session_beside_an_unreleased_slot_is_refused() {
    let fixture = Fixture::new("shared_mix_slot");
    let backend = std::sync::Arc::new(shared(&fixture, 2));
    let name = fixture.name("lock");
    let slot = name.slot(1);
    let plain = onlyone::Lock::with_backend(name.clone(), backend.clone());
    let pool = onlyone::Lock::with_backend(name.clone(), backend.clone())
        .max(2)
        .unwrap();

    let guard = acquired(pool.try_acquire().unwrap());
    assert_eq!(guard.name(), &slot);
    lose(&backend, &slot, guard);
    let err = plain
        .try_acquire()
        .expect_err("a plain lock beside an unreleased slot");
    assert_eq!(err.kind(), onlyone::ErrorKind::Unsafe, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("'{slot}' was not released cleanly")),
        "{err}"
    );
    assert_eq!(row_state(&fixture, &slot), "held");
    assert_eq!(row_state(&fixture, &name), "released");

    // Now the plain lock's own previous holder loses its session too
    // (the slot cleared first: taken, waited, released cleanly).
    let started = Instant::now();
    drop(acquired(pool.try_acquire().unwrap()));
    assert!(started.elapsed() >= LOCK_DELAY, "{:?}", started.elapsed());
    lose(&backend, &name, acquired(plain.try_acquire().unwrap()));
    // A slot held elsewhere (a session of the test's own) refuses the
    // plain start, which must leave the row saying 'held'.
    let mut other = admin();
    let slot_key = PostgresBackend::key_for(&slot);
    other
        .execute("SELECT pg_advisory_lock($1)", &[&slot_key])
        .unwrap();
    let err = plain
        .try_acquire()
        .expect_err("a plain lock beside a held slot");
    assert_eq!(err.kind(), onlyone::ErrorKind::Unsafe, "{err}");
    assert!(err.to_string().contains("used as a pool of slots"), "{err}");
    assert_eq!(
        row_state(&fixture, &name),
        "held",
        "the refused start marked the row released"
    );
    drop(other);
    let started = Instant::now();
    let next = acquired(plain.try_acquire().unwrap());
    assert!(
        started.elapsed() >= LOCK_DELAY,
        "the plain lock's next holder waited only {:?}",
        started.elapsed()
    );
    drop(next);
}
