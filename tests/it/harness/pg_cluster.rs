//! Throwaway PostgreSQL clusters: each in its own temp dir, with its own
//! socket dir and port, that a test can stop, restart, or replicate, and that
//! vanish when dropped.
//!
//! The server binaries come from `ONLYONE_TEST_PG_BINDIR` (set by
//! `scripts/with-postgres`), from `initdb` on PATH, or from the newest
//! `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root, so under
//! root the server runs as the unprivileged user `onlyone-test` (created on
//! first use) or, failing that, `nobody`.

use std::env;
use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{self, Command, Output, Stdio};
use std::sync::OnceLock;

/// Starting on a random port can collide with another process; after this
/// many collisions something else is wrong.
const START_ATTEMPTS: usize = 5;

/// What a TLS cluster presents and trusts, as PEM text.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA whose client certificates the server accepts.
    pub client_ca_pem: String,
}

/// A running (or deliberately stopped) PostgreSQL cluster, removed on drop.
pub struct PgCluster {
    bindir: PathBuf,
    /// The temp dir: the data dir, the server log and the Unix socket.
    root: PathBuf,
    port: u16,
    /// Extra `-c name=value` server settings, kept so that a standby gets
    /// the same ones (hot standby insists on e.g. max_connections).
    settings: Vec<(String, String)>,
}

impl PgCluster {
    /// Starts a fresh cluster with default settings.
    pub fn start() -> PgCluster {
        PgCluster::start_with(&[])
    }

    /// Starts a fresh cluster with extra server settings, e.g.
    /// `&[("max_connections", "5")]`.
    pub fn start_with(settings: &[(&str, &str)]) -> PgCluster {
        let mut cluster = PgCluster::initdb(settings);
        cluster.start_on_free_port();
        cluster
    }

    /// Starts a fresh cluster with `ssl = on`, the certificate and key of
    /// `tls`, `tls.client_ca_pem` as the CA of client certificates, and
    /// `hba` as its whole pg_hba.conf (e.g. `hostssl … cert` and
    /// `hostnossl … reject` lines).
    pub fn start_tls(tls: &ServerTls, hba: &str) -> PgCluster {
        let mut cluster = PgCluster::initdb(&[]);
        let files = [
            ("server.crt", &tls.cert_pem, "ssl_cert_file"),
            ("server.key", &tls.key_pem, "ssl_key_file"),
            ("client-ca.crt", &tls.client_ca_pem, "ssl_ca_file"),
        ];
        for (name, text, setting) in files {
            let path = cluster.root.join(name);
            // The server refuses a key that others may read.
            cluster.write_server_file(&path, text);
            cluster
                .settings
                .push((setting.to_owned(), path.to_string_lossy().into_owned()));
        }
        cluster.settings.push(("ssl".to_owned(), "on".to_owned()));
        cluster.write_server_file(&cluster.data_dir().join("pg_hba.conf"), hba);
        cluster.start_on_free_port();
        cluster
    }

    /// A fresh data dir from initdb, not started.
    fn initdb(settings: &[(&str, &str)]) -> PgCluster {
        let settings = settings
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let cluster = PgCluster::in_new_temp_dir(settings);
        let initdb = cluster
            .server_program("initdb")
            .arg("-D")
            .arg(cluster.data_dir())
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .output();
        if let Err(error) = succeeded(initdb) {
            panic!("initdb failed: {error}");
        }
        cluster
    }

    /// Writes `text` to `path` as a file of the server user, mode 0600.
    fn write_server_file(&self, path: &Path, text: &str) {
        fs::write(path, text).expect("write a server file");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod a server file");
        if let Some(user) = server_user() {
            chown(path, Some(user.uid), Some(user.gid)).expect("chown a server file");
        }
    }

