//! Adversarial pass on the fenced writes (issue 14): attacks that let a
//! transaction under a stale token commit.

#![cfg(feature = "postgres")]

use crate::postgres_lib::{Fixture, acquired, admin, url};
use crate::postgres_run::{run, run_args, start};
use crate::util::TestEnv;
use onlyone::{Backend, PostgresBackend, STALE_TOKEN_SQLSTATE};

/// Finding 1: a function planted under the fence's name (`<table>_fence(text,
/// bigint)`) before onlyone creates its state table is kept, since the DDL
/// only creates the function when `to_regprocedure` finds none, and onlyone
/// hands out `ONLYONE_FENCE` calls to it. A planted function that returns
/// without checking lets a released holder's transaction commit. onlyone
/// must either refuse such a function (fail closed) or its fence must still
/// refuse the stale token.
#[test]
fn a_planted_fence_function_is_not_trusted() {
    let fixture = Fixture::new("attack_fence_planted");
    let function = format!("public.{}_fence", fixture.table);
    admin()
        .batch_execute(&format!(
            "CREATE FUNCTION {function}(name text, token bigint) RETURNS void \
             LANGUAGE sql AS 'SELECT NULL::void'"
        ))
        .unwrap();
    let verdict = (|| {
        // Refusing to start on a function it did not create is fail closed.
        let Ok(backend) = PostgresBackend::new(fixture.config()) else {
            return Ok(());
        };
        let name = fixture.name("lock");
        let guard = match backend.try_acquire(&name, &[]) {
            Ok(attempt) => acquired(attempt),
            Err(_) => return Ok(()),
        };
        let fence = guard.fence_sql().expect("PostgreSQL has a fence");
        guard.release().unwrap();
        let mut client = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
        let mut tx = client.transaction().unwrap();
        match tx.batch_execute(&fence) {
            Ok(()) => Err(format!(
                "a released token passed the planted fence: {fence}"
            )),
            Err(err) => {
                let code = err.as_db_error().map(|db| db.code().code().to_owned());
                assert_eq!(code.as_deref(), Some(STALE_TOKEN_SQLSTATE), "{err}");
                Ok(())
            }
        }
    })();
    admin()
        .batch_execute(&format!("DROP FUNCTION IF EXISTS {function}(text, bigint)"))
        .unwrap();
    verdict.unwrap();
}

/// Finding 2: the README's psycopg, asyncpg and sqlx snippets fenced with
/// `(ONLYONE_NAME, ONLYONE_TOKEN)`. Under `--max` the lock is `NAME@SLOT`
/// but `ONLYONE_NAME` is the bare NAME, so the current holder's own
/// transaction was refused as "stale fencing token ... has no row for it":
/// a misleading refusal of the one legitimate writer. The snippets now run
/// `ONLYONE_FENCE` itself, which must pass for the holder of a pool slot.
#[test]
fn the_documented_fence_call_passes_for_a_pool_slot_holder() {
    let env = TestEnv::new();
    let fixture = Fixture::new("attack_fence_pool");
    let name = fixture.name("pool").to_string();
    let said = env.path("fenced-with");
    let script = format!(
        "printf '%s' \"$ONLYONE_FENCE\" > {}; echo ready; exec sleep 1000",
        said.display()
    );
    let mut holder = start(
        &env,
        &run_args(
            &url(),
            &name,
            &["--table", fixture.table.as_str(), "--max", "2"],
            &script,
        ),
    );
    holder.expect_stdout_line("ready");
    // The README now runs `ONLYONE_FENCE` itself: the slot's name, the
    // token and the function of `--table`, typed.
    let fence = std::fs::read_to_string(&said).unwrap();

    let mut client = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    let mut tx = client.transaction().unwrap();
    let passed = tx.batch_execute(&fence);
    drop(tx);
    holder.kill_tree();
    admin()
        .batch_execute(&format!(
            "DROP FUNCTION IF EXISTS {}_fence(text, bigint)",
            fixture.table
        ))
        .unwrap();
    if let Err(err) = passed {
        panic!("the holder's own ONLYONE_FENCE={fence} was refused: {err:?}");
    }
}

/// Finding 3: with an explicit `--key` the command gets no `ONLYONE_FENCE`
/// at all, so the README's psql snippet (`-c "$ONLYONE_FENCE"` between
/// BEGIN and the write) runs an empty command and commits the write
/// unfenced, exit 0, even for a stale holder: fail open. The variable must
/// be set to a statement that refuses (or that fences), never silently
/// absent; here it is run once the holder is gone, so it must fail.
#[test]
fn the_fence_is_never_silently_absent_with_an_explicit_key() {
    let env = TestEnv::new();
    let fixture = Fixture::new("attack_fence_key");
    let name = fixture.name("keyed").to_string();
    let key = (std::process::id() as i64) << 8 | 0x5a;
    let output = run(
        &env,
        &run_args(
            &url(),
            &name,
            &["--table", fixture.table.as_str(), "--key", &key.to_string()],
            "printf '%s' \"${ONLYONE_FENCE-unset}\"",
        ),
    );
    let fence = String::from_utf8(output.stdout).unwrap();
    let ran = (fence != "unset").then(|| {
        let mut client = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
        let mut tx = client.transaction().unwrap();
        tx.batch_execute(&fence).is_ok()
    });
    admin()
        .batch_execute(&format!(
            "DROP FUNCTION IF EXISTS {}_fence(text, bigint)",
            fixture.table
        ))
        .unwrap();
    assert_eq!(
        ran,
        Some(false),
        "ONLYONE_FENCE={fence:?}: absent (None) or passing after release (Some(true)), \
         the documented snippet writes unfenced"
    );
}
