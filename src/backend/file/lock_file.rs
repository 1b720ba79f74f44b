//! One lock file: opening it safely, locking it, reading and writing the
//! holder's record.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::FileBackend;
use super::dir::DirRules;
use crate::error::{Error, Result};
use crate::record::{MAX_RECORD_LEN, Record};
use crate::sys;

impl FileBackend {
    /// Opens (or creates) the lock file; `None` when its directory has
    /// vanished since [`FileBackend::prepare_dir`] made it.
    pub(super) fn open(&self, path: &Path, rules: &DirRules) -> Result<Option<LockFile>> {
        let flags = OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(rules.file_mode);
        let (fd, writable) = match rustix::fs::open(path, flags | OFlags::RDWR, mode) {
            Ok(fd) => (fd, true),
            // With O_CREAT and O_NOFOLLOW, only a missing directory.
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            // A read-only file or filesystem still locks: the record just
            // cannot be written.
            Err(
                first @ (rustix::io::Errno::ACCESS
                | rustix::io::Errno::ROFS
                | rustix::io::Errno::PERM),
            ) => {
                let fd = rustix::fs::open(
                    path,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    mode,
                )
                // A file that does not exist and cannot be created: the
                // first error says why.
                .map_err(|_| open_error(path, first))?;
                (fd, false)
            }
            Err(e) => return Err(open_error(path, e)),
        };
        LockFile::checked(File::from(fd), writable, path, rules).map(Some)
    }

    /// For a holder whose lock file was deleted or replaced: a new file at
    /// `path` (`O_EXCL`, so nothing that was there is ever opened for
    /// writing), or the empty, singly linked file a starter left there
    /// after finding the lock held (nothing is in it to destroy, and no
    /// other name reaches it). `None` when the path changed meanwhile.
    pub(super) fn open_restorable(
        &self,
        path: &Path,
        rules: &DirRules,
    ) -> Result<Option<Restorable>> {
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(rules.file_mode);
        match rustix::fs::open(path, flags | OFlags::RDWR, mode) {
            Ok(fd) => {
                let lock_file = LockFile::checked(File::from(fd), true, path, rules)?;
                Ok(Some(Restorable::Writable(lock_file)))
            }
            // The directory is gone again.
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(rustix::io::Errno::EXIST) => open_if_empty(path, rules),
            Err(e) => Err(open_error(path, e)),
        }
    }
}

/// What a restoring holder found at its lock file's path.
pub(super) enum Restorable {
    /// A file made just now, or an empty one a starter left: it may be
    /// locked and written.
    Writable(LockFile),
    /// Something that must not be written to, and why.
    Occupied(String),
}

/// The file at `path` opened for writing if it is an empty regular file
/// with one link that this user may lock; else why not.
fn open_if_empty(path: &Path, rules: &DirRules) -> Result<Option<Restorable>> {
    let seen = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io("cannot stat the lock file", path, err)),
    };
    if let Some(why) = not_restorable(&seen, rules) {
        return Ok(Some(Restorable::Occupied(why)));
    }
    // O_NONBLOCK: should the path turn into a FIFO meanwhile, opening it
    // must not hang the watcher.
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => return Ok(None),
        Err(e) => {
            return Ok(Some(Restorable::Occupied(format!(
                "it cannot be opened: {e}"
            ))));
        }
    };
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot stat the lock file", path, e))?;
    if (meta.dev(), meta.ino()) != (seen.dev(), seen.ino())
        || not_restorable(&meta, rules).is_some()
    {
        return Ok(None);
    }
    Ok(Some(Restorable::Writable(LockFile {
        file,
        writable: true,
        dev: meta.dev(),
        ino: meta.ino(),
    })))
}

/// Why a restoring holder must not write into the file described by
/// `meta`; `None` when it is an empty regular file with one link that this
/// user may lock.
fn not_restorable(meta: &std::fs::Metadata, rules: &DirRules) -> Option<String> {
    let owner = meta.uid();
    if !meta.file_type().is_file() {
        Some("it is not a regular file".to_owned())
    } else if meta.nlink() > 1 {
        Some(format!("it is a hard link ({} links)", meta.nlink()))
    } else if meta.len() > 0 {
        Some(format!("it is not empty ({} bytes)", meta.len()))
    } else if owner != sys::uid() && owner != 0 && !rules.shared_group {
        Some(format!("it is owned by another user (uid {owner})"))
    } else {
        None
    }
}

