//! The connection target: a URL or conninfo string completed as libpq
//! completes it — from a service file group, then the `PG*` environment
//! variables, then the defaults — split into the servers to try.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::params::Params;
pub(super) use super::redact::redact;
use super::tls::TlsSettings;
use super::{pgpass, service};
use crate::error::{Error, Result};

/// The port libpq uses when none is given.
const DEFAULT_PORT: u16 = 5432;

/// Where libpq builds commonly put the server's Unix socket.
const SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// Each setting and the environment variable libpq fills it from.
/// `PGAPPNAME` is left out on purpose: a lock session is always named
/// `onlyone:…`, so that it can be told apart on the server.
const ENVIRONMENT: [(&str, &str); 18] = [
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("options", "PGOPTIONS"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslcrl", "PGSSLCRL"),
    ("sslsni", "PGSSLSNI"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
    ("channel_binding", "PGCHANNELBINDING"),
];

/// Settings handed to the driver as they are.
const DRIVER_SETTINGS: [&str; 11] = [
    "user",
    "dbname",
    "options",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "tcp_user_timeout",
    "target_session_attrs",
    "channel_binding",
];

/// Settings read here: the servers, the password, TLS, and the
/// application name, which onlyone sets itself.
const OWN_SETTINGS: [&str; 14] = [
    "host",
    "hostaddr",
    "port",
    "password",
    "passfile",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslsni",
    "load_balance_hosts",
    "application_name",
    "fallback_application_name",
];

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Host {
    Tcp(String),
    /// The directory of its Unix socket.
    Unix(PathBuf),
}

/// One server to try.
#[derive(Clone)]
pub(super) struct Server {
    /// `None` when only `hostaddr` is given.
    pub host: Option<Host>,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    password: Option<String>,
}

impl Server {
    /// The driver's configuration for this server alone.
    pub fn config(&self, base: &tokio_postgres::Config) -> tokio_postgres::Config {
        let mut config = base.clone();
        match (&self.host, self.hostaddr) {
            (Some(Host::Tcp(name)), _) => config.host(name),
            (Some(Host::Unix(dir)), _) => config.host_path(dir),
            // The address is also the name the certificate must have.
            (None, Some(addr)) => config.host(addr.to_string()),
            (None, None) => unreachable!("a server has a host or a hostaddr"),
        };
        if let Some(addr) = self.hostaddr {
            config.hostaddr(addr);
        }
        config.port(self.port);
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// Whether the connection goes through a Unix socket, where libpq
    /// never uses TLS.
    pub fn is_unix(&self) -> bool {
        matches!(self.host, Some(Host::Unix(_)))
    }

    /// `host:port`, `[ipv6]:port` or `[/socket/dir]:port`.
    pub fn host_port(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Some(Host::Tcp(name)), _) if name.contains(':') => format!("[{name}]:{}", self.port),
            (Some(Host::Tcp(name)), _) => format!("{name}:{}", self.port),
            (Some(Host::Unix(dir)), _) => format!("[{}]:{}", dir.display(), self.port),
            (None, Some(IpAddr::V6(addr))) => format!("[{addr}]:{}", self.port),
            (None, Some(addr)) => format!("{addr}:{}", self.port),
            (None, None) => format!("?:{}", self.port),
        }
    }

    /// The host as the password file knows it: a name or address, and
    /// `localhost` for the default socket directory.
    fn pgpass_host(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Some(Host::Tcp(name)), _) => name.clone(),
            (Some(Host::Unix(dir)), _) if SOCKET_DIRS.iter().any(|d| Path::new(d) == dir) => {
                "localhost".to_owned()
            }
            (Some(Host::Unix(dir)), _) => dir.display().to_string(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => "localhost".to_owned(),
        }
    }
}

/// Never shows the password.
impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Everything needed to connect, with every default filled in.
#[derive(Clone, Debug)]
pub(super) struct Target {
    /// The servers to try, in order (`host=a,b`).
    pub servers: Vec<Server>,
    /// Try them in a random order (`load_balance_hosts=random`).
    pub random_order: bool,
    /// The driver's settings shared by every server: no host, no
    /// password, no TLS mode (its `Debug` hides the password anyway).
    pub base: tokio_postgres::Config,
    pub tls: TlsSettings,
    /// `postgres://host:port/db` (all servers, comma-separated), never with
    /// a password.
    pub location: String,
    /// The URL as given, with its password replaced by `***`.
    pub redacted_url: String,
}

