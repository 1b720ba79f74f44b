//! Issue 9's PostgreSQL scenarios: two commands at once through the state
//! table (a chain of unclean holders, one advisory key recorded under two
//! names, two tables or two schemas), a `stop` that would end a session
//! onlyone cannot identify, a `--timeout` that did not bound the lock-delay,
//! a waiter that gave up with 74 although nothing ran, and `--max` waiters
//! that polled with new connections. Each test fails without its fix.
//!
//! Protected commands take a non-blocking flock(1) on a witness file before
//! they say they run (exit 99 otherwise), as in `postgres_run.rs`.

#![cfg(feature = "postgres")]

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::pg_cluster::PgCluster;
use crate::postgres_lib::{admin, url, url_as};
use crate::postgres_run::{LOCK_DELAY, documented_key, run, run_args, start, unique, witnessed};
use crate::util::{EVENT_TIMEOUT, Running, TestEnv, assert_exit, code, stderr};

/// `onlyone run --postgres URL --name NAME` with a heartbeat of 100 ms, a
/// lock-delay of 2 s and the given kill grace, then `EXTRA -- sh -c SCRIPT`.
fn run_with_grace(
    url: &str,
    name: &str,
    kill_grace: &str,
    extra: &[&str],
    script: &str,
) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--postgres", url, "--name", name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for flag in [
        "--heartbeat",
        "100ms",
        "--lock-delay",
        "2s",
        "--kill-grace",
        kill_grace,
    ] {
        args.push(flag.to_owned());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    args
}

/// A witnessed command that prints `SAY $ONLYONE_TOKEN` and sleeps.
fn witnessed_token(env: &TestEnv, say: &str) -> String {
    format!(
        "exec flock -n -E 99 {} sh -c 'echo {say} $ONLYONE_TOKEN; exec sleep 1000'",
        env.path("witness").display()
    )
}

/// The `pg_locks` condition for the advisory key `key` (bigint form).
fn key_condition(key: i64) -> String {
    format!(
        "locktype = 'advisory' and classid = {} and objid = {} and objsubid = 1",
        ((key as u64) >> 32) as u32,
        key as u64 as u32
    )
}

/// Runs `sql` on `client` and returns the first column of the first row
/// as text, or "" when there is none.
fn first_text(client: &mut postgres::Client, sql: &str) -> String {
    client
        .query(sql, &[])
        .unwrap()
        .first()
        .map(|row| row.get::<_, Option<String>>(0).unwrap_or_default())
        .unwrap_or_default()
}

/// Ends the session that holds `key` on the test server.
fn terminate_holder_of(key: i64) {
    let ended = first_text(
        &mut admin(),
        &format!(
            "select pg_terminate_backend(pid)::text from pg_locks where granted and {}",
            key_condition(key)
        ),
    );
    assert_eq!(ended, "true", "the holder of key {key} was terminated");
}

