//! A validated lock name.

use std::fmt;

use crate::error::{Error, Result};

/// The longest name accepted, in bytes (all accepted characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// The most slots a pool (`--max`) may have.
pub const MAX_SLOTS: u32 = 10_000;

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
            return Ok(LockName(name.to_owned()));
        }
        let length = name.chars().count();
        let why = match length > MAX_NAME_LEN {
            true => format!("too long ({length} characters, at most {MAX_NAME_LEN}); "),
            false => String::new(),
        };
        Err(Error::usage(format!(
            "invalid lock name {}: {why}a name is {NAME_RULE}",
            quoted(name)
        )))
    }

    /// A lock's name, or one slot of a pool as `NAME@N` (N from 1 to
    /// [`MAX_SLOTS`]): what `status`, `stop` and `wait` accept. Only those
    /// address a slot by hand; a lock is never *taken* by such a name.
    ///
    /// # Errors
    ///
    /// A usage error that quotes the text and states the rule.
    pub fn lock_or_slot(text: &str) -> Result<LockName> {
        let Some((base, slot)) = text.rsplit_once('@') else {
            return LockName::new(text);
        };
        let base = LockName::new(base)?;
        let canonical = !slot.starts_with('0') && slot.bytes().all(|b| b.is_ascii_digit());
        match slot.parse::<u32>() {
            Ok(slot) if canonical && slot <= MAX_SLOTS => Ok(base.slot(slot)),
            _ => Err(Error::usage(format!(
                "invalid slot {}: a slot of a pool is NAME@N, N a number from 1 to {MAX_SLOTS}",
                quoted(text)
            ))),
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

    /// True when this is a slot lock of `base` (`BASE@N`).
    pub fn is_slot_of(&self, base: &LockName) -> bool {
        self.slot_number().is_some() && self.base() == base.as_str()
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

/// How many characters of a bad name a message quotes, at most.
const QUOTED_LEN: usize = 40;

/// `text` in single quotes, as every message quotes a lock name; a text
/// too long to be a name is cut short, so that a message stays readable.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_LEN) {
        Some((cut, _)) if text.len() > MAX_NAME_LEN => format!("'{}...'", &text[..cut]),
        _ => format!("'{text}'"),
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
    fn addresses_one_slot_by_hand() {
        let slot = LockName::lock_or_slot("bot@2").unwrap();
        assert_eq!(slot, LockName::new("bot").unwrap().slot(2));
        assert_eq!(LockName::lock_or_slot("bot").unwrap().as_str(), "bot");
        for bad in [
            "bot@0",
            "bot@02",
            "bot@",
            "bot@x",
            "bot@-1",
            "bot@10001",
            "@1",
            "a@1@2",
        ] {
            let err = LockName::lock_or_slot(bad).unwrap_err();
            assert!(err.is_usage(), "{bad}");
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

    #[test]
    fn a_long_name_is_cut_short_and_called_too_long() {
        let err = LockName::new(&"n".repeat(300)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "invalid lock name '{}...': too long (300 characters, at most 128); a name is {NAME_RULE}",
                "n".repeat(QUOTED_LEN)
            )
        );
        let err = LockName::new("a b").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("invalid lock name 'a b': a name is {NAME_RULE}")
        );
    }
}
