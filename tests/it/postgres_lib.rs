//! Library-level tests of the PostgreSQL backend against the server named by
//! `ONLYONE_TEST_POSTGRES_URL`
//! (a role that may create tables and roles and terminate its own
//! sessions). Every test uses its own state table and lock names.

#![cfg(feature = "postgres")]

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::pg_cluster::PgCluster;
use crate::harness::proxy::Proxy;
use onlyone::{
    Attempt, Backend, ErrorKind, Guard, Holder, LockName, PostgresBackend, PostgresConfig, Timing,
    Wait,
};

const HEARTBEAT: Duration = Duration::from_millis(100);
pub(crate) const LOCK_DELAY: Duration = Duration::from_secs(1);

/// The test server: scripts/test starts a throwaway one and names it here.
pub fn url() -> String {
    std::env::var("ONLYONE_TEST_POSTGRES_URL").expect(
        "ONLYONE_TEST_POSTGRES_URL is not set: run the tests with scripts/test, \
         which starts a throwaway PostgreSQL server, or point it at a server",
    )
}

pub(crate) fn admin() -> postgres::Client {
    postgres::Client::connect(&url(), postgres::NoTls).expect("the test server is reachable")
}

/// A test's own state table, dropped before and after the test.
pub(crate) struct Fixture {
    pub(crate) table: String,
}

impl Fixture {
    pub(crate) fn new(test: &str) -> Fixture {
        let table = format!("onlyone_test_{test}");
        admin()
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; DROP FUNCTION IF EXISTS {table}_fence(text, bigint)"
            ))
            .unwrap();
        Fixture { table }
    }

    pub(crate) fn config(&self) -> PostgresConfig {
        PostgresConfig {
            table: self.table.clone(),
            timing: Timing {
                heartbeat: HEARTBEAT,
                lock_delay: Some(LOCK_DELAY),
                kill_grace: Duration::ZERO,
            },
            ..PostgresConfig::new(url())
        }
    }

    pub(crate) fn backend(&self) -> PostgresBackend {
        PostgresBackend::new(self.config()).unwrap()
    }

    /// A lock name no other test (or run) uses at the same time.
    pub(crate) fn name(&self, suffix: &str) -> LockName {
        LockName::new(&format!("{}-{suffix}-{}", self.table, std::process::id())).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&url(), postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table));
        }
    }
}

pub(crate) fn acquired(attempt: Attempt) -> Guard {
    match attempt {
        Attempt::Acquired(guard) => guard,
        Attempt::Held(holder) => panic!("expected to acquire, but held by {holder}"),
    }
}

fn held(attempt: Attempt) -> Holder {
    match attempt {
        Attempt::Held(holder) => holder,
        Attempt::Acquired(guard) => panic!("expected a conflict, but acquired {:?}", guard.token()),
    }
}

/// The server process of the session that holds `name`.
pub(crate) fn holder_backend_pid(backend: &PostgresBackend, name: &LockName) -> i32 {
    let status = backend.status(name).unwrap();
    let holder = status.holder.expect("the lock is held");
    i32::try_from(holder.server_pid.unwrap()).unwrap()
}

pub(crate) fn terminate(backend_pid: i32) {
    let row = admin()
        .query_one("SELECT pg_terminate_backend($1)", &[&backend_pid])
        .unwrap();
    assert!(row.get::<_, bool>(0), "terminated backend {backend_pid}");
}

#[test]
fn key_derivation_matches_an_independent_computation() {
    // python3 -c "import hashlib,struct; print(struct.unpack('>q',
    //   hashlib.sha256(b'onlyone/v1/demo').digest()[:8])[0])"
    let demo = LockName::new("demo").unwrap();
    assert_eq!(PostgresBackend::key_for(&demo), 2573204625638217557);
    let other = LockName::new("nightly-report").unwrap();
    assert_eq!(PostgresBackend::key_for(&other), -1218182809637577777);
}

