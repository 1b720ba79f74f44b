//! Test infrastructure: throwaway PostgreSQL clusters (plain or TLS, with
//! certificates made at test time), a TCP proxy that injects network
//! faults, and a pseudo-terminal.
// Without the `postgres` feature only the CLI tests start clusters, and
// none with TLS or behind a pooler.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub mod pg_cluster;
#[cfg(feature = "postgres")]
pub mod pooler;
pub mod proxy;
pub mod pty;
#[cfg(feature = "postgres")]
pub mod tls_certs;
