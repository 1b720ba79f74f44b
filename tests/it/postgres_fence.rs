//! Issue 14's fenced writes: `onlyone_fence(name, token)`, created beside
//! the state table, orders every transaction that passed it before the
//! next holder's token, and fails once that token is committed. A stale
//! writer here is a transaction opened under the old token, as a process
//! that escaped its group or a frozen holder would leave it.

#![cfg(feature = "postgres")]

use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use crate::attack_pg::SchemaWithCreator;
use crate::postgres_lib::{Fixture, acquired, admin, holder_backend_pid, terminate, url, url_as};
use crate::postgres_run::{documented_key, run, run_args, start, unique};
use crate::util::{EVENT_TIMEOUT, TestEnv, code, stderr};
use onlyone::{Backend, STALE_TOKEN_SQLSTATE, Wait};

/// The advisory key that fenced transactions of lock `name` hold shared.
pub(crate) fn fence_key(name: &str) -> i64 {
    documented_key(&format!("{name}@fence"))
}

/// Waits until a session queues on the advisory key `key` (a next holder
/// waiting for fenced transactions); bystanders get no event for it.
pub(crate) fn wait_for_queue(key: i64) {
    let sql = format!(
        "select count(*) from pg_locks where locktype = 'advisory' and not granted \
         and classid = {} and objid = {} and objsubid = 1",
        ((key as u64) >> 32) as u32,
        key as u64 as u32
    );
    let mut client = admin();
    let until = Instant::now() + EVENT_TIMEOUT;
    while client.query_one(&sql, &[]).unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < until, "nobody queued for key {key}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn writer() -> postgres::Client {
    postgres::Client::connect(&url(), postgres::NoTls).unwrap()
}

/// A table the fenced writers write to, made afresh.
fn writes_table(fixture: &Fixture) -> String {
    let writes = format!("{}_writes", fixture.table);
    admin()
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {writes}; CREATE TABLE {writes} (token bigint)"
        ))
        .unwrap();
    writes
}

/// Runs `fence` in a new transaction of `client` and returns the error.
fn fence_error(client: &mut postgres::Client, fence: &str) -> postgres::error::DbError {
    let mut tx = client.transaction().unwrap();
    let err = tx
        .batch_execute(fence)
        .expect_err("a stale token is refused");
    err.as_db_error().expect("raised by the server").clone()
}