#[test]
fn a_second_attempt_is_held_and_sees_the_holder() {
    let fixture = Fixture::new("second_attempt");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let command = vec!["sleep".to_owned(), "60".to_owned()];
    let guard = acquired(backend.try_acquire(&name, &command).unwrap());
    assert_eq!(guard.token(), Some(1));
    let key = PostgresBackend::key_for(&name);
    assert!(
        guard
            .env()
            .contains(&("ONLYONE_POSTGRES_KEY".to_owned(), key.to_string()))
    );
    assert!(guard.inheritable_fds().is_empty());

    let holder = held(backend.try_acquire(&name, &[]).unwrap());
    let record = holder.record.as_ref().expect("the holder's record");
    assert_eq!(record.pid, std::process::id());
    assert_eq!(record.command, command);
    assert_eq!(record.token, 1);
    // The local process holding it is the holder's own, as on files; the
    // server's process has its own field.
    assert_eq!(holder.pids, vec![std::process::id()]);
    let detail = holder.detail.as_deref().unwrap();
    assert!(detail.contains("application_name 'onlyone:"), "{detail}");
    assert!(
        detail.contains(&format!("backend pid {}", holder.server_pid.unwrap())),
        "{detail}"
    );

    let status = backend.status(&name).unwrap();
    assert!(status.held);
    assert_eq!(status.last_token, Some(1));
    assert!(status.waiters.is_empty());
    assert!(
        status
            .location
            .starts_with("postgres://127.0.0.1:5432/test key ")
            || std::env::var("ONLYONE_TEST_POSTGRES_URL").is_ok(),
        "{}",
        status.location
    );
    assert!(
        status.location.contains(&format!("key {key} (classid ")),
        "{}",
        status.location
    );
    drop(guard);
}

#[test]
fn release_then_acquire_gives_strictly_increasing_tokens_without_delay() {
    let fixture = Fixture::new("tokens");
    let mut config = fixture.config();
    config.timing.lock_delay = Some(Duration::from_secs(30));
    let backend = PostgresBackend::new(config).unwrap();
    let name = fixture.name("lock");
    let mut last = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a clean release needs no lock-delay"
        );
        let token = guard.token().unwrap();
        assert!(token > last, "{token} after {last}");
        last = token;
        guard.release().unwrap();
        assert!(!backend.status(&name).unwrap().held);
    }
    assert_eq!(backend.status(&name).unwrap().last_token, Some(last));
}

#[test]
fn a_terminated_session_fires_the_loss_and_the_next_holder_waits_the_lock_delay() {
    let fixture = Fixture::new("terminated");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    let first_token = guard.token().unwrap();
    let watch = guard.loss_watch();

    let terminated_at = Instant::now();
    terminate(holder_backend_pid(&backend, &name));
    let reason = watch
        .wait(Some(backend.heartbeat_deadline()))
        .expect("the loss fires within the heartbeat deadline");
    assert!(terminated_at.elapsed() <= backend.heartbeat_deadline());
    assert!(reason.contains("terminating connection"), "{reason}");
    assert_eq!(guard.lost(), Some(reason));
    guard.release().unwrap();

    let started = Instant::now();
    let next = acquired(backend.try_acquire(&name, &[]).unwrap());
    assert!(
        started.elapsed() >= LOCK_DELAY,
        "waited {:?}",
        started.elapsed()
    );
    assert!(next.token().unwrap() > first_token);
    assert_eq!(next.lost(), None);
}

/// A guard whose lock is already lost must not start a command: the
/// supervisor checks right before the spawn.
#[test]
fn a_lost_lock_starts_no_command() {
    let fixture = Fixture::new("lost_before_start");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    terminate(holder_backend_pid(&backend, &name));
    guard
        .loss_watch()
        .wait(Some(backend.heartbeat_deadline()))
        .expect("the loss fires");
    let marker = std::env::temp_dir().join(format!("onlyone-not-started-{}", std::process::id()));
    let command = vec!["touch".to_owned(), marker.display().to_string()];
    let outcome = onlyone::supervise::run(
        &guard,
        &command,
        Timing {
            kill_grace: Duration::from_secs(1),
            ..Timing::default()
        },
    )
    .unwrap();
    assert!(
        matches!(outcome, onlyone::supervise::Outcome::LostBeforeStart { .. }),
        "{outcome:?}"
    );
    assert!(!marker.exists(), "the command did not run");
}

