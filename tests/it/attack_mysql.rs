//! Attacks on the MySQL/MariaDB backend (issue 16, first landing): each
//! test is a finding or a probe of a case that held. Every protected
//! command proves it runs alone with a non-blocking flock(1) on a witness
//! file (mysql_run.rs's `witnessed`): a second one at once exits 99.

#![cfg(feature = "mysql")]

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::mysql_run::{
    KillOnDrop, client, holder_connection, lock_name_in, run, run_args, server, sql, start, unique,
    url, witnessed,
};
use crate::util::{TestEnv, assert_exit, code, stderr};

/// The test server's URL with its database replaced by `db`, which is
/// created when missing.
fn other_database(db_suffix: &str) -> String {
    let base = url();
    let target = server(&base);
    let db = format!("{}_{db_suffix}", target.db);
    sql(&base, &format!("CREATE DATABASE IF NOT EXISTS `{db}`"));
    format!(
        "mysql://{}@{}:{}/{db}",
        target.user, target.host, target.port
    )
}

/// Finding (two at once): named locks belong to the whole server, but the
/// state row (tokens, `held`, the owed lock-delay) lives in the URL's
/// database. A holder through database A whose supervisor was frozen (its
/// command still ran) lost its session at wait_timeout; the next holder
/// of the same name through database B found no `held` row in B's table
/// and started at once, while the frozen holder's command still ran. The
/// lock name now includes the database (`onlyone/<db>/<name>`): one name
/// in two databases is two locks with two state rows, as PostgreSQL's
/// advisory locks are per database. A holder through B starts while the
/// one through A holds (on the old mapping it found the lock held, 75),
/// and each database's holder holds its own server lock.
#[test]
fn mysql_attack_one_name_in_two_databases_is_two_locks() {
    let env = TestEnv::new();
    let name = unique("my-two-db");
    let other = other_database("attack_other");
    assert_ne!(lock_name_in(&url(), &name), lock_name_in(&other, &name));
    let mut first = start(
        &env,
        &run_args(&url(), &name, &[], "echo ready; exec sleep 1000"),
    );
    first.expect_stdout_line("ready");
    let connection = holder_connection(&url(), &name);
    let mut second = start(
        &env,
        &run_args(&other, &name, &[], "echo next; exec sleep 1000"),
    );
    second.expect_stdout_line("next");
    let second_connection = holder_connection(&other, &name);
    assert_ne!(second_connection, "NULL");
    assert_ne!(second_connection, connection);
    assert_eq!(holder_connection(&url(), &name), connection);
    second.signal(libc::SIGTERM);
    first.signal(libc::SIGTERM);
    let (_, _, err) = second.finish();
    assert_eq!(holder_connection(&other, &name), "NULL", "{err}");
    let _ = first.finish();
}

/// Finding (data): the fencing tokens of one named lock restarted at 1 in
/// another database's table ([1, 2, 1]), so a token no longer ordered the
/// holders of the lock. Through two databases a name is now two locks
/// (`ONLYONE_MYSQL_LOCK` names each), each with its own tokens.
#[test]
fn mysql_attack_tokens_of_one_name_count_per_database_lock() {
    let env = TestEnv::new();
    let name = unique("my-two-db-token");
    let other = other_database("attack_other");
    let script = "echo $ONLYONE_TOKEN $ONLYONE_MYSQL_LOCK";
    let token = |target: &str| -> u64 {
        let out = run(&env, &run_args(target, &name, &[], script));
        assert_exit(&out, 0);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (token, lock) = text
            .split_once(' ')
            .unwrap_or_else(|| panic!("no token in {text:?}: {}", stderr(&out)));
        assert_eq!(lock, lock_name_in(target, &name));
        token.parse().unwrap()
    };
    assert_eq!(token(&url()), 1);
    assert_eq!(token(&other), 1);
    assert_eq!(token(&url()), 2);
    assert_eq!(token(&other), 2);
}

/// Held: `stop` through another database does not end the holder (there
/// the name is another lock, which nobody holds) and says so.
#[test]
fn mysql_attack_stop_through_another_database_leaves_the_holder() {
    let env = TestEnv::new();
    let name = unique("my-two-db-stop");
    let other = other_database("attack_other");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let connection = holder_connection(&url(), &name);
    let out = env.run(&["stop", "--mysql", &other, &name]);
    assert_ne!(code(out.status), 0, "{}", stderr(&out));
    assert_eq!(holder_connection(&url(), &name), connection);
    eprintln!(
        "stop through {other}: exit {:?}: {}",
        code(out.status),
        stderr(&out)
    );
}