impl Target {
    /// Parses `url` (a `postgres://` URL or `key=value` conninfo) and fills
    /// what it leaves out as libpq does: from the service file group that
    /// `service` or `PGSERVICE` names, then from `PGHOST`, `PGPORT`,
    /// `PGUSER`, `PGPASSWORD`, `PGSSLMODE`… (see [`ENVIRONMENT`]), then the
    /// password file.
    pub fn parse(url: &str) -> Result<Target> {
        Target::parse_with(url, &|var| std::env::var(var).ok(), &socket_exists)
    }

    fn parse_with(
        url: &str,
        env: &dyn Fn(&str) -> Option<String>,
        socket_exists: &dyn Fn(&Path) -> bool,
    ) -> Result<Target> {
        let env = |var: &str| env(var).filter(|value| !value.is_empty());
        let redacted_url = redact(url);
        let malformed =
            |why: &str| Error::usage(format!("malformed PostgreSQL URL {redacted_url:?}: {why}"));
        if let Some(scheme) = Params::foreign_scheme(url) {
            // Not quoted: a password in it would not be recognized.
            return Err(Error::usage(format!(
                "not a PostgreSQL URL: it starts with {scheme}://, and a PostgreSQL URL starts with postgres:// or postgresql:// (or is a key=value string)"
            )));
        }
        let mut params = Params::parse(url).map_err(|why| malformed(&why))?;
        if let Some(service) = params.remove("service").or_else(|| env("PGSERVICE")) {
            service::apply(&service, &service::files(&env), &mut params)
                .map_err(|why| malformed(&why))?;
        }
        for (key, var) in ENVIRONMENT {
            if let Some(value) = env(var) {
                params.set_default(key, &value);
            }
        }
        if let Some(key) = params
            .keys()
            .find(|key| !DRIVER_SETTINGS.contains(key) && !OWN_SETTINGS.contains(key))
        {
            return Err(malformed(&format!(
                "onlyone does not support the connection option \"{key}\""
            )));
        }
        let home = env("HOME").map(PathBuf::from);
        let tls = TlsSettings::take(&mut params, home.as_deref())?;
        let random_order = match params.remove("load_balance_hosts").as_deref() {
            None | Some("disable") => false,
            Some("random") => true,
            Some(other) => {
                return Err(malformed(&format!(
                    "invalid load_balance_hosts \"{other}\": it is disable or random"
                )));
            }
        };
        let servers = servers(&mut params, socket_exists).map_err(|why| malformed(&why))?;
        let password = params.remove("password");
        let passfile = params
            .remove("passfile")
            .map(PathBuf::from)
            .or_else(|| home.map(|home| home.join(".pgpass")));
        for key in ["application_name", "fallback_application_name"] {
            params.remove(key);
        }
        let base = tokio_postgres::Config::from_str(&params.to_conninfo())
            .map_err(|err| malformed(&super::failure::describe(&err)))?;
        let servers = with_passwords(servers, &base, password, passfile.as_deref());
        let location = location(&servers, &base);
        Ok(Target {
            servers,
            random_order,
            base,
            tls,
            location,
            redacted_url,
        })
    }

    /// How long connecting to one server may take: `connect_timeout`, else
    /// `default`.
    pub fn connect_timeout(&self, default: Duration) -> Duration {
        self.base.get_connect_timeout().copied().unwrap_or(default)
    }

    /// `postgres://host:port/db` of one server.
    pub fn location_of(&self, server: &Server) -> String {
        location(std::slice::from_ref(server), &self.base)
    }
}

