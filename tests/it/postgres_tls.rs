//! PostgreSQL over TLS, against throwaway clusters with certificates made
//! at test time: libpq's meaning of every sslmode, certificate checks,
//! client certificates, the environment, the service file, several hosts,
//! and the fault tests over an encrypted session.
//!
//! Each case runs `onlyone run --postgres URL -- (sleep)` and asks the
//! server (`pg_stat_ssl`) whether the lock session is encrypted, or checks
//! the exit code and the exact error line.

#![cfg(feature = "postgres")]

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Instant;

use crate::harness::pg_cluster::PgCluster;
use crate::harness::proxy::Proxy;
use crate::harness::tls_certs::{CERT_USER, TestCerts};
use crate::postgres_run::{Fault, expect_next_holder_after_lock_delay, holder_backend_pid, unique};
use crate::util::{Running, TestEnv, assert_exit, code, stderr};

/// Roles of the TLS cluster: `certuser` must show a client certificate,
/// `tlsonly` must use TLS, `plainonly` must not, `scramuser` gives a
/// password over TLS; anyone else is trusted.
const HBA: &str = "\
local all all trust
hostssl all certuser 127.0.0.1/32 cert
hostnossl all tlsonly 127.0.0.1/32 reject
hostssl all plainonly 127.0.0.1/32 reject
hostssl all scramuser 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
";

/// libpq's variables a case must not inherit from the test's environment.
const LIBPQ_VARIABLES: [&str; 12] = [
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGTARGETSESSIONATTRS",
];

/// A TLS cluster and the certificates it was made with.
struct TlsServer {
    certs: TestCerts,
    cluster: PgCluster,
}

impl TlsServer {
    fn start() -> TlsServer {
        let certs = TestCerts::generate();
        let cluster = PgCluster::start_tls(&certs.server_tls(), HBA);
        cluster.psql(&format!(
            "create role {CERT_USER} login superuser; \
             create role tlsonly login superuser; \
             create role plainonly login superuser; \
             create role scramuser login superuser password 'scram-pw'"
        ));
        TlsServer { certs, cluster }
    }

    /// `postgres://USER@HOST:PORT/postgres?QUERY`, where `{certs}` in the
    /// query stands for the certificates' directory.
    fn url(&self, user: &str, host: &str, query: &str) -> String {
        url(&self.cluster, user, host, &self.with_certs(query))
    }

    fn with_certs(&self, text: &str) -> String {
        text.replace("{certs}", &self.certs.dir().to_string_lossy())
    }
}

fn url(cluster: &PgCluster, user: &str, host: &str, query: &str) -> String {
    let url = format!("postgres://{user}@{host}:{}/postgres", cluster.port());
    if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    }
}

/// What became of one `onlyone run`.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// It held the lock on an encrypted session.
    Encrypted,
    /// It held the lock on a plain session.
    Plain,
    /// It exited with this code and this `onlyone: error:` line.
    Failed(i32, String),
}

/// A case's environment: a home of its own (for `~/.postgresql`) and
/// libpq variables.
struct Case<'a> {
    env: &'a TestEnv,
    vars: Vec<(&'a str, String)>,
}

