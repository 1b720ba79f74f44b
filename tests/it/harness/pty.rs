//! A pseudo-terminal for tests of interactive behaviour: a program (an
//! interactive shell with job control) runs as a session leader with the
//! pty's slave side as its controlling terminal; the test types on the
//! master side and waits for what appears there, with a deadline.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

use crate::util::EVENT_TIMEOUT;

/// A program running on a pseudo-terminal.
pub struct Pty {
    master: File,
    output: mpsc::Receiver<Vec<u8>>,
    /// What arrived and has not been matched yet.
    unread: String,
    /// Everything that arrived, for failure messages.
    transcript: String,
    child: Child,
}

impl Pty {
    /// Starts `command` on a new pseudo-terminal: in a session of its own,
    /// with the terminal as its controlling terminal and standard input,
    /// output and error.
    pub fn spawn(command: &mut Command) -> Pty {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)
            .expect("open a pseudo-terminal");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let slave: OwnedFd = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal's slave side");
        // Wide enough that no echoed command line wraps.
        let size = rustix::termios::Winsize {
            ws_row: 50,
            ws_col: 400,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&slave, size).expect("set the window size");
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the slave"));
        command
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing is
        // allocated between fork and exec.
        unsafe {
            command.pre_exec(|| {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                Ok(())
            });
        }
        let child = command.spawn().expect("start the program on the terminal");
        drop(slave);
        let master = File::from(master);
        let mut reader = master.try_clone().expect("dup the master");
        let (sender, output) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every process has closed the slave side.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || sender.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Pty {
            master,
            output,
            unread: String::new(),
            transcript: String::new(),
            child,
        }
    }

    /// The program's process id (its session and process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types `bytes` on the terminal (`b"\x1a"` is Ctrl-Z, `b"\x03"`
    /// Ctrl-C).
    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the terminal");
    }

    /// Types `line` and Enter.
    pub fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes());
    }

    /// Waits until `needle` appears on the terminal, and returns what came
    /// before it; what follows is left for the next wait.
    pub fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(at) = self.unread.find(needle) {
                let before = self.unread[..at].to_owned();
                self.unread.drain(..at + needle.len());
                return before;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    self.unread.push_str(&text);
                    self.transcript.push_str(&text);
                }
                Err(err) => panic!(
                    "{needle:?} did not appear on the terminal ({err}); it shows:\n{}",
                    self.transcript
                ),
            }
        }
    }

    /// The terminal's foreground process group, as the kernel sees it.
    pub fn foreground_group(&self) -> u32 {
        let pgid = rustix::termios::tcgetpgrp(self.master.as_fd()).expect("tcgetpgrp");
        pgid.as_raw_nonzero().get() as u32
    }
}

impl Drop for Pty {
    /// Kills every process of the terminal's session (the shell, its jobs
    /// and what they started), so that a failed test leaves nothing behind.
    fn drop(&mut self) {
        for pid in session_members(self.child.id()) {
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes of session `sid` (field 6 of `/proc/PID/stat`).
fn session_members(sid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| onlyone::internals::stat_field(pid, 6) == Some(sid.to_string()))
        .collect()
}
