//! Where the MySQL/MariaDB server is and how to log in: the
//! `mysql://user:password@host:port/db` URL, with the password (and user)
//! from the URL, else `MYSQL_PWD`, else the `[client]` group of `~/.my.cnf`
//! as the `mysql` client reads them. The password is never shown: the URL
//! is only ever displayed redacted, and the driver is given the parts, never
//! the URL (whose parse errors could echo it).

use std::fmt;
use std::path::{Path, PathBuf};

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
    /// TLS: the `ssl-*` settings of the URL, else of the option file.
    pub tls: Tls,
}

/// The `mysql` client's `ssl-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SslMode {
    /// Never TLS.
    Disabled,
    /// TLS when the server offers it, its certificate not checked; plain
    /// when it does not (the `mysql` client's default).
    Preferred,
    /// TLS or nothing, the certificate not checked.
    Required,
    /// TLS with a certificate signed by the CA of `ssl-ca`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host of the URL.
    VerifyIdentity,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value.to_ascii_uppercase().as_str() {
            "DISABLED" => SslMode::Disabled,
            "PREFERRED" => SslMode::Preferred,
            "REQUIRED" => SslMode::Required,
            "VERIFY_CA" => SslMode::VerifyCa,
            "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disabled => "DISABLED",
            SslMode::Preferred => "PREFERRED",
            SslMode::Required => "REQUIRED",
            SslMode::VerifyCa => "VERIFY_CA",
            SslMode::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }

    /// Whether the certificate is checked against `ssl-ca`.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyIdentity)
    }
}

/// TLS settings, resolved as the MySQL 8 client resolves them (see
/// [`Tls::resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tls {
    pub mode: SslMode,
    /// `ssl-ca`: the CA certificates (PEM) the server's must chain to.
    pub ca: Option<PathBuf>,
    /// `ssl-cert` + `ssl-key`: the client certificate and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The `ssl-*` settings as given, in the URL or the option file.
