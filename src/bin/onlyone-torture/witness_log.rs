//! The witnesses' shared log: one line per event, each appended with one
//! write to a file opened with O_APPEND, so lines from different processes
//! never interleave and their order is the order of the events.
//!
//! Times are CLOCK_MONOTONIC nanoseconds: on Linux that clock is
//! system-wide, so the witnesses' times and the chaos thread's are
//! comparable.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use rustix::time::{ClockId, clock_gettime};

/// Now, in CLOCK_MONOTONIC nanoseconds.
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A witness took the witness lock: it is the holder. `ppid` is its
    /// supervisor; `token` is `ONLYONE_TOKEN`, when it was given.
    Enter {
        pid: u32,
        ppid: u32,
        token: Option<u64>,
        t: u64,
    },
    /// A holder is about to exit normally.
    Exit { pid: u32, t: u64 },
    /// A witness found the witness lock held by a live process: two
    /// holders at once.
    Overlap {
        pid: u32,
        ppid: u32,
        token: Option<u64>,
        t: u64,
        holders: String,
    },
    /// A witness found the witness lock still held by a process that was
    /// already exiting (killed, its descriptors not all closed yet), and
    /// waited `waited_ns` for it. Not an overlap: a dying process runs no
    /// more code of its own.
    Late {
        pid: u32,
        holders: String,
        waited_ns: u64,
    },
}

impl Line {
    pub fn to_text(&self) -> String {
        let token = |t: &Option<u64>| t.map_or("-".to_owned(), |t| t.to_string());
        match self {
            Line::Enter {
                pid,
                ppid,
                token: tok,
                t,
            } => format!("ENTER {pid} {ppid} {} {t}\n", token(tok)),
            Line::Exit { pid, t } => format!("EXIT {pid} {t}\n"),
            Line::Overlap {
                pid,
                ppid,
                token: tok,
                t,
                holders,
            } => format!("OVERLAP {pid} {ppid} {} {t} {holders}\n", token(tok)),
            Line::Late {
                pid,
                holders,
                waited_ns,
            } => format!("LATE {pid} {waited_ns} {holders}\n"),
        }
    }

    pub fn parse(text: &str) -> Option<Line> {
        let mut fields = text.split_whitespace();
        let kind = fields.next()?;
        let mut number = || fields.next()?.parse::<u64>().ok();
        let line = match kind {
            "ENTER" => Line::Enter {
                pid: number()? as u32,
                ppid: number()? as u32,
                token: number(),
                t: number()?,
            },
            "EXIT" => Line::Exit {
                pid: number()? as u32,
                t: number()?,
            },
            "OVERLAP" => Line::Overlap {
                pid: number()? as u32,
                ppid: number()? as u32,
                token: number(),
                t: number()?,
                holders: fields.collect::<Vec<_>>().join(" "),
            },
            "LATE" => Line::Late {
                pid: number()? as u32,
                waited_ns: number()?,
                holders: fields.collect::<Vec<_>>().join(" "),
            },
            _ => return None,
        };
        Some(line)
    }
}

/// Appends `line` in one write(2).
pub fn append(log: &File, line: &Line) -> io::Result<()> {
    let text = line.to_text();
    let written = (&*log).write(text.as_bytes())?;
    if written != text.len() {
        // Never seen on a local file; a split line would be misread.
        return Err(io::Error::other("short write to the witness log"));
    }
    Ok(())
}

/// Reads a log as it grows, returning whole lines only.
pub struct LogTail {
    file: Option<File>,
    partial: Vec<u8>,
}

impl LogTail {
    pub fn new() -> LogTail {
        LogTail {
            file: None,
            partial: Vec::new(),
        }
    }

    /// The lines appended to `path` since the last call.
    pub fn read_new(&mut self, path: &Path) -> Vec<Line> {
        if self.file.is_none() {
            self.file = File::open(path).ok();
        }
        let Some(file) = &mut self.file else {
            return Vec::new();
        };
        if file.read_to_end(&mut self.partial).is_err() {
            return Vec::new();
        }
        let complete = match self.partial.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None => return Vec::new(),
        };
        let rest = self.partial.split_off(complete);
        let text = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(Line::parse)
            .collect()
    }
}

/// Every line of the log at `path`.
pub fn read_all(path: &Path) -> io::Result<Vec<Line>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(Line::parse).collect()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let lines = [
            Line::Enter {
                pid: 1,
                ppid: 2,
                token: Some(3),
                t: 4,
            },
            Line::Enter {
                pid: 1,
                ppid: 2,
                token: None,
                t: 4,
            },
            Line::Exit { pid: 5, t: 6 },
            Line::Overlap {
                pid: 7,
                ppid: 8,
                token: Some(9),
                t: 10,
                holders: "11:R".to_owned(),
            },
            Line::Late {
                pid: 12,
                holders: "13".to_owned(),
                waited_ns: 14,
            },
        ];
        for line in lines {
            assert_eq!(Line::parse(&line.to_text()), Some(line));
        }
    }

    #[test]
    fn tail_returns_whole_lines_only() {
        let dir = std::env::temp_dir().join(format!("torture-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, "EXIT 1 2\nEXIT 3").unwrap();
        let mut tail = LogTail::new();
        assert_eq!(tail.read_new(&path), vec![Line::Exit { pid: 1, t: 2 }]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b" 4\n").unwrap();
        assert_eq!(tail.read_new(&path), vec![Line::Exit { pid: 3, t: 4 }]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
