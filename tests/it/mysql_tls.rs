//! MySQL/MariaDB over TLS: the `mysql` client's `ssl-mode` against a
//! throwaway MariaDB with TLS (harness/mariadb_server.rs) and certificates
//! made at test time (harness/tls_certs.rs: a CA, a server certificate for
//! `localhost` only, client certificates for `certuser` from that CA and
//! from an unrelated one), and against the plain test server
//! (ONLYONE_TEST_MYSQL_URL).
//!
//! Encryption is proved by the server: the account `tlsonly` is created
//! `REQUIRE SSL`, so the server lets onlyone's sessions log in only over
//! TLS (and the same run with ssl-mode=DISABLED is refused, showing the
//! check can fail); `certuser` is `REQUIRE X509`.

#![cfg(feature = "mysql")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::harness::mariadb_server::{MariaDbServer, ServerTls};
use crate::harness::tls_certs::{CERT_USER, TestCerts};
use crate::mysql_run::{unique, url};
use crate::util::{Running, TestEnv, assert_exit, stderr};

fn setup() -> String {
    format!(
        "CREATE USER 'tlsonly'@'127.0.0.1' IDENTIFIED BY '' REQUIRE SSL;
         GRANT ALL ON onlyone_test.* TO 'tlsonly'@'127.0.0.1';
         CREATE USER '{CERT_USER}'@'127.0.0.1' IDENTIFIED BY '' REQUIRE X509;
         GRANT ALL ON onlyone_test.* TO '{CERT_USER}'@'127.0.0.1';"
    )
}

fn start_server(certs: &TestCerts) -> MariaDbServer {
    MariaDbServer::start_tls(
        &ServerTls {
            cert_pem: &certs.server_cert_pem,
            key_pem: &certs.server_key_pem,
            ca_pem: &certs.ca_pem,
        },
        &setup(),
    )
}

/// `onlyone run --mysql URL -- echo ran`, with HOME in the test's dir (no
/// option file but the test's own) and no MYSQL_PWD.
fn run(env: &TestEnv, url: &str) -> Output {
    env.onlyone(&[
        "run",
        "--mysql",
        url,
        "--name",
        &unique("tls"),
        "--",
        "echo",
        "ran",
    ])
    .env("HOME", env.path(""))
    .env_remove("MYSQL_PWD")
    .output()
    .expect("run onlyone")
}

fn assert_ran(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n", "{what}");
}

/// Exit 69 with one error line that contains `fragment`.
fn assert_refused(out: &Output, fragment: &str, what: &str) {
    assert_exit(out, 69);
    let err = stderr(out);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: {err}");
    assert!(errors[0].contains(fragment), "{what}: {err}");
    assert!(out.stdout.is_empty(), "{what}");
}

