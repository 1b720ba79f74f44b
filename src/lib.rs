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
//! Whether a lock is held is decided only by the kernel (a flock(2) lock on
//! an open file, released when its holder dies) or by the database server
//! (a session's advisory lock) — never by a pid written in a file.

#![deny(missing_docs)]

mod backend;
mod error;
mod lock;
mod name;
mod record;
pub mod supervise;
mod sys;

pub use backend::file::{FileBackend, default_dir};
#[cfg(feature = "postgres")]
pub use backend::postgres::{PostgresBackend, PostgresConfig};
pub use backend::{Attempt, Backend, Guard, Held, Holder, LossWatch, Status};
pub use error::{Error, ErrorKind, Result};
pub use lock::Lock;
pub use name::{LockName, NAME_RULE};
pub use record::{RECORD_FORMAT, Record};
