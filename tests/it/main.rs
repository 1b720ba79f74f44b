//! onlyone's integration tests: one binary, real processes, real signals,
//! real files, and a real PostgreSQL server.

#![deny(clippy::undocumented_unsafe_blocks)]

mod harness;
#[macro_use]
mod util;

mod attack_fence;
mod attack_file;
mod attack_handoff;
mod attack_mysql;
mod attack_mysql_fence;
mod attack_perf;
mod attack_pg;
mod attack_portable;
mod attack_run;
mod attack_shared;
mod attack_speed;
mod attack_structure;
mod bad_input;
mod command_env;
mod file_safety;
mod job_control;
mod library;
mod man;
mod messages;
mod model;
mod mysql_fence;
mod mysql_run;
mod mysql_tls;
mod operate;
mod output;
mod pools;
mod postgres_fence;
mod postgres_handoff;
mod postgres_lib;
mod postgres_run;
mod postgres_safety;
mod postgres_shared;
mod postgres_tls;
mod properties;
mod regression;
mod replace_race;
mod run;
mod status;
mod torture;
mod untrusted_text;
