//! Adversarial tests of the MySQL/MariaDB guard triggers and fence
//! function (branch my-fence), against the test server
//! (ONLYONE_TEST_MYSQL_URL), each in a database of its own.

#![cfg(feature = "mysql")]

use crate::mysql_fence::{Program, own_database};
use crate::mysql_run::{lock_name_in, run, run_args, server, sql, start, witnessed};
use crate::util::{TestEnv, stderr};

/// Finding 1: the token stops growing at the top of BIGINT UNSIGNED
/// (`saturating_add`). A row planted with the largest token (an INSERT,
/// which no trigger guards, or an UPDATE by a session that took the free
/// named lock) makes two acquisitions share one token, so the earlier
/// holder's fence passes while the later one holds the lock: its stale
/// write commits. A token that cannot grow must refuse the acquisition.
/// Planted here by a session that took the free named lock itself, which
/// the triggers let through (as they must: that is what a starter does).
#[test]
fn mysql_attack_the_largest_token_is_never_handed_out_twice() {
    let env = TestEnv::new();
    let url = own_database("attack_top");
    let db = server(&url).db;
    let name = "top-token";
    // The table, its triggers and the fence, made the ordinary way.
    let made = run(&env, &run_args(&url, "maker", &[], "true"));
    assert!(made.status.success(), "{}", stderr(&made));
    let lock_name = lock_name_in(&url, name);
    sql(
        &url,
        &format!(
            "DO GET_LOCK('{lock_name}', 0); \
             INSERT INTO onlyone_locks (lock_name, name, token, state) \
             VALUES ('{lock_name}', '{name}', 18446744073709551614, 'released'); \
             DO RELEASE_LOCK('{lock_name}')"
        ),
    );
    let first = run(&env, &run_args(&url, name, &[], "echo \"$ONLYONE_FENCE\""));
    assert!(first.status.success(), "{}", stderr(&first));
    let stale_fence = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    assert_eq!(
        stale_fence,
        format!("SELECT `{db}`.onlyone_fence('{name}', 18446744073709551615)")
    );
    let mut second = start(&env, &run_args(&url, name, &[], &witnessed(&env, "ready")));
    let started = second.try_expect_stdout_line("ready");
    // The first holder's token must not be the second's: either the second
    // does not start, or the first holder's fence is refused.
    if started {
        let out = crate::mysql_run::client(&url)
            .args(["-e", &format!("START TRANSACTION; {stale_fence}; COMMIT")])
            .output()
            .expect("run mariadb");
        second.kill();
        assert!(
            !out.status.success(),
            "the first holder's fence passed while the second holds the lock with the same token"
        );
        return;
    }
    let (status, out, err) = second.finish();
    assert_eq!(crate::util::code(status), 77, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("is 18446744073709551615 already, the largest there is, and cannot grow"),
        "{err}"
    );
}

/// Finding 2: no trigger guards INSERT. Another session (with INSERT on the
/// table, no named lock) plants the row of a name not used yet, as held
/// with a huge lock-delay owed: the name's first holder then waits that
/// long before its command starts (here, for ever). The table is
/// "written only by a session that holds the row's named lock".
#[test]
fn mysql_attack_another_session_may_not_insert_a_row() {
    let env = TestEnv::new();
    let url = own_database("attack_ins");
    let made = run(&env, &run_args(&url, "maker", &[], "true"));
    assert!(made.status.success(), "{}", stderr(&made));
    let name = "planted";
    let lock_name = lock_name_in(&url, name);
    let out = crate::mysql_run::client(&url)
        .args([
            "-e",
            &format!(
                "INSERT INTO onlyone_locks (lock_name, name, token, state, stop_within_ms, owed_ms) \
                 VALUES ('{lock_name}', '{name}', 7, 'held', 1000000000000, 1000000000000)"
            ),
        ])
        .output()
        .expect("run mariadb");
    assert!(
        !out.status.success(),
        "another session planted a held row owing 31 years of lock-delay"
    );
    assert!(stderr(&out).contains("(23001)"), "{}", stderr(&out));
}