/// Waits until the server's queue for `key` has a waiting session, and
/// returns the backend pid of the holder. The waiter's statement reaches the
/// queue a moment after it says it waits; bystanders get no event for it.
fn wait_for_queue(client: &mut postgres::Client, key: i64) {
    let sql = format!(
        "select pid::text from pg_locks where not granted and {}",
        key_condition(key)
    );
    let until = Instant::now() + EVENT_TIMEOUT;
    while first_text(client, &sql).is_empty() {
        assert!(Instant::now() < until, "nobody queued for key {key}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Item 1: H1 (kill grace 6 s, a command that ignores SIGTERM) loses its
/// session; H2 takes the lock and rightly waits H1's bound, but is
/// SIGTERMed during that wait; H3 must still wait H1's bound, not H2's own
/// (3.5 s), or it starts while H1's command runs.
#[test]
fn lock_delay_chain_waits_for_every_unclean_holder() {
    let env = TestEnv::new();
    let name = unique("pg-chain");
    let key = documented_key(&name);
    let stubborn = format!(
        "exec flock -n -E 99 {} sh -c 'trap \"\" TERM; echo ready; exec sleep 1000'",
        env.path("witness").display()
    );
    let mut h1 = start(&env, &run_with_grace(&url(), &name, "6s", &[], &stubborn));
    h1.expect_stdout_line("ready");
    let mut h2 = start(
        &env,
        &run_with_grace(&url(), &name, "300ms", &["--wait"], "echo h2 ran"),
    );
    h2.expect_stderr_containing("waiting for lock");
    wait_for_queue(&mut admin(), key);

    terminate_holder_of(key);
    // H1's T + G = 1.2 s + 6 s, plus the 2 s margin.
    let delay = h2.expect_stderr_containing("did not release it cleanly");
    assert!(delay.contains("lock-delay of 9s 200ms"), "{delay}");
    h2.signal(libc::SIGTERM);
    let (status, out, err) = h2.finish();
    assert!(!out.contains("h2 ran"), "{out}");
    assert_ne!(code(status), 0, "{err}");

    let mut h3 = start(
        &env,
        &run_with_grace(&url(), &name, "300ms", &["--wait"], &witnessed(&env, "h3")),
    );
    let delay = h3.expect_stderr_containing("did not release it cleanly");
    assert!(delay.contains("lock-delay of 9s 200ms"), "{delay}");
    // The witness proves that H1's command (SIGKILLed 7.2 s after the
    // termination) was gone when H3's started.
    h3.expect_stdout_line("h3");
    let (status, _, err) = h1.finish();
    assert_eq!(code(status), 74, "{err}");
}

/// Item 2: one advisory key under two names shares one state row: B waits
/// the lock-delay after A's session is terminated, and its token follows
/// A's.
#[test]
fn one_key_under_two_names_shares_the_state_row() {
    let env = TestEnv::new();
    let key = documented_key(&unique("pg-shared-key"));
    let key_text = key.to_string();
    let (a, b) = (unique("pg-key-a"), unique("pg-key-b"));
    let mut holder = start(
        &env,
        &run_args(&url(), &a, &["--key", &key_text], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let token: i64 = admin()
        .query_one(
            "select token from public.onlyone_locks where key = $1",
            &[&key],
        )
        .unwrap()
        .get(0);

    terminate_holder_of(key);
    let terminated_at = Instant::now();
    let mut next = start(
        &env,
        &run_args(
            &url(),
            &b,
            &["--key", &key_text, "--wait"],
            &witnessed_token(&env, "next"),
        ),
    );
    next.expect_stderr_containing("did not release it cleanly");
    next.expect_stdout_line(&format!("next {}", token + 1));
    assert!(terminated_at.elapsed() >= LOCK_DELAY);
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 74, "{err}");
}

/// Item 2: a state table of its own for one test, dropped afterwards.
pub(crate) struct TestTable(pub(crate) String);

impl TestTable {
    pub(crate) fn new(label: &str) -> TestTable {
        let table = format!("onlyone_test_{label}_{}", std::process::id());
        admin()
            .batch_execute(&format!("drop table if exists public.{table}"))
            .unwrap();
        TestTable(table)
    }
}

impl Drop for TestTable {
    fn drop(&mut self) {
        let _ = admin().batch_execute(&format!("drop table if exists public.{}", self.0));
    }
}

/// Item 2: the same lock with two `--table` values is a contradiction the
/// second starter can see: it refuses (77) instead of handing out token 1
/// again without the lock-delay.
#[test]
fn one_key_in_two_state_tables_is_refused() {
    let env = TestEnv::new();
    let name = unique("pg-two-tables");
    let (first, second) = (TestTable::new("first"), TestTable::new("second"));
    let out = run(
        &env,
        &run_args(&url(), &name, &["--table", &first.0], "echo ran"),
    );
    assert_exit(&out, 0);

    let out = run(
        &env,
        &run_args(&url(), &name, &["--table", &second.0], "echo ran"),
    );
    assert_exit(&out, 77);
    assert!(out.stdout.is_empty());
    let key = documented_key(&name);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "lock key {key} is also recorded in table public.{}",
            first.0
        )),
        "{err}"
    );
    assert!(
        err.contains("every holder of one key must use one state table"),
        "{err}"
    );
}

/// Item 2: on PostgreSQL 15's default search_path (`"$user", public`), a
/// role with a schema of its own used to get a state table of its own. Both
/// roles now share `public.onlyone_locks`: the second waits the lock-delay
/// after the first one's session ends, and its token follows.
#[test]
fn roles_with_schemas_of_their_own_share_the_public_state_table() {
    let cluster = PgCluster::start();
    cluster.psql(
        "create role bot1 login; create role bot2 login; \
         create schema bot1 authorization bot1; \
         grant create on schema public to bot1, bot2; \
         alter default privileges for role bot1 in schema public \
           grant select, insert, update on tables to bot2; \
         alter default privileges for role bot2 in schema public \
           grant select, insert, update on tables to bot1",
    );
    let as_role = |role: &str| format!("postgres://{role}@127.0.0.1:{}/postgres", cluster.port());
    let env = TestEnv::new();
    let name = unique("pg-roles");
    let mut bot1 = start(
        &env,
        &run_args(&as_role("bot1"), &name, &[], &witnessed_token(&env, "bot1")),
    );
    bot1.expect_stdout_line("bot1 1");
    assert_eq!(
        cluster.psql("select count(*) from public.onlyone_locks"),
        "1"
    );

    let key = documented_key(&name);
    cluster.psql(&format!(
        "select pg_terminate_backend(pid) from pg_locks where granted and {}",
        key_condition(key)
    ));
    let terminated_at = Instant::now();
    let mut bot2 = start(
        &env,
        &run_args(
            &as_role("bot2"),
            &name,
            &["--wait"],
            &witnessed_token(&env, "bot2"),
        ),
    );
    bot2.expect_stderr_containing("did not release it cleanly");
    bot2.expect_stdout_line("bot2 2");
    assert!(terminated_at.elapsed() >= LOCK_DELAY);
    let (status, _, err) = bot1.finish();
    assert_eq!(code(status), 74, "{err}");
}

/// The state table as onlyone made it before issue 9: the row belonged to
/// the name (primary key), not to the advisory key.
fn create_old_table(table: &str) {
    admin()
        .batch_execute(&format!(
            "create table public.{table} (\
             name text primary key, key bigint not null, \
             token bigint not null check (token > 0), \
             state text not null check (state in ('held', 'released')), \
             backend_pid integer, pid integer, host text, start_time bigint, \
             boot_id text, user_name text, uid bigint, command text[], \
             acquired_at timestamptz, stop_within_ms bigint, \
             updated_at timestamptz not null default now())"
        ))
        .unwrap();
}

/// Item 2: an existing table of the old shape is migrated on first use (the
/// primary key moves to the advisory key, the table is marked), and its
/// tokens go on growing.
#[test]
fn old_state_table_is_migrated_to_one_row_per_key() {
    let env = TestEnv::new();
    let table = TestTable::new("old_shape");
    create_old_table(&table.0);
    let name = unique("pg-migrate");
    let key = documented_key(&name);
    admin()
        .execute(
            &format!(
                "insert into public.{} (name, key, token, state) values ($1, $2, 41, 'released')",
                table.0
            ),
            &[&name, &key],
        )
        .unwrap();

    let out = run(
        &env,
        &run_args(
            &url(),
            &name,
            &["--table", &table.0],
            "echo token $ONLYONE_TOKEN",
        ),
    );
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "token 42\n");
    let mut client = admin();
    let primary_key = first_text(
        &mut client,
        &format!(
            "select string_agg(a.attname, ',') from pg_index i \
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
             where i.indrelid = 'public.{}'::regclass and i.indisprimary",
            table.0
        ),
    );
    assert_eq!(primary_key, "key");
    let marker = first_text(
        &mut client,
        &format!(
            "select obj_description('public.{}'::regclass, 'pg_class')",
            table.0
        ),
    );
    assert_eq!(marker, "onlyone state table");
}