    /// Starts a streaming-replication standby of this cluster, on its own
    /// port: `pg_is_in_recovery()` is true there and it refuses writes.
    pub fn make_standby(&self) -> PgCluster {
        let mut standby = PgCluster::in_new_temp_dir(self.settings.clone());
        // -R writes standby.signal and primary_conninfo; "-c fast" asks for
        // an immediate checkpoint instead of waiting for a spread one.
        let base_backup = standby
            .server_program("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-D"])
            .arg(standby.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .output();
        if let Err(error) = succeeded(base_backup) {
            panic!("pg_basebackup from port {} failed: {error}", self.port);
        }
        standby.start_on_free_port();
        standby
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to connect to this cluster directly.
    pub fn url(&self) -> String {
        self.url_via(&format!("127.0.0.1:{}", self.port))
    }

    /// The URL to connect to this cluster through `host_port`, e.g. a proxy.
    pub fn url_via(&self, host_port: &str) -> String {
        format!("postgres://postgres@{host_port}/postgres")
    }

    /// Stops the server at once, like a crash: no checkpoint, clients cut.
    pub fn stop(&self) {
        let stop = self
            .server_program("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        if let Err(error) = succeeded(stop) {
            panic!("pg_ctl stop on port {} failed: {error}", self.port);
        }
    }

    /// Starts the stopped server again, on the same port and data dir.
    pub fn start_again(&self) {
        if let Err(error) = self.pg_ctl_start() {
            panic!(
                "could not start PostgreSQL again on port {}: {error}",
                self.port
            );
        }
    }

    /// Crashes the server and starts it again on the same port.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Runs `sql` with psql as the superuser and returns its trimmed output:
    /// unaligned, tuples only, so `select 1` gives `1`.
    pub fn psql(&self, sql: &str) -> String {
        let psql = self.bindir.join("psql");
        let program = if psql.exists() { psql } else { "psql".into() };
        let output = Command::new(program)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        if !output.status.success() {
            panic!(
                "psql on port {} failed ({}) for {sql:?}: {}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// From now on, TCP connections must give `password` (scram) for user
    /// postgres; `psql` here goes on working through the Unix socket only
    /// if called with the password, so call this last.
    pub fn require_password(&self, password: &str) {
        self.psql(&format!("alter role postgres password '{password}'"));
        let hba = self.data_dir().join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        self.psql("select pg_reload_conf()");
        // The postmaster applies the reload asynchronously: wait until a
        // connection without the password is refused.
        let psql = self.bindir.join("psql");
        let program = if psql.exists() { psql } else { "psql".into() };
        for _ in 0..500 {
            let trusted = Command::new(&program)
                .args(["-X", "-w", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-c", "select 1"])
                .env_remove("PGPASSWORD")
                .stdin(Stdio::null())
                .output()
                .expect("run psql");
            if !trusted.status.success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the server still trusts TCP connections after reloading pg_hba.conf");
    }

    /// A cluster value whose temp dir exists, owned by the server user, and
    /// whose Drop cleans up even if the rest of the setup panics.
    fn in_new_temp_dir(settings: Vec<(String, String)>) -> PgCluster {
        // Looked up first: it panics if PostgreSQL is missing.
        let bindir = bindir().to_path_buf();
        let root = create_temp_dir();
        if let Some(user) = server_user() {
            chown(&root, Some(user.uid), Some(user.gid)).expect("chown the cluster's temp dir");
        }
        PgCluster {
            bindir,
            root,
            port: 0,
            settings,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("server.log")
    }

    fn start_on_free_port(&mut self) {
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            self.port = pick_free_port();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(error) => errors.push(format!("port {}: {error}", self.port)),
            }
        }
        panic!("could not start PostgreSQL:\n{}", errors.join("\n"));
    }

    /// `pg_ctl -w start`, which returns once the server accepts connections.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off",
            shell_quote(&self.root.to_string_lossy()),
            self.port
        );
        for (name, value) in &self.settings {
            options += &format!(" -c {}", shell_quote(&format!("{name}={value}")));
        }
        let start = self
            .server_program("pg_ctl")
            .args(["-w", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-o", &options, "start"])
            .output();
        succeeded(start).map_err(|error| {
            let log = fs::read_to_string(self.log_file()).unwrap_or_default();
            format!("{error}\nserver log:\n{log}")
        })
    }

    /// A server program from the bindir, run as the server user, inside the
    /// temp dir (the server user may not be allowed into the current one).
    fn server_program(&self, name: &str) -> Command {
        let program = self.bindir.join(name);
        let mut command = match server_user() {
            Some(user) => {
                let mut runuser = Command::new("runuser");
                runuser.args(["-u", &user.name, "--"]).arg(program);
                runuser
            }
            None => Command::new(program),
        };
        command.current_dir(&self.root).stdin(Stdio::null());
        command
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self
                .server_program("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The unprivileged user that runs the server when we are root (the
/// MariaDB harness runs its server as the same user).
pub(crate) struct ServerUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `None` when we are not root and can run the server ourselves.
pub(crate) fn server_user() -> Option<&'static ServerUser> {
    static USER: OnceLock<Option<ServerUser>> = OnceLock::new();
    USER.get_or_init(|| {
        if id(&["-u"])? != 0 {
            return None;
        }
        const OWN_USER: &str = "onlyone-test";
        if id(&["-u", OWN_USER]).is_none() {
            // Another process may create it at the same time: re-check below.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(OWN_USER)
                .output();
        }
        let name = if id(&["-u", OWN_USER]).is_some() {
            OWN_USER
        } else {
            "nobody"
        };
        Some(ServerUser {
            name: name.to_string(),
            uid: id(&["-u", name]).expect("the server user's uid"),
            gid: id(&["-g", name]).expect("the server user's gid"),
        })
    })
    .as_ref()
}

/// Runs `id ARGS` and parses the number it prints.
fn id(args: &[&str]) -> Option<u32> {
    let output = Command::new("id").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// The directory with initdb, pg_ctl, postgres, pg_basebackup and psql.
fn bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| {
        let bindir = env::var_os("ONLYONE_TEST_PG_BINDIR")
            .map(PathBuf::from)
            .or_else(bindir_from_path)
            .or_else(newest_debian_bindir)
            .unwrap_or_else(|| {
                panic!(
                    "PostgreSQL server binaries (initdb, pg_ctl) not found in \
                     ONLYONE_TEST_PG_BINDIR, on PATH or in /usr/lib/postgresql/*/bin; \
                     install them (Debian/Ubuntu: apt-get install postgresql)"
                )
            });
        for program in ["initdb", "pg_ctl"] {
            assert!(
                bindir.join(program).exists(),
                "{program} not found in {}",
                bindir.display()
            );
        }
        bindir
    })
}

/// The real directory of `initdb` on PATH: following symlinks leads to the
/// directory that also has pg_basebackup and psql.
fn bindir_from_path() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    let initdb = env::split_paths(&path)
        .map(|dir| dir.join("initdb"))
        .find(|initdb| initdb.is_file())?;
    Some(fs::canonicalize(initdb).ok()?.parent()?.to_path_buf())
}

/// Debian keeps the server binaries in /usr/lib/postgresql/MAJOR/bin.
fn newest_debian_bindir() -> Option<PathBuf> {
    let version = |name: &str| -> Option<Vec<u32>> {
        name.split('.').map(|part| part.parse().ok()).collect()
    };
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let bin = entry.ok()?.path().join("bin");
            let name = bin.parent()?.file_name()?.to_str()?.to_string();
            Some((version(&name)?, bin))
        })
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .max()
        .map(|(_, bin)| bin)
}

fn create_temp_dir() -> PathBuf {
    loop {
        let suffix = RandomState::new().hash_one(process::id()) % 1_000_000_000;
        let dir = env::temp_dir().join(format!("onlyone-pg-{}-{suffix}", process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
            Err(error) => panic!("create {}: {error}", dir.display()),
        }
    }
}

/// A random port that is free now, below Linux's ephemeral range (32768+)
/// so that no client socket takes it while the cluster is stopped.
fn pick_free_port() -> u16 {
    loop {
        let port = 20_000 + (RandomState::new().hash_one(process::id()) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// pg_ctl hands its `-o` options to a shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Ok if the command ran and succeeded; otherwise what it said.
fn succeeded(output: std::io::Result<Output>) -> Result<(), String> {
    let output = output.map_err(|error| format!("could not run: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[test]
fn pg_cluster_answers_after_restart_and_stop() {
    let cluster = PgCluster::start();
    assert_eq!(cluster.psql("select 1"), "1");
    assert_eq!(
        cluster.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port())
    );
    assert_eq!(
        cluster.url_via("127.0.0.1:1"),
        "postgres://postgres@127.0.0.1:1/postgres"
    );

    let port = cluster.port();
    cluster.restart();
    assert_eq!(cluster.psql("select 1"), "1");
    assert_eq!(cluster.port(), port);

    cluster.stop();
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "port still taken"
    );
    cluster.start_again();
    assert_eq!(cluster.psql("select 1"), "1");
}

#[test]
fn pg_cluster_takes_extra_settings() {
    let cluster = PgCluster::start_with(&[("max_connections", "5")]);
    assert_eq!(cluster.psql("show max_connections"), "5");
    assert_eq!(cluster.psql("show fsync"), "off");
}

#[test]
fn pg_cluster_drop_stops_the_server_and_removes_its_dir() {
    let cluster = PgCluster::start();
    let (port, root) = (cluster.port(), cluster.root.clone());
    drop(cluster);
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "port still taken"
    );
}

#[test]
fn pg_cluster_standby_replicates_and_is_in_recovery() {
    // With a synchronous standby and remote_apply, a commit on the primary
    // returns only once the standby has applied it: no polling needed.
    let primary = PgCluster::start_with(&[
        ("synchronous_standby_names", "*"),
        ("synchronous_commit", "remote_apply"),
    ]);
    let standby = primary.make_standby();
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
    assert_eq!(primary.psql("select pg_is_in_recovery()"), "f");

    // The timeout turns a broken standby into a failed assertion, not a hang.
    primary.psql("set statement_timeout = '20s'; create table replicated as select 42 as answer");
    assert_eq!(standby.psql("select answer from replicated"), "42");
}
