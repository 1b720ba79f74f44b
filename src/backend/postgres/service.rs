//! libpq's connection service file (`pg_service.conf`): named groups of
//! connection settings, chosen with `service=NAME` or `PGSERVICE`.

use std::path::{Path, PathBuf};

use super::params::Params;

/// Where the system-wide service file lives when `PGSYSCONFDIR` is not set:
/// the directory Debian's and Ubuntu's libpq are built with.
const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The files searched for a service, in order: `PGSERVICEFILE` (else
/// `~/.pg_service.conf`), then `PGSYSCONFDIR/pg_service.conf`.
pub(super) fn files(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let user_file = match env("PGSERVICEFILE") {
        Some(file) => Some(PathBuf::from(file)),
        None => env("HOME").map(|home| Path::new(&home).join(".pg_service.conf")),
    };
    let sysconfdir = env("PGSYSCONFDIR").unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_owned());
    user_file
        .into_iter()
        .chain([Path::new(&sysconfdir).join("pg_service.conf")])
        .collect()
}

/// Fills `params` from the group `[service]` of the first file that has
/// it, without overriding what `params` already sets (as libpq does).
pub(super) fn apply(service: &str, files: &[PathBuf], params: &mut Params) -> Result<(), String> {
    for file in files {
        // A missing file is skipped, as libpq does.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if let Some(settings) = group(&text, service, file)? {
            for (key, value) in settings {
                params.set_default(&key, &value);
            }
            return Ok(());
        }
    }
    let searched: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    Err(format!(
        "definition of service \"{service}\" not found (searched {})",
        searched.join(", ")
    ))
}

/// The `key=value` lines of `[service]` in `text`, if it has that group.
fn group(text: &str, service: &str, file: &Path) -> Result<Option<Vec<(String, String)>>, String> {
    let mut settings: Option<Vec<(String, String)>> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            if settings.is_some() {
                break;
            }
            if name.strip_suffix(']') == Some(service) {
                settings = Some(Vec::new());
            }
            continue;
        }
        let Some(settings) = settings.as_mut() else {
            continue;
        };
        let at = || format!("{}, line {}", file.display(), number + 1);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("syntax error in service file {}", at()));
        };
        if key == "service" {
            return Err(format!(
                "nested service specifications are not supported in service file {}",
                at()
            ));
        }
        settings.push((key.to_owned(), value.to_owned()));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n[other]\nhost=x\n\n[lock]\nhost=db1\nport=5433\nsslmode=verify-full\n[after]\nhost=y\n";

    #[test]
    fn reads_one_group_without_overriding() {
        let mut params = Params::parse("port=1").unwrap();
        let settings = group(FILE, "lock", Path::new("f")).unwrap().unwrap();
        for (key, value) in settings {
            params.set_default(&key, &value);
        }
        assert_eq!(params.get("host"), Some("db1"));
        assert_eq!(params.get("port"), Some("1"));
        assert_eq!(params.get("sslmode"), Some("verify-full"));
        assert!(group(FILE, "missing", Path::new("f")).unwrap().is_none());
    }

    #[test]
    fn refuses_bad_lines() {
        let err = group("[a]\nnot a setting\n", "a", Path::new("/s.conf")).unwrap_err();
        assert_eq!(err, "syntax error in service file /s.conf, line 2");
        assert!(group("[a]\nservice=b\n", "a", Path::new("f")).is_err());
        // Lines of other groups are not read.
        assert!(group("[b]\nbogus\n[a]\nhost=x\n", "a", Path::new("f")).is_ok());
    }

    #[test]
    fn searches_the_user_file_then_the_system_one() {
        let env = |var: &str| match var {
            "HOME" => Some("/home/u".to_owned()),
            "PGSYSCONFDIR" => Some("/etc/pg".to_owned()),
            _ => None,
        };
        assert_eq!(
            files(&env),
            [
                PathBuf::from("/home/u/.pg_service.conf"),
                PathBuf::from("/etc/pg/pg_service.conf")
            ]
        );
        let err = apply("nope", &files(&env), &mut Params::default()).unwrap_err();
        assert!(
            err.contains("definition of service \"nope\" not found"),
            "{err}"
        );
    }
}
