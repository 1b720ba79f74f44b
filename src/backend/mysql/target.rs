//! Where the MySQL/MariaDB server is and how to log in: the
//! `mysql://user:password@host:port/db` URL, with the password (and user)
//! from the URL, else `MYSQL_PWD`, else the `[client]` group of `~/.my.cnf`
//! as the `mysql` client reads them. The password is never shown: the URL
//! is only ever displayed redacted, and the driver is given the parts, never
//! the URL (whose parse errors could echo it).

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

/// The port when the URL names none.
const DEFAULT_PORT: u16 = 3306;

/// A parsed URL, with the password found.
#[derive(Clone)]
pub(super) struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: Option<String>,
    /// `mysql://user@host:port/db`, for messages and `status`.
    pub location: String,
    /// The URL as given, its password replaced by `***`.
    pub redacted_url: String,
}

/// Never shows the password.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("location", &self.location)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parses `url`, reading `MYSQL_PWD` and `~/.my.cnf` for what it leaves
    /// out.
    ///
    /// # Errors
    ///
    /// A usage error (with the URL redacted) for anything that is not a
    /// `mysql://` (or `mariadb://`) URL onlyone understands.
    pub fn parse(url: &str) -> Result<Target> {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let option_file = home.map(|home| home.join(".my.cnf"));
        Target::parse_with(url, std::env::var("MYSQL_PWD").ok(), option_file.as_deref())
    }

    fn parse_with(
        url: &str,
        env_password: Option<String>,
        option_file: Option<&Path>,
    ) -> Result<Target> {
        let redacted_url = redact(url);
        let bad = |why: &str| {
            Error::usage(format!(
                "invalid MySQL URL '{redacted_url}': {why}; the form is mysql://USER@HOST:PORT/DATABASE"
            ))
        };
        let rest = url
            .strip_prefix("mysql://")
            .or_else(|| url.strip_prefix("mariadb://"))
            .ok_or_else(|| bad("it must start with mysql://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (url_user, url_password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (
                    Some(decode(user).ok_or_else(|| bad("bad %-escape in the user"))?),
                    Some(decode(password).ok_or_else(|| bad("bad %-escape in the password"))?),
                ),
                None => (
                    Some(decode(info).ok_or_else(|| bad("bad %-escape in the user"))?),
                    None,
                ),
            },
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
        let host = match host {
            "" => "localhost".to_owned(),
            host => host.to_owned(),
        };
        let database = match path {
            "" => None,
            path => Some(decode(path).ok_or_else(|| bad("bad %-escape in the database"))?),
        };
        if let Some(query) = query.filter(|query| !query.is_empty()) {
            for param in query.split('&') {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                match (key, value.to_ascii_uppercase().as_str()) {
                    ("ssl-mode" | "ssl_mode" | "sslmode", "DISABLED") => {}
                    ("ssl-mode" | "ssl_mode" | "sslmode", _) => {
                        return Err(bad(
                            "TLS is not supported yet by onlyone's MySQL backend: only ssl-mode=DISABLED (the default here) is accepted",
                        ));
                    }
                    _ => return Err(bad(&format!("unknown parameter '{key}'"))),
                }
            }
        }
        let client = option_file.map(read_client_group).unwrap_or_default();
        let user = url_user
            .filter(|user| !user.is_empty())
            .or(client.user)
            .unwrap_or_else(|| sys::user_name(sys::uid()));
        let password = url_password.or(env_password).or(client.password);
        let location = match &database {
            Some(db) => format!("mysql://{user}@{host}:{port}/{db}"),
            None => format!("mysql://{user}@{host}:{port}"),
        };
        Ok(Target {
            host,
            port,
            user,
            password,
            database,
            location,
            redacted_url,
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(&str, u16)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, DEFAULT_PORT)),
            after => Some((host, after.strip_prefix(':')?.parse().ok()?)),
        };
    }
    match text.rsplit_once(':') {
        // An IPv6 address goes in brackets.
        Some((host, _)) if host.contains(':') => None,
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((text, DEFAULT_PORT)),
    }
}

/// Percent-decoding, as in URLs.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with the password in its user part replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((info, host)) if info.contains(':') => {
            let user = info.split_once(':').map_or(info, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

/// The `user` and `password` of the `[client]` group of an option file.
#[derive(Default)]
struct ClientGroup {
    user: Option<String>,
    password: Option<String>,
}

/// Reads the `[client]` group of the option file at `path` (missing or
/// unreadable: nothing). Like the `mysql` client, a file that others may
/// write is ignored.
fn read_client_group(path: &Path) -> ClientGroup {
    let Ok(meta) = std::fs::metadata(path) else {
        return ClientGroup::default();
    };
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o002 != 0 {
        log::warn!(
            "ignoring the option file {}: every user may write it",
            path.display()
        );
        return ClientGroup::default();
    }
    std::fs::read_to_string(path)
        .map(|text| parse_client_group(&text))
        .unwrap_or_default()
}

fn parse_client_group(text: &str) -> ClientGroup {
    let mut group = ClientGroup::default();
    let mut in_client = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_client = name.trim().eq_ignore_ascii_case("client");
            continue;
        }
        if !in_client {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key.trim().replace('_', "-").as_str() {
            "user" => group.user = Some(value),
            "password" => group.password = Some(value),
            _ => {}
        }
    }
    group
}

/// An option file's value: quotes around it removed.
fn unquote(value: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.to_owned();
        }
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_url_and_hides_its_password() {
        let target = Target::parse_with("mysql://bot:s%3Acret@db1:3307/app", None, None).unwrap();
        assert_eq!(target.host, "db1");
        assert_eq!(target.port, 3307);
        assert_eq!(target.user, "bot");
        assert_eq!(target.password.as_deref(), Some("s:cret"));
        assert_eq!(target.database.as_deref(), Some("app"));
        assert_eq!(target.location, "mysql://bot@db1:3307/app");
        assert_eq!(target.redacted_url, "mysql://bot:***@db1:3307/app");
        assert!(!format!("{target:?}").contains("cret"));
    }

    #[test]
    fn the_password_comes_from_the_url_then_the_environment_then_the_option_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("my.cnf");
        std::fs::write(
            &file,
            "[mysqld]\npassword=server\n[client]\nuser = filer\npassword = \"from file\"\n",
        )
        .unwrap();
        let from_file = Target::parse_with("mysql://db1/app", None, Some(&file)).unwrap();
        assert_eq!(from_file.user, "filer");
        assert_eq!(from_file.password.as_deref(), Some("from file"));
        let from_env =
            Target::parse_with("mysql://bot@db1/app", Some("env".into()), Some(&file)).unwrap();
        assert_eq!(from_env.user, "bot");
        assert_eq!(from_env.password.as_deref(), Some("env"));
        let from_url =
            Target::parse_with("mysql://bot:url@db1/app", Some("env".into()), Some(&file)).unwrap();
        assert_eq!(from_url.password.as_deref(), Some("url"));
    }

    #[test]
    fn refuses_what_it_does_not_understand_without_showing_the_password() {
        for url in [
            "postgres://bot:hunter2@db1/app",
            "mysql://bot:hunter2@db1:port/app",
            "mysql://bot:hunter2@127.0.0.1:1:2/app",
            "mysql://bot:hunter2@db1/app?ssl-mode=REQUIRED",
            "mysql://bot:hunter2@db1/app?charset=utf8",
        ] {
            let err = Target::parse_with(url, None, None).unwrap_err();
            assert!(err.is_usage(), "{url}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert!(Target::parse_with("mysql://db1/app?ssl-mode=disabled", None, None).is_ok());
    }
}