/// Item 2: two rows of an old table claiming one advisory key cannot be
/// merged safely: refused (77), naming both, and the table is left as it
/// was.
#[test]
fn old_state_table_with_two_rows_for_one_key_is_refused() {
    let env = TestEnv::new();
    let table = TestTable::new("old_twice");
    create_old_table(&table.0);
    let (a, b) = (unique("pg-twice-a"), unique("pg-twice-b"));
    let key = documented_key(&a);
    for (name, token) in [(&a, 3_i64), (&b, 7)] {
        admin()
            .execute(
                &format!(
                    "insert into public.{} (name, key, token, state) values ($1, $2, $3, 'held')",
                    table.0
                ),
                &[name, &key, &token],
            )
            .unwrap();
    }
    let out = run(
        &env,
        &run_args(&url(), &a, &["--table", &table.0], "echo ran"),
    );
    let err = stderr(&out);
    assert_eq!(code(out.status), 77, "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains(&format!("'{a}' (token 3, held), '{b}' (token 7, held)")),
        "{err}"
    );
    let rows = first_text(
        &mut admin(),
        &format!("select count(*)::text from public.{}", table.0),
    );
    assert_eq!(rows, "2");
}

/// Item 2: a role that may use an old table but not alter it gets the
/// statements to have its owner run (69).
#[test]
fn old_state_table_that_cannot_be_altered_prints_the_migration() {
    let env = TestEnv::new();
    let table = TestTable::new("old_foreign");
    create_old_table(&table.0);
    let role = format!("onlyone_test_user_{}", std::process::id());
    admin()
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login; \
             grant select, insert, update on public.{} to {role}",
            table.0
        ))
        .unwrap();
    let out = run(
        &env,
        &run_args(
            &url_as(&role),
            &unique("pg-foreign"),
            &["--table", &table.0],
            "echo ran",
        ),
    );
    let _ = admin().batch_execute(&format!(
        "drop table if exists public.{}; drop role if exists {role}",
        table.0
    ));
    let err = stderr(&out);
    assert_eq!(code(out.status), 69, "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains(&format!(
            "ALTER TABLE \"public\".\"{}\" DROP CONSTRAINT {}_pkey, ADD PRIMARY KEY (key)",
            table.0, table.0
        )),
        "{err}"
    );
    assert!(err.contains("COMMENT ON TABLE"), "{err}");
}