/// Reads the record and the kernel's flock holders of the file at `path`,
/// without locking it.
pub(super) fn read_lock_file(path: &Path) -> (Option<Record>, Vec<u32>) {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rustix::fs::open(path, flags, Mode::empty()) else {
        return (None, Vec::new());
    };
    let file = File::from(fd);
    let Ok(meta) = file.metadata() else {
        return (None, Vec::new());
    };
    if !meta.file_type().is_file() {
        return (None, Vec::new());
    }
    let pids = sys::flock_holders(meta.dev(), meta.ino()).unwrap_or_default();
    (read_record(&file), pids)
}

/// True when the file at `path` is locked (exclusively), where the kernel
/// does not list a file's flock holders (the portable path): a shared
/// lock tried without blocking is refused. F_GETLK does not see flock(2)
/// locks on Linux, where the portable path is tested. The shared lock is
/// let go of at once; a starter that meets it and finds no holder socket
/// waits that instant and tries again (as for an exiting holder).
pub(super) fn flock_is_held(path: &Path) -> bool {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rustix::fs::open(path, flags, Mode::empty()) else {
        return false;
    };
    if !rustix::fs::fstat(&fd).is_ok_and(|stat| {
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile
    }) {
        return false;
    }
    matches!(
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockShared),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}

