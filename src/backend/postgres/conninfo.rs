//! The connection target: the URL or conninfo string completed from the
//! libpq environment variables, and how it is shown without its password.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};

use crate::error::{Error, Result};

/// The port libpq uses when none is given.
const DEFAULT_PORT: u16 = 5432;

/// Where libpq builds commonly put the server's Unix socket.
const SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// A server to connect to, with every default filled in.
#[derive(Clone, Debug)]
pub(super) struct Target {
    /// The driver's configuration (its `Debug` hides the password).
    pub config: tokio_postgres::Config,
    /// `postgres://host:port/db`, never with a password.
    pub location: String,
    /// The URL as given, with its password replaced by `***`.
    pub redacted_url: String,
}

impl Target {
    /// Parses `url` (a `postgres://` URL or `key=value` conninfo) and fills
    /// what it leaves out from `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
    /// `PGDATABASE` and the password file (`PGPASSFILE`, else `~/.pgpass`).
    pub fn parse(url: &str) -> Result<Target> {
        Target::parse_with(url, &|var| std::env::var(var).ok(), &socket_exists)
    }

    fn parse_with(
        url: &str,
        env: &dyn Fn(&str) -> Option<String>,
        socket_exists: &dyn Fn(&Path) -> bool,
    ) -> Result<Target> {
        let redacted_url = redact(url);
        let mut config = tokio_postgres::Config::from_str(url).map_err(|err| {
            Error::usage(format!(
                "malformed PostgreSQL URL {redacted_url:?}: {}",
                super::session::describe(&err)
            ))
        })?;
        refuse_required_tls(&config, env, &redacted_url)?;
        fill_from_env(&mut config, env, socket_exists)?;
        let location = location(&config);
        Ok(Target {
            config,
            location,
            redacted_url,
        })
    }
}

/// The driver is built without TLS: a URL that demands it must not be
/// silently downgraded to a plain connection.
fn refuse_required_tls(
    config: &tokio_postgres::Config,
    env: &dyn Fn(&str) -> Option<String>,
    redacted_url: &str,
) -> Result<()> {
    let env_mode = env("PGSSLMODE").unwrap_or_default();
    let env_requires = matches!(env_mode.as_str(), "require" | "verify-ca" | "verify-full");
    if config.get_ssl_mode() == SslMode::Require || env_requires {
        return Err(Error::usage(format!(
            "PostgreSQL URL {redacted_url:?} requires TLS, which onlyone does not support yet; use sslmode=disable or prefer on a trusted network"
        )));
    }
    Ok(())
}

fn fill_from_env(
    config: &mut tokio_postgres::Config,
    env: &dyn Fn(&str) -> Option<String>,
    socket_exists: &dyn Fn(&Path) -> bool,
) -> Result<()> {
    let env = |var: &str| env(var).filter(|value| !value.is_empty());
    if config.get_ports().is_empty()
        && let Some(port) = env("PGPORT")
    {
        let port = port
            .parse::<u16>()
            .map_err(|_| Error::usage(format!("PGPORT {port:?} is not a port number")))?;
        config.port(port);
    }
    let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        match env("PGHOST") {
            Some(hosts) => {
                for host in hosts.split(',') {
                    add_host(config, host);
                }
            }
            None => add_host(config, &default_host(port, socket_exists)),
        }
    }
    if config.get_user().is_none()
        && let Some(user) = env("PGUSER")
    {
        config.user(&user);
    }
    if config.get_dbname().is_none()
        && let Some(dbname) = env("PGDATABASE")
    {
        config.dbname(&dbname);
    }
    if config.get_password().is_none() {
        if let Some(password) = env("PGPASSWORD") {
            config.password(password);
        } else if let Some(password) = password_from_file(config, &env) {
            config.password(password);
        }
    }
    Ok(())
}

fn add_host(config: &mut tokio_postgres::Config, host: &str) {
    if host.starts_with('/') {
        config.host_path(host);
    } else {
        config.host(host);
    }
}