/// An attempt whose session ends during its lock-delay held nothing that
/// ran: it starts over with a new session (it had found the lock free)
/// rather than fail, and waits the delay again, since the row still says
/// 'held'.
#[test]
fn a_loss_during_the_lock_delay_starts_over() {
    let fixture = Fixture::new("lost_in_delay");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let first = acquired(backend.try_acquire(&name, &[]).unwrap());
    let first_token = first.token().unwrap();
    let first_pid = holder_backend_pid(&backend, &name);
    terminate(first_pid);
    first
        .loss_watch()
        .wait(Some(backend.heartbeat_deadline()))
        .unwrap();
    drop(first);

    let (sender, receiver) = mpsc::channel();
    thread::scope(|scope| {
        scope.spawn(|| sender.send(backend.try_acquire(&name, &[])).unwrap());
        // The second holder is in its lock-delay once the server shows its
        // session holding the lock and its token is committed (the
        // transaction that commits it follows the lock).
        let second_pid = loop {
            let status = backend.status(&name).unwrap();
            let committed = status.last_token == Some(first_token + 1);
            match status
                .holder
                .and_then(|h| h.server_pid)
                .map(|pid| pid as i32)
            {
                Some(pid) if pid != first_pid && committed => break pid,
                _ => thread::sleep(Duration::from_millis(20)),
            }
        };
        let terminated_at = Instant::now();
        terminate(second_pid);
        let guard = acquired(receiver.recv().unwrap().unwrap());
        // The terminated attempt took a token; the new one the next.
        assert_eq!(guard.token(), Some(first_token + 2));
        assert_eq!(guard.lost(), None);
        assert!(terminated_at.elapsed() >= LOCK_DELAY);
        assert_ne!(holder_backend_pid(&backend, &name), second_pid);
    });
}

#[test]
fn a_waiter_queues_on_the_server_and_wakes_promptly() {
    let fixture = Fixture::new("waiter");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());

    let (sender, receiver) = mpsc::channel();
    thread::scope(|scope| {
        scope.spawn(|| {
            let attempt = backend.acquire(&name, &[], Wait::at_most(Some(Duration::from_secs(60))));
            sender.send((Instant::now(), attempt.unwrap())).unwrap();
        });
        // Observe (not guess) that the waiter is in the server's queue.
        let status = loop {
            let status = backend.status(&name).unwrap();
            if !status.waiters.is_empty() {
                break status;
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.waiters[0].contains("backend pid"),
            "{:?}",
            status.waiters
        );
        let released_at = Instant::now();
        guard.release().unwrap();
        let (woke_at, attempt) = receiver.recv().unwrap();
        let woke_after = woke_at.duration_since(released_at);
        assert!(
            woke_after < Duration::from_secs(1),
            "woke {woke_after:?} after the release"
        );
        let second = acquired(attempt);
        assert_eq!(second.token(), Some(2));
    });
}

