//! The libpq password file (`passfile`, `PGPASSFILE`, else `~/.pgpass`).

use std::path::Path;

/// The password for `[host, port, dbname, user]` from the password file at
/// `path`, which is ignored when others may read it, as libpq does.
pub(super) fn lookup(path: &Path, wanted: [&str; 4]) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
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
    let text = std::fs::read_to_string(path).ok()?;
    find(&text, wanted)
}

/// The password of the first line of a password file whose host, port,
/// database and user match (`*` matches anything; `\` escapes `:` and `\`).
fn find(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields = split_line(line);
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

fn split_line(line: &str) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_password_file_format() {
        let text = "# comment\nother:*:*:*:no\ndb1:5432:app:bot:pa\\:ss\n*:*:*:*:fallback\n";
        assert_eq!(
            find(text, ["db1", "5432", "app", "bot"]),
            Some("pa:ss".to_owned())
        );
        assert_eq!(
            find(text, ["db2", "5432", "app", "bot"]),
            Some("fallback".to_owned())
        );
    }
}