/// Item 6: a session that holds the key but that the state table does not
/// name (here psql) is not an onlyone holder: `stop` and `--replace` refuse
/// (77) and leave it alone.
#[test]
fn stop_and_replace_leave_a_holder_they_cannot_identify_alone() {
    let env = TestEnv::new();
    let name = unique("pg-stop-foreign");
    let key = documented_key(&name);
    let mut psql = Command::new("psql")
        .args(["-X", "-A", "-t", &url()])
        .args(["-c", &format!("select pg_advisory_lock({key})")])
        .args(["-c", "select 'locked'", "-c", "select pg_sleep(1000)"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(psql.stdout.take().unwrap()));
    assert!(lines.any(|line| line.unwrap() == "locked"));

    let out = env.run(&["stop", "--postgres", &url(), &name]);
    let err = stderr(&out);
    assert_eq!(code(out.status), 77, "{err}");
    assert!(
        err.contains(&format!(
            "cannot identify the holder of lock '{name}' safely"
        )),
        "{err}"
    );
    assert!(err.contains("stop it by hand"), "{err}");
    let out = run(&env, &run_args(&url(), &name, &["--replace"], "echo ran"));
    assert_exit(&out, 77);
    assert!(out.stdout.is_empty());

    assert!(psql.try_wait().unwrap().is_none(), "psql is still running");
    let held = first_text(
        &mut admin(),
        &format!(
            "select count(*)::text from pg_locks where granted and {}",
            key_condition(key)
        ),
    );
    assert_eq!(held, "1", "psql still holds the key");
    let _ = psql.kill();
    let _ = psql.wait();
}

/// Lets a holder of `name` lose its session uncleanly and waits until its
/// onlyone has stopped the command and exited 74.
fn leave_unclean(env: &TestEnv, name: &str) {
    let mut holder = start(env, &run_args(&url(), name, &[], &witnessed(env, "ready")));
    holder.expect_stdout_line("ready");
    terminate_holder_of(documented_key(name));
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 74, "{err}");
}

/// Item 10: `--timeout` bounds the wait and the lock-delay together. At the
/// timeout the starter releases, leaving the row 'held', and says why.
#[test]
fn timeout_bounds_the_lock_delay() {
    let env = TestEnv::new();
    let name = unique("pg-timeout-delay");
    leave_unclean(&env, &name);

    let started = Instant::now();
    let out = run(
        &env,
        &run_args(&url(), &name, &["--timeout", "1s"], "echo ran"),
    );
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(code(out.status), 75, "{err}");
    assert!(out.stdout.is_empty());
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        err.contains(&format!(
            "onlyone: gave up after 1s: lock '{name}' was free, but the previous holder did not release it cleanly and its lock-delay of 3s 500ms had not passed"
        )),
        "{err}"
    );
    // The row still says 'held': the next starter waits the whole delay.
    let started = Instant::now();
    let out = run(&env, &run_args(&url(), &name, &["--wait"], "echo ran"));
    assert_exit(&out, 0);
    assert!(started.elapsed() >= LOCK_DELAY);
}

/// Item 11: a waiter whose session is terminated during its lock-delay held
/// nothing that ran: it waits on with a new session and runs its command,
/// instead of exiting 74.
#[test]
fn waiter_terminated_during_the_lock_delay_waits_on() {
    let env = TestEnv::new();
    let name = unique("pg-delay-terminated");
    leave_unclean(&env, &name);

    let mut waiter = start(&env, &run_args(&url(), &name, &["--wait"], "echo ran"));
    waiter.expect_stderr_containing("did not release it cleanly");
    terminate_holder_of(documented_key(&name));
    waiter.expect_stderr_containing("the command never ran");
    let (status, out, err) = waiter.finish();
    assert_eq!(code(status), 0, "{err}");
    assert_eq!(out, "ran\n");
}