impl<'a> Case<'a> {
    fn new(env: &'a TestEnv) -> Case<'a> {
        fs::create_dir_all(env.path("home")).unwrap();
        Case {
            env,
            vars: Vec::new(),
        }
    }

    fn var(mut self, name: &'a str, value: &str) -> Case<'a> {
        self.vars.push((name, value.to_owned()));
        self
    }

    /// Runs `onlyone run --postgres URL` with a command that sleeps; asks
    /// `cluster` whether its lock session is encrypted, then kills it.
    fn run(&self, cluster: &PgCluster, url: &str) -> Outcome {
        let name = unique(&format!("tls-{}", next_case()));
        let mut command = self.env.onlyone(&[
            "run",
            "--postgres",
            url,
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ]);
        for var in LIBPQ_VARIABLES {
            command.env_remove(var);
        }
        command
            .env("HOME", self.env.path("home"))
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut holder = Running::spawn(&mut command);
        if !holder.try_expect_stdout_line("ready") {
            let (status, _, err) = holder.finish();
            let line = err
                .lines()
                .find(|line| line.starts_with("onlyone: error:"))
                .unwrap_or(&err)
                .to_owned();
            return Outcome::Failed(code(status), line);
        }
        let ssl = session_encrypted(cluster, &name);
        holder.kill();
        if ssl {
            Outcome::Encrypted
        } else {
            Outcome::Plain
        }
    }
}

fn next_case() -> usize {
    static CASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `pg_stat_ssl.ssl` of the session that holds `name`'s lock.
fn session_encrypted(cluster: &PgCluster, name: &str) -> bool {
    let pid = holder_backend_pid(|sql| cluster.psql(sql), name);
    assert!(!pid.is_empty(), "no session holds {name}");
    match cluster
        .psql(&format!("select ssl from pg_stat_ssl where pid = {pid}"))
        .as_str()
    {
        "t" => true,
        "f" => false,
        other => panic!("pg_stat_ssl says {other:?}"),
    }
}

/// The exact error line for a failed connection.
fn cannot_connect(cluster: &PgCluster, host: &str, why: &str) -> Outcome {
    Outcome::Failed(
        69,
        format!(
            "onlyone: error: cannot connect to PostgreSQL at postgres://{host}:{}/postgres: {why}",
            cluster.port()
        ),
    )
}

fn check(cases: Vec<(&str, Outcome, Outcome)>) {
    let failures: Vec<String> = cases
        .into_iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}:\n   got {got:?}\n  want {want:?}"))
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_sslmode_against_a_tls_server_and_a_plain_one() {
    let tls = TlsServer::start();
    let plain = PgCluster::start();
    let env = TestEnv::new();
    let case = Case::new(&env);
    let on_tls = |query: &str| case.run(&tls.cluster, &tls.url("postgres", "localhost", query));
    let on_plain = |query: &str| {
        case.run(
            &plain,
            &url(&plain, "postgres", "127.0.0.1", &tls.with_certs(query)),
        )
    };
    let no_tls = |mode: &str| {
        cannot_connect(
            &plain,
            "127.0.0.1",
            &format!("the server does not accept TLS connections, and sslmode={mode} requires TLS"),
        )
    };
    use Outcome::{Encrypted, Plain};
    check(vec![
        ("TLS server, default (prefer)", on_tls(""), Encrypted),
        ("TLS server, disable", on_tls("sslmode=disable"), Plain),
        ("TLS server, allow", on_tls("sslmode=allow"), Plain),
        ("TLS server, prefer", on_tls("sslmode=prefer"), Encrypted),
        ("TLS server, require", on_tls("sslmode=require"), Encrypted),
        (
            "TLS server, verify-ca",
            on_tls("sslmode=verify-ca&sslrootcert={certs}/ca.crt"),
            Encrypted,
        ),
        (
            "TLS server, verify-full",
            on_tls("sslmode=verify-full&sslrootcert={certs}/ca.crt"),
            Encrypted,
        ),
        ("plain server, default", on_plain(""), Plain),
        ("plain server, disable", on_plain("sslmode=disable"), Plain),
        ("plain server, allow", on_plain("sslmode=allow"), Plain),
        ("plain server, prefer", on_plain("sslmode=prefer"), Plain),
        (
            "plain server, require",
            on_plain("sslmode=require"),
            no_tls("require"),
        ),
        (
            "plain server, verify-ca",
            on_plain("sslmode=verify-ca&sslrootcert={certs}/ca.crt"),
            no_tls("verify-ca"),
        ),
        (
            "plain server, verify-full",
            on_plain("sslmode=verify-full&sslrootcert={certs}/ca.crt"),
            no_tls("verify-full"),
        ),
    ]);
}

/// allow retries over TLS when the server refuses plain text; prefer
/// retries in plain text when the server refuses TLS or its certificate
/// does not verify: libpq's second attempts.
#[test]
fn allow_and_prefer_retry_as_libpq_does() {
    let tls = TlsServer::start();
    let env = TestEnv::new();
    let case = Case::new(&env);
    let run = |user: &str, query: &str| case.run(&tls.cluster, &tls.url(user, "localhost", query));
    let refused = |user: &str, why: &str| -> Outcome {
        cannot_connect(
            &tls.cluster,
            "localhost",
            &format!(
                "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"{user}\", database \"postgres\", {why}"
            ),
        )
    };
    use Outcome::{Encrypted, Plain};
    check(vec![
        (
            "TLS only, allow",
            run("tlsonly", "sslmode=allow"),
            Encrypted,
        ),
        (
            "TLS only, disable",
            run("tlsonly", "sslmode=disable"),
            refused("tlsonly", "no encryption"),
        ),
        (
            "plain only, prefer",
            run("plainonly", "sslmode=prefer"),
            Plain,
        ),
        (
            "plain only, require",
            run("plainonly", "sslmode=require"),
            refused("plainonly", "SSL encryption"),
        ),
        (
            "SCRAM with channel binding to the TLS session",
            Case::new(&env).var("PGPASSWORD", "scram-pw").run(
                &tls.cluster,
                &tls.url(
                    "scramuser",
                    "localhost",
                    "sslmode=require&channel_binding=require",
                ),
            ),
            Encrypted,
        ),
        (
            "prefer, certificate of an unknown CA",
            run(
                "postgres",
                "sslmode=prefer&sslrootcert={certs}/other-ca.crt",
            ),
            Plain,
        ),
    ]);
}

#[test]
fn server_certificates_are_checked_as_libpq_does() {
    let tls = TlsServer::start();
    let env = TestEnv::new();
    let case = Case::new(&env);
    let run = |host: &str, query: &str| case.run(&tls.cluster, &tls.url("postgres", host, query));
    let certs = tls.certs.dir().display().to_string();
    let home = env.path("home").display().to_string();
    let failed =
        |host: &str, why: &str| cannot_connect(&tls.cluster, host, &why.replace("{certs}", &certs));
    let unknown_ca = |mode: &str| {
        failed(
            "localhost",
            &format!(
                "the server certificate is not signed by a trusted CA (root certificate file \"{{certs}}/other-ca.crt\"); sslmode={mode}"
            ),
        )
    };
    use Outcome::{Encrypted, Failed};
    check(vec![
        (
            "verify-full, host name not in the certificate",
            run(
                "127.0.0.1",
                "sslmode=verify-full&sslrootcert={certs}/ca.crt",
            ),
            failed(
                "127.0.0.1",
                "server certificate for \"localhost\" does not match host name \"127.0.0.1\" (sslmode=verify-full)",
            ),
        ),
        (
            "verify-ca does not check the name",
            run("127.0.0.1", "sslmode=verify-ca&sslrootcert={certs}/ca.crt"),
            Encrypted,
        ),
        (
            "verify-ca, unknown CA",
            run(
                "localhost",
                "sslmode=verify-ca&sslrootcert={certs}/other-ca.crt",
            ),
            unknown_ca("verify-ca"),
        ),
        (
            "require with a root file is verify-ca",
            run(
                "localhost",
                "sslmode=require&sslrootcert={certs}/other-ca.crt",
            ),
            unknown_ca("require"),
        ),
        (
            "verify-full, revoked",
            run(
                "localhost",
                "sslmode=verify-full&sslrootcert={certs}/ca.crt&sslcrl={certs}/revoked.crl",
            ),
            failed(
                "localhost",
                "the server certificate is revoked (certificate revocation list file \"{certs}/revoked.crl\")",
            ),
        ),
        (
            "verify-full without a root file",
            run("localhost", "sslmode=verify-full"),
            Failed(
                69,
                format!(
                    "onlyone: error: root certificate file \"{home}/.postgresql/root.crt\" does not exist; sslmode=verify-full needs the CA that signed the server's certificate (sslrootcert=FILE, or sslrootcert=system for the platform's CAs)"
                ),
            ),
        ),
        (
            "a named root file that is missing",
            run(
                "localhost",
                "sslmode=require&sslrootcert={certs}/missing.crt",
            ),
            Failed(
                69,
                format!(
                    "onlyone: error: root certificate file \"{certs}/missing.crt\" does not exist"
                ),
            ),
        ),
    ]);

    // ~/.postgresql/root.crt is used when it exists: require then checks
    // the chain, as libpq does.
    let dot = env.path("home/.postgresql");
    fs::create_dir_all(&dot).unwrap();
    fs::copy(tls.certs.path("other-ca.crt"), dot.join("root.crt")).unwrap();
    let with_wrong_default = run("localhost", "sslmode=require");
    fs::copy(tls.certs.path("ca.crt"), dot.join("root.crt")).unwrap();
    check(vec![
        (
            "require, ~/.postgresql/root.crt of another CA",
            with_wrong_default,
            failed(
                "localhost",
                &format!(
                    "the server certificate is not signed by a trusted CA (root certificate file \"{home}/.postgresql/root.crt\"); sslmode=require"
                ),
            ),
        ),
        (
            "verify-full, ~/.postgresql/root.crt",
            run("localhost", "sslmode=verify-full"),
            Encrypted,
        ),
    ]);
}

#[test]
fn client_certificates_as_libpq() {
    let tls = TlsServer::start();
    let env = TestEnv::new();
    let case = Case::new(&env);
    let certs = tls.certs.dir().display().to_string();
    let run = |query: &str| {
        case.run(
            &tls.cluster,
            &tls.url(
                CERT_USER,
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={{certs}}/ca.crt{query}"),
            ),
        )
    };
    let world_readable = tls.certs.path("client-0644.key");
    fs::copy(tls.certs.path("client.key"), &world_readable).unwrap();
    fs::set_permissions(&world_readable, fs::Permissions::from_mode(0o644)).unwrap();
    let encrypted = tls.certs.path("encrypted.key");
    fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    fs::set_permissions(&encrypted, fs::Permissions::from_mode(0o600)).unwrap();
    let error = |line: &str| {
        Outcome::Failed(
            69,
            format!("onlyone: error: {}", line.replace("{certs}", &certs)),
        )
    };
    let refused = run("&sslcert={certs}/wrong-client.crt&sslkey={certs}/wrong-client.key");
    let refused_ok = matches!(&refused, Outcome::Failed(69, line)
        if line.contains(&format!("the server refused the client certificate \"{certs}/wrong-client.crt\" (TLS alert: ")));
    assert!(
        refused_ok,
        "a client certificate of another CA: {refused:?}"
    );
    check(vec![
        (
            "accepted",
            run("&sslcert={certs}/client.crt&sslkey={certs}/client.key"),
            Outcome::Encrypted,
        ),
        (
            "missing",
            run(""),
            cannot_connect(
                &tls.cluster,
                "localhost",
                "connection requires a valid client certificate",
            ),
        ),
        (
            "key readable by others",
            run("&sslcert={certs}/client.crt&sslkey={certs}/client-0644.key"),
            error(
                "private key file \"{certs}/client-0644.key\" has group or world access (mode 0644); it must be mode 0600 or less if owned by the current user, or 0640 or less if owned by root",
            ),
        ),
        (
            "an encrypted key",
            run("&sslcert={certs}/client.crt&sslkey={certs}/encrypted.key"),
            error(
                "private key file \"{certs}/encrypted.key\" is encrypted, which onlyone does not support; store it decrypted with mode 0600 (openssl pkey -in KEY -out NEW)",
            ),
        ),
        (
            "a named certificate file that is missing",
            run("&sslcert={certs}/nope.crt&sslkey={certs}/client.key"),
            error("certificate file \"{certs}/nope.crt\" does not exist"),
        ),
        (
            "a certificate without its key",
            run("&sslcert={certs}/client.crt&sslkey={certs}/nope.key"),
            error(
                "certificate file \"{certs}/client.crt\" is given, but the private key file \"{certs}/nope.key\" does not exist",
            ),
        ),
        (
            "a certificate with another's key",
            run("&sslcert={certs}/client.crt&sslkey={certs}/wrong-client.key"),
            error(
                "certificate file \"{certs}/client.crt\" does not match private key file \"{certs}/wrong-client.key\"",
            ),
        ),
    ]);

    // libpq's defaults: ~/.postgresql/postgresql.crt and .key.
    let dot = env.path("home/.postgresql");
    fs::create_dir_all(&dot).unwrap();
    fs::copy(tls.certs.path("client.crt"), dot.join("postgresql.crt")).unwrap();
    fs::copy(tls.certs.path("client.key"), dot.join("postgresql.key")).unwrap();
    check(vec![("from ~/.postgresql", run(""), Outcome::Encrypted)]);
}

/// PGSSLMODE and friends, the `key=value` form and the service file.
#[test]
fn environment_service_file_and_both_forms() {
    let tls = TlsServer::start();
    let plain = PgCluster::start();
    let env = TestEnv::new();
    let ca = tls.certs.path("ca.crt").display().to_string();
    let certs = tls.certs.dir().display().to_string();
    let port = tls.cluster.port();
    let service_file = env.path("services.conf");
    fs::write(
        &service_file,
        format!(
            "[lock]\nhost=localhost\nport={port}\nuser=postgres\ndbname=postgres\nsslmode=verify-full\nsslrootcert={ca}\n"
        ),
    )
    .unwrap();
    let service_file = service_file.display().to_string();
    let on_tls = |case: Case, url: &str| case.run(&tls.cluster, url);
    let plain_url = url(&plain, "postgres", "127.0.0.1", "");
    let tls_url = tls.url("postgres", "localhost", "");
    use Outcome::{Encrypted, Plain};
    check(vec![
        (
            "PGSSLMODE=disable",
            on_tls(Case::new(&env).var("PGSSLMODE", "disable"), &tls_url),
            Plain,
        ),
        (
            "PGSSLMODE=require, plain server",
            Case::new(&env)
                .var("PGSSLMODE", "require")
                .run(&plain, &plain_url),
            cannot_connect(
                &plain,
                "127.0.0.1",
                "the server does not accept TLS connections, and sslmode=require requires TLS",
            ),
        ),
        (
            "PGSSLMODE=verify-full, PGSSLROOTCERT",
            on_tls(
                Case::new(&env)
                    .var("PGSSLMODE", "verify-full")
                    .var("PGSSLROOTCERT", &ca),
                &tls_url,
            ),
            Encrypted,
        ),
        (
            "the URL wins over PGSSLMODE",
            on_tls(
                Case::new(&env).var("PGSSLMODE", "verify-full"),
                &tls.url("postgres", "localhost", "sslmode=disable"),
            ),
            Plain,
        ),
        (
            "PGSSLCERT, PGSSLKEY",
            on_tls(
                Case::new(&env)
                    .var("PGSSLCERT", &format!("{certs}/client.crt"))
                    .var("PGSSLKEY", &format!("{certs}/client.key")),
                &tls.url(
                    CERT_USER,
                    "localhost",
                    "sslmode=verify-full&sslrootcert={certs}/ca.crt",
                ),
            ),
            Encrypted,
        ),
        (
            "key=value form",
            on_tls(
                Case::new(&env),
                &format!(
                    "host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{ca}'"
                ),
            ),
            Encrypted,
        ),
        (
            "service=",
            on_tls(
                Case::new(&env).var("PGSERVICEFILE", &service_file),
                "service=lock",
            ),
            Encrypted,
        ),
        (
            "PGSERVICE",
            on_tls(
                Case::new(&env)
                    .var("PGSERVICEFILE", &service_file)
                    .var("PGSERVICE", "lock"),
                "dbname=postgres",
            ),
            Encrypted,
        ),
        (
            "the service file wins over PGSSLMODE",
            on_tls(
                Case::new(&env)
                    .var("PGSERVICEFILE", &service_file)
                    .var("PGSSLMODE", "disable"),
                "service=lock",
            ),
            Encrypted,
        ),
    ]);
}

/// After a failover the old primary may be first in the list:
/// target_session_attrs=read-write skips a standby; without it the standby
/// is taken and refused, as before.
#[test]
fn several_hosts_find_the_primary() {
    let primary = PgCluster::start();
    let standby = primary.make_standby();
    let env = TestEnv::new();
    let case = Case::new(&env);
    let (p, s) = (primary.port(), standby.port());
    let both = format!("postgres://postgres@127.0.0.1:{s},127.0.0.1:{p}/postgres");
    let refused = case.run(&primary, &both);
    assert!(
        matches!(&refused, Outcome::Failed(77, line) if line.contains("it is a standby")),
        "{refused:?}"
    );
    check(vec![
        (
            "URL, read-write",
            case.run(&primary, &format!("{both}?target_session_attrs=read-write")),
            Outcome::Plain,
        ),
        (
            "key=value, read-write",
            case.run(
                &primary,
                &format!(
                    "host=127.0.0.1,127.0.0.1 port={s},{p} user=postgres dbname=postgres target_session_attrs=read-write"
                ),
            ),
            Outcome::Plain,
        ),
        (
            "the first host down",
            case.run(
                &primary,
                &format!("host=127.0.0.1,127.0.0.1 port=1,{p} user=postgres dbname=postgres"),
            ),
            Outcome::Plain,
        ),
    ]);
    let none = case.run(
        &primary,
        &format!("host=127.0.0.1,127.0.0.1 port=1,{s} user=postgres dbname=postgres target_session_attrs=read-write"),
    );
    let prefix = format!(
        "onlyone: error: cannot connect to PostgreSQL at postgres://127.0.0.1:1,127.0.0.1:{s}/postgres: 127.0.0.1:1: "
    );
    assert!(
        matches!(&none, Outcome::Failed(69, line)
            if line.starts_with(&prefix) && line.ends_with("database does not allow writes")),
        "{none:?}"
    );
}

/// `status` and the conflict message say whether the holder's session is
/// encrypted (pg_stat_ssl).
#[test]
fn status_and_conflict_say_whether_the_holder_is_encrypted() {
    let tls = TlsServer::start();
    let env = TestEnv::new();
    for (query, shown) in [
        (
            "sslmode=verify-full&sslrootcert={certs}/ca.crt",
            "encrypted (TLSv1.3)",
        ),
        ("sslmode=disable", "not encrypted"),
    ] {
        let url = tls.url("postgres", "localhost", query);
        let name = unique(&format!("tls-status-{}", next_case()));
        let mut holder = env.start(&[
            "run",
            "--postgres",
            &url,
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ]);
        holder.expect_stdout_line("ready");
        let status = env.run(&["status", "--postgres", &url, &name]);
        let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
        assert!(
            status_text.contains("client 127.0.0.1:")
                && status_text.contains(&format!(", {shown}, connected since")),
            "{status_text}"
        );
        let second = env.run(&["run", "--postgres", &url, "--name", &name, "--", "true"]);
        assert_exit(&second, 75);
        assert!(
            stderr(&second).contains(&format!(", {shown}, connected since")),
            "{}",
            stderr(&second)
        );
        holder.kill();
    }
}

#[test]
fn terminated_session_stops_the_command_over_tls() {
    let tls = TlsServer::start();
    let url = tls.url(
        "postgres",
        "localhost",
        "sslmode=verify-full&sslrootcert={certs}/ca.crt",
    );
    let fault = Fault::start(&url);
    assert!(session_encrypted(&tls.cluster, &fault.name));
    let pid = holder_backend_pid(|sql| tls.cluster.psql(sql), &fault.name);
    let fault_at = Instant::now();
    tls.cluster
        .psql(&format!("select pg_terminate_backend({pid})"));
    // Over TLS the server's last message and the end of the connection
    // race each other: the heartbeat reports whichever it reads first.
    let (env, name) = fault.expect_lost(fault_at, "the PostgreSQL session holding the lock failed");
    expect_next_holder_after_lock_delay(&env, &url, &name, fault_at);
}

/// The keepalives and the heartbeat deadline hold over TLS: the socket
/// options are set before the handshake.
#[test]
fn frozen_network_stops_the_command_over_tls() {
    let tls = TlsServer::start();
    let server: SocketAddr = format!("127.0.0.1:{}", tls.cluster.port()).parse().unwrap();
    let proxy = Proxy::start(server);
    let query = "sslmode=verify-full&sslrootcert={certs}/ca.crt";
    let via_proxy = tls.with_certs(&format!(
        "postgres://postgres@localhost:{}/postgres?{query}",
        proxy.addr().port()
    ));
    let fault = Fault::start(&via_proxy);
    assert!(session_encrypted(&tls.cluster, &fault.name));
    let fault_at = Instant::now();
    proxy.freeze();
    let (env, name) = fault.expect_lost(fault_at, "within the heartbeat deadline");
    let direct = tls.url("postgres", "localhost", query);
    expect_next_holder_after_lock_delay(&env, &direct, &name, fault_at);
    drop(proxy);
}

/// Settings that cannot work are refused before connecting (64), in one
/// line.
#[test]
fn bad_tls_settings_are_usage_errors() {
    let env = TestEnv::new();
    let case = Case::new(&env);
    let unused = PgCluster::start();
    let malformed = |url: &str, why: &str| {
        Outcome::Failed(
            64,
            format!("onlyone: error: malformed PostgreSQL URL \"{url}\": {why}"),
        )
    };
    check(vec![
        (
            "unknown sslmode",
            case.run(&unused, "host=db1 sslmode=sometimes"),
            Outcome::Failed(
                64,
                "onlyone: error: invalid sslmode \"sometimes\": it is one of disable, allow, prefer, require, verify-ca, verify-full".to_owned(),
            ),
        ),
        (
            "system CAs with a weak sslmode",
            case.run(&unused, "host=db1 sslrootcert=system sslmode=require"),
            Outcome::Failed(
                64,
                "onlyone: error: sslmode \"require\" is too weak for sslrootcert=system, which trusts every public CA: use sslmode=verify-full".to_owned(),
            ),
        ),
        (
            "unsupported option",
            case.run(&unused, "host=db1 sslpassword=x"),
            malformed(
                "host=db1 sslpassword=x",
                "onlyone does not support the connection option \"sslpassword\"",
            ),
        ),
        (
            "unknown service",
            case.run(&unused, "service=nope"),
            malformed(
                "service=nope",
                &format!(
                    "definition of service \"nope\" not found (searched {}/.pg_service.conf, /etc/postgresql-common/pg_service.conf)",
                    env.path("home").display()
                ),
            ),
        ),
    ]);
}
