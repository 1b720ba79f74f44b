//! The only place that knows which operating system it runs on. Everything
//! else calls these functions, which mean the same on every platform.
//!
//! Linux gets `linux.rs` (abstract sockets, /proc, parent-death signals,
//! inotify); every other Unix gets `portable.rs`, and so does Linux when
//! built with `RUSTFLAGS='--cfg onlyone_portable'`, which is how the
//! portable path is tested on this project's Linux machines.

#[cfg(not(unix))]
compile_error!("onlyone supports Unix-like systems only");

mod unix;
pub use unix::*;

#[cfg(all(target_os = "linux", not(onlyone_portable)))]
mod linux;
#[cfg(all(target_os = "linux", not(onlyone_portable)))]
pub use linux::*;

#[cfg(any(not(target_os = "linux"), onlyone_portable))]
mod portable;
#[cfg(any(not(target_os = "linux"), onlyone_portable))]
pub use portable::*;

// What the kernel tells about a process and a socket's peer, in each
// system's own way; both Linux builds use the Linux one.
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "linux")]
mod procfs;

/// What the test tools (`internals`) read of other processes: /proc on both
/// Linux builds, since the tests and the torture binary run on Linux even
/// when the library takes the portable path, which does not read it.
pub mod observe {
    #[cfg(target_os = "linux")]
    pub use super::procfs::{children_of, flock_holders, process_command, process_name};
    #[cfg(not(target_os = "linux"))]
    pub use super::{children_of, flock_holders, process_command, process_name};
}