/// The backend pids of the sessions that process `pid` opened (onlyone ends
/// each `application_name` with `:<pid>`).
fn sessions_of(client: &mut postgres::Client, pids: &[u32]) -> BTreeSet<i32> {
    let mut sessions = BTreeSet::new();
    for pid in pids {
        for row in client
            .query(
                "select pid from pg_stat_activity where application_name like $1",
                &[&format!("onlyone:%:{pid}")],
            )
            .unwrap()
        {
            sessions.insert(row.get(0));
        }
    }
    sessions
}

/// Item 13: `--max` waiters wait in the server's lock queue. The first
/// queues on the pool's queue key and then on every slot, one session each;
/// the second only on the queue key: 1 + N + 1 sessions, the same ones for
/// seconds (they polled with a new connection every 50 ms). When a slot
/// frees, a waiter runs at once.
#[test]
fn pool_waiters_queue_on_the_server_without_new_connections() {
    let env = TestEnv::new();
    let name = unique("pg-pool");
    let pool = |extra: &[&str], script: &str| {
        let mut extra = extra.to_vec();
        extra.extend(["--max", "2"]);
        run_args(&url(), &name, &extra, script)
    };
    let mut holders: Vec<Running> = (0..2)
        .map(|_| start(&env, &pool(&[], "echo ready; exec sleep 1000")))
        .collect();
    for holder in &mut holders {
        holder.expect_stdout_line("ready");
    }
    let mut waiters: Vec<Running> = (0..2)
        .map(|_| start(&env, &pool(&["--wait"], "echo ran")))
        .collect();
    for waiter in &mut waiters {
        waiter.expect_stderr_containing("waiting for lock");
    }
    let pids: Vec<u32> = waiters.iter().map(Running::pid).collect();
    let mut client = admin();
    let until = Instant::now() + EVENT_TIMEOUT;
    let settled = loop {
        let sessions = sessions_of(&mut client, &pids);
        if sessions.len() == 4 {
            break sessions;
        }
        assert!(
            Instant::now() < until,
            "the waiters never settled: {sessions:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let watched_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watched_until {
        assert_eq!(sessions_of(&mut client, &pids), settled);
        std::thread::sleep(Duration::from_millis(100));
    }

    let freed = holders.remove(0);
    freed.signal(libc::SIGTERM);
    let (status, _, err) = freed.finish();
    let freed_at = Instant::now();
    assert_eq!(code(status), 143, "{err}");
    let mut runs = Vec::new();
    for waiter in waiters {
        let (status, out, err) = waiter.finish();
        runs.push(freed_at.elapsed());
        assert_eq!(code(status), 0, "{err}");
        assert_eq!(out, "ran\n");
    }
    assert!(
        runs.iter().all(|run| *run < Duration::from_secs(2)),
        "{runs:?}"
    );
}

/// An explicit key names one lock: with `--max` every slot would be that
/// one lock. Refused as a usage error.
#[test]
fn explicit_key_with_max_is_refused() {
    let env = TestEnv::new();
    let out = run(
        &env,
        &run_args(
            &url(),
            &unique("pg-key-max"),
            &["--key", "7", "--max", "2"],
            "echo ran",
        ),
    );
    assert_exit(&out, 64);
    assert!(out.stdout.is_empty());
}

/// A sibling of item 2: names in onlyone's own statements (`pg_locks`,
/// `pg_stat_activity`) were looked up through the role's search_path. A
/// schema listed before pg_catalog with a view of the same name fooled the
/// heartbeat (here into seeing no lock: the holder gave up at once; a view
/// that always shows the lock would hide a loss). Every session now looks
/// in pg_catalog first.
#[test]
fn names_shadowed_in_the_search_path_are_not_used() {
    let cluster = PgCluster::start();
    cluster.psql(
        "create schema shadow; \
         create view shadow.pg_locks as select * from pg_catalog.pg_locks where false; \
         alter database postgres set search_path = shadow, pg_catalog, public",
    );
    let env = TestEnv::new();
    let name = unique("pg-shadow");
    let mut holder = start(
        &env,
        &run_args(&cluster.url(), &name, &[], "echo ready; sleep 1"),
    );
    holder.expect_stdout_line("ready");
    let second = run(&env, &run_args(&cluster.url(), &name, &[], "echo ran"));
    let err = stderr(&second);
    assert_eq!(code(second.status), 75, "{err}");
    assert!(err.contains("is held by pid"), "{err}");
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 0, "{err}");
}
