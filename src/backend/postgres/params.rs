//! Connection settings by libpq keyword, read from either form libpq
//! accepts: a `postgres://` URL or a `key=value` conninfo string.

use std::collections::BTreeMap;
use std::fmt;

/// Settings by keyword. As in libpq, a keyword given twice keeps its last
/// value.
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) struct Params(BTreeMap<String, String>);

impl Params {
    /// Reads `text`. The error says what is wrong without quoting values,
    /// so that it never shows a password.
    pub fn parse(text: &str) -> Result<Params, String> {
        let text = text.trim();
        match ["postgresql://", "postgres://"]
            .iter()
            .find_map(|scheme| text.strip_prefix(scheme))
        {
            Some(rest) => parse_url(rest),
            None => parse_conninfo(text),
        }
    }

    /// The scheme of `text` when it is a URL of another kind than
    /// PostgreSQL's (`mysql://...`): libpq would read it as a malformed
    /// `key=value` string.
    pub fn foreign_scheme(text: &str) -> Option<&str> {
        let (scheme, _) = text.trim().split_once("://")?;
        let mut chars = scheme.chars();
        let is_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        (is_scheme && !matches!(scheme, "postgres" | "postgresql")).then_some(scheme)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.0.insert(key.to_owned(), value.to_owned());
    }

    /// Sets `key` unless it already has a value.
    pub fn set_default(&mut self, key: &str, value: &str) {
        self.0
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned());
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The settings as a conninfo string, every value quoted.
    pub fn to_conninfo(&self) -> String {
        self.0
            .iter()
            .map(|(key, value)| {
                let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
                format!("{key}='{quoted}'")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Never shows the password.
impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let shown = if key == "password" { "***" } else { value };
                (key, shown)
            }))
            .finish()
    }
}

/// `key = value` pairs separated by spaces; a value may be single-quoted,
/// and a backslash takes the next character as it is.
fn parse_conninfo(text: &str) -> Result<Params, String> {
    let mut params = Params::default();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after \"{key}\""));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of \"{key}\"")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        params.set(&key, &value);
    }
}

/// `[user[:password]@][host[:port][,...]][/dbname][?key=value[&...]]`, the
/// scheme already removed; every part percent-decoded.
fn parse_url(rest: &str) -> Result<Params, String> {
    let mut params = Params::default();
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (rest, dbname) = match rest.split_once('/') {
        Some((rest, dbname)) => (rest, Some(dbname)),
        None => (rest, None),
    };
    let hosts = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                params.set("user", &decode(user, "the user name")?);
            }
            if let Some(password) = password {
                params.set("password", &decode(password, "the password")?);
            }
            hosts
        }
        None => rest,
    };
    parse_url_hosts(hosts, &mut params)?;
    if let Some(dbname) = dbname.filter(|d| !d.is_empty()) {
        params.set("dbname", &decode(dbname, "the database name")?);
    }
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("missing \"=\" after URL parameter \"{pair}\""));
        };
        let key = decode(key, "a parameter name")?;
        let value = decode(value, &format!("the parameter {key}"))?;
        // libpq's JDBC-style alias.
        if key == "ssl" && value == "true" {
            params.set("sslmode", "require");
        } else {
            params.set(&key, &value);
        }
    }
    Ok(params)
}

/// `host[:port],...`, a host possibly an `[IPv6]` address or a
/// percent-encoded socket directory; sets `host` and `port` as
/// comma-separated lists, as a conninfo string would.
fn parse_url_hosts(text: &str, params: &mut Params) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for spec in text.split(',') {
        let (host, port) = match spec.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or("an IPv6 address in the URL lacks its closing \"]\"")?;
                let port = match after.strip_prefix(':') {
                    Some(port) => port,
                    None if after.is_empty() => "",
                    None => return Err(format!("unexpected \"{after}\" after [{host}]")),
                };
                (host.to_owned(), port)
            }
            None => {
                let (host, port) = spec.split_once(':').unwrap_or((spec, ""));
                (decode(host, "a host name")?, port)
            }
        };
        hosts.push(host);
        ports.push(port.to_owned());
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        params.set("host", &hosts.join(","));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        params.set("port", &ports.join(","));
    }
    Ok(())
}

/// Percent-decoding; `what` names the part for the error.
fn decode(text: &str, what: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in {what}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{what} is not UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        let params = Params::parse(text).unwrap();
        params
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_urls() {
        assert_eq!(
            pairs("postgres://bot:p%40ss@db1:5433/app?sslmode=verify-full&sslrootcert=/etc/ca.pem"),
            owned(&[
                ("dbname", "app"),
                ("host", "db1"),
                ("password", "p@ss"),
                ("port", "5433"),
                ("sslmode", "verify-full"),
                ("sslrootcert", "/etc/ca.pem"),
                ("user", "bot"),
            ])
        );
        assert_eq!(
            pairs("postgresql://a:1,[::1]:2,b/db?target_session_attrs=read-write"),
            owned(&[
                ("dbname", "db"),
                ("host", "a,::1,b"),
                ("port", "1,2,"),
                ("target_session_attrs", "read-write"),
            ])
        );
        assert_eq!(
            pairs("postgres://%2Fvar%2Frun%2Fpostgresql/db?ssl=true"),
            owned(&[
                ("dbname", "db"),
                ("host", "/var/run/postgresql"),
                ("sslmode", "require")
            ])
        );
        assert_eq!(pairs("postgres://"), owned(&[]));
        assert_eq!(
            pairs("postgres:///app?host=db2"),
            owned(&[("dbname", "app"), ("host", "db2")])
        );
    }

    #[test]
    fn reads_conninfo_strings() {
        assert_eq!(
            pairs("host=db1  port = 5433 password='a b\\' c' sslkey=/k\\ x dbname=''"),
            owned(&[
                ("dbname", ""),
                ("host", "db1"),
                ("password", "a b' c"),
                ("port", "5433"),
                ("sslkey", "/k x"),
            ])
        );
        assert_eq!(pairs("  "), owned(&[]));
        assert_eq!(pairs("host=a host=b"), owned(&[("host", "b")]));
    }

    #[test]
    fn refuses_malformed_input_without_quoting_values() {
        for text in [
            "host=db1 password=hunter2 bogus",
            "host=db1 password='hunter2",
            "postgres://u:hunter2%zz@db1/app",
            "postgres://u:hunter2@[::1/app",
            "postgres://u:hunter2@db1/app?sslmode",
        ] {
            let err = Params::parse(text).unwrap_err();
            assert!(!err.contains("hunter2"), "{text}: {err}");
        }
    }

    #[test]
    fn round_trips_through_conninfo() {
        let params = Params::parse("password='it\\'s' user=a\\b options='-c x=1'").unwrap();
        assert_eq!(Params::parse(&params.to_conninfo()).unwrap(), params);
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", Params::parse("password=hunter2 user=bot").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
