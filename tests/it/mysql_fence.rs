//! The MySQL/MariaDB state table's guard triggers and the fence function
//! `onlyone_fence(name, token)`, against the test server
//! (ONLYONE_TEST_MYSQL_URL). Tests that change or tamper with what onlyone
//! created do it in a database of their own, so that tests running beside
//! them in the shared database are not disturbed.

#![cfg(feature = "mysql")]

use std::io::Write;
use std::process::{ChildStdin, Stdio};
use std::time::Instant;

use crate::mysql_run::{
    LOCK_DELAY, client, lock_name_in, run, run_args, server, sql, start, unique, url, witnessed,
};
use crate::util::{Running, TestEnv, assert_exit, stderr};

/// A new, empty database on the test server; its URL.
pub(crate) fn own_database(tag: &str) -> String {
    let target = server(&url());
    let db = format!("onlyone_{tag}_{}", std::process::id());
    sql(
        &url(),
        &format!("DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`"),
    );
    format!(
        "mysql://{}@{}:{}/{db}",
        target.user, target.host, target.port
    )
}

/// Runs `sql` with the `mariadb` client, expecting it to fail; its error.
fn sql_error(url: &str, statement: &str) -> String {
    let out = client(url)
        .args(["-e", statement])
        .output()
        .expect("run mariadb");
    assert!(!out.status.success(), "{statement} succeeded");
    stderr(&out)
}

/// A `mariadb` client session kept open, fed statement by statement: a
/// program's own connection, outside any onlyone's process group (as a
/// process that escaped it, or one on another machine).
pub(crate) struct Program {
    pub(crate) running: Running,
    input: ChildStdin,
}

impl Program {
    pub(crate) fn open(url: &str) -> Program {
        let mut command = client(url);
        // The client goes on after an error, and prints it.
        command
            .arg("--force")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut running = Running::spawn(&mut command);
        let input = running.child.stdin.take().expect("piped stdin");
        Program { running, input }
    }

    /// Sends `statements`, then `SELECT 'said'`, and waits for `said`.
    pub(crate) fn send(&mut self, statements: &str, said: &str) {
        writeln!(self.input, "{statements}; SELECT '{said}';").expect("write to mariadb");
        self.input.flush().expect("flush");
        self.running.expect_stdout_line(said);
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.running.child.kill();
        let _ = self.running.child.wait();
    }
}

/// Another session may neither delete a holder's row nor change it (to
/// `released`, or a bound, or its token back); the holder's own writes
/// (acquisition, clean release) go through, and so does `stop`'s mark.
#[test]
fn mysql_other_sessions_may_not_delete_or_change_a_row() {
    let env = TestEnv::new();
    let name = unique("my-guarded");
    let lock_name = lock_name_in(&url(), &name);
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let deleted = sql_error(
        &url(),
        &format!("DELETE FROM onlyone_locks WHERE lock_name = '{lock_name}'"),
    );
    assert!(
        deleted.contains(&format!(
            "(23001) at line 1: onlyone: the row of lock '{name}' (token 1, held) in onlyone_locks cannot be deleted"
        )),
        "{deleted}"
    );
    for change in [
        "state = 'released'",
        "owed_ms = owed_ms + 1",
        "token = token + 1",
        "stopped_token = token + 5",
    ] {
        let refused = sql_error(
            &url(),
            &format!("UPDATE onlyone_locks SET {change} WHERE lock_name = '{lock_name}'"),
        );
        assert!(
            refused.contains(&format!(
                "onlyone: the row of lock '{name}' (token 1, held) can only be changed by the session that holds its named lock"
            )),
            "{change}: {refused}"
        );
    }
    let back = sql_error(
        &url(),
        &format!("UPDATE onlyone_locks SET token = 0 WHERE lock_name = '{lock_name}'"),
    );
    assert!(
        back.contains("cannot change its lock name or move its token back"),
        "{back}"
    );
    let replaced = sql_error(
        &url(),
        &format!(
            "REPLACE INTO onlyone_locks (lock_name, name, token, state) VALUES ('{lock_name}', '{name}', 9, 'released')"
        ),
    );
    // REPLACE and INSERT … ON DUPLICATE KEY UPDATE insert first: the guard
    // against adding rows refuses them before the row is looked at.
    assert!(
        replaced.contains("can only be added by the session that holds its named lock"),
        "{replaced}"
    );
    let upserted = sql_error(
        &url(),
        &format!(
            "INSERT INTO onlyone_locks (lock_name, name, token, state) VALUES ('{lock_name}', '{name}', 9, 'released') \
             ON DUPLICATE KEY UPDATE state = 'released'"
        ),
    );
    assert!(
        upserted.contains("can only be added by the session that holds its named lock"),
        "{upserted}"
    );
    assert_eq!(
        sql(
            &url(),
            &format!("SELECT token, state FROM onlyone_locks WHERE lock_name = '{lock_name}'")
        ),
        "1\theld"
    );
    // `stop`'s mark, from a session of its own, goes through; and so the
    // holder is stopped.
    let stopped = env.run(&["stop", "--mysql", &url(), &name]);
    assert_exit(&stopped, 0);
    let (status, _, err) = holder.finish();
    assert_eq!(crate::util::code(status), 74, "{err}");
    // The next holder's acquisition and clean release are the holder's own
    // writes: token 2, then 3 without a lock-delay.
    let next = run(
        &env,
        &run_args(&url(), &name, &["--wait"], "echo $ONLYONE_TOKEN"),
    );
    assert_exit(&next, 0);
    assert_eq!(String::from_utf8_lossy(&next.stdout).trim(), "2");
    let started = Instant::now();
    let after = run(&env, &run_args(&url(), &name, &[], "echo $ONLYONE_TOKEN"));
    assert_exit(&after, 0);
    assert_eq!(String::from_utf8_lossy(&after.stdout).trim(), "3");
    assert!(
        started.elapsed() < LOCK_DELAY,
        "a clean release was recorded"
    );
}