/// The servers of `host`, `hostaddr` and `port` (comma-separated lists,
/// matched by position as libpq does), which are taken out of `params`.
fn servers(
    params: &mut Params,
    socket_exists: &dyn Fn(&Path) -> bool,
) -> std::result::Result<Vec<Server>, String> {
    let list = |value: Option<String>| -> Vec<String> {
        value.map_or_else(Vec::new, |v| v.split(',').map(str::to_owned).collect())
    };
    let hosts = list(params.remove("host"));
    let addrs = list(params.remove("hostaddr"));
    let ports = list(params.remove("port"));
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(format!(
            "could not match {} host names to {} hostaddr values",
            hosts.len(),
            addrs.len()
        ));
    }
    let count = hosts.len().max(addrs.len()).max(1);
    if ports.len() > 1 && ports.len() != count {
        return Err(format!(
            "could not match {} port numbers to {count} hosts",
            ports.len()
        ));
    }
    (0..count)
        .map(|i| {
            let port = match ports.get(i).or(ports.first()).map(String::as_str) {
                None | Some("") => DEFAULT_PORT,
                Some(port) => port
                    .parse()
                    .map_err(|_| format!("invalid port number \"{port}\""))?,
            };
            let hostaddr = match addrs.get(i).map(String::as_str) {
                None | Some("") => None,
                Some(addr) => Some(
                    addr.parse()
                        .map_err(|_| format!("invalid hostaddr \"{addr}\""))?,
                ),
            };
            let host = match hosts.get(i).map(String::as_str) {
                Some("") | None if hostaddr.is_none() => Some(default_host(port, socket_exists)),
                Some("") | None => None,
                Some(host) if host.starts_with('/') => Some(Host::Unix(PathBuf::from(host))),
                Some(host) => Some(Host::Tcp(host.to_owned())),
            };
            Ok(Server {
                host,
                hostaddr,
                port,
                password: None,
            })
        })
        .collect()
}

/// libpq's default: the local Unix socket, else `localhost`.
fn default_host(port: u16, socket_exists: &dyn Fn(&Path) -> bool) -> Host {
    SOCKET_DIRS
        .iter()
        .find(|dir| socket_exists(&Path::new(dir).join(format!(".s.PGSQL.{port}"))))
        .map_or_else(
            || Host::Tcp("localhost".to_owned()),
            |dir| Host::Unix(PathBuf::from(dir)),
        )
}

fn socket_exists(path: &Path) -> bool {
    path.exists()
}

/// Each server's password: the one given, else its line in the password
/// file.
fn with_passwords(
    servers: Vec<Server>,
    base: &tokio_postgres::Config,
    password: Option<String>,
    passfile: Option<&Path>,
) -> Vec<Server> {
    let user = base
        .get_user()
        .map(str::to_owned)
        .unwrap_or_else(|| crate::sys::user_name(crate::sys::uid()));
    let dbname = base
        .get_dbname()
        .map_or_else(|| user.clone(), str::to_owned);
    servers
        .into_iter()
        .map(|mut server| {
            server.password = password.clone().or_else(|| {
                let port = server.port.to_string();
                let host = server.pgpass_host();
                pgpass::lookup(passfile?, [&host, &port, &dbname, &user])
            });
            server
        })
        .collect()
}

