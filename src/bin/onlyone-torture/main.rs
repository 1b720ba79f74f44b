//! `onlyone-torture`: many contenders fight over one lock while a chaos
//! thread kills holders and supervisors, stops holders, and deletes the lock
//! file and its directory. Each holder's command is a witness (this program
//! in a hidden mode) that takes a second, independent lock: if a witness
//! ever finds it taken by a live process, two holders overlapped.
//!
//! ```text
//! onlyone-torture [--contenders 32] [--seconds S] [--acquisitions K] [--seed N]
//!                 [--onlyone PATH] [--work DIR] [--summary FILE] [--postgres URL]
//! ```
//!
//! Linux only: it signals processes through pidfds (pids are reused within a
//! long run) and reads /proc.

#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "linux")]
mod analysis;
#[cfg(target_os = "linux")]
mod chaos;
#[cfg(target_os = "linux")]
mod contenders;
#[cfg(target_os = "linux")]
mod fenced;
#[cfg(target_os = "linux")]
mod procs;
#[cfg(target_os = "linux")]
mod rng;
#[cfg(target_os = "linux")]
mod stop;
#[cfg(target_os = "linux")]
mod summary;
#[cfg(target_os = "linux")]
mod torture;
#[cfg(target_os = "linux")]
mod witness;
#[cfg(target_os = "linux")]
mod witness_log;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    use clap::Parser;

    let cli = torture::Cli::parse();
    match cli.witness {
        Some(torture::Hidden::Witness(args)) => witness::run(&args),
        Some(torture::Hidden::Escapee(args)) => fenced::run_escapee(&args),
        None => torture::run(&cli.run),
    }
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("onlyone-torture runs on Linux only (it needs pidfds and /proc)");
    std::process::ExitCode::from(2)
}