/// A trigger on the state table that onlyone did not create, or one of its
/// names with another body, and a fence function with another body, are
/// refused (77), never used or replaced.
#[test]
fn mysql_a_tampered_trigger_or_fence_is_refused() {
    let env = TestEnv::new();
    let own = own_database("tamper");
    let name = unique("my-tamper");
    let ok = run(&env, &run_args(&own, &name, &[], "echo ran"));
    assert_exit(&ok, 0);

    // A guard trigger of onlyone's name whose body lets a DELETE through.
    sql(
        &own,
        "DROP TRIGGER onlyone_guard_delete; \
         CREATE TRIGGER onlyone_guard_delete BEFORE DELETE ON onlyone_locks FOR EACH ROW BEGIN END",
    );
    let out = run(&env, &run_args(&own, &name, &[], "echo ran"));
    assert_exit(&out, 77);
    let err = stderr(&out);
    assert!(
        err.contains("has a trigger onlyone did not create, or not with this body: onlyone_guard_delete (BEFORE DELETE)"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    sql(&own, "DROP TRIGGER onlyone_guard_delete");
    assert_exit(&run(&env, &run_args(&own, &name, &[], "echo ran")), 0);

    // A trigger of another name, which could rewrite a holder's row.
    sql(
        &own,
        "CREATE TRIGGER sneaky BEFORE UPDATE ON onlyone_locks FOR EACH ROW SET NEW.state = 'released'",
    );
    let out = run(&env, &run_args(&own, &name, &[], "echo ran"));
    assert_exit(&out, 77);
    assert!(
        stderr(&out).contains("DROP TRIGGER sneaky"),
        "{}",
        stderr(&out)
    );
    sql(&own, "DROP TRIGGER sneaky");

    // A fence that passes every token.
    sql(
        &own,
        "DROP FUNCTION onlyone_fence; \
         CREATE FUNCTION onlyone_fence(given_name VARCHAR(255) CHARACTER SET utf8mb4, given_token BIGINT UNSIGNED) \
         RETURNS BIGINT UNSIGNED READS SQL DATA RETURN given_token",
    );
    let out = run(&env, &run_args(&own, &name, &[], "echo ran"));
    assert_exit(&out, 77);
    let err = stderr(&out);
    assert!(
        err.contains("the fence function onlyone_fence at ")
            && err.contains("is not the one onlyone creates"),
        "{err}"
    );
    sql(&own, "DROP FUNCTION onlyone_fence");
    assert_exit(&run(&env, &run_args(&own, &name, &[], "echo ran")), 0);
}

/// An account that may create the table but not triggers gets the
/// statements to have a privileged account run (69).
#[test]
fn mysql_without_the_privilege_to_create_triggers_says_what_to_run() {
    let env = TestEnv::new();
    let own = own_database("notrigger");
    let target = server(&own);
    let user = format!("onlyone_nt_{}", std::process::id());
    sql(
        &url(),
        &format!(
            "CREATE USER IF NOT EXISTS '{user}'@'%'; \
             GRANT SELECT, INSERT, UPDATE, CREATE ON `{}`.* TO '{user}'@'%'",
            target.db
        ),
    );
    let limited = format!(
        "mysql://{user}@{}:{}/{}",
        target.host, target.port, target.db
    );
    let out = run(&env, &run_args(&limited, &unique("my-nt"), &[], "echo ran"));
    assert_exit(&out, 69);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot create the guard triggers and the fence function")
            && err.contains(
                "started with --delimiter=// in this database (mariadb --delimiter=// DATABASE): CREATE TRIGGER onlyone_guard_delete BEFORE DELETE ON onlyone_locks FOR EACH ROW BEGIN DECLARE message"
            )
            && err.contains("CREATE FUNCTION onlyone_fence("),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// The fence passes the current holder's token (in the holder's command,
/// from ONLYONE_FENCE) and raises ON001 for any other, and for a name that
/// needs the hashed lock name it finds the right row.
#[test]
fn mysql_the_fence_accepts_the_current_token_and_refuses_a_stale_one() {
    let env = TestEnv::new();
    let pid = std::process::id();
    // A plain name, one hashed for its capitals, and a slot of `--max`.
    for (name, extra, fenced) in [
        (unique("my-fence"), &[][..], unique("my-fence")),
        (
            format!("My-Fence-{pid}"),
            &[][..],
            format!("My-Fence-{pid}"),
        ),
        (
            unique("my-fence-max"),
            &["--max", "2"][..],
            format!("{}@1", unique("my-fence-max")),
        ),
    ] {
        let mut holder = start(
            &env,
            &run_args(
                &url(),
                &name,
                extra,
                &format!(
                    "echo \"$ONLYONE_TOKEN\"; echo \"$ONLYONE_FENCE\"; {}",
                    witnessed(&env, "ready")
                ),
            ),
        );
        let token: u64 = holder.expect_stdout_any().parse().unwrap();
        let fence = holder.expect_stdout_any();
        holder.expect_stdout_line("ready");
        let db = server(&url()).db;
        assert_eq!(
            fence,
            format!("SELECT `{db}`.onlyone_fence('{fenced}', {token})")
        );
        assert_eq!(
            sql(&url(), &format!("START TRANSACTION; {fence}; COMMIT")),
            token.to_string()
        );
        let stale = sql_error(
            &url(),
            &format!(
                "START TRANSACTION; SELECT `{db}`.onlyone_fence('{fenced}', {})",
                token + 1
            ),
        );
        assert!(
            stale.contains(&format!(
                "(ON001) at line 1: onlyone: stale fencing token {} for lock '{fenced}' (current token {token}, held)",
                token + 1
            )),
            "{stale}"
        );
        let unknown = sql_error(
            &url(),
            &format!("SELECT `{db}`.onlyone_fence('{name}-none', 1)"),
        );
        assert!(unknown.contains("(current token none)"), "{unknown}");
        holder.kill();
    }
}

/// The ordering rule: a transaction that passed the fence and stays open
/// holds off the next holder's start (which says why it waits) until it
/// ends, and the next holder then sees its write; the old token's fence
/// then raises, so a paused old holder's later write is refused.
#[test]
fn mysql_a_fenced_transaction_holds_off_the_next_holder_until_it_ends() {
    let env = TestEnv::new();
    let name = unique("my-fence-order");
    let table = format!("fenced_{}", std::process::id());
    sql(
        &url(),
        &format!("CREATE TABLE IF NOT EXISTS {table} (token BIGINT) ENGINE=InnoDB"),
    );
    let mut holder = start(
        &env,
        &run_args(
            &url(),
            &name,
            &[],
            &format!("echo \"$ONLYONE_FENCE\"; {}", witnessed(&env, "ready")),
        ),
    );
    let fence = holder.expect_stdout_any();
    holder.expect_stdout_line("ready");
    // The old holder's program: a fenced transaction, left open.
    let mut program = Program::open(&url());
    program.send(&format!("START TRANSACTION; {fence}"), "fenced");
    // The old holder dies; its program does not.
    holder.kill();
    let mut next = start(
        &env,
        &run_args(
            &url(),
            &name,
            &["--wait"],
            &format!(
                "echo next; mariadb --no-defaults -h {} -P {} -u {} -N -B {} -e 'SELECT count(*) FROM {table}'; exec sleep 1000",
                server(&url()).host,
                server(&url()).port,
                server(&url()).user,
                server(&url()).db
            ),
        ),
    );
    next.expect_stderr_containing(
        "waiting for the fenced transactions of the previous holder to end",
    );
    // The wait has no deadline: not the client's 10 s answer deadline
    // (the starter gave up its session and started over, waiting again),
    // nor the server's innodb_lock_wait_timeout. The transaction stays
    // open past the first.
    std::thread::sleep(std::time::Duration::from_secs(12));
    // Still in the open transaction, after the next holder began to wait:
    // the old holder's write, then its commit.
    program.send(&format!("INSERT INTO {table} VALUES (1)"), "written");
    program.send("COMMIT", "committed");
    next.expect_stdout_line("next");
    // The next holder's command sees the write: it started after the commit.
    next.expect_stdout_line("1");
    // A paused old holder's next write: its fence is stale now.
    program.send(&format!("START TRANSACTION; {fence}"), "stale");
    let err = program
        .running
        .expect_stderr_containing("onlyone: stale fencing token 1 for lock");
    assert!(err.contains("(current token 2, held)"), "{err}");
    next.signal(libc::SIGTERM);
    let (_, _, rest) = next.finish();
    assert!(
        !rest.contains("waiting for the fenced transactions") && !rest.contains("trying again"),
        "one wait, never given up: {rest}"
    );
    sql(&url(), &format!("DROP TABLE {table}"));
}

/// `stop` while the holder's command is inside a fenced transaction: the
/// transaction share-locks the row that `stop` marks, and ends only once
/// the command is stopped. `stop` ends the holder's session anyway, within
/// seconds (it waited for the row and failed after 10 s before), and the
/// next holder starts once the stopped command's transaction is gone.
#[test]
fn mysql_stop_ends_a_holder_whose_command_is_in_a_fenced_transaction() {
    let env = TestEnv::new();
    let name = unique("my-fence-stop");
    let target = server(&url());
    let mut holder = start(
        &env,
        &run_args(
            &url(),
            &name,
            &[],
            &format!(
                "(echo \"START TRANSACTION; $ONLYONE_FENCE; SELECT 'fenced';\"; exec sleep 1000) | \
                 mariadb --no-defaults -h {} -P {} -u {} -N -B --unbuffered {}",
                target.host, target.port, target.user, target.db
            ),
        ),
    );
    holder.expect_stdout_line("fenced");
    let started = Instant::now();
    let stopped = env.run(&["stop", "--mysql", &url(), &name]);
    assert_exit(&stopped, 0);
    assert!(
        stderr(&stopped).contains("fenced transactions of the holder's command hold its row"),
        "{}",
        stderr(&stopped)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let (status, _, err) = holder.finish();
    assert_eq!(crate::util::code(status), 74, "{err}");
    let next = run(
        &env,
        &run_args(&url(), &name, &["--wait"], "echo $ONLYONE_TOKEN"),
    );
    assert_exit(&next, 0);
    assert_eq!(String::from_utf8_lossy(&next.stdout).trim(), "2");
}

/// A fence that raised takes no row lock: InnoDB would keep it until the
/// transaction ends, and a stale holder's failed transaction, left open,
/// would hold the next holder off (it waited with no deadline).
#[test]
fn mysql_a_fence_that_raised_does_not_hold_off_the_next_holder() {
    let env = TestEnv::new();
    let name = unique("my-fence-raised");
    let first = run(
        &env,
        &run_args(&url(), &name, &[], "echo \"$ONLYONE_FENCE\""),
    );
    assert_exit(&first, 0);
    let fence = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    // Token 1 was released: its fence raises, in a transaction left open.
    let mut program = Program::open(&url());
    program.send(&format!("START TRANSACTION; {fence}"), "raised");
    program
        .running
        .expect_stderr_containing("(current token 1, released)");
    let mut next = start(&env, &run_args(&url(), &name, &[], "echo $ONLYONE_TOKEN"));
    next.expect_stdout_line("2");
    let (status, _, err) = next.finish();
    assert_eq!(crate::util::code(status), 0, "{err}");
    assert!(
        !err.contains("waiting for the fenced transactions"),
        "{err}"
    );
}

/// An account that may use the table and see its triggers, but not read
/// the fence function that a privileged account created, cannot check it:
/// refused (69), saying what to grant; granted that, it runs.
#[test]
fn mysql_an_account_that_cannot_read_the_fence_is_told_what_to_grant() {
    let env = TestEnv::new();
    let own = own_database("noproc");
    let target = server(&own);
    let name = unique("my-noproc");
    assert_exit(&run(&env, &run_args(&own, &name, &[], "echo ran")), 0);
    let user = format!("onlyone_np_{}", std::process::id());
    sql(
        &url(),
        &format!(
            "CREATE USER IF NOT EXISTS '{user}'@'%'; \
             GRANT SELECT, INSERT, UPDATE, CREATE, TRIGGER ON `{}`.* TO '{user}'@'%'",
            target.db
        ),
    );
    let limited = format!(
        "mysql://{user}@{}:{}/{}",
        target.host, target.port, target.db
    );
    let out = run(&env, &run_args(&limited, &name, &[], "echo ran"));
    assert_exit(&out, 69);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("SELECT ON mysql.proc"), "{err}");
    assert!(out.stdout.is_empty());
    sql(
        &url(),
        &format!(
            "GRANT SELECT ON mysql.proc TO '{user}'@'%'; \
             GRANT EXECUTE ON FUNCTION `{}`.onlyone_fence TO '{user}'@'%'",
            target.db
        ),
    );
    let out = run(
        &env,
        &run_args(
            &limited,
            &name,
            &[],
            &format!(
                "mariadb --no-defaults -h {} -P {} -u {user} -N -B {} -e \"START TRANSACTION; $ONLYONE_FENCE; COMMIT\"",
                target.host, target.port, target.db
            ),
        ),
    );
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}
