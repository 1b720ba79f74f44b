//! Not part of the API: hidden from the docs, and it may change in any
//! release. The code that ships, for the benchmark to time and for the
//! torture binary and the tests to use, so that none of them keeps a copy
//! of it that could drift from what it stands for.

use crate::backend::file::FileBackend;
use crate::error::Result;
use crate::name::LockName;

#[cfg(feature = "postgres")]
pub use crate::backend::postgres::Cancel;
pub use crate::sys::observe::{children_of, flock_holders, process_command, process_name};
pub use crate::sys::{
    Bind, HolderSocket, Process, boot_id, flock_waiters, parent_of, process_start_time, stat_field,
    user_name,
};

/// The directory checks before each acquisition: create it if missing,
/// then refuse a symlink, a foreign owner, unsafe permissions or a network
/// filesystem.
///
/// # Errors
///
/// As [`Lock::try_acquire`](crate::Lock::try_acquire) for the directory.
pub fn prepare_dir(files: &FileBackend) -> Result<()> {
    files.ensure_dir()
}

/// The abstract socket name that stands for "`name` is held" in the
/// directory of `files`, from the directory's identity.
///
/// # Errors
///
/// The directory's identity cannot be read.
pub fn socket_name(files: &FileBackend, name: &LockName) -> Result<Vec<u8>> {
    files.socket_name(name)
}

/// Installs the at-fork hooks that keep the library's process-wide
/// mutexes out of a forked child's inheritance, as every entry point that
/// takes one does first, and runs the MySQL driver's one-time
/// initialisations. For the Python module's init: a program that imported
/// it has them before any of its threads can acquire or fork.
pub fn install_fork_hooks() {
    crate::backend::ticker::install_fork_hooks();
    #[cfg(feature = "mysql")]
    crate::backend::mysql::prepare_driver_for_fork();
}

/// The nearest-rank quantile `q` (0 to 1) of `sorted`: the smallest value
/// that at least a fraction `q` of the values do not exceed; `None` for no
/// values.
pub fn nearest_rank(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The names of the listening abstract Unix sockets that start with
/// `prefix`: the sock_diag dump a plain lock's check for held slots makes.
pub fn listening_abstract_names(prefix: &[u8]) -> Vec<Vec<u8>> {
    crate::sys::holder_socket_names(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&values, 0.5), Some(50));
        assert_eq!(nearest_rank(&values, 0.99), Some(99));
        assert_eq!(nearest_rank(&values, 1.0), Some(100));
        assert_eq!(nearest_rank(&values, 0.0), Some(1));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