/// Finding 3: the next holder's wait for the previous holder's fenced
/// transactions "has no deadline", but an account with a statement time
/// limit (MariaDB `CREATE USER … WITH MAX_STATEMENT_TIME 2`, or the
/// server's `max_statement_time`) had the server interrupt it: the
/// starter, run with `--wait`, gave up with 69 ("recording the fencing
/// token: … max_statement_time exceeded") two seconds into the wait. (Its
/// `GET_LOCK` waits, rounds of 10 s, were interrupted the same way.) The
/// session's statements are onlyone's to time.
#[test]
fn mysql_attack_a_statement_time_limit_does_not_end_the_wait_for_fenced_transactions() {
    let env = TestEnv::new();
    let url = own_database("attack_mst");
    let target = server(&url);
    let user = format!("amf_mst_{}", std::process::id());
    sql(
        &url,
        &format!(
            "DROP USER IF EXISTS '{user}'@'%'; \
             CREATE USER '{user}'@'%' WITH MAX_STATEMENT_TIME 2; \
             GRANT ALL ON `{}`.* TO '{user}'@'%'; GRANT SELECT ON mysql.proc TO '{user}'@'%'",
            target.db
        ),
    );
    let limited = format!(
        "mysql://{user}@{}:{}/{}",
        target.host, target.port, target.db
    );
    let name = "limited";
    let mut holder = start(
        &env,
        &run_args(
            &url,
            name,
            &[],
            &format!("echo \"$ONLYONE_FENCE\"; {}", witnessed(&env, "ready")),
        ),
    );
    let fence = holder.expect_stdout_any();
    holder.expect_stdout_line("ready");
    let mut program = Program::open(&url);
    program.send(&format!("START TRANSACTION; {fence}"), "fenced");
    holder.kill();
    let mut next = start(
        &env,
        &run_args(&limited, name, &["--wait"], "echo next; exec sleep 1000"),
    );
    next.expect_stderr_containing(
        "waiting for the fenced transactions of the previous holder to end",
    );
    // Past the account's limit, the wait goes on.
    std::thread::sleep(std::time::Duration::from_secs(4));
    program.send("COMMIT", "committed");
    let started = next.try_expect_stdout_line("next");
    next.signal(libc::SIGTERM);
    let (status, _, err) = next.finish();
    sql(&url, &format!("DROP USER '{user}'@'%'"));
    assert!(
        started,
        "the next holder gave up its wait (exit {}): {err}",
        crate::util::code(status)
    );
}

/// Finding 4: the 69 message for an account that may not create the
/// triggers gives "DELIMITER // CREATE TRIGGER … // DELIMITER ;" on one line,
/// with the bodies' line breaks shown as `\n`. Given to the `mariadb`
/// client as shown (the statements, with `//` as the delimiter), it
/// created nothing and exited 0; and statements on one line would not have
/// matched the multi-line bodies onlyone checks (77). What the message
/// says to run must create exactly what onlyone checks.
#[test]
fn mysql_attack_the_statements_the_privilege_message_gives_create_what_is_checked() {
    let env = TestEnv::new();
    let own = own_database("attack_paste");
    let target = server(&own);
    let user = format!("amf_paste_{}", std::process::id());
    sql(
        &own,
        &format!(
            "DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%'; \
             GRANT SELECT, INSERT, UPDATE, CREATE ON `{}`.* TO '{user}'@'%'",
            target.db
        ),
    );
    let limited = format!(
        "mysql://{user}@{}:{}/{}",
        target.host, target.port, target.db
    );
    let out = run(&env, &run_args(&limited, "pasted", &[], "echo ran"));
    assert_eq!(crate::util::code(out.status), 69, "{}", stderr(&out));
    let err = stderr(&out);
    let from = err
        .find("CREATE TRIGGER")
        .expect("statements in the message");
    let to = err.rfind("END //").expect("statements end") + "END //".len();
    let statements = &err[from..to];
    let mut admin = crate::mysql_run::client(&own);
    admin
        .arg("--delimiter=//")
        .stdin(std::process::Stdio::piped());
    let mut child = admin.spawn().expect("run mariadb");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), statements.as_bytes())
        .expect("write");
    assert!(child.wait().expect("mariadb").success());
    sql(
        &own,
        &format!(
            "GRANT TRIGGER ON `{}`.* TO '{user}'@'%'; GRANT SELECT ON mysql.proc TO '{user}'@'%'",
            target.db
        ),
    );
    let out = run(&env, &run_args(&limited, "pasted", &[], "echo ran"));
    sql(&own, &format!("DROP USER '{user}'@'%'"));
    assert_eq!(crate::util::code(out.status), 0, "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
}
