//! Attacks on the faster shared PostgreSQL sessions (statements kept
//! prepared, settings and UNLISTEN sent ahead, LISTEN with the token's
//! COMMIT and the pool/plain check in the same round trip, the fence try
//! and the row lock in one statement). The witness is the server: after
//! every failed acquisition, no advisory key of the name is granted to
//! anyone (no key held that no guard owns), and the state row's token
//! never goes backwards.

#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::postgres_lib::{Fixture, acquired, admin};
use onlyone::{Attempt, Backend, LockName, PostgresBackend};

/// A session of `pg_stat_activity` holding one of the advisory keys `$2`
/// (the tests of one process run at once, their shared sessions named
/// alike).
const MINE: &str = "pid IN (SELECT l.pid FROM pg_locks l \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
       AND ((l.classid::bigint << 32) | l.objid::bigint) = ANY($2))";

/// A database of a test's own on the test server, dropped after it.
struct OwnDatabase {
    name: String,
    url: String,
}

impl OwnDatabase {
    fn new(test: &str) -> OwnDatabase {
        let name = format!("{test}_{}", std::process::id());
        let base = crate::postgres_lib::url();
        let cut = base.rfind('/').expect("a database in the URL");
        let url = format!("{}/{name}", &base[..cut]);
        let mut admin = admin();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        OwnDatabase { name, url }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }

