//! onlyone's integration tests: one binary, real processes, real signals,
//! real files, and a real PostgreSQL server.

mod util;

mod library;
mod regression;
mod run;
mod status;
mod torture;