/// `postgres://host:port,host:port/db`.
fn location(servers: &[Server], base: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = servers.iter().map(Server::host_port).collect();
    let dbname = base
        .get_dbname()
        .or_else(|| base.get_user())
        .unwrap_or_default();
    format!("postgres://{}/{dbname}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, env: &[(&str, &str)]) -> Result<Target> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Target::parse_with(
            url,
            &move |var| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()),
            &|_| false,
        )
    }

    #[test]
    fn a_url_of_another_database_is_not_a_postgresql_url() {
        for url in ["mysql://bot:secret@db1/app", "redis://db1", "jdbc+x://db1"] {
            let err = parse(url, &[]).unwrap_err();
            assert!(err.is_usage(), "{url}");
            let text = err.to_string();
            assert!(
                text.starts_with("not a PostgreSQL URL: it starts with "),
                "{text}"
            );
            assert!(!text.contains("secret"), "{text}");
        }
        assert!(parse("host=db1 sslrootcert=file://x", &[]).is_ok());
    }

    #[test]
    fn fills_defaults_from_the_environment() {
        let target = parse(
            "dbname=app",
            &[
                ("PGHOST", "db9"),
                ("PGPORT", "6543"),
                ("PGUSER", "bot"),
                ("PGPASSWORD", "pw"),
                ("PGDATABASE", "ignored"),
                ("PGCONNECT_TIMEOUT", "7"),
                ("PGAPPNAME", "not-used"),
            ],
        )
        .unwrap();
        assert_eq!(target.location, "postgres://db9:6543/app");
        assert_eq!(target.base.get_user(), Some("bot"));
        let config = target.servers[0].config(&target.base);
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
        assert_eq!(
            target.connect_timeout(Duration::from_secs(10)),
            Duration::from_secs(7)
        );
        assert_eq!(config.get_application_name(), None);
    }

    #[test]
    fn the_url_wins_over_the_environment() {
        let target = parse(
            "postgres://u:p@db1:5433/one?sslmode=disable",
            &[
                ("PGHOST", "db9"),
                ("PGPORT", "1"),
                ("PGPASSWORD", "other"),
                ("PGSSLMODE", "verify-full"),
            ],
        )
        .unwrap();
        assert_eq!(target.location, "postgres://db1:5433/one");
        let config = target.servers[0].config(&target.base);
        assert_eq!(config.get_password(), Some(&b"p"[..]));
        assert_eq!(
            target.redacted_url,
            "postgres://u:***@db1:5433/one?sslmode=disable"
        );
        assert_eq!(target.tls.mode.as_str(), "disable");
    }

    #[test]
    fn lists_several_servers_in_order() {
        let target = parse(
            "host=db1,db2,/run/pg port=5433,5434,5435 target_session_attrs=read-write",
            &[],
        )
        .unwrap();
        assert_eq!(
            target.location,
            "postgres://db1:5433,db2:5434,[/run/pg]:5435/"
        );
        assert!(target.servers[2].is_unix());
        let url = parse("postgres://a:1,b/db", &[]).unwrap();
        assert_eq!(url.location, "postgres://a:1,b:5432/db");
        let err = parse("host=a,b port=1,2,3", &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("could not match 3 port numbers to 2 hosts")
        );
    }

    #[test]
    fn defaults_to_the_socket_or_localhost() {
        let target = Target::parse_with("dbname=app", &|_| None, &|path| {
            path == Path::new("/tmp/.s.PGSQL.5432")
        })
        .unwrap();
        assert_eq!(target.servers[0].host, Some(Host::Unix("/tmp".into())));
        let target = parse("hostaddr=10.0.0.5", &[]).unwrap();
        assert_eq!(target.servers[0].host, None);
        assert_eq!(target.location, "postgres://10.0.0.5:5432/");
        assert_eq!(
            parse("", &[]).unwrap().location,
            "postgres://localhost:5432/"
        );
    }

    #[test]
    fn refuses_malformed_urls_without_echoing_the_password() {
        for url in [
            "postgres://u:hunter2@db1:notaport/app",
            "host=db1 password=hunter2 bogus",
            "host=db1 password=hunter2 sslmode=sometimes",
            "host=db1 password=hunter2 sslpassword=x",
            "host=db1 password=hunter2 keepalives_idle=soon",
        ] {
            let err = parse(url, &[]).unwrap_err();
            assert!(err.is_usage(), "{url}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn reads_the_service_file() {
        let dir = std::env::temp_dir().join(format!("onlyone-service-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("services.conf");
        std::fs::write(&file, "[lock]\nhost=db7\nport=6000\nsslmode=require\n").unwrap();
        let file = file.to_string_lossy().into_owned();
        let target = parse(
            "service=lock dbname=app",
            &[
                ("PGSERVICEFILE", &file),
                ("PGPORT", "1"),
                ("PGSSLMODE", "disable"),
            ],
        )
        .unwrap();
        assert_eq!(target.location, "postgres://db7:6000/app");
        assert_eq!(target.tls.mode.as_str(), "require");
        let target = parse(
            "dbname=app",
            &[("PGSERVICEFILE", &file), ("PGSERVICE", "lock")],
        )
        .unwrap();
        assert_eq!(target.location, "postgres://db7:6000/app");
        let err = parse("service=other", &[("PGSERVICEFILE", &file)]).unwrap_err();
        assert!(err.is_usage());
        assert!(
            err.to_string()
                .contains("definition of service \"other\" not found")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
