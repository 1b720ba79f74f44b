//! A connection URL or conninfo string as it may be shown: with its
//! password replaced by `***`.

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
}