/// The stale writer: a transaction that passed the fence with the
/// old token keeps the next holder from committing its token (and so from
/// returning) until it ends; it commits, being ordered first. Once the next
/// token is committed, the old token's fence raises `ON001`, naming the
/// lock and both tokens.
#[test]
fn a_stale_writer_holds_off_the_next_token_then_fails_the_fence() {
    let fixture = Fixture::new("fence_stale");
    let writes = writes_table(&fixture);
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let old = acquired(backend.try_acquire(&name, &[]).unwrap());
    let old_token = old.token().unwrap();
    let fence = old.fence_sql().expect("PostgreSQL has a fence");
    assert_eq!(
        fence,
        format!(
            "SELECT \"public\".{}_fence('{name}'::text, {old_token}::bigint)",
            fixture.table
        )
    );

    let mut client = writer();
    let mut stale = client.transaction().unwrap();
    stale.batch_execute(&fence).unwrap();
    terminate(holder_backend_pid(&backend, &name));
    old.loss_watch()
        .wait(Some(backend.heartbeat_deadline()))
        .expect("the old holder learns of its loss");
    drop(old);

    let (returned, next_returned) = mpsc::channel();
    let next_backend = fixture.backend();
    let next_name = name.clone();
    let next = thread::spawn(move || {
        let guard = acquired(
            next_backend
                .acquire(&next_name, &[], Wait::at_most(None))
                .unwrap(),
        );
        returned.send(()).unwrap();
        guard
    });
    wait_for_queue(fence_key(name.as_str()));
    // Queued in the server behind the stale transaction: not returned.
    assert!(next_returned.try_recv().is_err());
    stale
        .execute(
            &format!("INSERT INTO {writes} VALUES ($1)"),
            &[&(old_token as i64)],
        )
        .unwrap();
    stale
        .commit()
        .expect("ordered before the next token, it commits");
    let next = next.join().unwrap();
    let new_token = next.token().unwrap();
    assert!(new_token > old_token);

    let err = fence_error(&mut client, &fence);
    assert_eq!(err.code().code(), STALE_TOKEN_SQLSTATE);
    let message = err.message();
    for part in [
        "stale",
        name.as_str(),
        &old_token.to_string(),
        &new_token.to_string(),
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }

    let mut tx = client.transaction().unwrap();
    tx.batch_execute(&next.fence_sql().unwrap()).unwrap();
    tx.execute(
        &format!("INSERT INTO {writes} VALUES ($1)"),
        &[&(new_token as i64)],
    )
    .unwrap();
    tx.commit().unwrap();
    let rows: Vec<i64> = admin()
        .query(&format!("SELECT token FROM {writes} ORDER BY token"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(rows, [old_token as i64, new_token as i64]);
    admin()
        .batch_execute(&format!("DROP TABLE {writes}"))
        .unwrap();
}

/// A released lock, a lock never taken and a token from the future all
/// fail the fence; the holder's own token passes.
#[test]
fn only_the_current_holders_token_passes_the_fence() {
    let fixture = Fixture::new("fence_current");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    let token = guard.token().unwrap();
    let fence = guard.fence_sql().unwrap();
    let mut client = writer();
    client
        .batch_execute(&format!("BEGIN; {fence}; COMMIT"))
        .unwrap();

    let future = fence.replace(&format!(", {token}::"), &format!(", {}::", token + 1));
    let err = fence_error(&mut client, &future);
    assert_eq!(err.code().code(), STALE_TOKEN_SQLSTATE);

    guard.release().unwrap();
    let err = fence_error(&mut client, &fence);
    assert_eq!(err.code().code(), STALE_TOKEN_SQLSTATE);
    assert!(err.message().contains("released"), "{}", err.message());

    let never = fence.replace(name.as_str(), &format!("{name}-never"));
    let err = fence_error(&mut client, &never);
    assert_eq!(err.code().code(), STALE_TOKEN_SQLSTATE);
    assert!(err.message().contains("has no row"), "{}", err.message());
}

/// What DESIGN.md says of savepoints: a fence call rolled back to a
/// savepoint taken before it releases its row lock (and its share of
/// `NAME@fence`) at once, not at the end of the transaction. The holder
/// releases and the next one commits its token while the transaction is
/// still open, and the transaction's later writes commit after that
/// token: they were not fenced. (A fence at the top level holds the next
/// token off: `a_stale_writer_holds_off_the_next_token_then_fails_the_fence`.)
#[test]
fn a_fence_rolled_back_to_a_savepoint_no_longer_holds_off_the_next_holder() {
    let fixture = Fixture::new("fence_savepoint");
    let backend = fixture.backend();
    let name = fixture.name("lock");
    let guard = acquired(backend.try_acquire(&name, &[]).unwrap());
    let fence = guard.fence_sql().unwrap();
    let writes = writes_table(&fixture);
    let mut client = writer();
    let mut tx = client.transaction().unwrap();
    tx.batch_execute(&format!("SAVEPOINT s; {fence}; ROLLBACK TO SAVEPOINT s"))
        .unwrap();
    let started = Instant::now();
    guard.release().unwrap();
    let next = acquired(backend.try_acquire(&name, &[]).unwrap());
    assert_eq!(next.token(), Some(2));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the next holder waited {:?}",
        started.elapsed()
    );
    tx.batch_execute(&format!("INSERT INTO {writes} VALUES (1)"))
        .unwrap();
    tx.commit()
        .expect("an unfenced write commits after the next token");
    drop(next);
}

/// `onlyone run` hands the command its fence as `ONLYONE_FENCE`; after its
/// supervisor is killed, the next `run` says it waits for the fenced
/// transaction that the old command left open and does not start its
/// command until that transaction has ended.
#[test]
fn the_next_run_waits_for_fenced_transactions_and_says_so() {
    let env = TestEnv::new();
    let fixture = Fixture::new("fence_cli");
    let name = fixture.name("lock").to_string();
    let table = ["--table", fixture.table.as_str()];
    let mut first = start(
        &env,
        &run_args(
            &url(),
            &name,
            &table,
            "echo \"$ONLYONE_FENCE\"; exec sleep 1000",
        ),
    );
    let fence = format!(
        "SELECT \"public\".{}_fence('{name}'::text, 1::bigint)",
        fixture.table
    );
    first.expect_stdout_line(&fence);

    let mut client = writer();
    let mut stale = client.transaction().unwrap();
    stale.batch_execute(&fence).unwrap();
    first.kill_tree();

    let mut next = start(
        &env,
        &run_args(
            &url(),
            &name,
            &[&table[..], &["--wait"]].concat(),
            "echo next ran",
        ),
    );
    next.expect_stderr_containing(
        "waiting for 1 fenced transactions of the previous holder to end",
    );
    wait_for_queue(fence_key(&name));
    stale.commit().unwrap();
    let (status, out, err) = next.finish();
    assert_eq!(code(status), 0, "{err}");
    assert_eq!(out, "next ran\n");

    let err = fence_error(&mut client, &fence);
    assert_eq!(err.code().code(), STALE_TOKEN_SQLSTATE);
}

/// `stop` marks the holder's row (its request), which the command's open
/// fenced transaction keeps share-locked, and the transaction would end
/// only once the command is stopped: `stop` ends the sessions of the
/// fenced transactions too, at once, instead of waiting for the row until
/// its statement deadline and failing; the holder then stops as asked.
#[test]
fn stop_ends_a_holder_whose_command_keeps_a_fenced_transaction_open() {
    let env = TestEnv::new();
    let fixture = Fixture::new("fence_stop");
    let name = fixture.name("lock").to_string();
    let table = ["--table", fixture.table.as_str()];
    let mut holder = start(
        &env,
        &run_args(
            &url(),
            &name,
            &table,
            "echo \"$ONLYONE_FENCE\"; exec sleep 1000",
        ),
    );
    let fence = format!(
        "SELECT \"public\".{}_fence('{name}'::text, 1::bigint)",
        fixture.table
    );
    holder.expect_stdout_line(&fence);
    let mut client = writer();
    let mut open = client.transaction().unwrap();
    open.batch_execute(&fence).unwrap();

    let started = Instant::now();
    let out = env.run(&[&["stop", "--postgres", &url(), &name][..], &table[..]].concat());
    assert_eq!(code(out.status), 0, "{}", crate::util::stderr(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 143, "{err}");
    assert!(open.commit().is_err(), "the fenced transaction was ended");
}

/// A role that may only create in the table's schema makes the fence
/// function first, as one that always passes: without a check onlyone
/// would adopt it by its name (it creates the fence only when missing), and
/// every stale writer would commit. Once onlyone's fence is there, the same
/// role adds an overload that a call with untyped literals would resolve
/// to (`integer` fits `42` better than `bigint`). Both are refused (77,
/// naming the function and what is wrong), never used nor replaced; the
/// fence call onlyone hands out is typed exactly.
#[test]
fn a_fence_function_planted_in_the_schema_is_refused() {
    let env = TestEnv::new();
    let planted = SchemaWithCreator::new("fence_planter");
    let table = format!("{}.locks", planted.schema);
    let fence = format!("{}.locks_fence", planted.schema);
    let plant = |arguments: &str| {
        postgres::Client::connect(&url_as(&planted.role), postgres::NoTls)
            .unwrap()
            .batch_execute(&format!(
                "CREATE FUNCTION {fence}({arguments}) RETURNS void LANGUAGE sql AS 'SELECT'"
            ))
            .unwrap();
    };
    let name = unique("fence-planted");
    let args = run_args(&url(), &name, &["--table", &table], "echo ran");
    let refused = |problems: &str| {
        let out = run(&env, &args);
        let err = stderr(&out);
        assert_eq!(code(out.status), 77, "{err}");
        assert!(out.stdout.is_empty(), "{err}");
        assert!(
            err.contains(&format!(
                "the fence function {fence}(text,bigint) of the state table {table} is not the one onlyone creates ({problems})"
            )),
            "{err}"
        );
    };
    let mut admin = admin();

    // Planted before the table exists: refused, and nothing is created.
    plant("name text, token bigint");
    refused(&format!(
        "its owner {} neither owns the table {table} nor is a superuser; its body is not the fence's; its language is sql, not plpgsql; it is not SECURITY DEFINER; its settings are [], not SET search_path = pg_catalog, pg_temp",
        planted.role
    ));
    let exists: bool = admin
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .unwrap()
        .get(0);
    assert!(!exists, "the table was created beside the planted fence");

    // Dropped: onlyone makes its own. An overload planted beside it is
    // refused too.
    admin
        .batch_execute(&format!("DROP FUNCTION {fence}(text, bigint)"))
        .unwrap();
    let out = run(&env, &args);
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    plant("name text, token integer");
    refused(&format!(
        "other functions share its name: {fence}(text,integer)"
    ));

    // Without the overload, onlyone's fence is used again, and refuses a
    // stale token.
    admin
        .batch_execute(&format!("DROP FUNCTION {fence}(text, integer)"))
        .unwrap();
    let out = run(&env, &args);
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    let err = fence_error(
        &mut writer(),
        &format!("SELECT {fence}('{name}'::text, 1::bigint)"),
    );
    assert_eq!(err.code().code(), STALE_TOKEN_SQLSTATE, "{err}");
}