    fn row_of(&self, table: &str, key: i64) -> Option<(i64, String)> {
        self.client()
            .query(
                &format!("SELECT token, state FROM {table} WHERE key = $1"),
                &[&key],
            )
            .unwrap()
            .first()
            .map(|row| (row.get(0), row.get(1)))
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let _ = admin().batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// The server processes holding advisory key `key` (granted).
fn holders_of(key: i64) -> Vec<i32> {
    admin()
        .query(
            "SELECT l.pid FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
            &[&key],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The state row of `key`: token and state.
fn row_of(table: &str, key: i64) -> Option<(i64, String)> {
    admin()
        .query(
            &format!("SELECT token, state FROM {table} WHERE key = $1"),
            &[&key],
        )
        .unwrap()
        .first()
        .map(|row| (row.get(0), row.get(1)))
}

/// A COMMIT of the token's transaction that fails (an operator's deferred
/// constraint trigger raising at commit, for one name): on a shared
/// session the COMMIT now goes with LISTEN and the pool/plain check in one
/// round trip. The acquisition must fail, leave the key held by nobody,
/// not touch the token, and the session must go on serving other names
/// (and the same name once the trigger is gone), with its stop channel
/// listened to again.
#[test]
fn a_failed_commit_on_a_shared_session_leaves_no_key_and_the_session_usable() {
    let fixture = Fixture::new("atk_speed_commit");
    let table = &fixture.table;
    let backend = Arc::new(fixture.backend().share_sessions(1).unwrap());
    let [bad, good] = ["bad", "good"].map(|suffix| fixture.name(suffix));
    let key = PostgresBackend::key_for(&bad);
    // The table exists, and bad's row with token 1.
    acquired(backend.try_acquire(&bad, &[]).unwrap())
        .release()
        .unwrap();
    let before = row_of(table, key).expect("the row").0;
    admin()
        .batch_execute(&format!(
            "CREATE FUNCTION {table}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.name = '{bad}' THEN RAISE EXCEPTION 'refused at commit'; END IF; \
             RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER zz_refuse AFTER INSERT OR UPDATE ON {table} \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_refuse()"
        ))
        .unwrap();
    for round in 0..5 {
        let attempt = backend.try_acquire(&bad, &[]);
        match &attempt {
            Ok(Attempt::Acquired(_)) => panic!("round {round}: acquired past a failed commit"),
            Ok(Attempt::Held(holder)) => panic!("round {round}: held by {holder:?}"),
            Err(err) => eprintln!("round {round}: {:?} {err}", err.kind()),
        }
        drop(attempt);
        assert_eq!(
            holders_of(key),
            Vec::<i32>::new(),
            "round {round}: the key is held after a failed acquisition"
        );
        assert_eq!(row_of(table, key).unwrap().0, before, "token moved");
        // Another name on the same session: taken and held.
        let guard = acquired(backend.try_acquire(&good, &[]).unwrap());
        assert_eq!(holders_of(PostgresBackend::key_for(&good)).len(), 1);
        guard.release().unwrap();
    }
    admin()
        .batch_execute(&format!(
            "DROP TRIGGER zz_refuse ON {table}; DROP FUNCTION {table}_refuse()"
        ))
        .unwrap();
    let guard = acquired(backend.try_acquire(&bad, &[]).unwrap());
    assert_eq!(
        guard.token(),
        Some(before as u64 + 1),
        "tokens go on from the last one"
    );
    guard.release().unwrap();
    assert_eq!(row_of(table, key).unwrap().1, "released");
}

/// The server processes of this process's shared sessions.
fn shared_pids() -> Vec<i32> {
    let pattern = format!("onlyone:shared@%:{}", std::process::id());
    admin()
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&pattern],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn alive(pid: i32) -> bool {
    admin()
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
            &[&pid],
        )
        .unwrap()
        .get(0)
}

/// `pg_cancel_backend` of the shared session again and again (every
/// statement of an acquisition and a release can be the one cancelled: a
/// statement sent ahead, the fence try with the row lock, the LISTEN and
/// COMMIT with the check), while names are taken and let go of: a failed
/// acquisition leaves its key held by no live session (past the session's
/// own end), an acquired guard's key is granted to exactly one session or
/// its loss is reported, and tokens never go backwards.
#[test]
fn cancels_of_a_shared_session_leave_no_orphan_key_nor_unproven_guard() {
    let fixture = Fixture::new("atk_speed_cancel");
    let table = fixture.table.clone();
    let backend = Arc::new(fixture.backend().share_sessions(1).unwrap());
    let deadline = backend.heartbeat_deadline();
    let names: Vec<LockName> = (0..6).map(|i| fixture.name(&format!("n{i}"))).collect();
    // The table and the first session.
    acquired(backend.try_acquire(&names[0], &[]).unwrap())
        .release()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spread: u64 = std::env::var("ATK_SPEED_SPREAD_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    // This test's sessions only (the tests of this process run at once,
    // on sessions named alike): those holding one of its keys; an anchor
    // name, taken again after every loss, keeps the session marked
    // between takes.
    let anchor_name = fixture.name("anchor");
    let mut keys: Vec<i64> = names.iter().map(PostgresBackend::key_for).collect();
    keys.push(PostgresBackend::key_for(&anchor_name));
    let mut anchor: Option<onlyone::Guard> = None;
    let canceller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut client = admin();
            let pattern = format!("onlyone:shared@%:{}", std::process::id());
            let mut cancels = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                // Spread the cancels over the statements: 0..2 ms apart.
                std::thread::sleep(Duration::from_micros((i * 7919) % spread));
                let rows = client
                    .query(
                        &format!(
                            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                             WHERE application_name LIKE $1 AND {MINE}"
                        ),
                        &[&pattern, &keys],
                    )
                    .unwrap();
                cancels += rows.len() as u64;
            }
            cancels
        })
    };
    let (mut acquired_n, mut failed, mut held, mut orphans, mut lost) = (0, 0, 0, 0, 0);
    let mut last_token = std::collections::HashMap::new();
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    let rounds = std::env::var("ATK_SPEED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for round in 0..rounds {
        if anchor.as_ref().is_none_or(|guard| guard.lost().is_some()) {
            drop(anchor.take());
            if let Ok(Attempt::Acquired(guard)) = backend.try_acquire(&anchor_name, &[]) {
                anchor = Some(guard);
            }
        }
        let name = &names[round % names.len()];
        let key = PostgresBackend::key_for(name);
        match backend.try_acquire(name, &[]) {
            Ok(Attempt::Acquired(guard)) => {
                acquired_n += 1;
                let token = guard.token().unwrap();
                let previous = last_token.insert(key, token).unwrap_or(0);
                assert!(token > previous, "token went from {previous} to {token}");
                let holders = holders_of(key);
                if holders.len() != 1 {
                    // Not granted to exactly one: the guard must be told.
                    let reason = guard.loss_watch().wait(Some(deadline * 2));
                    assert!(
                        reason.is_some(),
                        "round {round}: guard of {name} not told, holders {holders:?}"
                    );
                    lost += 1;
                }
                let _ = guard.release();
            }
            Ok(Attempt::Held(holder)) => {
                held += 1;
                eprintln!("round {round}: held by {holder:?}");
            }
            Err(_err) => {
                failed += 1;
                let text = _err.to_string();
                let text = text.split(':').next_back().unwrap_or("").to_owned();
                *errors.entry(text).or_insert(0) += 1;
                // A holder of the key must be a session on its way out.
                let holders = holders_of(key);
                if !holders.is_empty() {
                    let end = std::time::Instant::now() + deadline * 3;
                    while std::time::Instant::now() < end
                        && holders.iter().any(|&pid| alive(pid))
                        && !holders_of(key).is_empty()
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if !holders_of(key).is_empty() {
                        orphans += 1;
                        eprintln!(
                            "round {round}: {name} failed ({_err}) but key held by {:?} (shared {:?})",
                            holders_of(key),
                            shared_pids()
                        );
                    }
                }
            }
        }
        // Every row's token is at least the last one seen.
        if let Some((token, _)) = row_of(&table, key) {
            assert!(token as u64 >= *last_token.get(&key).unwrap_or(&0));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let cancels = canceller.join().unwrap();
    drop(anchor);
    eprintln!(
        "rounds {rounds} acquired {acquired_n} failed {failed} held {held} lost {lost} orphans {orphans} cancels {cancels}"
    );
    eprintln!("errors: {errors:#?}");
    assert_eq!(orphans, 0, "keys held after failed acquisitions");
}

/// A column of the state table changed type between two acquisitions on
/// one shared session (its record statement kept prepared: "cached plan
/// must not change result type"), then changed back: each acquisition
/// fails or succeeds clearly (no panic, no hang), leaves no key held, and
/// the session serves the name again once the table is back.
#[test]
fn a_column_retyped_under_a_kept_statement_fails_clearly() {
    let fixture = Fixture::new("atk_speed_retype");
    let table = &fixture.table;
    let name = fixture.name("lock");
    let key = PostgresBackend::key_for(&name);
    let backend = Arc::new(fixture.backend().share_sessions(1).unwrap());
    for _ in 0..2 {
        acquired(backend.try_acquire(&name, &[]).unwrap())
            .release()
            .unwrap();
    }
    admin()
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN owed_ms TYPE numeric"
        ))
        .unwrap();
    for round in 0..2 {
        let (tx, rx) = std::sync::mpsc::channel();
        let (backend2, name2) = (backend.clone(), name.clone());
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match backend2
                .try_acquire(&name2, &[])
            {
                Ok(Attempt::Acquired(guard)) => guard
                    .release()
                    .map(|()| "acquired".to_owned())
                    .map_err(|e| e.to_string()),
                Ok(Attempt::Held(_)) => Ok("held".to_owned()),
                Err(err) => Err(format!("{:?}: {err}", err.kind())),
            }));
            let _ = tx.send(outcome.map_err(|_| "panicked".to_owned()));
        });
        let outcome = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the acquisition hung");
        eprintln!("round {round} retyped: {outcome:?}");
        assert!(outcome.is_ok(), "round {round}: the acquisition panicked");
        assert_eq!(holders_of(key), Vec::<i32>::new(), "key left held");
    }
    admin()
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN owed_ms TYPE bigint"
        ))
        .unwrap();
    acquired(backend.try_acquire(&name, &[]).unwrap())
        .release()
        .unwrap();
}

