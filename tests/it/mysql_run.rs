//! `onlyone run --mysql`: exclusion across processes through a real
//! MariaDB (or MySQL) server named by ONLYONE_TEST_MYSQL_URL (scripts/test
//! starts a throwaway one with scripts/with-mariadb), and the faults a lock
//! held over a network must survive. The read-only test starts a server of
//! its own with the same script.
//!
//! As in postgres_run.rs, every protected command takes a non-blocking
//! flock(1) on a witness file before it says it runs: if two ever ran at
//! once, the second could not take it and would report OVERLAP.

#![cfg(feature = "mysql")]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::proxy::Proxy;
use crate::util::{Running, TestEnv, assert_exit, code, stderr};

/// Short timings so that faults play out in seconds, as in
/// postgres_run.rs: heartbeat deadline T = 2 × 100 ms + 1 s = 1.2 s (the
/// server's wait_timeout on a lock session: 4 s), kill grace G = 300 ms,
/// lock-delay 2 s.
pub(crate) const TIMING: [&str; 6] = [
    "--heartbeat",
    "100ms",
    "--kill-grace",
    "300ms",
    "--lock-delay",
    "2s",
];
pub(crate) const T_PLUS_G: Duration = Duration::from_millis(1500);

/// After an unclean loss the next holder waits the longer of its lock-delay
/// (2 s) and the previous holder's recorded T + G + 2 s: 3.5 s.
pub(crate) const LOCK_DELAY: Duration = Duration::from_millis(3500);

/// A lock name unique to this test process and test.
pub(crate) fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A command that proves it runs alone (flock -n on the witness) and then
/// says `ready` and sleeps.
pub(crate) fn witnessed(env: &TestEnv, say: &str) -> String {
    format!(
        "exec flock -n -E 99 {} sh -c 'echo {say}; exec sleep 1000'",
        env.path("witness").display()
    )
}

/// The test server: scripts/test starts a throwaway one and names it here.
pub(crate) fn url() -> String {
    std::env::var("ONLYONE_TEST_MYSQL_URL").expect(
        "ONLYONE_TEST_MYSQL_URL is not set: run the tests with scripts/test (or \
         scripts/with-mariadb), which starts a throwaway MariaDB server, or point it at a server",
    )
}

/// The parts of a `mysql://user@host:port/db` URL (no password: the test
/// server has none).
pub(crate) struct Server {
    pub(crate) user: String,
    pub(crate) host: String,
    pub(crate) port: String,
    pub(crate) db: String,
}

pub(crate) fn server(url: &str) -> Server {
    let rest = url.strip_prefix("mysql://").expect("a mysql:// URL");
    let (user, rest) = rest.split_once('@').expect("a user in the URL");
    let (host_port, db) = rest.split_once('/').expect("a database in the URL");
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
    Server {
        user: user.to_owned(),
        host: host.to_owned(),
        port: port.to_owned(),
        db: db.to_owned(),
    }
}

/// A `mariadb` client command for the server of `url`.
pub(crate) fn client(url: &str) -> Command {
    let server = server(url);
    let mut command = Command::new("mariadb");
    command
        .arg("--no-defaults")
        .args(["-h", &server.host, "-P", &server.port, "-u", &server.user])
        // --unbuffered: each statement's answer is written when it comes.
        .args(["-N", "-B", "--unbuffered", &server.db])
        .stdin(Stdio::null());
    command
}

/// Runs `sql` with the `mariadb` client; its output, trimmed.
pub(crate) fn sql(url: &str, sql: &str) -> String {
    let out = client(url).args(["-e", sql]).output().expect("run mariadb");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The lock name onlyone takes for `name` through database `db`,
/// computed here as the README documents it.
pub(crate) fn documented_lock_name(db: &str, name: &str) -> String {
    let scoped = format!("{db}/{name}");
    let plain = format!("onlyone/{scoped}");
    if plain.chars().count() <= 64 && plain == plain.to_lowercase() {
        return plain;
    }
    let digest = Sha256::digest(scoped.as_bytes());
    let hex: String = digest[..24].iter().map(|b| format!("{b:02x}")).collect();
    format!("onlyone/sha256/{hex}")
}

/// [`documented_lock_name`] through the database of `url`.
pub(crate) fn lock_name_in(url: &str, name: &str) -> String {
    documented_lock_name(&server(url).db, name)
}

/// `onlyone run --mysql URL --name NAME (timings) EXTRA -- sh -c SCRIPT`.
pub(crate) fn run_args(url: &str, name: &str, extra: &[&str], script: &str) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--mysql", url, "--name", name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(TIMING.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    args
}

