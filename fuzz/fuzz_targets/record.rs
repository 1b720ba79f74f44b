//! Any bytes in a lock file: the parser returns a record or nothing, and a
//! record it returns prints back to a line that parses to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onlyone::Record;

fuzz_target!(|bytes: &[u8]| {
    if let Some(record) = Record::parse(bytes) {
        assert_eq!(Record::parse(record.to_line().as_bytes()), Some(record));
    }
});
