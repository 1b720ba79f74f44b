//! onlyone's integration tests: one binary, real processes, real signals,
//! real files, and a real PostgreSQL server.

mod harness;
mod util;

mod bad_input;
mod library;
mod model;
mod operate;
mod postgres_lib;
mod postgres_run;
mod properties;
mod regression;
mod run;
mod status;
