//! Property tests of the two parsers that take untrusted input: lock names
//! (from the command line) and holder records (from a file anyone in the
//! directory's group may write). The cargo-fuzz targets in fuzz/ push the
//! same functions much further.

use onlyone::{LockName, Record};
use proptest::prelude::*;

fn follows_the_rule(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

proptest! {
    /// The validator accepts exactly the documented rule, for any string.
    #[test]
    fn name_validator_matches_the_rule(name in any::<String>()) {
        prop_assert_eq!(LockName::new(&name).is_ok(), follows_the_rule(&name));
    }

    /// Names drawn from the allowed alphabet: accepted unless they start
    /// with a dot or are too long, and never changed.
    #[test]
    fn valid_names_round_trip(name in "[A-Za-z0-9._-]{1,140}") {
        match LockName::new(&name) {
            Ok(valid) => prop_assert_eq!(valid.as_str(), name.as_str()),
            Err(err) => {
                prop_assert!(err.is_usage());
                prop_assert!(name.starts_with('.') || name.len() > 128);
            }
        }
    }

    /// Any bytes: the record parser returns a record or nothing, never
    /// panics.
    #[test]
    fn record_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Record::parse(&bytes);
    }

    /// Every record a holder writes parses back to itself.
    #[test]
    fn records_round_trip(
        token in any::<u64>(),
        pid in any::<u32>(),
        host in "\\PC{0,40}",
        command in proptest::collection::vec("\\PC{0,20}", 0..5),
    ) {
        let mut record = Record::for_current_process(&command, token);
        record.pid = pid;
        record.host = host;
        prop_assert_eq!(Record::parse(record.to_line().as_bytes()), Some(record));
    }

    /// Valid JSON with the wrong format tag is not a record.
    #[test]
    fn other_formats_are_refused(tag in "\\PC{0,20}") {
        prop_assume!(tag != "onlyone/1");
        let mut record = Record::for_current_process(&[], 1);
        record.format = tag;
        prop_assert_eq!(Record::parse(record.to_line().as_bytes()), None);
    }
}