#[test]
fn mysql_tls_modes_encrypt_and_verify_as_the_mysql_client() {
    let env = TestEnv::new();
    let certs = TestCerts::generate();
    let server = start_server(&certs);
    let tlsonly = server.url("tlsonly");
    let ca = certs.path("ca.crt");
    let other_ca = certs.path("other-ca.crt");

    // PREFERRED (the default) encrypts against a TLS server: the REQUIRE
    // SSL account logs in. Without TLS it cannot.
    assert_ran(&run(&env, &tlsonly), "default (PREFERRED)");
    assert_ran(
        &run(&env, &format!("{tlsonly}?ssl-mode=PREFERRED")),
        "PREFERRED",
    );
    assert_refused(
        &run(&env, &format!("{tlsonly}?ssl-mode=DISABLED")),
        "Access denied",
        "DISABLED for a REQUIRE SSL account",
    );
    assert_ran(
        &run(&env, &format!("{tlsonly}?ssl_mode=required")),
        "REQUIRED",
    );
    // REQUIRED does not check the certificate, even with ssl-ca given (the
    // MySQL 8 client warns, and so does onlyone).
    assert_ran(
        &run(
            &env,
            &format!("{tlsonly}?ssl-mode=REQUIRED&ssl-ca={}", other_ca.display()),
        ),
        "REQUIRED with a wrong ssl-ca",
    );

    // VERIFY_CA: the chain, not the name (the certificate is for
    // localhost, the URL says 127.0.0.1).
    assert_ran(
        &run(
            &env,
            &format!("{tlsonly}?ssl-mode=VERIFY_CA&ssl-ca={}", ca.display()),
        ),
        "VERIFY_CA, right CA",
    );
    // ssl-ca alone means VERIFY_CA.
    assert_ran(
        &run(&env, &format!("{tlsonly}?ssl-ca={}", ca.display())),
        "ssl-ca without ssl-mode",
    );
    assert_refused(
        &run(
            &env,
            &format!("{tlsonly}?ssl-mode=VERIFY_CA&ssl-ca={}", other_ca.display()),
        ),
        "TLS: the server's certificate is not trusted: it is not signed by the CA in ssl-ca",
        "VERIFY_CA, wrong CA",
    );
    assert_refused(
        &run(&env, &format!("{tlsonly}?ssl-ca={}", other_ca.display())),
        "is not trusted",
        "ssl-ca (wrong) without ssl-mode",
    );

    // VERIFY_IDENTITY: the name too.
    assert_refused(
        &run(
            &env,
            &format!("{tlsonly}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}", ca.display()),
        ),
        "TLS: host name mismatch: the server's certificate is for localhost, not 127.0.0.1",
        "VERIFY_IDENTITY via 127.0.0.1",
    );
    assert_ran(
        &run(
            &env,
            &format!(
                "{}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
                server.url_via("tlsonly", "localhost"),
                ca.display()
            ),
        ),
        "VERIFY_IDENTITY via localhost",
    );
    assert_refused(
        &run(
            &env,
            &format!(
                "{}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
                server.url_via("tlsonly", "localhost"),
                other_ca.display()
            ),
        ),
        "is not trusted",
        "VERIFY_IDENTITY via localhost, wrong CA",
    );

    // Settings without their file are usage errors.
    let out = run(&env, &format!("{tlsonly}?ssl-mode=VERIFY_CA"));
    assert_exit(&out, 64);
    assert!(
        stderr(&out).contains("ssl-mode=VERIFY_CA needs ssl-ca"),
        "{}",
        stderr(&out)
    );
    let out = run(&env, &format!("{tlsonly}?ssl-mode=SOMETIMES"));
    assert_exit(&out, 64);
    assert!(
        stderr(&out).contains("unknown ssl-mode 'SOMETIMES'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mysql_tls_client_certificates_for_a_require_x509_account() {
    let env = TestEnv::new();
    let certs = TestCerts::generate();
    let server = start_server(&certs);
    let certuser = server.url(CERT_USER);
    let with_identity = |name: &str| {
        format!(
            "{certuser}?ssl-mode=REQUIRED&ssl-cert={}&ssl-key={}",
            certs.path(&format!("{name}.crt")).display(),
            certs.path(&format!("{name}.key")).display()
        )
    };

    assert_refused(
        &run(&env, &format!("{certuser}?ssl-mode=REQUIRED")),
        "Access denied",
        "no client certificate",
    );
    assert_ran(
        &run(&env, &with_identity("client")),
        "the CA's client certificate",
    );
    let out = run(&env, &with_identity("wrong-client"));
    assert_exit(&out, 69);
    assert!(out.stdout.is_empty());

    // From the option file's [client] group, as the mysql client reads it.
    fs::write(
        env.path(".my.cnf"),
        format!(
            "[client]\nssl-mode = VERIFY_CA\nssl-ca = {}\nssl_cert = {}\nssl-key = {}\n",
            certs.path("ca.crt").display(),
            certs.path("client.crt").display(),
            certs.path("client.key").display()
        ),
    )
    .unwrap();
    assert_ran(&run(&env, &certuser), "client certificate from ~/.my.cnf");
    fs::remove_file(env.path(".my.cnf")).unwrap();

    // A key that the group or others may read is refused, before any
    // connection, as libpq (and the PostgreSQL backend) refuse one.
    let open_key = certs.dir().join("open.key");
    fs::copy(certs.path("client.key"), &open_key).unwrap();
    fs::set_permissions(&open_key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(
        &env,
        &format!(
            "{certuser}?ssl-mode=REQUIRED&ssl-cert={}&ssl-key={}",
            certs.path("client.crt").display(),
            open_key.display()
        ),
    );
    assert_refused(&out, "refusing the ssl-key file", "a key of mode 0644");
    assert!(stderr(&out).contains("mode 0644"), "{}", stderr(&out));
}

/// Against the plain test server (no TLS configured), PREFERRED falls back
/// to a plain connection.
#[test]
fn mysql_tls_preferred_falls_back_to_plain_without_tls_on_the_server() {
    let env = TestEnv::new();
    assert_ran(&run(&env, &url()), "default (PREFERRED), plain server");
    assert_ran(
        &run(&env, &format!("{}?ssl-mode=PREFERRED", url())),
        "PREFERRED, plain server",
    );
}

/// `status` and the conflict message say whether the holder's session is
/// encrypted, as on PostgreSQL, from `performance_schema.threads`
/// (`CONNECTION_TYPE`): on here (`--performance-schema=ON`; MariaDB's
/// default is off, and then nothing is said, as the plain test server
/// shows).
#[test]
fn mysql_tls_status_says_whether_the_holders_session_is_encrypted() {
    let env = TestEnv::new();
    let certs = TestCerts::generate();
    let server = MariaDbServer::start_tls_with(
        &ServerTls {
            cert_pem: &certs.server_cert_pem,
            key_pem: &certs.server_key_pem,
            ca_pem: &certs.ca_pem,
        },
        &setup(),
        &["--performance-schema=ON"],
    );
    let root = server.url("root");
    let status_of = |url: &str, name: &str| {
        let out = env
            .onlyone(&["status", "--mysql", url, name, "--json"])
            .env("HOME", env.path(""))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (mode, expected) in [
        ("REQUIRED", "encrypted (TLS)"),
        ("DISABLED", "not encrypted (TCP/IP)"),
    ] {
        let name = unique(&format!("tls-status-{}", mode.to_lowercase()));
        let mut holder = Running::spawn(
            env.onlyone(&[
                "run",
                "--mysql",
                &format!("{root}?ssl-mode={mode}"),
                "--name",
                &name,
                "--",
                "sh",
                "-c",
                "echo ready; exec sleep 1000",
            ])
            .env("HOME", env.path(""))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        );
        holder.expect_stdout_line("ready");
        // Asked over plain text: it is the holder's session that counts.
        let json = status_of(&format!("{root}?ssl-mode=DISABLED"), &name);
        assert!(json.contains(&format!(", {expected}\"")), "{mode}: {json}");
        let conflict = env
            .onlyone(&["run", "--mysql", &root, "--name", &name, "--", "true"])
            .env("HOME", env.path(""))
            .output()
            .unwrap();
        assert_exit(&conflict, 75);
        assert!(
            stderr(&conflict).contains(expected),
            "{}",
            stderr(&conflict)
        );
        holder.kill();
    }

    // The plain test server keeps no performance schema: nothing is said.
    let name = unique("tls-status-unknown");
    let mut holder = Running::spawn(
        env.onlyone(&[
            "run",
            "--mysql",
            &url(),
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped()),
    );
    holder.expect_stdout_line("ready");
    let json = status_of(&url(), &name);
    assert!(json.contains("MySQL connection id"), "{json}");
    assert!(!json.contains("encrypted"), "{json}");
    holder.kill();
}

/// Under VERIFY_CA a certificate the CA signed but without a
/// subjectAltName is refused (69), saying why: mysql_async cannot skip the
/// name check (blackbeam/mysql_async#404), and onlyone meets it with a
/// name the certificate presents, which this one has none of (rustls
/// ignores the Common Name). REQUIRED still connects to it.
#[test]
fn mysql_tls_verify_ca_refuses_a_certificate_without_subject_alt_name() {
    let env = TestEnv::new();
    let certs = TestCerts::generate();
    let server = MariaDbServer::start_tls(
        &ServerTls {
            cert_pem: &certs.no_san_cert_pem,
            key_pem: &certs.no_san_key_pem,
            ca_pem: &certs.ca_pem,
        },
        &setup(),
    );
    let tlsonly = server.url("tlsonly");
    let ca = certs.path("ca.crt");
    assert_refused(
        &run(
            &env,
            &format!("{tlsonly}?ssl-mode=VERIFY_CA&ssl-ca={}", ca.display()),
        ),
        "ssl-mode=VERIFY_CA needs a server certificate with a subjectAltName",
        "VERIFY_CA, CA-signed certificate without a subjectAltName",
    );
    assert_ran(
        &run(&env, &format!("{tlsonly}?ssl-mode=REQUIRED")),
        "REQUIRED, the same certificate",
    );
}
