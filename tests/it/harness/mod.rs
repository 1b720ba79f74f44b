//! Test infrastructure: throwaway PostgreSQL clusters (plain or TLS, with
//! certificates made at test time), throwaway MariaDB servers with TLS, a TCP proxy that injects network
//! faults, and a pseudo-terminal.
// Without the `postgres` feature only the CLI tests start clusters, and
// none with TLS or behind a pooler.
#[cfg(feature = "mysql")]
pub mod mariadb_server;
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub mod pg_cluster;
#[cfg(feature = "postgres")]
pub mod pooler;
pub mod proxy;
pub mod pty;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod tls_certs;
