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

    /// The lock of slot `slot` (from 1) of this name, for "at most N at
    /// once": `NAME@SLOT`. `@` is not allowed in names, so a slot lock
    /// never collides with a lock someone names.
    pub fn slot(&self, slot: u32) -> LockName {
        LockName(format!("{}@{slot}", self.base()))
    }

    /// The slot number, when this is a slot lock.
    pub fn slot_number(&self) -> Option<u32> {
        self.0.rsplit_once('@')?.1.parse().ok()
    }

    /// The name without its slot.
    pub fn base(&self) -> &str {
        self.0.split('@').next().unwrap_or(&self.0)
    }

    /// A name as stored by a backend (a file name, a table row): a valid
    /// name or a slot lock of one.
    pub fn from_stored(stored: &str) -> Option<LockName> {
        let (base, slot) = match stored.rsplit_once('@') {
            Some((base, slot)) => (base, Some(slot.parse::<u32>().ok()?)),
            None => (stored, None),
        };
        let base = LockName::new(base).ok()?;
        Some(match slot {
            Some(slot) => base.slot(slot),
            None => base,
        })
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
    fn slot_names_round_trip_and_never_validate() {
        let slot = LockName::new("bot").unwrap().slot(3);
        assert_eq!(slot.as_str(), "bot@3");
        assert_eq!(slot.slot_number(), Some(3));
        assert_eq!(slot.base(), "bot");
        assert_eq!(LockName::from_stored("bot@3"), Some(slot));
        assert!(LockName::new("bot@3").is_err());
        assert_eq!(LockName::from_stored("bot@x"), None);
        assert_eq!(LockName::from_stored(".x@1"), None);
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
