//! Test infrastructure: throwaway PostgreSQL clusters and a TCP proxy that injects network faults.
pub mod pg_cluster;
pub mod pooler;
pub mod proxy;
