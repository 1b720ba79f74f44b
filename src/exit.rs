//! The exit codes of the command-line tool, in one table: [`Error::exit_code`]
//! maps errors onto it, the CLI returns its outcomes from it and generates
//! its help text's list of exit codes from it.
//!
//! The failures follow sysexits.h (64 usage, 69 unavailable, 74 lost, 77
//! refused) and the shell (126, 127, 128+N); 75 is sysexits' "temporary
//! failure": try again later, when the holder is gone.
//!
//! [`Error::exit_code`]: crate::Error::exit_code

/// `status NAME`: the lock is held; `stop`, `wait`: the lock is free.
pub const OK: u8 = 0;
/// `status NAME`, `stop`: the lock is free (as LSB init scripts say
/// "not running").
pub const FREE: u8 = 3;
/// Bad usage: a flag, name, duration or URL that does not parse.
pub const USAGE: u8 = 64;
/// The lock backend cannot be used.
pub const UNAVAILABLE: u8 = 69;
/// The lock was lost while the command ran, and the command was stopped.
pub const LOST: u8 = 74;
/// Not acquired: the lock is held by someone else, or a wait timed out.
pub const CONFLICT: u8 = 75;
/// Refused for safety.
pub const UNSAFE: u8 = 77;
/// The command cannot be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;
/// A command killed by signal N exits with `SIGNALLED + N`.
pub const SIGNALLED: u8 = 128;

/// Every exit code with what it means, in the order the help lists them;
/// `None` is the command's own status.
pub const TABLE: [(Option<u8>, &str); 10] = [
    (
        None,
        "run: the command's exit status; 128+N if killed by signal N",
    ),
    (Some(OK), "status NAME: the lock is held"),
    (Some(FREE), "status NAME: the lock is free"),
    (Some(USAGE), "usage error (bad flag, name, duration)"),
    (
        Some(UNAVAILABLE),
        "the lock backend is unusable (cannot create, open or lock; database unreachable)",
    ),
    (
        Some(LOST),
        "the lock was lost while the command ran, and the command was stopped",
    ),
    (
        Some(CONFLICT),
        "not acquired: the lock is held, or the wait timed out",
    ),
    (
        Some(UNSAFE),
        "refused for safety (symlink, foreign owner, unsafe permissions, standby, pooler, read-only MySQL, Galera)",
    ),
    (Some(CANNOT_EXECUTE), "the command cannot be executed"),
    (Some(NOT_FOUND), "the command was not found"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The table names each constant once, with the number the constant has.
    #[test]
    fn the_table_lists_every_code() {
        for code in [
            OK,
            FREE,
            USAGE,
            UNAVAILABLE,
            LOST,
            CONFLICT,
            UNSAFE,
            CANNOT_EXECUTE,
            NOT_FOUND,
        ] {
            let listed = TABLE
                .iter()
                .filter(|(number, _)| *number == Some(code))
                .count();
            assert_eq!(listed, 1, "exit code {code}");
        }
    }
}