pub(crate) fn start(env: &TestEnv, args: &[String]) -> Running {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.start(&args)
}

pub(crate) fn run(env: &TestEnv, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.run(&args)
}

/// The connection id of the session that holds `name`'s lock (empty or
/// NULL when free).
pub(crate) fn holder_connection(url: &str, name: &str) -> String {
    sql(
        url,
        &format!("SELECT IS_USED_LOCK('{}')", lock_name_in(url, name)),
    )
}

#[test]
fn mysql_second_start_is_refused_naming_the_holder() {
    let env = TestEnv::new();
    let name = unique("my-conflict");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");

    let second = run(&env, &run_args(&url(), &name, &[], "echo ran"));
    assert_exit(&second, 75);
    let message = stderr(&second);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with(&format!(
            "onlyone: lock '{name}' is held by pid {} on ",
            holder.pid()
        )),
        "{message}"
    );
    let connection = holder_connection(&url(), &name);
    assert!(
        message.contains(&format!("MySQL connection id {connection}, user ")),
        "{message}"
    );
    assert!(second.stdout.is_empty());

    let status = env.run(&["status", "--mysql", &url(), &name, "--json"]);
    assert_exit(&status, 0);
    let value: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(value["held"], true);
    assert_eq!(value["holder"]["record"]["pid"], holder.pid());
    assert!(
        value["location"]
            .as_str()
            .unwrap()
            .ends_with(&format!("lock '{}'", lock_name_in(&url(), &name))),
        "{value}"
    );
    let listed = env.run(&["status", "--mysql", &url()]);
    assert_exit(&listed, 0);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&format!("{name}: held by pid")),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
}