/// A panic on a shared session's thread (here: a state table column
/// retyped by an operator, whose value the record statement's row no
/// longer decodes) while another name is held on the session: the
/// session's connection goes with the thread, and with it the held name's
/// key, so its guard must be told of the loss (else a second holder takes
/// the name beside it); and the pool must not keep handing out the dead
/// session.
#[test]
fn a_panic_on_a_shared_sessions_thread_loses_the_names_held_on_it() {
    let fixture = Fixture::new("atk_speed_panic");
    let table = &fixture.table;
    let [a, b] = ["a", "b"].map(|suffix| fixture.name(suffix));
    let backend = Arc::new(fixture.backend().share_sessions(1).unwrap());
    acquired(backend.try_acquire(&b, &[]).unwrap())
        .release()
        .unwrap();
    let guard_a = acquired(backend.try_acquire(&a, &[]).unwrap());
    admin()
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN owed_ms TYPE numeric"
        ))
        .unwrap();
    // Twice: the first may fail on the kept statement's plan.
    for _ in 0..2 {
        let attempt = backend.try_acquire(&b, &[]);
        eprintln!("take of b: {:?}", attempt.as_ref().map(|_| ()));
    }
    admin()
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN owed_ms TYPE bigint"
        ))
        .unwrap();
    // Either the guard is told, or its key is still granted: a guard not
    // told whose key is free is a second holder waiting to happen.
    let told = guard_a
        .loss_watch()
        .wait(Some(backend.heartbeat_deadline() * 2));
    if told.is_none() {
        assert_eq!(
            holders_of(PostgresBackend::key_for(&a)).len(),
            1,
            "guard of a not told of its loss, and its key is free"
        );
    } else {
        // A second holder may take it now.
        let other = fixture.backend();
        assert!(matches!(
            other.try_acquire(&a, &[]).unwrap(),
            Attempt::Acquired(_)
        ));
    }
    drop(guard_a);
    // The shared backend serves again (a new session).
    acquired(backend.try_acquire(&b, &[]).unwrap())
        .release()
        .unwrap();
}