/// Finding (exit code): starters of different new names at once, on a
/// fresh database or an existing table, took gap locks on the same gap
/// (`SELECT … FOR UPDATE` of a missing row) and deadlocked on their
/// inserts: "failed while recording the fencing token: Deadlock found
/// when trying to get lock (error 1213)", exit 69, for about a third of
/// them. The rolled-back transaction is now tried again.
#[test]
fn mysql_attack_new_names_started_at_once_do_not_deadlock() {
    let env = TestEnv::new();
    let db_url = other_database(&format!("attack_fresh_{}", std::process::id()));
    sql(&db_url, "DROP TABLE IF EXISTS onlyone_locks");
    for round in 0..3 {
        let starters: Vec<_> = (0..8)
            .map(|i| {
                let name = format!("my-new-{round}-{i}");
                start(&env, &run_args(&db_url, &name, &[], "true"))
            })
            .collect();
        for starter in starters {
            let (status, _, err) = starter.finish();
            assert_eq!(code(status), 0, "round {round}: {err}");
        }
    }
}

/// A user allowed only on `db` (created with its database when missing);
/// the URL through it.
fn confined_user(user: &str, db: &str) -> String {
    let base = url();
    let target = server(&base);
    sql(&base, &format!("CREATE DATABASE IF NOT EXISTS `{db}`"));
    sql(&base, &format!("CREATE USER IF NOT EXISTS '{user}'@'%'"));
    sql(&base, &format!("GRANT ALL ON `{db}`.* TO '{user}'@'%'"));
    format!("mysql://{user}@{}:{}/{db}", target.host, target.port)
}