#[test]
fn a_wait_with_a_timeout_gives_up_with_the_holder() {
    let fixture = Fixture::new("timeout");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let _guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    let started = Instant::now();
    let holder = held(
        backend
            .acquire(&name, &[], Wait::at_most(Some(Duration::from_millis(300))))
            .unwrap(),
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(holder.record.unwrap().pid, std::process::id());
}

#[test]
fn another_program_holding_the_documented_key_excludes_us() {
    let fixture = Fixture::new("interop");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let key = PostgresBackend::key_for(&name);
    let mut other = admin();
    let other_pid: i32 = other
        .query_one("SELECT pg_backend_pid() FROM pg_advisory_lock($1)", &[&key])
        .unwrap()
        .get(0);

    let holder = held(backend.try_acquire(&name, &[]).unwrap());
    assert!(holder.record.is_none());
    // No record names a local process; the server names its session.
    assert!(holder.pids.is_empty());
    assert_eq!(holder.server_pid, Some(other_pid as u32));
    let detail = holder.detail.unwrap();
    assert!(detail.contains("not an onlyone holder"), "{detail}");

    other
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .unwrap();
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    // And the other way round: the documented key is what we lock.
    let taken: bool = other
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .unwrap()
        .get(0);
    assert!(!taken);
    drop(guard);
}

#[test]
fn an_explicit_key_is_locked_instead_of_the_derived_one() {
    let fixture = Fixture::new("explicit_key");
    let key = 0x0123_4567_89ab_cdef;
    let backend = PostgresBackend::new(PostgresConfig {
        key: Some(key),
        ..fixture.config()
    })
    .unwrap();
    let name = fixture.name("lock");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    assert!(
        guard
            .env()
            .contains(&("ONLYONE_POSTGRES_KEY".to_owned(), key.to_string()))
    );
    let row = admin()
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND classid = 19088743 AND objid = 2309737967 AND objsubid = 1 AND granted",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    drop(guard);
}

#[test]
fn list_shows_every_lock_with_its_state() {
    let fixture = Fixture::new("list");
    let backend = fixture.backend();
    let (busy, idle) = (fixture.name("busy"), fixture.name("idle"));
    acquired(backend.try_acquire(&idle, &[]).unwrap())
        .release()
        .unwrap();
    let guard = acquired(backend.try_acquire(&busy, &[]).unwrap());
    let list = backend.list().unwrap();
    let names: Vec<_> = list.iter().map(|s| (s.name.clone(), s.held)).collect();
    assert_eq!(
        names,
        vec![(busy.to_string(), true), (idle.to_string(), false)]
    );
    assert_eq!(
        list[0]
            .holder
            .as_ref()
            .unwrap()
            .record
            .as_ref()
            .unwrap()
            .pid,
        std::process::id()
    );
    drop(guard);
}

#[test]
fn sessions_creating_the_table_at_once_all_succeed() {
    let fixture = Fixture::new("create_race");
    let backend = fixture.backend();
    let names: Vec<_> = (0..6).map(|i| fixture.name(&i.to_string())).collect();
    let barrier = std::sync::Barrier::new(names.len());
    thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let (backend, barrier) = (&backend, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    backend.try_acquire(name, &[]).map(|a| acquired(a).token())
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap().unwrap(), Some(1));
        }
    });
}

#[test]
fn a_malformed_url_is_a_usage_error_without_the_password() {
    for url in [
        "postgres://bot:hunter2@db1:notaport/app",
        "host=db1 password=hunter2 nonsense",
    ] {
        let err = PostgresBackend::new(PostgresConfig::new(url)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        assert_eq!(err.exit_code(), 64);
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }
}

#[test]
fn an_unreachable_server_is_unavailable_without_the_password() {
    let backend = PostgresBackend::new(PostgresConfig::new(
        "postgres://bot:hunter2@127.0.0.1:1/test",
    ))
    .unwrap();
    let name = LockName::new("unreachable").unwrap();
    for err in [
        backend.try_acquire(&name, &[]).unwrap_err(),
        backend.status(&name).unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert_eq!(err.exit_code(), 69);
        let message = err.to_string();
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            assert!(!cause.to_string().contains("hunter2"));
            source = cause.source();
        }
    }
}

#[test]
fn a_missing_database_is_unavailable() {
    let mut url = url();
    let slash = url.rfind('/').unwrap();
    url.replace_range(slash + 1.., "onlyone_no_such_database");
    let backend = PostgresBackend::new(PostgresConfig::new(url)).unwrap();
    let err = backend
        .try_acquire(&LockName::new("x").unwrap(), &[])
        .unwrap_err();
    assert_eq!(err.exit_code(), 69);
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// The test server's URL, logging in as `role` (no password: trust).
pub(crate) fn url_as(role: &str) -> String {
    let config: postgres::Config = url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(host) => host.clone(),
        postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().unwrap_or("postgres");
    format!("host={host} port={port} dbname={dbname} user={role}")
}

/// A login role without privileges and a schema it may use but not create
/// in (so that the shared server's defaults for `public` do not matter);
/// both dropped again, even when the test fails.
struct Unprivileged {
    role: String,
    schema: String,
}

impl Unprivileged {
    fn new() -> Unprivileged {
        let role = format!("onlyone_test_noprivs_{}", std::process::id());
        let schema = format!("onlyone_test_ro_{}", std::process::id());
        admin()
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema}; DROP ROLE IF EXISTS {role}; \
                 CREATE ROLE {role} LOGIN; CREATE SCHEMA {schema}; \
                 GRANT USAGE ON SCHEMA {schema} TO {role}"
            ))
            .unwrap();
        Unprivileged { role, schema }
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = admin().batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {}; DROP ROLE IF EXISTS {}",
            self.schema, self.role
        ));
    }
}