/// The stop channel of a name re-taken on the same shared session right
/// after its release (its UNLISTEN is sent ahead of the next statement),
/// and after a take that failed at COMMIT (its LISTEN undone): a stop
/// request is announced to the new holder (not only found by a heartbeat's
/// row check, "missed").
#[test]
fn a_name_retaken_on_its_shared_session_still_hears_stop_requests() {
    let fixture = Fixture::new("atk_speed_relisten");
    let table = &fixture.table;
    let backend = Arc::new(fixture.backend().share_sessions(1).unwrap());
    let a = fixture.name("a");
    let stopper = fixture.backend();
    let mut announced = 0;
    let rounds = std::env::var("ATK_SPEED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for round in 0..rounds {
        // Taken and let go of once (UNLISTEN sent ahead), or refused at
        // COMMIT (its LISTEN undone), right before the take that is asked.
        if round % 2 == 0 {
            acquired(backend.try_acquire(&a, &[]).unwrap())
                .release()
                .unwrap();
        } else {
            admin()
                .batch_execute(&format!(
                    "CREATE OR REPLACE FUNCTION {table}_refuse() RETURNS trigger LANGUAGE plpgsql \
                     AS $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$; \
                     CREATE CONSTRAINT TRIGGER zz_refuse AFTER INSERT OR UPDATE ON {table} \
                     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_refuse()"
                ))
                .unwrap();
            assert!(backend.try_acquire(&a, &[]).is_err());
            admin()
                .batch_execute(&format!("DROP TRIGGER zz_refuse ON {table}"))
                .unwrap();
        }
        let guard = acquired(backend.try_acquire(&a, &[]).unwrap());
        let (tell, told) = std::sync::mpsc::channel();
        guard
            .loss_watch()
            .on_stop_request(move |from| tell.send(from).unwrap());
        let stopped = stopper.stop_holder(&a, libc::SIGTERM, None).unwrap();
        assert!(
            matches!(stopped, onlyone::Stop::Requested(..)),
            "{stopped:?}"
        );
        let from = told
            .recv_timeout(backend.heartbeat_deadline() * 2)
            .expect("the request reaches the holder");
        if from.ends_with(&format!(":{}", std::process::id())) {
            announced += 1;
        } else {
            eprintln!("round {round}: {from}");
        }
        guard.release().unwrap();
    }
    // A heartbeat's row check may find the mark before the announcement
    // is read ("missed", about 1 in 30 here with 100 ms heartbeats): a
    // channel not listened to would miss every one.
    assert!(
        announced * 2 >= rounds,
        "stop requests not announced to their holder: {announced} of {rounds}"
    );
}