#[test]
fn mysql_twenty_simultaneous_starts_run_exactly_one() {
    let env = TestEnv::new();
    let name = unique("my-race");
    let ran = env.path("ran");
    let script = format!("echo $$ >> {}; {}", ran.display(), witnessed(&env, "ready"));
    let mut starters: Vec<Running> = (0..20)
        .map(|_| start(&env, &run_args(&url(), &name, &[], &script)))
        .collect();
    let mut winners = Vec::new();
    for mut starter in starters.drain(..) {
        if starter.try_expect_stdout_line("ready") {
            winners.push(starter);
        } else {
            let (status, _, err) = starter.finish();
            assert_eq!(code(status), 75, "{err}");
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(fs::read_to_string(&ran).unwrap().lines().count(), 1);
}

#[test]
fn mysql_tokens_increase_and_a_clean_release_needs_no_lock_delay() {
    let env = TestEnv::new();
    let name = unique("my-tokens");
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let out = run(
            &env,
            &run_args(
                &url(),
                &name,
                &[],
                "echo $ONLYONE_TOKEN $ONLYONE_MYSQL_LOCK",
            ),
        );
        assert_exit(&out, 0);
        assert!(
            started.elapsed() < LOCK_DELAY,
            "no lock-delay after a clean release"
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut fields = text.split_whitespace();
        tokens.push(fields.next().unwrap().parse::<u64>().unwrap());
        assert_eq!(fields.next().unwrap(), lock_name_in(&url(), &name));
    }
    assert!(tokens.windows(2).all(|w| w[1] == w[0] + 1), "{tokens:?}");
    assert_eq!(holder_connection(&url(), &name), "NULL");
}

/// The supervisor SIGKILLed: the kernel kills its command and closes its
/// socket, the server ends its session, which frees the lock; the next
/// holder waits the lock-delay (the state row still says held).
#[test]
fn mysql_supervisor_killed_frees_the_lock_and_the_next_holder_waits_the_lock_delay() {
    let env = TestEnv::new();
    let name = unique("my-sigkill");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    assert_ne!(holder_connection(&url(), &name), "NULL");
    holder.kill();
    let killed_at = Instant::now();

    let mut next = start(
        &env,
        &run_args(&url(), &name, &["--wait"], &witnessed(&env, "next")),
    );
    next.expect_stderr_containing("did not release it cleanly");
    next.expect_stdout_line("next");
    assert!(killed_at.elapsed() >= LOCK_DELAY);
}

/// The triggers refuse to delete or change the holder's row
/// (mysql_fence.rs), but not a TRUNCATE, which fires none: the holder
/// writes its row back at its next heartbeat, so that after its unclean
/// end the next holder still waits the lock-delay. In a database of its
/// own: the TRUNCATE empties the whole table. (This deleted the row and set
/// it to released before the triggers refused both.)
#[test]
fn mysql_a_truncated_row_is_written_back() {
    let env = TestEnv::new();
    let own = crate::mysql_fence::own_database("truncate");
    let name = unique("my-row-kept");
    let lock_name = lock_name_in(&own, &name);
    let mut holder = start(&env, &run_args(&own, &name, &[], &witnessed(&env, "ready")));
    holder.expect_stdout_line("ready");
    sql(&own, "TRUNCATE TABLE onlyone_locks");
    holder.expect_stderr_containing("was deleted or altered; writing it back");
    assert_eq!(
        sql(
            &own,
            &format!("SELECT state FROM onlyone_locks WHERE lock_name = '{lock_name}'")
        ),
        "held"
    );
    holder.kill();
    let killed_at = Instant::now();
    let mut next = start(
        &env,
        &run_args(&own, &name, &["--wait"], &witnessed(&env, "next")),
    );
    next.expect_stderr_containing("did not release it cleanly");
    next.expect_stdout_line("next");
    assert!(killed_at.elapsed() >= LOCK_DELAY);
}

/// Stops the holder's session some way; the holder's onlyone must stop
/// its command and exit 74 within T + G, and the next holder start only
/// after the lock-delay.
fn expect_lost(holder: Running, name: &str, fault_at: Instant, reason: &str) {
    let (status, _, err) = holder.finish();
    let stopped_after = fault_at.elapsed();
    assert_eq!(code(status), 74, "{err}");
    assert!(
        err.contains(&format!("onlyone: error: lost lock '{name}'")),
        "{err}"
    );
    assert!(err.contains(reason), "{err}");
    assert!(
        stopped_after <= T_PLUS_G + Duration::from_millis(500),
        "stopped {stopped_after:?} after the fault"
    );
}

fn expect_next_holder_after_lock_delay(env: &TestEnv, name: &str, fault_at: Instant) {
    let mut next = start(
        env,
        &run_args(&url(), name, &["--wait"], &witnessed(env, "next")),
    );
    next.expect_stdout_line("next");
    assert!(fault_at.elapsed() >= LOCK_DELAY);
    let err = next.expect_stderr_containing("did not release it cleanly");
    assert!(err.contains("waiting the lock-delay of 3s 500ms"), "{err}");
}

#[test]
fn mysql_killed_connection_stops_the_command() {
    let env = TestEnv::new();
    let name = unique("my-kill");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let connection = holder_connection(&url(), &name);
    let fault_at = Instant::now();
    sql(&url(), &format!("KILL CONNECTION {connection}"));
    expect_lost(
        holder,
        &name,
        fault_at,
        "the MySQL session holding the lock failed",
    );
    expect_next_holder_after_lock_delay(&env, &name, fault_at);
}

/// The session killed while the holder reads its row (held up by another
/// session's table lock), not during the heartbeat itself: the loss is
/// still said as the session's failure (it named only the row read, which
/// made `mysql_killed_connection_stops_the_command` fail now and then).
#[test]
fn mysql_connection_killed_during_the_row_check_is_said_as_the_sessions_failure() {
    let env = TestEnv::new();
    let name = unique("my-kill-row");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let connection = holder_connection(&url(), &name);
    let mut locker = client(&url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run mariadb");
    let mut to_locker = locker.stdin.take().unwrap();
    let mut from_locker = BufReader::new(locker.stdout.take().unwrap());
    let _locker = KillOnDrop(locker);
    writeln!(
        to_locker,
        "LOCK TABLES onlyone_locks WRITE; SELECT 'locked';"
    )
    .unwrap();
    let mut line = String::new();
    from_locker.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    // The holder's next row read waits for the table: kill it there.
    let waiting = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {connection} AND STATE LIKE '%lock%'"
    );
    let started = Instant::now();
    while sql(&url(), &waiting) != "1" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the holder's row read never waited for the table lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let fault_at = Instant::now();
    sql(&url(), &format!("KILL CONNECTION {connection}"));
    expect_lost(
        holder,
        &name,
        fault_at,
        "the MySQL session holding the lock failed",
    );
    writeln!(to_locker, "UNLOCK TABLES;").unwrap();
}

/// A partition that a middlebox hides (the proxy keeps both TCP
/// connections up): the holder misses its heartbeat deadline and stops its
/// command; the server ends the silent session at its wait_timeout, which
/// frees the lock.
#[test]
fn mysql_frozen_network_stops_the_command() {
    let env = TestEnv::new();
    let name = unique("my-frozen");
    let target = server(&url());
    let address: SocketAddr = format!("{}:{}", target.host, target.port).parse().unwrap();
    let proxy = Proxy::start(address);
    let via_proxy = format!("mysql://{}@{}/{}", target.user, proxy.addr(), target.db);
    let mut holder = start(
        &env,
        &run_args(&via_proxy, &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let fault_at = Instant::now();
    proxy.freeze();
    expect_lost(holder, &name, fault_at, "within the heartbeat deadline");
    expect_next_holder_after_lock_delay(&env, &name, fault_at);
    drop(proxy);
}

/// Another program holding the documented lock name (here the `mariadb`
/// client) excludes onlyone, for a short name and for a hashed long one.
#[test]
fn mysql_client_holding_the_documented_name_is_a_conflict() {
    let env = TestEnv::new();
    for name in [unique("my-interop"), unique(&"long-name".repeat(10))] {
        let mut client = KillOnDrop(
            client(&url())
                .args([
                    "-e",
                    &format!(
                        "SELECT GET_LOCK('{}', 0); SELECT 'locked'; SELECT SLEEP(1000)",
                        lock_name_in(&url(), &name)
                    ),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(client.0.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "1", "{name}");
        assert_eq!(lines.next().unwrap().unwrap(), "locked");

        let out = run(&env, &run_args(&url(), &name, &[], "echo ran"));
        assert_exit(&out, 75);
        assert!(
            stderr(&out).contains("not an onlyone holder"),
            "{}",
            stderr(&out)
        );
    }
}

/// A child process killed (and reaped) when the test ends, failed or not.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connection failures: each one line, exit 69 (64 for a malformed URL),
/// and never the password.
#[test]
fn mysql_connection_failures_are_one_line_without_the_password() {
    let env = TestEnv::new();
    let target = server(&url());
    let with_password = |user: &str, host_port: &str, db: &str| {
        format!("mysql://{user}:s3cret-pw@{host_port}/{db}")
    };
    let here = format!("{}:{}", target.host, target.port);
    let cases = [
        (
            "malformed",
            "mysql://root:s3cret-pw@host:notaport/db".to_owned(),
            64,
            "invalid MySQL URL",
        ),
        (
            "unreachable",
            with_password(&target.user, "127.0.0.1:1", &target.db),
            69,
            "Connection refused",
        ),
        (
            "wrong credentials",
            with_password("onlyone_nosuchuser", &here, &target.db),
            69,
            "Access denied",
        ),
        (
            "missing database",
            format!("mysql://{}@{here}/onlyone_nosuchdb", target.user),
            69,
            "Unknown database",
        ),
    ];
    for (what, url, exit, fragment) in cases {
        let out = run(&env, &run_args(&url, "bad", &[], "echo ran"));
        let err = stderr(&out);
        assert_eq!(code(out.status), exit, "{what}: {err}");
        assert!(err.contains(fragment), "{what}: {err}");
        let errors = err
            .lines()
            .filter(|l| l.starts_with("onlyone: error") || l.starts_with("error"))
            .count();
        assert_eq!(errors, 1, "{what}: {err}");
        assert!(
            !err.contains("s3cret-pw"),
            "{what} leaks the password: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(out.stdout.is_empty(), "{what}");
    }
    // The password from MYSQL_PWD is not shown either.
    let out = env
        .onlyone(
            &run_args(
                &format!("mysql://onlyone_nosuchuser@{here}/{}", target.db),
                "bad",
                &[],
                "echo ran",
            )
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        )
        .env("MYSQL_PWD", "s3cret-pw")
        .output()
        .unwrap();
    assert_exit(&out, 69);
    assert!(
        stderr(&out).contains("using password: YES"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("s3cret-pw"), "{}", stderr(&out));
}

/// An account that may not create the state table gets the statement to
/// have a privileged account run, in one line, with the server's message
/// once.
#[test]
fn mysql_without_the_privilege_to_create_the_table_says_what_to_run() {
    let env = TestEnv::new();
    let target = server(&url());
    sql(
        &url(),
        &format!(
            "CREATE USER IF NOT EXISTS 'onlyone_limited'@'%'; \
             GRANT SELECT ON `{}`.* TO 'onlyone_limited'@'%'",
            target.db
        ),
    );
    let limited = format!(
        "mysql://onlyone_limited@{}:{}/{}",
        target.host, target.port, target.db
    );
    let out = run(
        &env,
        &run_args(&limited, &unique("my-limited"), &[], "echo ran"),
    );
    assert_exit(&out, 69);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("CREATE command denied").count(), 1, "{err}");
    assert!(
        err.contains("have a privileged account run: CREATE TABLE IF NOT EXISTS onlyone_locks ("),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// TLS is built now (tests/it/mysql_tls.rs): ssl-mode=REQUIRED against the
/// plain test server, which offers no TLS, is refused with 69 (the
/// server's configuration, not the command line, is at fault), in one line
/// that says which step failed and never shows the password, and nothing
/// runs. (This was `mysql_tls_is_refused_as_not_supported_yet`, a usage
/// error 64 before TLS was supported.)
#[test]
fn mysql_tls_required_against_a_server_without_tls_is_refused() {
    let env = TestEnv::new();
    let with_password = url().replacen("mysql://root@", "mysql://root:hunter2@", 1);
    for mode in ["REQUIRED", "VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem"] {
        let out = run(
            &env,
            &run_args(
                &format!("{with_password}?ssl-mode={mode}"),
                "tls",
                &[],
                "echo ran",
            ),
        );
        assert_exit(&out, 69);
        let err = stderr(&out);
        if mode == "REQUIRED" {
            assert!(
                err.contains("the server does not offer TLS, which ssl-mode=REQUIRED requires"),
                "{err}"
            );
        } else {
            assert!(err.contains("cannot read the ssl-ca file"), "{err}");
        }
        // One error line (beside the warning about a password in the URL).
        assert_eq!(err.matches("error:").count(), 1, "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

/// `run --max 2 --mysql`: two members run at once (each with its slot and
/// the witness of its slot), a third waits in the server and runs, in the
/// slot that frees, only after the lock-delay once a member is killed;
/// `status`, `stop NAME@N` and `wait` act on the pool.
#[test]
fn mysql_pool_runs_at_most_max_and_a_waiter_takes_the_freed_slot() {
    let env = TestEnv::new();
    let name = unique("my-pool");
    let member = |extra: &[&str]| {
        let mut args = vec!["--max", "2"];
        args.extend_from_slice(extra);
        let script = format!(
            "exec flock -n -E 99 {}.$ONLYONE_SLOT sh -c 'echo ready $ONLYONE_SLOT; exec sleep 1000'",
            env.path("witness").display()
        );
        start(&env, &run_args(&url(), &name, &args, &script))
    };
    let mut first = member(&[]);
    first.expect_stdout_line("ready 1");
    let mut second = member(&[]);
    second.expect_stdout_line("ready 2");
    let third = run(&env, &run_args(&url(), &name, &["--max", "2"], "echo ran"));
    assert_exit(&third, 75);
    assert!(third.stdout.is_empty());

    let status = env.run(&["status", "--mysql", &url(), &name]);
    assert_exit(&status, 0);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.starts_with(&format!("{name}: held (2 of 2 slots)\n")),
        "{text}"
    );
    let waited = env.run(&["wait", "--mysql", &url(), &name, "--timeout", "300ms"]);
    assert_exit(&waited, 75);

    let mut waiter = member(&["--wait"]);
    waiter.expect_stderr_containing("waiting for lock");
    // Timed from before the kill: `kill` also waits for the command to
    // exit, which on a loaded machine can take longer than the server
    // takes to end the session and grant the slot (seen once in a
    // parallel run: the lock-delay looked short).
    let killed_at = Instant::now();
    second.kill();
    waiter.expect_stdout_line("ready 2");
    assert!(killed_at.elapsed() >= LOCK_DELAY);

    let out = env.run(&["stop", "--mysql", &url(), &format!("{name}@1")]);
    assert_exit(&out, 0);
    let (status, _, err) = first.finish();
    assert_eq!(code(status), 74, "its session was ended: {err}");
    let out = env.run(&["stop", "--mysql", &url(), &name]);
    assert_exit(&out, 0);
    let (status, _, err) = waiter.finish();
    assert_eq!(code(status), 74, "{err}");
    let free = env.run(&["wait", "--mysql", &url(), &name, "--timeout", "5s"]);
    assert_exit(&free, 0);
}

/// A waiter at the head of a full pool's queue that waits longer than the
/// lock sessions' idle limit (4 s with the test timings) still ends with
/// 75 at its timeout: its queue session is not ended as idle.
#[test]
fn mysql_a_long_wait_on_a_full_pool_ends_at_its_timeout() {
    let env = TestEnv::new();
    let name = unique("my-pool-long");
    let mut holders = Vec::new();
    for slot in 1..=2 {
        let mut holder = start(
            &env,
            &run_args(
                &url(),
                &name,
                &["--max", "2"],
                "echo ready $ONLYONE_SLOT; exec sleep 1000",
            ),
        );
        holder.expect_stdout_line(&format!("ready {slot}"));
        holders.push(holder);
    }
    let started = Instant::now();
    let out = run(
        &env,
        &run_args(
            &url(),
            &name,
            &["--max", "2", "--timeout", "6s"],
            "echo ran",
        ),
    );
    assert_exit(&out, 75);
    assert!(started.elapsed() >= Duration::from_secs(6));
    assert!(out.stdout.is_empty());
}

/// `stop --mysql` ends the holder's session (KILL CONNECTION); the
/// holder's own onlyone then stops its command and exits 74.
#[test]
fn mysql_stop_ends_the_holders_session_and_its_command() {
    let env = TestEnv::new();
    let name = unique("my-stop");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let out = env.run(&["stop", "--mysql", &url(), &name]);
    assert_exit(&out, 0);
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 74, "{err}");

    let again = env.run(&["stop", "--mysql", &url(), &name]);
    assert_exit(&again, 3);
}

/// A holder that no onlyone record names (a `mariadb` session) is
/// refused by `stop` and `--replace` (77), and its session left alone.
#[test]
fn mysql_stop_and_replace_leave_a_holder_they_cannot_identify_alone() {
    let env = TestEnv::new();
    let name = unique("my-stop-foreign");
    let mut client = KillOnDrop(
        client(&url())
            .args([
                "-e",
                &format!(
                    "SELECT GET_LOCK('{}', 0); SELECT SLEEP(1000)",
                    lock_name_in(&url(), &name)
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(client.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "1");
    let holder = holder_connection(&url(), &name);

    let out = env.run(&["stop", "--mysql", &url(), &name]);
    assert_exit(&out, 77);
    assert!(
        stderr(&out).contains("cannot identify the holder"),
        "{}",
        stderr(&out)
    );
    let out = run(&env, &run_args(&url(), &name, &["--replace"], "echo ran"));
    assert_exit(&out, 77);
    assert!(out.stdout.is_empty());
    assert_eq!(holder_connection(&url(), &name), holder);
}

/// A holder between recording its clean release and releasing the lock
/// is not another holder: `stop` looks again (for a real holder, until it
/// lets go), and says what it saw instead of "cannot identify". Here a
/// client stands in for that moment for good: it holds the lock and the
/// row, released by an earlier holder, names its connection.
#[test]
fn mysql_stop_looks_again_at_a_holder_between_its_release_and_its_unlock() {
    let env = TestEnv::new();
    let name = unique("my-releasing");
    let out = run(&env, &run_args(&url(), &name, &[], "true"));
    assert_exit(&out, 0);
    let lock_name = lock_name_in(&url(), &name);
    let mut client = KillOnDrop(
        client(&url())
            .args([
                "-e",
                &format!(
                    "SELECT GET_LOCK('{lock_name}', 0); \
                     UPDATE onlyone_locks SET connection_id = CONNECTION_ID() \
                     WHERE lock_name = '{lock_name}' AND state = 'released'; \
                     SELECT ROW_COUNT(); SELECT SLEEP(1000)"
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(client.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "1");
    assert_eq!(lines.next().unwrap().unwrap(), "1", "the row was updated");

    let out = env.run(&["stop", "--mysql", &url(), &name]);
    assert_exit(&out, 77);
    assert!(
        stderr(&out).contains("recorded its release but still holds the lock"),
        "{}",
        stderr(&out)
    );
}

/// `run --replace --mysql`: the old holder is stopped through its
/// session, and the new command starts only after the lock-delay.
#[test]
fn mysql_replace_honours_the_lock_delay() {
    let env = TestEnv::new();
    let name = unique("my-replace");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let replaced_at = Instant::now();
    let mut new = start(
        &env,
        &run_args(&url(), &name, &["--replace"], &witnessed(&env, "new")),
    );
    new.expect_stdout_line("new");
    assert!(replaced_at.elapsed() >= LOCK_DELAY);
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 74, "{err}");
}

/// A starter stopped during its lock-delay gives up (74) instead of
/// starting over with a new session.
#[test]
fn mysql_stop_during_the_lock_delay_ends_the_starter() {
    let env = TestEnv::new();
    let name = unique("my-stop-delay");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    holder.kill();
    let mut starter = start(&env, &run_args(&url(), &name, &[], "echo ran"));
    starter.expect_stderr_containing("did not release it cleanly");
    let out = env.run(&["stop", "--mysql", &url(), &name]);
    assert_exit(&out, 0);
    let (status, stdout, err) = starter.finish();
    assert_eq!(code(status), 74, "{err}");
    assert!(err.contains("before its command started"), "{err}");
    assert!(stdout.is_empty(), "{stdout}");
}

/// `wait --mysql` returns once the holder is gone, without taking the
/// lock.
#[test]
fn mysql_wait_returns_when_the_holder_is_gone() {
    let env = TestEnv::new();
    let name = unique("my-wait");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], "echo ready; exec sleep 1000"),
    );
    holder.expect_stdout_line("ready");
    let timed_out = env.run(&["wait", "--mysql", &url(), &name, "--timeout", "200ms"]);
    assert_exit(&timed_out, 75);
    let waiter = env.start(&["wait", "--mysql", &url(), &name]);
    holder.signal(libc::SIGTERM);
    let (status, _, err) = waiter.finish();
    assert_eq!(code(status), 0, "{err}");
}

/// A read-only server (a replica) is refused with 77: named locks are not
/// replicated. On a throwaway server of its own (scripts/with-mariadb),
/// since read_only is global.
#[test]
fn mysql_read_only_server_is_refused() {
    let env = TestEnv::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/with-mariadb");
    let onlyone = env!("CARGO_BIN_EXE_onlyone");
    let inner = format!(
        "url=$ONLYONE_TEST_MYSQL_URL; hp=${{url#*@}}; hp=${{hp%%/*}}; \
         mariadb --no-defaults -h 127.0.0.1 -P ${{hp#*:}} -u root -e 'SET GLOBAL read_only = 1' && \
         exec {onlyone} run --mysql \"$url\" --name on-replica -- echo ran"
    );
    let out = Command::new(script)
        .args(["sh", "-c", &inner])
        .env_remove("ONLYONE_TEST_MYSQL_URL")
        .stdin(Stdio::null())
        .current_dir(env.path(""))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(out.status), 77, "{err}");
    assert!(err.contains("it is read-only"), "{err}");
    assert!(out.stdout.is_empty());
}

/// Group Replication keeps named locks local to each member, so a member
/// is refused (77); the decision over what the server says is unit-tested
/// in src/backend/mysql/cluster.rs, since no group can be started here.
/// MariaDB has no Group Replication: a plain server must not be taken for
/// a member (its unknown variable read as "no group"), and its lock is
/// taken as usual.
#[test]
fn mysql_plain_mariadb_is_not_refused_as_a_group_replication_member() {
    let env = TestEnv::new();
    let url = url();
    let has_group_replication = client(&url)
        .args(["-e", "SELECT @@global.group_replication_group_name"])
        .output()
        .unwrap()
        .status
        .success();
    if has_group_replication {
        eprintln!("skipped: this server knows Group Replication (MySQL), not a plain MariaDB");
        return;
    }
    let out = run(
        &env,
        &run_args(&url, &unique("my-not-a-group"), &[], "echo ran"),
    );
    let err = stderr(&out);
    assert_eq!(code(out.status), 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert!(!err.contains("Group Replication"), "{err}");
}

/// As on files and PostgreSQL (issue 9 item 5): a plain lock started while
/// a slot of its name is held is refused (77), and so is a pool member
/// started while the plain lock is held. The plain starter's check reads
/// only its own name's slot rows (`MysqlBackend::slots`), not every row of
/// the state table: a row of another name, held, must not count.
#[test]
fn mysql_plain_lock_and_pool_of_one_name_refuse_each_other() {
    let env = TestEnv::new();
    let url = url();
    let job = unique("my-mix");
    let other = unique("my-mix-other");
    let mut unrelated = start(
        &env,
        &run_args(&url, &other, &["--max", "2"], "echo ready; exec sleep 1000"),
    );
    unrelated.expect_stdout_line("ready");
    // Another name's slot held: this plain lock is not concerned.
    let out = run(&env, &run_args(&url, &job, &[], "echo ran"));
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    let refused_as_mixed = |out: &Output| {
        let err = stderr(out);
        assert_eq!(code(out.status), 77, "{err}");
        assert!(
            err.contains(&format!(
                "lock '{job}' is used as a pool of slots ({job}@1..) and as a plain lock"
            )),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    };
    let mut member = start(
        &env,
        &run_args(&url, &job, &["--max", "2"], "echo ready; exec sleep 1000"),
    );
    member.expect_stdout_line("ready");
    refused_as_mixed(&run(&env, &run_args(&url, &job, &[], "echo ran")));
    // Released cleanly (a killed member leaves its slot unreleased, which
    // refuses a plain start too).
    member.signal(libc::SIGTERM);
    let _ = member.finish();
    let mut plain = start(
        &env,
        &run_args(&url, &job, &[], "echo ready; exec sleep 1000"),
    );
    plain.expect_stdout_line("ready");
    refused_as_mixed(&run(
        &env,
        &run_args(&url, &job, &["--max", "2"], "echo ran"),
    ));
    plain.kill();
    unrelated.kill();
}