#[test]
fn without_create_privilege_the_error_carries_the_ddl() {
    let fixture = Fixture::new("no_privilege");
    let Unprivileged { role, schema } = &Unprivileged::new();
    let backend = PostgresBackend::new(PostgresConfig {
        url: url_as(role),
        table: format!("{schema}.onlyone_locks"),
        ..fixture.config()
    })
    .unwrap();
    let err = backend.try_acquire(&fixture.name("lock"), &[]).unwrap_err();
    assert_eq!(err.exit_code(), 69);
    let message = err.to_string();
    assert!(message.contains("CREATE TABLE IF NOT EXISTS"), "{message}");
    assert!(
        message.contains(&format!(
            "GRANT SELECT, INSERT, UPDATE ON \"{schema}\".\"onlyone_locks\" TO {role}"
        )),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
}

/// The test server's address.
pub(crate) fn upstream() -> std::net::SocketAddr {
    let config: postgres::Config = url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(host) => host.clone(),
        postgres::config::Host::Unix(_) => panic!("the proxy tests need a TCP URL"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .unwrap()
        .next()
        .unwrap()
}

pub(crate) fn url_through(port: u16) -> String {
    let config: postgres::Config = url().parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let dbname = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}@127.0.0.1:{port}/{dbname}?connect_timeout=1")
}

#[test]
fn a_frozen_network_fires_the_loss_within_the_heartbeat_deadline() {
    let fixture = Fixture::new("frozen");
    let proxy = Proxy::start(upstream());
    let backend = PostgresBackend::new(PostgresConfig {
        url: url_through(proxy.addr().port()),
        ..fixture.config()
    })
    .unwrap();
    let name = fixture.name("lock");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    let watch = guard.loss_watch();
    let frozen_at = Instant::now();
    proxy.freeze();
    let deadline = backend.heartbeat_deadline();
    let reason = watch
        .wait(Some(deadline + Duration::from_secs(2)))
        .expect("the loss fires although the heartbeat's query hangs");
    let noticed_after = frozen_at.elapsed();
    // At most T after the last good answer, which came at most one
    // heartbeat before the freeze.
    assert!(
        noticed_after <= deadline + Duration::from_millis(300),
        "{noticed_after:?}"
    );
    assert!(reason.contains("heartbeat deadline"), "{reason}");
    let released_at = Instant::now();
    guard.release().unwrap();
    assert!(released_at.elapsed() < Duration::from_secs(2));
    // The server still sees the session (the proxy keeps it open, as a
    // middlebox might) until the proxy closes it.
    drop(proxy);
}

#[test]
fn a_server_that_never_answers_is_unavailable_after_the_connect_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = PostgresBackend::new(PostgresConfig::new(url_through(port))).unwrap();
    let started = Instant::now();
    let err = backend
        .try_acquire(&LockName::new("silent").unwrap(), &[])
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.exit_code(), 69);
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    drop(listener);
}

/// The state tables of one schema share its guard function, and their
/// owners may be different roles: a role that does not own the function
/// still guards its own table with it (the function is created when
/// missing, never replaced, which only its owner may do). On a cluster of
/// its own, where no other test's state table needs reading.
#[test]
fn a_second_owner_in_a_schema_guards_its_table_with_the_shared_function() {
    let cluster = PgCluster::start();
    let mut admin = postgres::Client::connect(&cluster.url(), postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "CREATE ROLE second_owner LOGIN; CREATE SCHEMA shared; \
             GRANT USAGE, CREATE ON SCHEMA shared TO second_owner",
        )
        .unwrap();
    let mut guarded = |url: String, table: &str| {
        let backend = PostgresBackend::new(PostgresConfig {
            url,
            table: format!("shared.{table}"),
            ..PostgresConfig::new("")
        })
        .unwrap();
        let name = LockName::new(table).unwrap();
        acquired(backend.try_acquire(&name, &[]).unwrap())
            .release()
            .unwrap();
        let triggers: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1)",
                &[&format!("shared.{table}")],
            )
            .unwrap()
            .get(0);
        assert_eq!(triggers, 2, "{table}");
        // Every holder reads every state table of the database.
        admin
            .batch_execute(&format!("GRANT SELECT ON shared.{table} TO second_owner"))
            .unwrap();
    };
    guarded(cluster.url(), "first");
    guarded(
        format!(
            "postgres://second_owner@127.0.0.1:{}/postgres",
            cluster.port()
        ),
        "second",
    );
}