/// The pool/plain check, sent with the token's COMMIT and run after it,
/// fails (an operator's `LOCK TABLE ... ACCESS EXCLUSIVE` queued behind the
/// commit, granted between the COMMIT and the check: the check's read
/// waits out the lock timeout). The token is committed, so the take must
/// fail clearly, let go of the key, and leave the row `held`: the next
/// holder waits the lock-delay (nothing vouches that no command ran).
#[test]
fn a_check_failing_after_the_commit_leaves_the_row_held_for_the_successor() {
    // A database of its own: its table is locked `ACCESS EXCLUSIVE` a
    // moment, and every take reads every marked state table of its
    // database (the other tests' takes would fail meanwhile).
    let fixture = Fixture::new("atk_speed_aftercommit");
    let table = fixture.table.clone();
    let database = OwnDatabase::new("atk_speed_aftercommit");
    let admin = || database.client();
    let row_of = |table: &str, key: i64| database.row_of(table, key);
    let own_backend = || {
        onlyone::PostgresBackend::new(onlyone::PostgresConfig {
            table: table.clone(),
            timing: fixture.config().timing,
            ..onlyone::PostgresConfig::new(database.url.clone())
        })
        .unwrap()
    };
    let backend = Arc::new(own_backend().share_sessions(1).unwrap());
    let a = fixture.name("a");
    let key = PostgresBackend::key_for(&a);
    acquired(backend.try_acquire(&a, &[]).unwrap())
        .release()
        .unwrap();
    let before = row_of(&table, key).unwrap().0;
    // The commit of a's token sleeps 0.5 s (a deferred trigger).
    admin()
        .batch_execute(&format!(
            "CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER zz_slow AFTER UPDATE ON {table} \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_slow()"
        ))
        .unwrap();
    let operator = {
        let table = table.clone();
        let keys = vec![key];
        let url = database.url.clone();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let pattern = format!("onlyone:shared@%:{}", std::process::id());
            // Until the shared session sleeps in its commit.
            let start = std::time::Instant::now();
            loop {
                let sleeping: bool = client
                    .query_one(
                        &format!(
                            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                             WHERE application_name LIKE $1 AND wait_event = 'PgSleep' AND {MINE})"
                        ),
                        &[&pattern, &keys],
                    )
                    .unwrap()
                    .get(0);
                if sleeping {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "never slept");
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut open = client.transaction().unwrap();
            open.batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            open.rollback().unwrap();
        })
    };
    let attempt = backend.try_acquire(&a, &[]);
    operator.join().unwrap();
    admin()
        .batch_execute(&format!(
            "DROP TRIGGER zz_slow ON {table}; DROP FUNCTION {table}_slow()"
        ))
        .unwrap();
    let outcome = match &attempt {
        Ok(Attempt::Acquired(guard)) => format!("acquired, token {:?}", guard.token()),
        Ok(Attempt::Held(holder)) => format!("held by {holder:?}"),
        Err(err) => format!("{:?}: {err}", err.kind()),
    };
    eprintln!("take of a: {outcome}");
    let (token, state) = row_of(&table, key).unwrap();
    eprintln!("row: token {token} (was {before}) state {state}");
    match attempt {
        Ok(Attempt::Acquired(guard)) => {
            assert_eq!(holders_of(key).len(), 1);
            guard.release().unwrap();
        }
        Ok(Attempt::Held(_)) => panic!("held by nobody"),
        Err(_) => {
            assert_eq!(holders_of(key), Vec::<i32>::new(), "key left held");
            assert!(token >= before, "token went backwards");
            if token > before {
                assert_eq!(state, "held", "a committed token left for the successor");
                // The successor owes the lock-delay.
                let started = std::time::Instant::now();
                let guard = acquired(
                    own_backend()
                        .acquire(&a, &[], onlyone::Wait::Until(None))
                        .unwrap(),
                );
                eprintln!("successor waited {:?}", started.elapsed());
                assert!(started.elapsed() >= crate::postgres_lib::LOCK_DELAY);
                assert_eq!(guard.token(), Some(token as u64 + 1));
                guard.release().unwrap();
            }
        }
    }
}