/// libpq's default: the local Unix socket, else `localhost`.
fn default_host(port: u16, socket_exists: &dyn Fn(&Path) -> bool) -> String {
    SOCKET_DIRS
        .iter()
        .find(|dir| socket_exists(&Path::new(dir).join(format!(".s.PGSQL.{port}"))))
        .map_or_else(|| "localhost".to_owned(), |dir| (*dir).to_owned())
}

fn socket_exists(path: &Path) -> bool {
    path.exists()
}

/// `postgres://host:port/db` of the first server (all of them, comma
/// separated, when several are listed).
fn location(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port_of = |i: usize| {
        ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(DEFAULT_PORT)
    };
    let mut hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port_of(i)),
            Host::Tcp(name) => format!("{name}:{}", port_of(i)),
            Host::Unix(path) => format!("[{}]:{}", path.display(), port_of(i)),
        })
        .collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{addr}:{}", port_of(i)))
            .collect();
    }
    let dbname = config
        .get_dbname()
        .map(str::to_owned)
        .or_else(|| config.get_user().map(str::to_owned))
        .unwrap_or_default();
    format!("postgres://{}/{dbname}", hosts.join(","))
}

/// The password from the libpq password file (`PGPASSFILE`, else
/// `~/.pgpass`), which is ignored when others may read it, as libpq does.
fn password_from_file(
    config: &tokio_postgres::Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let path = match env("PGPASSFILE") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env("HOME")?).join(".pgpass"),
    };
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
        log::warn!(
            "ignoring the password file {}: others may read it (it must be mode 0600 or less)",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        // libpq matches a Unix socket against "localhost".
        _ => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(DEFAULT_PORT)
        .to_string();
    let user = config
        .get_user()
        .map(str::to_owned)
        .unwrap_or_else(|| crate::sys::user_name(crate::sys::uid()));
    let dbname = config
        .get_dbname()
        .map_or_else(|| user.clone(), str::to_owned);
    pgpass_lookup(&text, [&host, &port, &dbname, &user])
}

/// The password of the first line of a password file whose host, port,
/// database and user match (`*` matches anything; `\` escapes `:` and `\`).
fn pgpass_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields = split_pgpass_line(line);
            (fields.len() == 5).then_some(fields)
        })
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.remove(4))
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("never empty").extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

/// `url` with any password replaced by `***`: the `user:password@` part
/// and a `password=` parameter of a URL, or the `password=` pair of a
/// conninfo string.
pub(super) fn redact(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        redact_url(url)
    } else {
        redact_conninfo(url)
    }
}

fn redact_url(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(scheme_end);
    let query_start = rest.find('?').unwrap_or(rest.len());
    let (before_query, query) = rest.split_at(query_start);
    let authority = match before_query.rfind('@') {
        Some(at) => {
            let (userinfo, host_and_path) = before_query.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host_and_path}"),
                None => before_query.to_owned(),
            }
        }
        None => before_query.to_owned(),
    };
    let query = query
        .split_inclusive('&')
        .map(|param| {
            let (pair, amp) = match param.strip_suffix('&') {
                Some(pair) => (pair, "&"),
                None => (param, ""),
            };
            let pair_key = pair.trim_start_matches('?').split('=').next().unwrap_or("");
            if pair_key == "password" {
                let prefix = if pair.starts_with('?') { "?" } else { "" };
                format!("{prefix}password=***{amp}")
            } else {
                param.to_owned()
            }
        })
        .collect::<String>();
    format!("{scheme}{authority}{query}")
}