/// The Python package's Ctrl-C and cancelled tasks (attack findings 9 and
/// 12): a cancelled wait in the server ends at once and leaves no session
/// waiting there.
#[test]
fn a_cancelled_wait_ends_at_once_and_leaves_no_waiter() {
    let fixture = Fixture::new("cancel_wait");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let _guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    let cancel = onlyone::internals::Cancel::new();
    thread::scope(|scope| {
        let waiter =
            scope.spawn(|| cancel.run(|| backend.acquire(&name, &[], Wait::at_most(None))));
        // Observe (not guess) that the waiter is in the server's queue.
        while backend.status(&name).unwrap().waiters.is_empty() {
            thread::sleep(Duration::from_millis(10));
        }
        let cancelled_at = Instant::now();
        cancel.cancel();
        let attempt = waiter.join().unwrap();
        assert!(attempt.is_err(), "a cancelled wait takes nothing");
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "ended {:?} after the cancel",
            cancelled_at.elapsed()
        );
    });
    assert_eq!(backend.status(&name).unwrap().waiters, Vec::<String>::new());
    assert!(cancel.is_cancelled());
}

/// A cancel during a lock-delay ends it at once, and gives the lock up.
#[test]
fn a_cancelled_lock_delay_ends_at_once_and_gives_the_lock_up() {
    let fixture = Fixture::new("cancel_delay");
    let mut config = fixture.config();
    config.timing.lock_delay = Some(Duration::from_secs(30));
    let backend = PostgresBackend::new(config).unwrap();
    let name = fixture.name("lock");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    terminate(holder_backend_pid(&backend, &name));
    guard
        .loss_watch()
        .wait(Some(backend.heartbeat_deadline()))
        .expect("the loss fires");
    drop(guard);
    while backend.status(&name).unwrap().held {
        thread::sleep(Duration::from_millis(10));
    }
    let cancel = onlyone::internals::Cancel::new();
    thread::scope(|scope| {
        let starter = scope.spawn(|| cancel.run(|| backend.try_acquire(&name, &[])));
        // Observe that the starter holds the lock: it sits in its lock-delay.
        while !backend.status(&name).unwrap().held {
            thread::sleep(Duration::from_millis(10));
        }
        let cancelled_at = Instant::now();
        cancel.cancel();
        let attempt = starter.join().unwrap();
        assert!(attempt.is_err(), "a cancelled lock-delay gives the lock up");
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "ended {:?} after the cancel",
            cancelled_at.elapsed()
        );
    });
    assert!(!backend.status(&name).unwrap().held);
}

/// Every acquisition checks the state table's catalog in one statement
/// (issue 15); it must see what was done to the table after an earlier
/// acquisition of the same process succeeded, and be as strict as the
/// first one: a fence function whose body was replaced is refused
/// (unsafe, naming what is wrong), a guard trigger that was disabled is
/// put back. (The guard function is shared by every table of the schema,
/// and so by the tests running beside this one: attack_pg.rs replaces it
/// in a schema of its own.)
#[test]
fn every_acquisition_sees_the_catalog_tampered_after_an_earlier_one() {
    let fixture = Fixture::new("tamper_after_acquire");
    let table = &fixture.table;
    let name = fixture.name("lock");
    let lock = onlyone::Lock::new(name.as_str(), fixture.backend()).unwrap();
    let mut admin = admin();
    let take = || match lock.try_acquire() {
        Ok(attempt) => acquired(attempt).release().map_err(|err| err.to_string()),
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Unsafe, "{err}");
            Err(err.to_string())
        }
    };
    take().unwrap();

    // The fence function, replaced by one that lets every stale token
    // through, with everything else as onlyone makes it.
    let fence = format!("public.{table}_fence(text,bigint)");
    admin
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION public.{table}_fence(name text, token bigint) \
             RETURNS void LANGUAGE plpgsql SECURITY DEFINER \
             SET search_path = pg_catalog, pg_temp AS $$ BEGIN END $$"
        ))
        .unwrap();
    let err = take().expect_err("a replaced fence function was used");
    assert!(
        err.contains(&format!(
            "the fence function {fence} of the state table public.{table} is not the one onlyone creates (its body is not the fence's)"
        )),
        "{err}"
    );
    admin
        .batch_execute(&format!("DROP FUNCTION {fence}"))
        .unwrap();
    take().unwrap();

    // A guard trigger disabled: put back by the next acquisition.
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
}

