//! A throwaway MariaDB server (with TLS, or plain), started as scripts/with-mariadb
//! starts one (`mariadb-install-db` + `mariadbd`, as an unprivileged user
//! when we are root, ready when it says READY=1 on a notify socket), with
//! `--ssl-cert/--ssl-key/--ssl-ca` from certificates made at test time.
//! Its accounts: root@127.0.0.1 (no password, every privilege), and
//! setup SQL of the test's own. Stopped and removed on drop.

use std::env;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pg_cluster::server_user;

/// How long the server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// How often a start on a random port may collide with another process.
const START_ATTEMPTS: usize = 5;

/// The test database.
pub const DB: &str = "onlyone_test";

/// What the server presents and trusts, as PEM text.
pub struct ServerTls<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    pub ca_pem: &'a str,
}

pub struct MariaDbServer {
    dir: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
}

impl MariaDbServer {
    /// Starts a server with TLS; then runs `setup` (SQL) as root.
    pub fn start_tls(tls: &ServerTls<'_>, setup: &str) -> MariaDbServer {
        MariaDbServer::start_with(Some(tls), setup, &[])
    }

    /// As [`MariaDbServer::start_tls`], with `options` (`--name=value`)
    /// added to the server's command line.
    pub fn start_tls_with(tls: &ServerTls<'_>, setup: &str, options: &[&str]) -> MariaDbServer {
        MariaDbServer::start_with(Some(tls), setup, options)
    }

    /// Starts a server without TLS (plain text only), with `options`
    /// (`--name=value`) added to its command line; then runs `setup` (SQL)
    /// as root. (The benchmarks' server: benches/compare/mysql.rs.)
    #[allow(dead_code)]
    pub fn start_plain(setup: &str, options: &[&str]) -> MariaDbServer {
        MariaDbServer::start_with(None, setup, options)
    }

    fn start_with(tls: Option<&ServerTls<'_>>, setup: &str, options: &[&str]) -> MariaDbServer {
        let dir = tempfile::Builder::new()
            .prefix("onlyone-mariadb-")
            .tempdir()
            .expect("create the server's temp dir");
        let mut server = MariaDbServer {
            dir,
            port: 0,
            server: None,
        };
        server.own(server.dir.path());
        let files = tls.map_or_else(Vec::new, |tls| {
            vec![
                ("server.crt", tls.cert_pem),
                ("server.key", tls.key_pem),
                ("ca.crt", tls.ca_pem),
            ]
        });
        for (name, text) in files {
            let path = server.path(name);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            server.own(&path);
        }
        // Two bootstraps at once sometimes fail ("Installation of system
        // tables failed"): one at a time in this process.
        static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let one_at_a_time = INSTALL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let install = server
            .as_server_user(&program("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!(
                "--user={}",
                server_user().map_or_else(whoami, |user| user.name.clone())
            ))
            .arg(format!("--datadir={}", server.path("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            // Its own temporary directory: a starting server deletes every
            // `#sql*` file in its tmpdir, so in a shared /tmp each new test
            // server deleted the temporary tables of those running (their
            // queries failed: "Error on delete of '/tmp/#sql-temptable…'").
            .arg(format!("--tmpdir={}", server.dir.path().display()))
            .output()
            .expect("run mariadb-install-db");
        assert!(
            install.status.success(),
            "mariadb-install-db: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        drop(one_at_a_time);
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match server.start_on(pick_port(), tls.is_some(), options) {
                Ok(()) => break,
                Err(err) => errors.push(err),
            }
        }
        assert!(
            server.server.is_some(),
            "could not start MariaDB:\n{}",
            errors.join("\n")
        );
        server.root_sql(&format!(
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
             CREATE DATABASE {DB};
             {setup}"
        ));
        server
    }

    /// The server's TCP port on 127.0.0.1 (for a proxy in front of it).
    #[allow(dead_code)]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://USER@127.0.0.1:PORT/onlyone_test`
    pub fn url(&self, user: &str) -> String {
        self.url_via(user, "127.0.0.1")
    }

    /// `mysql://USER@HOST:PORT/onlyone_test`
    pub fn url_via(&self, user: &str, host: &str) -> String {
        format!("mysql://{user}@{host}:{}/{DB}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Gives `path` to the server user.
    fn own(&self, path: &Path) {
        if let Some(user) = server_user() {
            chown(path, Some(user.uid), Some(user.gid)).expect("chown a server file");
        }
    }

    fn as_server_user(&self, program: &Path) -> Command {
        let mut command = match server_user() {
            Some(user) => {
                let mut runuser = Command::new("runuser");
                runuser.args(["-u", &user.name, "--"]).arg(program);
                runuser
            }
            None => Command::new(program),
        };
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        command
    }

    /// Starts the server on `port` and waits until it says it is ready,
    /// or has exited (the port was taken).
    fn start_on(&mut self, port: u16, tls: bool, options: &[&str]) -> Result<(), String> {
        let notify_path = self.path("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o666)).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log = self.path("server.log");
        let mut command = self.as_server_user(&program("mariadbd"));
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.path("data").display()))
            .arg(format!("--tmpdir={}", self.dir.path().display()))
            .arg(format!("--socket={}", self.path("mysqld.sock").display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--pid-file={}",
                self.path("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .args([
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--skip-name-resolve",
            ])
            .args(options);
        if tls {
            command
                .arg(format!("--ssl-cert={}", self.path("server.crt").display()))
                .arg(format!("--ssl-key={}", self.path("server.key").display()))
                .arg(format!("--ssl-ca={}", self.path("ca.crt").display()));
        }
        let mut child = command
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            // The datagram is the event; the read timeout only lets an
            // exited server end the wait.
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|line| line == "READY=1")
            {
                self.port = port;
                self.server = Some(child);
                return Ok(());
            }
            if child.try_wait().ok().flatten().is_some() || started.elapsed() > READY_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "port {port}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
        }
    }

    /// Runs `sql` as root over the server's socket.
    pub fn root_sql(&self, sql: &str) -> String {
        let out = Command::new(program("mariadb"))
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.path("mysqld.sock").display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        // The server itself (runuser does not pass KILL on), then runuser.
        if let Ok(pid) = fs::read_to_string(self.path("mariadbd.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: a plain kill(2) of the pid this server wrote.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A MariaDB program: from ONLYONE_TEST_MARIADB_BINDIR (where
/// scripts/with-mariadb found mariadbd), else from PATH.
fn program(name: &str) -> PathBuf {
    if let Some(dir) = env::var_os("ONLYONE_TEST_MARIADB_BINDIR") {
        let path = Path::new(&dir).join(name);
        if path.is_file() {
            return path;
        }
    }
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} not found (install mariadb-server)"))
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A random port below Linux's ephemeral range that is free now.
fn pick_port() -> u16 {
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let port = 20_000 + ((nanos ^ std::process::id()) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