/// The shared session terminated (`pg_terminate_backend`) in the middle
/// of a take, at the statement that records the token (a `BEFORE UPDATE`
/// trigger sleeps) and at its COMMIT (a deferred trigger sleeps, the
/// LISTEN and the pool/plain check queued behind it): the take fails or is
/// made again on a new session (with the next token), the other name held
/// on the session is told of its loss, the token never goes backwards, and
/// the next holder gets the next token.
#[test]
fn a_shared_session_terminated_in_its_record_or_commit_loses_cleanly() {
    for (window, trigger) in [
        ("record", "BEFORE UPDATE ON {t} FOR EACH ROW"),
        (
            "commit",
            "AFTER UPDATE ON {t} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW",
        ),
    ] {
        let fixture = Fixture::new(&format!("atk_speed_term_{window}"));
        let table = fixture.table.clone();
        let backend = Arc::new(fixture.backend().share_sessions(1).unwrap());
        let [a, b] = ["a", "b"].map(|suffix| fixture.name(suffix));
        let key = PostgresBackend::key_for(&a);
        acquired(backend.try_acquire(&a, &[]).unwrap())
            .release()
            .unwrap();
        let before = row_of(&table, key).unwrap().0;
        let guard_b = acquired(backend.try_acquire(&b, &[]).unwrap());
        let constraint = if window == "commit" {
            "CONSTRAINT "
        } else {
            ""
        };
        admin()
            .batch_execute(&format!(
                "CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.name = '{a}' THEN PERFORM pg_sleep(5); END IF; \
                 RETURN NEW; END $$; \
                 CREATE {constraint}TRIGGER zz_slow {} EXECUTE FUNCTION {table}_slow()",
                trigger.replace("{t}", &table)
            ))
            .unwrap();
        let keys = vec![key];
        let killer = std::thread::spawn(move || {
            let mut client = admin();
            let pattern = format!("onlyone:shared@%:{}", std::process::id());
            let start = std::time::Instant::now();
            loop {
                let killed: bool = client
                    .query_one(
                        &format!(
                            "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) \
                             FROM pg_stat_activity \
                             WHERE application_name LIKE $1 AND wait_event = 'PgSleep' AND {MINE}"
                        ),
                        &[&pattern, &keys],
                    )
                    .unwrap()
                    .get(0);
                if killed {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "never slept");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let attempt = backend.try_acquire(&a, &[]);
        killer.join().unwrap();
        admin()
            .batch_execute(&format!(
                "DROP TRIGGER zz_slow ON {table}; DROP FUNCTION {table}_slow()"
            ))
            .unwrap();
        let outcome = match &attempt {
            Ok(Attempt::Acquired(_)) => "acquired".to_owned(),
            Ok(Attempt::Held(holder)) => format!("held by {holder:?}"),
            Err(err) => format!("{:?}: {err}", err.kind()),
        };
        eprintln!("{window}: take of a: {outcome}");
        // Retried on a new session (the first one's transaction never
        // committed), or failed.
        let after = row_of(&table, key).unwrap().0;
        match attempt {
            Ok(Attempt::Acquired(guard)) => {
                // Its key granted, or its guard told (the retry's record
                // also sleeps, past the new session's deadline).
                if holders_of(key).len() != 1 {
                    let told = guard
                        .loss_watch()
                        .wait(Some(backend.heartbeat_deadline() * 2));
                    assert!(told.is_some(), "{window}: a guard not told without its key");
                }
                assert_eq!(guard.token(), Some(after as u64), "{window}");
                assert!(after > before, "{window}");
                drop(guard);
            }
            Ok(Attempt::Held(_)) => panic!("{window}: held by nobody"),
            Err(_) => assert_eq!(holders_of(key), Vec::<i32>::new(), "{window}"),
        }
        let told = guard_b
            .loss_watch()
            .wait(Some(backend.heartbeat_deadline() * 2));
        assert!(told.is_some(), "{window}: b not told of its session's end");
        drop(guard_b);
        let (token, state) = row_of(&table, key).unwrap();
        eprintln!("{window}: row token {token} (was {before}) {state}");
        assert!(token >= before);
        let guard = acquired(
            fixture
                .backend()
                .acquire(&a, &[], onlyone::Wait::Until(None))
                .unwrap(),
        );
        assert_eq!(guard.token(), Some(token as u64 + 1), "{window}");
        guard.release().unwrap();
    }
}

/// Across processes: 3 threads of this process take one name through a
/// shared backend (2 sessions) while `onlyone run` processes take it on
/// their own sessions, the command `flock -n -E 99` on a witness file that
/// the threads also `flock` while they hold the name. Never 99, never a
/// thread refused by the witness.
#[test]
fn shared_threads_and_cli_runs_never_hold_one_name_at_once() {
    use std::os::fd::AsRawFd;
    let fixture = Fixture::new("atk_speed_cli");
    let env = crate::util::TestEnv::new();
    let witness = env.path("witness");
    std::fs::write(&witness, b"").unwrap();
    let backend = Arc::new(fixture.backend().share_sessions(2).unwrap());
    let name = fixture.name("job");
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (backend, name, stop, witness) =
                (backend.clone(), name.clone(), stop.clone(), witness.clone());
            std::thread::spawn(move || {
                let file = std::fs::File::open(&witness).unwrap();
                let (mut held, mut overlaps) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(Attempt::Acquired(guard)) = backend.try_acquire(&name, &[]) {
                        held += 1;
                        // SAFETY: a valid descriptor of an open file.
                        let locked =
                            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                        if locked != 0 {
                            overlaps += 1;
                        } else {
                            std::thread::sleep(Duration::from_millis(5));
                            // SAFETY: as above.
                            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
                        }
                        let _ = guard.release();
                    }
                }
                (held, overlaps)
            })
        })
        .collect();
    let script = format!("exec flock -n -E 99 {} sleep 0.02", witness.display());
    let url = crate::postgres_lib::url();
    let mut codes = std::collections::BTreeMap::<i32, usize>::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let out = env
            .onlyone(&[
                "run",
                "--quiet",
                "--postgres",
                &url,
                "--table",
                &fixture.table,
                "--name",
                name.as_str(),
                "--heartbeat",
                "100ms",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .output()
            .unwrap();
        *codes.entry(out.status.code().unwrap_or(-1)).or_insert(0) += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut held, mut overlaps) = (0, 0);
    for thread in threads {
        let (h, o) = thread.join().unwrap();
        held += h;
        overlaps += o;
    }
    eprintln!("threads held {held}, overlaps {overlaps}; onlyone run exit codes {codes:?}");
    assert_eq!(overlaps, 0, "a thread held the name beside a run's command");
    assert_eq!(
        codes.get(&99),
        None,
        "a run's command beside another holder"
    );
    assert!(held > 0 && codes.get(&0).is_some_and(|&n| n > 0));
}
