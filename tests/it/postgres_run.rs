//! `onlyone run --postgres`: exclusion across processes through a real
//! PostgreSQL server, and the faults a lock held over a network must
//! survive. Fault tests use a throwaway cluster of their own.
//!
//! Every protected command takes a non-blocking flock(1) on a witness file
//! before it says it runs: if two ever ran at once, the second could not
//! take it and would report OVERLAP. The kernel drops a dead command's
//! witness lock however it died, so crashes cannot fool it.

#![cfg(feature = "postgres")]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::pg_cluster::PgCluster;
use crate::harness::pooler::Pooler;
use crate::harness::proxy::Proxy;
use crate::postgres_lib::url;
use crate::util::{Running, TestEnv, assert_exit, code, pid_alive, signal_pid, stderr};

/// Short timings so that faults play out in seconds: heartbeat deadline
/// T = 2 × 100 ms + 1 s = 1.2 s, kill grace G = 300 ms, lock-delay
/// D = 2 s > T + G. After an unclean loss the next holder waits the longer
/// of its D and the previous holder's recorded T + G + 2 s: 3.5 s.
pub(crate) const TIMING: [&str; 6] = [
    "--heartbeat",
    "100ms",
    "--kill-grace",
    "300ms",
    "--lock-delay",
    "2s",
];
pub(crate) const T_PLUS_G: Duration = Duration::from_millis(1500);
pub(crate) const LOCK_DELAY: Duration = Duration::from_millis(3500);

/// A lock name unique to this test process and test.
pub(crate) fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// The advisory key of `name`, computed here as the README documents it.
pub(crate) fn documented_key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("onlyone/v1/{name}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap())
}

/// `onlyone run --postgres URL --name NAME (timings) EXTRA -- sh -c
/// '<witness> SCRIPT'`.
pub(crate) fn run_args(url: &str, name: &str, extra: &[&str], script: &str) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--postgres", url, "--name", name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(TIMING.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    args
}

/// A command that proves it runs alone (flock -n on the witness) and then
/// says `ready` and sleeps.
pub(crate) fn witnessed(env: &TestEnv, say: &str) -> String {
    format!(
        "exec flock -n -E 99 {} sh -c 'echo {say}; exec sleep 1000'",
        env.path("witness").display()
    )
}

pub(crate) fn start(env: &TestEnv, args: &[String]) -> Running {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.start(&args)
}

pub(crate) fn run(env: &TestEnv, args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.run(&args)
}

/// The backend pid of the session that holds `name`'s lock.
pub(crate) fn holder_backend_pid(cluster_psql: impl Fn(&str) -> String, name: &str) -> String {
    let key = documented_key(name);
    cluster_psql(&format!(
        "select pid from pg_locks where locktype = 'advisory' and granted \
         and classid = {} and objid = {} and objsubid = 1",
        ((key as u64) >> 32) as u32,
        key as u64 as u32
    ))
}

#[test]
fn second_start_is_refused_naming_the_holder() {
    let env = TestEnv::new();
    let name = unique("pg-conflict");
    let holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    let mut holder = holder;
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
    assert!(message.contains("backend pid"), "{message}");
    assert!(second.stdout.is_empty());

    let status = env.run(&["status", "--postgres", &url(), &name, "--json"]);
    assert_exit(&status, 0);
    let value: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(value["held"], true);
    assert_eq!(value["holder"]["record"]["pid"], holder.pid());
    let key = documented_key(&name);
    assert!(
        value["location"]
            .as_str()
            .unwrap()
            .contains(&format!("key {key} (classid ")),
        "{value}"
    );
}

