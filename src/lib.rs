//! onlyone guarantees that exactly one instance of a program runs: on one
//! machine with a kernel file lock and zero setup, or across machines with
//! a PostgreSQL advisory lock.
//!
//! ```no_run
//! # fn main() -> Result<(), onlyone::Error> {
//! use onlyone::{Attempt, Lock};
//!
//! let lock = Lock::file("nightly-report")?;
//! match lock.try_acquire()? {
//!     Attempt::Acquired(guard) => {
//!         println!("running with fencing token {:?}", guard.token());
//!         // ... the work that must never run twice at once ...
//!         drop(guard); // released here (or when the process dies)
//!     }
//!     Attempt::Held(holder) => eprintln!("already running: {holder}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Across machines, the same with a PostgreSQL session-level advisory lock
//! (the `postgres` feature, on by default). Connection settings come as
//! for `psql`: a URL or `key=value` string, completed from the `PG*`
//! variables, a service file and `~/.pgpass`:
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # fn main() -> Result<(), onlyone::Error> {
//! use std::time::Duration;
//! use onlyone::{Attempt, Lock, PostgresBackend, PostgresConfig};
//!
//! let config = PostgresConfig::new("postgres://bot@db1.internal:5432/app");
//! let lock = Lock::new("nightly-report", PostgresBackend::new(config)?)?;
//! match lock.acquire(Some(Duration::from_secs(30)))? {
//!     Attempt::Acquired(guard) => {
//!         // The session may be lost (a network partition, a failover):
//!         // stop the work when the guard says so.
//!         let lost = guard.loss_watch();
//!         // ... the work, checking lost.reason() between steps ...
//!         # let _ = lost;
//!     }
//!     Attempt::Held(holder) => eprintln!("gave up after 30 s: held by {holder}"),
//! }
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "postgres"))]
//! # fn main() {}
//! ```
//!
//! Whether a lock is held is decided only by the kernel (a flock(2) lock on
//! an open file, released when its holder dies) or by the database server
//! (a session's advisory lock) — never by a pid written in a file.
//!
//! # Features
//!
//! - `postgres` (default): the PostgreSQL backend, with its driver, async
//!   runtime and TLS stack.
//! - `cli` (default): the `onlyone` command, as `onlyone::cli::main`, with its
//!   flag parser; the `onlyone` binary needs it.
//!
//! The file backend needs no feature. To depend on the library alone,
//! without the command's dependencies, leave the default features out and
//! name the ones you want:
//!
//! ```toml
//! [dependencies]
//! onlyone = { path = "../onlyone", default-features = false, features = ["postgres"] }
//! ```

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod backend;
#[cfg(feature = "cli")]
pub mod cli;
mod error;
pub mod escape;
pub mod exit;
#[doc(hidden)]
pub mod internals;
mod lock;
mod name;
mod record;
pub mod supervise;
mod sys;
mod timing;

pub use backend::file::{FileBackend, default_dir};
#[cfg(feature = "mysql")]
pub use backend::mysql::{MysqlBackend, MysqlConfig};
#[cfg(feature = "postgres")]
pub use backend::postgres::{PostgresBackend, PostgresConfig, STALE_TOKEN_SQLSTATE};
pub use backend::{
    Attempt, Backend, COMMAND_ENV, Guard, Held, Holder, HolderId, LossWatch, Status, Stop, Wait,
};
pub use error::{Error, ErrorKind, Result};
pub use lock::Lock;
pub use name::{LockName, MAX_SLOTS, NAME_RULE};
pub use record::{RECORD_FORMAT, Record};
pub use sys::is_reserved_signal;
pub use timing::Timing;
