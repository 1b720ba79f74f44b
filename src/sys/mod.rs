//! The only place that knows which operating system it runs on. Everything
//! else calls these functions, which mean the same on every platform.

#[cfg(not(unix))]
compile_error!("onlyone supports Unix-like systems only");

mod unix;
pub use unix::*;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(all(unix, not(target_os = "linux")))]
mod other;
#[cfg(all(unix, not(target_os = "linux")))]
pub use other::*;
