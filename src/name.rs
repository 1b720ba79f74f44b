//! A validated lock name.

use std::fmt;

use crate::error::{Error, Result};

/// The longest name accepted, in bytes (all accepted characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// The rule a lock name must follow, as shown to users.
pub const NAME_RULE: &str = "1-128 characters of A-Z a-z 0-9 . _ -, not starting with '.'";

/// The name of a lock: 1–128 characters of `A-Z a-z 0-9 . _ -`, not
/// starting with `.`.
///
/// The rule keeps a name safe as a file name on every filesystem (no `/`,
/// no `..`, no hidden files, no NUL) and unambiguous in logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(String);

impl LockName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// A usage error that quotes the name and states the rule.
    pub fn new(name: &str) -> Result<LockName> {
        if is_valid(name) {
            Ok(LockName(name.to_owned()))
        } else {
            Err(Error::usage(format!(
                "invalid lock name {:?}: a name is {NAME_RULE}",
                name
            )))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for LockName {
    type Err = Error;
    fn from_str(s: &str) -> Result<LockName> {
        LockName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "bot", "A-b_c.9", "x.lock", &"n".repeat(128)] {
            assert!(LockName::new(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "n".repeat(129);
        for bad in [
            "", ".", "..", ".hidden", "a/b", "a b", "a\0b", "é", "a\n", &long,
        ] {
            let err = LockName::new(bad).unwrap_err();
            assert!(err.is_usage());
            assert!(err.to_string().contains("not starting with '.'"), "{err}");
        }
    }
}