#[derive(Clone, Default)]
struct TlsSettings {
    mode: Option<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsSettings {
    /// Sets `key` (an `ssl-*` name, `_` or `-`) to `value`; false for a
    /// name that is not one of them.
    fn set(&mut self, key: &str, value: String) -> bool {
        let slot = match key.replace('_', "-").to_ascii_lowercase().as_str() {
            "ssl-mode" | "sslmode" => &mut self.mode,
            "ssl-ca" => &mut self.ca,
            "ssl-cert" => &mut self.cert,
            "ssl-key" => &mut self.key,
            _ => return false,
        };
        *slot = Some(value);
        true
    }

    /// The URL's settings, each in place of the option file's.
    fn over(self, file: TlsSettings) -> TlsSettings {
        TlsSettings {
            mode: self.mode.or(file.mode),
            ca: self.ca.or(file.ca),
            cert: self.cert.or(file.cert),
            key: self.key.or(file.key),
        }
    }
}

impl Tls {
    /// The MySQL 8 client's rules (its manual, "Command Options for
    /// Encrypted Connections", `--ssl-mode`): without `ssl-mode` the mode
    /// is PREFERRED, but `ssl-ca` without `ssl-mode` implies VERIFY_CA;
    /// with an explicit REQUIRED (or PREFERRED) `ssl-ca` is not used to
    /// check the server, and a warning says so; VERIFY_CA and
    /// VERIFY_IDENTITY need `ssl-ca` (onlyone trusts no built-in CA list,
    /// as the client reports "CA certificate is required"). `ssl-cert` and
    /// `ssl-key` go together.
    fn resolve(settings: TlsSettings) -> std::result::Result<Tls, String> {
        let explicit = match &settings.mode {
            None => None,
            Some(value) => Some(SslMode::parse(value).ok_or_else(|| {
                format!(
                    "unknown ssl-mode '{value}' (one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY)"
                )
            })?),
        };
        let nonempty = |value: Option<String>| value.filter(|v| !v.is_empty());
        let ca = nonempty(settings.ca).map(PathBuf::from);
        let mode = match explicit {
            Some(mode) => mode,
            None if ca.is_some() => SslMode::VerifyCa,
            None => SslMode::Preferred,
        };
        if mode.verifies() && ca.is_none() {
            return Err(format!(
                "ssl-mode={} needs ssl-ca, the CA certificate file to check the server's certificate against",
                mode.as_str()
            ));
        }
        if ca.is_some() && matches!(mode, SslMode::Required | SslMode::Preferred) {
            log::warn!(
                "ssl-ca is given but ssl-mode={} does not check the server's certificate (VERIFY_CA or VERIFY_IDENTITY does)",
                mode.as_str()
            );
        }
        let identity = match (nonempty(settings.cert), nonempty(settings.key)) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            (Some(_), None) => return Err("ssl-cert is given without ssl-key".to_owned()),
            (None, Some(_)) => return Err("ssl-key is given without ssl-cert".to_owned()),
        };
        Ok(Tls { mode, ca, identity })
    }
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
        let mut url_tls = TlsSettings::default();
        if let Some(query) = query.filter(|query| !query.is_empty()) {
            for param in query.split('&') {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                let value = decode(value).ok_or_else(|| bad(&format!("bad %-escape in {key}")))?;
                if !url_tls.set(key, value) {
                    return Err(bad(&format!(
                        "unknown parameter '{key}' (onlyone takes ssl-mode, ssl-ca, ssl-cert, ssl-key)"
                    )));
                }
            }
        }
        let client = option_file.map(read_client_group).unwrap_or_default();
        let tls = Tls::resolve(url_tls.over(client.tls)).map_err(|why| bad(&why))?;
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
            tls,
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

/// The `user`, `password` and `ssl-*` settings of the `[client]` group of
/// an option file.
#[derive(Default)]
struct ClientGroup {
    user: Option<String>,
    password: Option<String>,
    tls: TlsSettings,
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
            key => {
                group.tls.set(key, value);
            }
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
            "mysql://bot:hunter2@db1/app?ssl-mode=SOMETIMES",
            "mysql://bot:hunter2@db1/app?ssl-mode=VERIFY_CA",
            "mysql://bot:hunter2@db1/app?ssl-cert=/c.pem",
            "mysql://bot:hunter2@db1/app?ssl-key=/k.pem",
            "mysql://bot:hunter2@db1/app?charset=utf8",
        ] {
            let err = Target::parse_with(url, None, None).unwrap_err();
            assert!(err.is_usage(), "{url}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert!(Target::parse_with("mysql://db1/app?ssl-mode=disabled", None, None).is_ok());
        let err = Target::parse_with("mysql://db1/app?ssl-mode=SOMETIMES", None, None).unwrap_err();
        assert!(
            err.to_string().contains("unknown ssl-mode 'SOMETIMES'"),
            "{err}"
        );
    }

    #[test]
    fn tls_settings_follow_the_mysql_8_client() {
        let tls = |url: &str| Target::parse_with(url, None, None).unwrap().tls;
        // The client's default.
        assert_eq!(tls("mysql://db1/app").mode, SslMode::Preferred);
        // ssl-ca without ssl-mode implies VERIFY_CA; with an explicit mode
        // it does not change it.
        let with_ca = tls("mysql://db1/app?ssl-ca=/etc/ca%20file.pem");
        assert_eq!(with_ca.mode, SslMode::VerifyCa);
        assert_eq!(with_ca.ca, Some(PathBuf::from("/etc/ca file.pem")));
        assert_eq!(
            tls("mysql://db1/app?ssl_mode=required&ssl_ca=/ca.pem").mode,
            SslMode::Required
        );
        let full = tls(
            "mysql://db1/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem&ssl-cert=/c.pem&ssl-key=/k.pem",
        );
        assert_eq!(full.mode, SslMode::VerifyIdentity);
        assert_eq!(
            full.identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
    }

    #[test]
    fn tls_settings_come_from_the_option_file_unless_the_url_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("my.cnf");
        std::fs::write(
            &file,
            "[client]\nssl-ca = /file/ca.pem\nssl_cert=/file/c.pem\nssl-key=/file/k.pem\n",
        )
        .unwrap();
        let from_file = Target::parse_with("mysql://db1/app", None, Some(&file))
            .unwrap()
            .tls;
        assert_eq!(from_file.mode, SslMode::VerifyCa);
        assert_eq!(from_file.ca, Some(PathBuf::from("/file/ca.pem")));
        assert_eq!(
            from_file.identity,
            Some((PathBuf::from("/file/c.pem"), PathBuf::from("/file/k.pem")))
        );
        let from_url = Target::parse_with(
            "mysql://db1/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/url/ca.pem",
            None,
            Some(&file),
        )
        .unwrap()
        .tls;
        assert_eq!(from_url.mode, SslMode::VerifyIdentity);
        assert_eq!(from_url.ca, Some(PathBuf::from("/url/ca.pem")));
    }
}