#[test]
fn twenty_simultaneous_starts_run_exactly_one() {
    let env = TestEnv::new();
    let name = unique("pg-race");
    let ran = env.path("ran");
    let script = format!("echo $$ >> {}; echo ready; exec sleep 1000", ran.display());
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
fn tokens_increase_and_a_clean_release_needs_no_lock_delay() {
    let env = TestEnv::new();
    let name = unique("pg-tokens");
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let out = run(
            &env,
            &run_args(
                &url(),
                &name,
                &[],
                "echo $ONLYONE_TOKEN $ONLYONE_POSTGRES_KEY",
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
        assert_eq!(fields.next().unwrap(), documented_key(&name).to_string());
    }
    assert!(tokens.windows(2).all(|w| w[1] == w[0] + 1), "{tokens:?}");
}

/// The supervisor SIGKILLed: the kernel kills its command, the server ends
/// its session, and the next holder waits the lock-delay (the state row
/// still says held) before it starts.
#[test]
fn supervisor_killed_next_holder_waits_the_lock_delay() {
    let env = TestEnv::new();
    let name = unique("pg-sigkill");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
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

/// Another program holding the documented key (here psql) excludes onlyone.
#[test]
fn psql_holding_the_documented_key_is_a_conflict() {
    let env = TestEnv::new();
    let name = unique("pg-psql");
    let key = documented_key(&name);
    let mut psql = Command::new("psql")
        .args(["-X", "-A", "-t", &url()])
        .args(["-c", &format!("select pg_advisory_lock({key})")])
        .args(["-c", "select 'locked'", "-c", "select pg_sleep(1000)"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(psql.stdout.take().unwrap()).lines();
    assert!(lines.any(|line| line.unwrap() == "locked"));

    let out = run(&env, &run_args(&url(), &name, &[], "echo ran"));
    assert_exit(&out, 75);
    assert!(
        stderr(&out).contains("not an onlyone holder"),
        "{}",
        stderr(&out)
    );
    let _ = psql.kill();
    let _ = psql.wait();
}

/// Runs a fault against a holder on a throwaway cluster, with a waiter
/// queued directly on the server, and checks: the holder's command was
/// stopped and onlyone exited 74 within T + G of the fault; the waiter ran
/// its command afterwards, never at the same time (the witness), and not
/// before the lock-delay had passed.
pub(crate) struct Fault {
    pub env: TestEnv,
    pub name: String,
    holder: Running,
}

impl Fault {
    pub fn start(holder_url: &str) -> Fault {
        let env = TestEnv::new();
        let name = unique("pg-fault");
        let mut holder = start(
            &env,
            &run_args(holder_url, &name, &[], &witnessed(&env, "ready")),
        );
        holder.expect_stdout_line("ready");
        Fault { env, name, holder }
    }

    /// Waits for the holder to notice, stop its command and exit 74.
    pub fn expect_lost(self, fault_at: Instant, reason: &str) -> (TestEnv, String) {
        let Fault { env, name, holder } = self;
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
        (env, name)
    }
}

pub(crate) fn expect_next_holder_after_lock_delay(
    env: &TestEnv,
    url: &str,
    name: &str,
    fault_at: Instant,
) {
    let mut next = start(
        env,
        &run_args(url, name, &["--wait"], &witnessed(env, "next")),
    );
    next.expect_stdout_line("next");
    assert!(fault_at.elapsed() >= LOCK_DELAY);
    let err = next.expect_stderr_containing("did not release it cleanly");
    assert!(err.contains("waiting the lock-delay of 3s 500ms"), "{err}");
}

#[test]
fn terminated_session_stops_the_command() {
    let cluster = PgCluster::start();
    let fault = Fault::start(&cluster.url());
    let pid = holder_backend_pid(|sql| cluster.psql(sql), &fault.name);
    let fault_at = Instant::now();
    cluster.psql(&format!("select pg_terminate_backend({pid})"));
    let (env, name) = fault.expect_lost(
        fault_at,
        "terminating connection due to administrator command",
    );
    expect_next_holder_after_lock_delay(&env, &cluster.url(), &name, fault_at);
}

#[test]
fn server_restart_stops_the_command() {
    let cluster = PgCluster::start();
    let fault = Fault::start(&cluster.url());
    let fault_at = Instant::now();
    cluster.restart();
    let (env, name) = fault.expect_lost(fault_at, "PostgreSQL");
    expect_next_holder_after_lock_delay(&env, &cluster.url(), &name, fault_at);
}

#[test]
fn frozen_network_stops_the_command() {
    let cluster = PgCluster::start();
    let server: SocketAddr = format!("127.0.0.1:{}", cluster.port()).parse().unwrap();
    let proxy = Proxy::start(server);
    let fault = Fault::start(&cluster.url_via(&proxy.addr().to_string()));
    let fault_at = Instant::now();
    proxy.freeze();
    let (env, name) = fault.expect_lost(fault_at, "within the heartbeat deadline");
    // The proxy keeps the frozen session's TCP connection alive (a
    // middlebox answers keepalives), so the server cannot see that the
    // holder is gone; it ends the session when the heartbeats stop
    // (idle_session_timeout), which frees the lock.
    expect_next_holder_after_lock_delay(&env, &cluster.url(), &name, fault_at);
    drop(proxy);
}

#[test]
fn transaction_pooler_is_detected_and_stops_the_command() {
    let cluster = PgCluster::start();
    let server: SocketAddr = format!("127.0.0.1:{}", cluster.port()).parse().unwrap();
    let pooler = Pooler::start(server);
    let fault = Fault::start(&cluster.url_via(&pooler.addr().to_string()));
    let fault_at = Instant::now();
    pooler.reassign();
    let (env, name) = fault.expect_lost(fault_at, "pooler");
    // The pooler still keeps the old session, and with it the lock: an
    // orphaned lock, until the pool closes it.
    drop(pooler);
    expect_next_holder_after_lock_delay(&env, &cluster.url(), &name, fault_at);
}

#[test]
fn standby_is_refused() {
    let primary = PgCluster::start();
    let standby = primary.make_standby();
    let env = TestEnv::new();
    let out = run(
        &env,
        &run_args(&standby.url(), "on-standby", &[], "echo ran"),
    );
    assert_exit(&out, 77);
    assert!(stderr(&out).contains("it is a standby"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

/// Connection failures: each one line, exit 69 (64 for a malformed URL),
/// and never the password.
#[test]
fn connection_failures_are_one_line_without_the_password() {
    let cluster = PgCluster::start_with(&[
        ("max_connections", "3"),
        ("superuser_reserved_connections", "0"),
    ]);
    let env = TestEnv::new();
    let with_password =
        |host_port: &str, db: &str| format!("postgres://postgres:s3cret-pw@{host_port}/{db}");
    let port = cluster.port();
    let cases = [
        (
            "malformed",
            "postgres://postgres:s3cret-pw@host:notaport/db".to_owned(),
            64,
            "malformed PostgreSQL URL",
        ),
        (
            "unreachable",
            with_password("127.0.0.1:1", "postgres"),
            69,
            "Connection refused",
        ),
        (
            "missing database",
            with_password(&format!("127.0.0.1:{port}"), "nosuchdb"),
            69,
            "database \"nosuchdb\" does not exist",
        ),
    ];
    for (what, url, exit, fragment) in cases {
        let out = run(&env, &run_args(&url, "bad", &[], "echo ran"));
        let err = stderr(&out);
        assert_eq!(code(out.status), exit, "{what}: {err}");
        assert!(err.contains(fragment), "{what}: {err}");
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("onlyone: error") || l.starts_with("error"))
            .collect();
        assert_eq!(errors.len(), 1, "{what}: {err}");
        if exit == 69 {
            assert!(
                err.contains(
                    "onlyone: warning: the password in --postgres can be read by every user"
                ),
                "{what}: {err}"
            );
        }
        assert!(
            !err.contains("s3cret-pw"),
            "{what} leaks the password: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
    }

    // Every connection taken: the server refuses one more.
    let mut sessions: Vec<postgres::Client> = (0..3)
        .map(|_| postgres::Client::connect(&cluster.url(), postgres::NoTls).unwrap())
        .collect();
    let out = run(&env, &run_args(&cluster.url(), "full", &[], "echo ran"));
    assert_exit(&out, 69);
    assert!(
        stderr(&out).contains("too many clients"),
        "{}",
        stderr(&out)
    );
    sessions.clear();

    cluster.require_password("right-pw");
    let wrong = format!("postgres://postgres:wrong-pw@127.0.0.1:{port}/postgres");
    let out = run(&env, &run_args(&wrong, "auth", &[], "echo ran"));
    assert_exit(&out, 69);
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("wrong-pw"), "{}", stderr(&out));
}

/// `stop --signal KILL --postgres` ends the holder's session at once (no
/// request first); the holder's own onlyone then stops its command and
/// exits 74.
#[test]
fn stop_kill_ends_the_holders_session_and_its_command() {
    let env = TestEnv::new();
    let name = unique("pg-stop");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], &witnessed(&env, "ready")),
    );
    holder.expect_stdout_line("ready");
    let out = env.run(&["stop", "--signal", "KILL", "--postgres", &url(), &name]);
    assert_exit(&out, 0);
    let (status, _, err) = holder.finish();
    assert_eq!(code(status), 74, "{err}");

    let again = env.run(&["stop", "--postgres", &url(), &name]);
    assert_exit(&again, 3);
}

/// Finding 7 on the lost-lock path: what the command left running outside
/// its process group (here a daemon, `setsid` with its descriptors closed)
/// is killed, without grace, before onlyone exits 74.
#[test]
fn lost_lock_kills_what_the_command_left_outside_its_group() {
    let env = TestEnv::new();
    let name = unique("pg-daemon");
    let (fifo, pid_file) = (env.path("daemon.fifo"), env.path("daemon.pid"));
    let script = format!(
        "mkfifo {fifo} || exit 1; \
         setsid sh -c 'exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; echo $$ > {fifo}; exec sleep 1000' \
         </dev/null >/dev/null 2>&1 & \
         read pid < {fifo} && echo $pid > {pid} && echo ready && exec sleep 1000",
        fifo = fifo.display(),
        pid = pid_file.display()
    );
    let mut holder = start(&env, &run_args(&url(), &name, &[], &script));
    holder.expect_stdout_line("ready");
    let daemon: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = env.run(&["stop", "--signal", "KILL", "--postgres", &url(), &name]);
    assert_exit(&out, 0);
    let (status, _, err) = holder.finish();
    let daemon_ran_on = pid_alive(daemon);
    signal_pid(daemon, libc::SIGKILL);
    assert_eq!(code(status), 74, "{err}");
    assert!(!daemon_ran_on, "the daemon outlived the lost lock: {err}");
}

/// `run --replace --postgres`: the old holder is asked through the
/// database, stops its command (the witness shows the two never ran at
/// once) and releases cleanly, so the new command starts without the
/// lock-delay. (The unanswered case: tests/it/postgres_handoff.rs.)
#[test]
fn replace_across_machines_needs_no_lock_delay() {
    let env = TestEnv::new();
    let name = unique("pg-replace");
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
    assert!(replaced_at.elapsed() < LOCK_DELAY);
    let (status, _, err) = holder.finish();
    assert_ne!(code(status), 74, "{err}");
    assert!(!err.contains("lost lock"), "{err}");
}

/// `wait --postgres` returns once the holder is gone, without taking the
/// lock.
#[test]
fn wait_returns_when_the_holder_is_gone() {
    let env = TestEnv::new();
    let name = unique("pg-wait");
    let mut holder = start(
        &env,
        &run_args(&url(), &name, &[], "echo ready; exec sleep 1000"),
    );
    holder.expect_stdout_line("ready");
    let timed_out = env.run(&["wait", "--postgres", &url(), &name, "--timeout", "200ms"]);
    assert_exit(&timed_out, 75);
    let waiter = env.start(&["wait", "--postgres", &url(), &name]);
    holder.signal(libc::SIGTERM);
    let (status, _, err) = waiter.finish();
    assert_eq!(code(status), 0, "{err}");
}

/// Found by the torture run: a waiter whose session was terminated while
/// it waited gave up with 69. It held nothing, so it waits on with a new
/// session.
#[test]
fn waiter_whose_session_ends_waits_on() {
    let cluster = PgCluster::start();
    let env = TestEnv::new();
    let name = unique("pg-waiter");
    let mut holder = start(
        &env,
        &run_args(&cluster.url(), &name, &[], "echo ready; exec sleep 1000"),
    );
    holder.expect_stdout_line("ready");
    let mut waiter = start(
        &env,
        &run_args(&cluster.url(), &name, &["--wait"], "echo ran"),
    );
    waiter.expect_stderr_containing("waiting for lock");
    let key = documented_key(&name);
    let waiting = format!(
        "select pid from pg_locks where locktype = 'advisory' and not granted \
         and classid = {} and objid = {}",
        ((key as u64) >> 32) as u32,
        key as u64 as u32
    );
    // The waiter's statement reaches the server's lock queue a moment after
    // it says it waits: wait for the queue entry (the server's own event has
    // no notification for bystanders).
    let queued_by = Instant::now() + crate::util::EVENT_TIMEOUT;
    let pid = loop {
        let pid = cluster.psql(&waiting);
        if !pid.is_empty() {
            break pid;
        }
        assert!(Instant::now() < queued_by, "the waiter never queued");
        std::thread::sleep(Duration::from_millis(10));
    };
    cluster.psql(&format!("select pg_terminate_backend({pid})"));
    waiter.expect_stderr_containing("waiting on with a new session");
    holder.signal(libc::SIGTERM);
    waiter.expect_stdout_line("ran");
    let (status, _, err) = waiter.finish();
    assert_eq!(code(status), 0, "{err}");
}

/// A heartbeat so long that the server could not hold its idle limit
/// (2 × heartbeat + 3 s in `idle_session_timeout`, about 24.8 days at
/// most) is a usage error before any connection, not a server's refusal
/// (69) or a deadline past what a clock can represent.
#[test]
fn a_heartbeat_too_long_for_the_server_is_a_usage_error() {
    let env = TestEnv::new();
    for heartbeat in ["13d", "100000000000000d"] {
        let out = env.run(&[
            "run",
            "--postgres",
            "postgres://nobody@127.0.0.1:1/none",
            "--name",
            "hb",
            "--heartbeat",
            heartbeat,
            "--",
            "true",
        ]);
        let err = stderr(&out);
        assert_eq!(code(out.status), 64, "{heartbeat}: {err}");
        assert!(err.contains("is too long: at most 12days"), "{err}");
    }
}