/// The processes blocked in flock(2) on the file at `path`, waiting for its
/// lock (as far as this system can tell).
pub(super) fn flock_waiters(path: &Path) -> Vec<u32> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => {
            sys::flock_waiters(meta.dev(), meta.ino()).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// The record on the first line of a lock file, if there is one.
pub(super) fn read_record(file: &File) -> Option<Record> {
    match read_content(file) {
        Content::Record(record) => Some(record),
        Content::Nothing | Content::Foreign(_) => None,
    }
}

/// What a lock file holds.
#[derive(Debug)]
pub(super) enum Content {
    /// Nothing but whitespace: a new file, or one that flock(1) made.
    Nothing,
    /// A holder's record, on the first line.
    Record(Record),
    /// This many bytes that are not a record: a file of someone's at the
    /// lock file's path (`--dir .` and `--name Cargo` name `Cargo.lock`),
    /// which a holder locks but never writes over.
    Foreign(u64),
}

/// Reads what `file` holds, from its current position (the start, for a
/// file just opened).
pub(super) fn read_content(file: &File) -> Content {
    read_content_sized(file).0
}

/// [`read_content`], and how many bytes the file held when it was read
/// to its end (`None` when it was not: unreadable, or longer than a
/// record may be). A record at least that long needs no truncation.
pub(super) fn read_content_sized(file: &File) -> (Content, Option<u64>) {
    // Room for a usual record and the end-of-file read after it: two
    // reads, not one per doubling of the buffer.
    let mut bytes = Vec::with_capacity(1024);
    if file
        .take(MAX_RECORD_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .is_err()
    {
        // Unreadable: nothing may be assumed about it.
        return (
            Content::Foreign(file.metadata().map_or(0, |meta| meta.len())),
            None,
        );
    }
    let whole = (bytes.len() <= MAX_RECORD_LEN).then_some(bytes.len() as u64);
    if whole.is_some() && bytes.iter().all(u8::is_ascii_whitespace) {
        return (Content::Nothing, whole);
    }
    // Only the first line counts: a longer, older record may still follow
    // for an instant while a new one is written over it.
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let content = match Record::parse(line) {
        Some(record) => Content::Record(record),
        None => Content::Foreign(
            file.metadata()
                .map_or(bytes.len() as u64, |meta| meta.len()),
        ),
    };
    (content, whole)
}

fn open_error(path: &Path, errno: rustix::io::Errno) -> Error {
    match errno {
        rustix::io::Errno::LOOP => {
            Error::unsafe_("refusing to follow a symlink where the lock file should be")
                .with_path(path)
        }
        rustix::io::Errno::ISDIR => {
            Error::unsafe_("refusing to lock something that is not a regular file").with_path(path)
        }
        e => Error::io("cannot open the lock file", path, e.into()),
    }
}

/// An open lock file and the identity of its inode.
#[derive(Debug)]
pub(super) struct LockFile {
    pub(super) file: File,
    pub(super) writable: bool,
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl LockFile {
    /// Checks a just opened lock file before anything is written to it: a
    /// regular file, with no other name (a hard link to someone's file
    /// would get the record written over its content), owned by this user
    /// or as the directory allows.
    fn checked(file: File, writable: bool, path: &Path, rules: &DirRules) -> Result<LockFile> {
        let meta = file
            .metadata()
            .map_err(|e| Error::io("cannot stat the lock file", path, e))?;
        if !meta.file_type().is_file() {
            return Err(
                Error::unsafe_("refusing to lock something that is not a regular file")
                    .with_path(path),
            );
        }
        if meta.nlink() > 1 {
            return Err(Error::unsafe_(format!(
                "refusing a lock file that is a hard link ({} links)",
                meta.nlink()
            ))
            .with_path(path));
        }
        let owner = meta.uid();
        if owner != sys::uid() && owner != 0 && !rules.shared_group {
            return Err(Error::unsafe_(format!(
                "refusing a lock file owned by another user (uid {owner})"
            ))
            .with_path(path));
        }
        Ok(LockFile {
            file,
            writable,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Gives a lock file we hold the mode its directory implies (it may
    /// have been created under a umask that stripped the group bits, or
    /// left over with other permissions). Only the holder does this: a
    /// starter that loses never touches the file.
    pub(super) fn fix_mode(&self, rules: &DirRules) {
        let Ok(meta) = self.file.metadata() else {
            return;
        };
        if self.writable && meta.uid() == sys::uid() && meta.mode() & 0o7777 != rules.file_mode {
            let _ = rustix::fs::fchmod(&self.file, Mode::from_raw_mode(rules.file_mode));
        }
    }

    /// True while the file is still empty and has one link: checked again
    /// once locked, before a restoring holder writes its record.
    pub(super) fn is_empty_and_single(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|meta| meta.len() == 0 && meta.nlink() == 1)
    }

    /// True when `path` still names this inode.
    pub(super) fn is_at(&self, path: &Path) -> bool {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => meta.dev() == self.dev && meta.ino() == self.ino,
            Err(_) => false,
        }
    }

    /// Writes `record` as the file's content, in one write. Returns false
    /// (and logs why) when it could not.
    /// `held` is how long the file was when read under this lock, if
    /// known: a record at least that long covers all of it, and the file
    /// is not truncated (a system call saved per acquisition).
    pub(super) fn write_record(&self, record: &Record, path: &Path, held: Option<u64>) -> bool {
        let line = record.to_line();
        let covers = held.is_some_and(|held| line.len() as u64 >= held);
        let written = if !self.writable {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        } else {
            self.file.write_all_at(line.as_bytes(), 0).and_then(|()| {
                if covers {
                    Ok(())
                } else {
                    self.file.set_len(line.len() as u64)
                }
            })
        };
        match written {
            Ok(()) => true,
            Err(err) => {
                // Leave no earlier holder's record behind to be mistaken
                // for ours.
                if self.writable {
                    let _ = self.file.set_len(0);
                }
                log::warn!(
                    "cannot write the holder record to {}: {err}; the lock is held all the same, others will see an unknown holder, and no fencing token is given",
                    path.display()
                );
                false
            }
        }
    }
}

/// Takes the exclusive flock: tries once, or with `block` waits in the
/// kernel without limit (a deadline is kept by the caller, which tries and
/// waits for release events: see `FileBackend::attempt`). `None` when
/// someone else holds it.
pub(super) fn lock_exclusive(
    lock_file: LockFile,
    block: bool,
    path: &Path,
) -> Result<Option<LockFile>> {
    let lock_error = |err: io::Error| Error::io("cannot lock the lock file", path, err);
    if block {
        lock_file.file.lock().map_err(lock_error)?;
        return Ok(Some(lock_file));
    }
    match lock_file.file.try_lock() {
        Ok(()) => Ok(Some(lock_file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => Err(lock_error(err)),
    }
}
