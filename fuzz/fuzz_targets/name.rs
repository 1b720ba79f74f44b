//! Any string as a lock name: accepted exactly when it follows the rule,
//! and an accepted name is a safe file name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onlyone::LockName;

fuzz_target!(|name: &str| {
    let follows_rule = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match LockName::new(name) {
        Ok(valid) => {
            assert!(follows_rule);
            assert!(!valid.as_str().contains('/') && valid.as_str() != "..");
        }
        Err(err) => {
            assert!(!follows_rule);
            assert!(err.is_usage());
        }
    }
});