/// A plain lock refused because a slot of its name is held (issue 15 moved
/// that check onto the acquiring session, before the lock-delay) lets go
/// without marking the row released when the previous holder did not
/// release cleanly: that holder's command may still run, and the next
/// holder must still wait the lock-delay.
#[test]
fn a_start_refused_for_a_held_slot_keeps_the_lock_delay_owed() {
    let fixture = Fixture::new("mix_keeps_delay");
    let backend = std::sync::Arc::new(fixture.backend());
    let name = fixture.name("lock");
    let plain = onlyone::Lock::with_backend(name.clone(), backend.clone());
    let pool = onlyone::Lock::with_backend(name.clone(), backend.clone())
        .max(2)
        .unwrap();

    // The plain lock's holder loses its session: the row stays 'held'.
    let guard = acquired(plain.try_acquire().unwrap());
    let watch = guard.loss_watch();
    terminate(holder_backend_pid(&backend, &name));
    watch
        .wait(Some(backend.heartbeat_deadline()))
        .expect("the loss fires within the heartbeat deadline");
    drop(guard);

    // A pool start is refused: the plain lock was not released cleanly.
    let err = pool
        .try_acquire()
        .expect_err("a slot beside an unreleased plain lock");
    assert_eq!(err.kind(), ErrorKind::Unsafe, "{err}");
    assert!(
        err.to_string().contains("was not released cleanly"),
        "{err}"
    );
    // So a slot is held here by a session of the test's own (the refused
    // start left slot 1's row, released), then the plain lock is refused.
    let mut slot = admin();
    let slot_key = crate::postgres_run::documented_key(&format!("{name}@1"));
    slot.execute("SELECT pg_advisory_lock($1)", &[&slot_key])
        .unwrap();
    let err = plain
        .try_acquire()
        .expect_err("a plain lock beside a held slot");
    assert_eq!(err.kind(), ErrorKind::Unsafe, "{err}");
    assert!(err.to_string().contains("used as a pool of slots"), "{err}");
    let state: String = admin()
        .query_one(
            &format!("SELECT state FROM public.{} WHERE key = $1", fixture.table),
            &[&PostgresBackend::key_for(&name)],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "held", "the refused start marked the row released");
    drop(slot);

    let started = Instant::now();
    let next = acquired(plain.try_acquire().unwrap());
    assert!(
        started.elapsed() >= LOCK_DELAY,
        "the next holder waited only {:?}",
        started.elapsed()
    );
    drop(next);
}

/// A holder that has recorded its clean release but still holds the key
/// (the moment between its two statements) is not another holder: a
/// replacer that expected it got `Changed` and gave up with 75 "taken by
/// another starter" (seen with `stop` and `--replace` racing). Here a
/// session stays in that moment for good: the expected holder's stop looks
/// again, then says what it saw, and never calls it changed.
#[test]
fn a_holder_between_its_release_and_its_unlock_is_not_taken_for_another() {
    let fixture = Fixture::new("releasing");
    let backend = fixture.backend();
    let name = fixture.name("x");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    let expected = backend.status(&name).unwrap().holder.unwrap().id().unwrap();
    drop(guard);

    // The row says released; a session of the test takes the key and
    // stands in for the releasing holder (the row names its session).
    let key = PostgresBackend::key_for(&name);
    let mut releasing = admin();
    releasing
        .query_one("SELECT pg_advisory_lock($1)", &[&key])
        .unwrap();
    let updated = releasing
        .execute(
            &format!(
                "UPDATE public.{} SET backend_pid = pg_backend_pid() WHERE key = $1 AND state = 'released'",
                fixture.table
            ),
            &[&key],
        )
        .unwrap();
    assert_eq!(updated, 1);

    match backend.stop_holder(&name, libc::SIGTERM, Some(&expected)) {
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Unsafe, "{err}");
            assert!(err.to_string().contains("recorded its release"), "{err}");
        }
        Ok(stop) => panic!("the releasing holder was taken for {stop:?}"),
    }
}