/// Replaces the value of `password` in `key = value` pairs; values may be
/// single-quoted with backslash escapes.
fn redact_conninfo(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while !rest.is_empty() {
        let spaces = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..spaces]);
        rest = &rest[spaces..];
        let key_len = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_len];
        out.push_str(key);
        rest = &rest[key_len..];
        let before_eq = rest.len() - rest.trim_start().len();
        let Some(after_eq) = rest.trim_start().strip_prefix('=') else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..before_eq]);
        out.push('=');
        let spaces = after_eq.len() - after_eq.trim_start().len();
        out.push_str(&after_eq[..spaces]);
        let value_and_rest = &after_eq[spaces..];
        let value_len = conninfo_value_len(value_and_rest);
        if key == "password" {
            out.push_str("***");
        } else {
            out.push_str(&value_and_rest[..value_len]);
        }
        rest = &value_and_rest[value_len..];
    }
    out
}

/// The length of the value at the start of `text`: a quoted string, or
/// everything up to the next whitespace.
fn conninfo_value_len(text: &str) -> usize {
    let mut chars = text.char_indices();
    let quoted = text.starts_with('\'');
    if quoted {
        chars.next();
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if quoted => return i + 1,
            c if !quoted && c.is_whitespace() => return i,
            _ => {}
        }
    }
    text.len()
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
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact("postgres://bot:s3cret@db1:5432/app"),
            "postgres://bot:***@db1:5432/app"
        );
        assert_eq!(
            redact("postgresql://bot@db1/app?password=s3cret&sslmode=disable"),
            "postgresql://bot@db1/app?password=***&sslmode=disable"
        );
        assert_eq!(
            redact("postgres://db1/app?sslmode=disable&password=x"),
            "postgres://db1/app?sslmode=disable&password=***"
        );
        assert_eq!(redact("postgres://db1/app"), "postgres://db1/app");
    }

    #[test]
    fn redacts_passwords_in_conninfo() {
        assert_eq!(
            redact("host=db1 password=s3cret user=bot"),
            "host=db1 password=*** user=bot"
        );
        assert_eq!(
            redact("host=db1 password = s3cret"),
            "host=db1 password = ***"
        );
        assert_eq!(
            redact("host=db1 password='a b\\' c' dbname=app"),
            "host=db1 password=*** dbname=app"
        );
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
            ],
        )
        .unwrap();
        assert_eq!(target.location, "postgres://db9:6543/app");
        assert_eq!(target.config.get_user(), Some("bot"));
        assert_eq!(target.config.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn the_url_wins_over_the_environment() {
        let target = parse(
            "postgres://u:p@db1:5433/one",
            &[("PGHOST", "db9"), ("PGPORT", "1"), ("PGPASSWORD", "other")],
        )
        .unwrap();
        assert_eq!(target.location, "postgres://db1:5433/one");
        assert_eq!(target.config.get_password(), Some(&b"p"[..]));
        assert_eq!(target.redacted_url, "postgres://u:***@db1:5433/one");
    }

    #[test]
    fn refuses_malformed_urls_without_echoing_the_password() {
        for url in [
            "postgres://u:hunter2@db1:notaport/app",
            "host=db1 password=hunter2 bogus",
            "host=db1 password=hunter2 sslmode=sometimes",
        ] {
            let err = parse(url, &[]).unwrap_err();
            assert!(err.is_usage(), "{url}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn refuses_to_downgrade_required_tls() {
        let err = parse("postgres://db1/app?sslmode=require", &[]).unwrap_err();
        assert!(err.is_usage());
        assert!(err.to_string().contains("TLS"), "{err}");
        let err = parse("postgres://db1/app", &[("PGSSLMODE", "verify-full")]).unwrap_err();
        assert!(err.is_usage());
    }

    #[test]
    fn reads_the_password_file_format() {
        let text = "# comment\nother:*:*:*:no\ndb1:5432:app:bot:pa\\:ss\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, ["db1", "5432", "app", "bot"]),
            Some("pa:ss".to_owned())
        );
        assert_eq!(
            pgpass_lookup(text, ["db2", "5432", "app", "bot"]),
            Some("fallback".to_owned())
        );
    }
}