/// Finding (two at once): the check for another database's row saw only
/// tables the account had a privilege on. Two accounts confined to two
/// databases shared the server's named lock but not the row: a frozen
/// holder through the first lost its session, and the second started
/// without the lock-delay while the first's command still ran. With the
/// database in the lock name they share no server lock: the second
/// starts at once beside the first (on the old mapping: 75, held), and a
/// `mariadb` session holding `onlyone/<db>/<name>` conflicts only with
/// that database's holders.
#[test]
fn mysql_attack_two_confined_accounts_one_name_are_two_locks() {
    let env = TestEnv::new();
    let name = unique("my-two-users");
    let base = server(&url()).db;
    let first_url = confined_user("onlyone_attack_a", &format!("{base}_attack_a"));
    let second_url = confined_user("onlyone_attack_b", &format!("{base}_attack_b"));
    assert_ne!(
        lock_name_in(&first_url, &name),
        lock_name_in(&second_url, &name)
    );
    let mut first = start(
        &env,
        &run_args(&first_url, &name, &[], "echo ready; exec sleep 1000"),
    );
    first.expect_stdout_line("ready");
    let beside = run(&env, &run_args(&second_url, &name, &[], "echo ran"));
    assert_exit(&beside, 0);
    assert_eq!(String::from_utf8_lossy(&beside.stdout).trim(), "ran");
    let held = run(&env, &run_args(&first_url, &name, &[], "echo ran"));
    assert_exit(&held, 75);
    first.signal(libc::SIGTERM);
    let _ = first.finish();

    // Another program holding the first database's lock name.
    let mut client = KillOnDrop(
        client(&url())
            .args([
                "-e",
                &format!(
                    "SELECT GET_LOCK('{}', 0); SELECT 'locked'; SELECT SLEEP(1000)",
                    lock_name_in(&first_url, &name)
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(client.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "1");
    assert_eq!(lines.next().unwrap().unwrap(), "locked");
    let conflict = run(&env, &run_args(&first_url, &name, &[], "echo ran"));
    assert_exit(&conflict, 75);
    let free = run(&env, &run_args(&second_url, &name, &[], "echo ran"));
    assert_exit(&free, 0);
}

/// Finding 2 (a-settle): a holder that records its clean release between
/// `--replace`'s read and its mark (the mark waits for the row the release
/// is updating, then finds it released and marks nothing) made the
/// replacer give up with 77 "changed while it was being identified",
/// though the holder was letting go. The look-again at a releasing holder
/// covered the read, not the mark. Here a client stands in for the holder:
/// it commits its release once the replacer's mark waits for the row, then
/// releases the lock; the replacer runs its command.
#[test]
fn mysql_attack_a_holder_recording_its_release_during_the_mark_is_looked_at_again() {
    use std::io::Write;
    use std::time::{Duration, Instant};

    let env = TestEnv::new();
    let name = unique("my-release-mark");
    let out = run(&env, &run_args(&url(), &name, &[], "true"));
    assert_exit(&out, 0);
    let lock_name = lock_name_in(&url(), &name);
    let mut holding = KillOnDrop(
        client(&url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut input = holding.0.stdin.take().unwrap();
    let mut lines = BufReader::new(holding.0.stdout.take().unwrap()).lines();
    writeln!(
        input,
        "SELECT GET_LOCK('{lock_name}', 0); \
         UPDATE onlyone_locks SET state = 'held', connection_id = CONNECTION_ID() \
         WHERE lock_name = '{lock_name}'; SELECT ROW_COUNT(); \
         START TRANSACTION; \
         UPDATE onlyone_locks SET state = 'released' WHERE lock_name = '{lock_name}'; \
         SELECT ROW_COUNT(); SELECT CONNECTION_ID();"
    )
    .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "1", "the lock was taken");
    assert_eq!(lines.next().unwrap().unwrap(), "1", "the row names it");
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "1",
        "the release is pending"
    );
    let connection = lines.next().unwrap().unwrap();

    let witness = env.path("witness");
    let replacer = start(
        &env,
        &run_args(
            &url(),
            &name,
            &["--replace"],
            &format!("exec flock -n -E 99 {} sh -c 'echo new'", witness.display()),
        ),
    );
    // The replacer's mark waits for the row the release is updating. (The
    // server refreshes its view of lock waits only when nobody read it for
    // 100 ms: polled more often, it never changes.)
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = sql(
            &url(),
            &format!(
                "SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS w \
                 JOIN information_schema.INNODB_TRX t ON t.trx_id = w.blocking_trx_id \
                 WHERE t.trx_mysql_thread_id = {connection}"
            ),
        );
        if seen != "0" {
            break;
        }
        if Instant::now() >= until {
            let list = sql(&url(), "SHOW PROCESSLIST");
            replacer.signal(libc::SIGKILL);
            let (status, stdout, err) = replacer.finish();
            panic!("the mark never waited for the row: {status:?} {stdout} {err} {list}");
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    writeln!(input, "COMMIT; SELECT RELEASE_LOCK('{lock_name}');").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "1", "the lock was released");

    let (status, stdout, err) = replacer.finish();
    assert_eq!(code(status), 0, "{err}");
    assert_eq!(stdout.trim(), "new", "{err}");
}

/// Finding 3 (a-settle): a holder ended by another `stop` (or replacer)
/// and replaced by another starter between `--replace`'s read and its mark
/// made the replacer give up with 77 "changed while it was being
/// identified; nothing was stopped", which tells the operator to stop it
/// by hand, though its holder was gone and another starter's held the
/// lock (PostgreSQL says changed: 75 "taken by another starter", or runs
/// when it finds the lock free). Seen in scripts/attack/settle/storm.sh: 9
/// of 60 replacers. Here a client stands in for the holder, another for
/// the next starter: it keeps the row locked (the replacer's mark waits
/// for it), takes the lock once the holder's connection is killed, and
/// records itself. The replacer looks again and leaves it alone (75).
#[test]
fn mysql_attack_a_holder_replaced_during_the_mark_is_another_starter() {
    use std::io::Write;
    use std::time::{Duration, Instant};

    let env = TestEnv::new();
    let name = unique("my-replaced-mark");
    let out = run(&env, &run_args(&url(), &name, &[], "true"));
    assert_exit(&out, 0);
    let lock_name = lock_name_in(&url(), &name);
    let mut holding = KillOnDrop(
        client(&url())
            .args([
                "-e",
                &format!(
                    "SELECT GET_LOCK('{lock_name}', 0); \
                     UPDATE onlyone_locks SET state = 'held', connection_id = CONNECTION_ID() \
                     WHERE lock_name = '{lock_name}'; SELECT ROW_COUNT(); \
                     SELECT CONNECTION_ID(); SELECT SLEEP(1000)"
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(holding.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "1", "the lock was taken");
    assert_eq!(lines.next().unwrap().unwrap(), "1", "the row names it");
    let holder = lines.next().unwrap().unwrap();

    // The next starter keeps the row locked.
    let mut next = KillOnDrop(
        client(&url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut input = next.0.stdin.take().unwrap();
    let mut answers = BufReader::new(next.0.stdout.take().unwrap()).lines();
    writeln!(
        input,
        "START TRANSACTION; \
         SELECT COUNT(*) FROM onlyone_locks WHERE lock_name = '{lock_name}' FOR UPDATE; \
         SELECT CONNECTION_ID();"
    )
    .unwrap();
    assert_eq!(answers.next().unwrap().unwrap(), "1", "the row is locked");
    let starter = answers.next().unwrap().unwrap();

    let mut replacer = start(
        &env,
        &run_args(&url(), &name, &["--replace"], &witnessed(&env, "new")),
    );
    replacer.expect_stderr_containing("replacing the holder");
    // The replacer's mark waits for the row. (The server refreshes its
    // view of lock waits only when nobody read it for 100 ms.)
    let until = Instant::now() + Duration::from_secs(10);
    while sql(
        &url(),
        &format!(
            "SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS w \
             JOIN information_schema.INNODB_TRX t ON t.trx_id = w.blocking_trx_id \
             WHERE t.trx_mysql_thread_id = {starter}"
        ),
    ) == "0"
    {
        assert!(Instant::now() < until, "the mark never waited for the row");
        std::thread::sleep(Duration::from_millis(150));
    }
    // The holder is ended; the next starter takes the lock and records
    // itself.
    sql(&url(), &format!("KILL CONNECTION {holder}"));
    writeln!(
        input,
        "SELECT GET_LOCK('{lock_name}', 5); \
         UPDATE onlyone_locks SET record = JSON_SET(record, '$.token', token + 1), \
         token = token + 1, connection_id = CONNECTION_ID() \
         WHERE lock_name = '{lock_name}'; SELECT ROW_COUNT(); COMMIT; SELECT 'committed';"
    )
    .unwrap();
    assert_eq!(answers.next().unwrap().unwrap(), "1", "it took the lock");
    assert_eq!(answers.next().unwrap().unwrap(), "1", "it recorded itself");
    assert_eq!(answers.next().unwrap().unwrap(), "committed");

    let (status, stdout, err) = replacer.finish();
    assert_eq!(code(status), 75, "{err}");
    assert!(err.contains("taken by another starter"), "{err}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(holder_connection(&url(), &name), starter, "left alone");
}

/// Finding (two at once), a-mybench: on a server that compares database
/// names without case (`lower_case_table_names` 1, as on Windows and
/// macOS, or 2), `/onlyone_test` and `/ONLYONE_TEST` are one database
/// with one state table, but the lock name took the URL's spelling:
/// `onlyone/onlyone_test/job` and `onlyone/sha256/<hash of
/// ONLYONE_TEST/job>` are two server locks, so a holder through each ran
/// at once (the witness exited 99). Such a server is now asked for the
/// database name in lower case: a URL that spells it otherwise is refused
/// (77) before any lock is taken.
#[test]
fn mysql_attack_database_case_on_a_case_folding_server_is_one_lock() {
    use crate::harness::mariadb_server::MariaDbServer;
    let env = TestEnv::new();
    let server = MariaDbServer::start_plain("", &["--lower-case-table-names=1"]);
    let lower = server.url("root");
    let upper = format!(
        "{}/ONLYONE_TEST",
        lower.rsplit_once('/').expect("a URL with a database").0
    );
    let name = unique("db-case");
    let mut holder = start(
        &env,
        &run_args(&lower, &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let second = run(&env, &run_args(&upper, &name, &[], &witnessed(&env, "ran")));
    let said = stderr(&second);
    assert_ne!(code(second.status), 99, "two at once: {said}");
    assert!(second.stdout.is_empty(), "{said}");
    assert_exit(&second, 77);
    assert!(said.contains("lower_case_table_names"), "{said}");
}

/// Finding (two at once), a-mybench: the pool/plain check asks only
/// whether a slot is *held*. A pool member whose supervisor froze
/// (SIGSTOP) lost its session at wait_timeout, freeing its slot's server
/// lock, while its command ran on: the slot's row owes the lock-delay,
/// and the next holder of that slot waits it out, but a plain starter of
/// the same name found no slot held and ran at once, beside the frozen
/// member's command (the witness exited 99). Fixed: the check treats a
/// slot whose row says it was not released cleanly as in use, and the
/// plain start refuses (77), saying so.
#[test]
fn mysql_attack_plain_start_honours_a_lost_slots_lock_delay() {
    let env = TestEnv::new();
    let name = unique("frozen-slot");
    let witness = env.path("witness");
    let mut member = start(
        &env,
        &run_args(
            &url(),
            &name,
            &["--max", "2"],
            &format!(
                "exec flock -s -n -E 99 {} sh -c 'echo ready; exec sleep 1000'",
                witness.display()
            ),
        ),
    );
    member.expect_stdout_line("ready");
    let slot = format!("{name}@1");
    assert_ne!(holder_connection(&url(), &slot), "NULL");
    member.signal(libc::SIGSTOP);
    // The server ends the frozen supervisor's session at wait_timeout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while holder_connection(&url(), &slot) != "NULL" {
        assert!(std::time::Instant::now() < deadline, "the slot stayed held");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let plain = run(
        &env,
        &run_args(
            &url(),
            &name,
            &[],
            &format!("exec flock -x -n -E 99 {} true", witness.display()),
        ),
    );
    // A starter that waits is refused as well, at once: the refusal is
    // not "held", so nothing waits or retries on it.
    let started = std::time::Instant::now();
    let waiter = run(
        &env,
        &run_args(
            &url(),
            &name,
            &["--timeout", "20s"],
            &format!("exec flock -x -n -E 99 {} true", witness.display()),
        ),
    );
    assert_exit(&waiter, 77);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the waiter took {:?}",
        started.elapsed()
    );
    member.signal(libc::SIGCONT);
    member.signal(libc::SIGTERM);
    let _ = member.finish();
    let said = stderr(&plain);
    assert_ne!(
        code(plain.status),
        99,
        "plain ran beside the frozen pool member's command: {said}"
    );
    assert_exit(&plain, 77);
    assert!(said.contains("was not released cleanly"), "{said}");
    assert!(said.contains("its command may still run"), "{said}");
}

/// Finding a-mybench 2, the other way round: a plain holder whose
/// supervisor froze lost its session while its command ran on; a pool
/// start of the same name found the plain lock free and ran beside it,
/// ignoring the lock-delay the plain lock's row owes (the witness exited
/// 99). Fixed as the other way round: the pool start refuses (77).
#[test]
fn mysql_attack_pool_start_honours_a_lost_plain_locks_lock_delay() {
    let env = TestEnv::new();
    let name = unique("frozen-plain");
    let witness = env.path("witness");
    let mut holder = start(
        &env,
        &run_args(
            &url(),
            &name,
            &[],
            &format!(
                "exec flock -x -n -E 99 {} sh -c 'echo ready; exec sleep 1000'",
                witness.display()
            ),
        ),
    );
    holder.expect_stdout_line("ready");
    assert_ne!(holder_connection(&url(), &name), "NULL");
    holder.signal(libc::SIGSTOP);
    // The server ends the frozen supervisor's session at wait_timeout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while holder_connection(&url(), &name) != "NULL" {
        assert!(std::time::Instant::now() < deadline, "the lock stayed held");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let member = run(
        &env,
        &run_args(
            &url(),
            &name,
            &["--max", "2"],
            &format!("exec flock -s -n -E 99 {} true", witness.display()),
        ),
    );
    holder.signal(libc::SIGCONT);
    holder.signal(libc::SIGTERM);
    let _ = holder.finish();
    let said = stderr(&member);
    assert_ne!(
        code(member.status),
        99,
        "a pool member ran beside the frozen plain holder's command: {said}"
    );
    assert_exit(&member, 77);
    assert!(said.contains("was not released cleanly"), "{said}");
    assert!(said.contains("its command may still run"), "{said}");
    // Cleared as the message says: a plain start takes the lock, waits
    // its lock-delay and releases it cleanly; then the pool starts.
    let clear = run(&env, &run_args(&url(), &name, &[], "true"));
    assert_exit(&clear, 0);
    let member = run(&env, &run_args(&url(), &name, &["--max", "2"], "true"));
    assert_exit(&member, 0);
}
