//! Reading `/proc/self/mountinfo`, and finding the mount a path is on.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use rustix::event::{PollFd, PollFlags};

use super::FsLocation;

/// The mount table, kept open for the process's life: one descriptor,
/// close-on-exec.
static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// The table's mutex, held across a fork (see `ticker.rs`).
pub(super) fn hold_for_fork() -> Box<dyn std::any::Any> {
    Box::new(TABLE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Calls `f` with the mount table of the calling thread's mount namespace;
/// `None` when it cannot be read. The table is read again only when it
/// changed: the kernel marks an open mountinfo file with POLLPRI after any
/// mount or unmount in its namespace, so that a look costs one poll(2)
/// instead of reading and parsing the table (tens of microseconds).
pub(super) fn with_table<T>(f: impl FnOnce(&[Mount]) -> T) -> Option<T> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let namespace = namespace();
    if table
        .as_ref()
        .is_none_or(|t| t.namespace != namespace || t.changed())
    {
        *table = Table::read(namespace);
    }
    Some(f(&table.as_ref()?.mounts))
}

/// The mount table as read, and the open file that tells when it changed.
struct Table {
    file: File,
    namespace: Option<u64>,
    mounts: Vec<Mount>,
}

/// Where the calling thread's mount table is (a thread may have a mount
/// namespace of its own), and, before Linux 3.17, the process's.
const PATHS: [(&str, &str); 2] = [
    ("/proc/thread-self/mountinfo", "/proc/thread-self/ns/mnt"),
    ("/proc/self/mountinfo", "/proc/self/ns/mnt"),
];

/// The calling thread's mount namespace (its inode).
fn namespace() -> Option<u64> {
    PATHS
        .iter()
        .find_map(|(_, ns)| std::fs::metadata(ns).ok())
        .map(|meta| meta.ino())
}

impl Table {
    fn read(namespace: Option<u64>) -> Option<Table> {
        let mut file = PATHS.iter().find_map(|(path, _)| File::open(path).ok())?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).ok()?;
        Some(Table {
            file,
            namespace,
            mounts: parse(&text),
        })
    }

    /// True when something was mounted or unmounted since the file was
    /// opened (or the kernel cannot tell).
    fn changed(&self) -> bool {
        let mut poll = [PollFd::new(&self.file, PollFlags::PRI)];
        let now = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        !matches!(rustix::event::poll(&mut poll, Some(&now)), Ok(0))
    }
}

/// What is needed of one line of the table.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mount {
    pub id: u32,
    pub parent: u32,
    pub device: (u32, u32),
    /// The directory of the filesystem that is mounted here.
    pub root: Vec<u8>,
    pub mount_point: Vec<u8>,
}

/// The lines of the table that parse (`ID PARENT MAJOR:MINOR ROOT
/// MOUNT-POINT ...`, the paths with octal escapes).
pub(super) fn parse(table: &[u8]) -> Vec<Mount> {
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b' ');
            Some(Mount {
                id: number(fields.next()?)?,
                parent: number(fields.next()?)?,
                device: device(fields.next()?)?,
                root: unescape(fields.next()?),
                mount_point: unescape(fields.next()?),
            })
        })
        .collect()
}

fn number(field: &[u8]) -> Option<u32> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn device(field: &[u8]) -> Option<(u32, u32)> {
    let colon = field.iter().position(|&b| b == b':')?;
    Some((number(&field[..colon])?, number(&field[colon + 1..])?))
}

/// A path as the kernel writes it in the table: space, tab, newline and
/// backslash as `\ooo` (three octal digits).
pub(super) fn unescape(field: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&first, tail)) = rest.split_first() {
        // Counted in u32: "777" is no byte (the kernel writes at most \377).
        let octal = tail
            .get(..3)
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .map(|d| d.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(byte) if first == b'\\' => {
                path.push(byte);
                rest = &tail[3..];
            }
            _ => {
                path.push(first);
                rest = tail;
            }
        }
    }
    path
}

/// The filesystem and the path inside it of `path` (absolute, without
/// symlinks, `.` or `..`), resolved as the kernel resolves it: from the
/// root mount, each component that is a mount point of the current
/// mount enters the mount there, and the last of mounts stacked on one
/// point is the one seen. (A mount hidden under a later mount of a
/// parent directory is not entered: it is not a child of that mount.)
pub(super) fn locate(mounts: &[Mount], path: &[u8]) -> Option<FsLocation> {
    let path = Path::new(OsStr::from_bytes(path));
    let mut prefix = PathBuf::from("/");
    let Some(top) = top_mount(mounts) else {
        return longest_prefix(mounts, path);
    };
    let mut current = topmost_at(mounts, top, &prefix);
    let mut rest = Vec::new();
    for component in path.components() {
        let Component::Normal(part) = component else {
            continue;
        };
        prefix.push(part);
        rest.push(part);
        let entered = topmost_at(mounts, current, &prefix);
        if entered.id != current.id {
            current = entered;
            rest.clear();
        }
    }
    let mut inside = PathBuf::from(OsStr::from_bytes(&current.root));
    inside.extend(rest);
    Some(FsLocation {
        device: current.device,
        path: inside,
    })
}

/// Where the table shows no root mount (a chroot): the mount whose mount
/// point is the longest prefix of `path`, the last listed of equals
/// (stacked mounts are listed in the order they were made).
fn longest_prefix(mounts: &[Mount], path: &Path) -> Option<FsLocation> {
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(OsStr::from_bytes(&m.mount_point)))
        .fold(None::<&Mount>, |best, m| match best {
            Some(best) if best.mount_point.len() > m.mount_point.len() => Some(best),
            _ => Some(m),
        })?;
    let rest = path
        .strip_prefix(OsStr::from_bytes(&mount.mount_point))
        .ok()?;
    let mut inside = PathBuf::from(OsStr::from_bytes(&mount.root));
    inside.extend(rest.components());
    Some(FsLocation {
        device: mount.device,
        path: inside,
    })
}

/// The mount of the root directory: mounted at `/` on a mount that is
/// not in the table (outside this mount namespace's view).
fn top_mount(mounts: &[Mount]) -> Option<&Mount> {
    let ids: HashSet<u32> = mounts.iter().map(|m| m.id).collect();
    mounts
        .iter()
        .rfind(|m| m.mount_point == b"/" && (!ids.contains(&m.parent) || m.parent == m.id))
}

/// `mount`, or what is mounted on it at `point`, and on that in turn.
fn topmost_at<'a>(mounts: &'a [Mount], mut mount: &'a Mount, point: &Path) -> &'a Mount {
    // Each step goes down the tree of mounts, so it ends; the bound
    // only guards against a table that is not a tree.
    for _ in 0..mounts.len() {
        let child = mounts.iter().rfind(|m| {
            m.parent == mount.id
                && m.id != mount.id
                && Path::new(OsStr::from_bytes(&m.mount_point)) == point
        });
        match child {
            Some(child) => mount = child,
            None => break,
        }
    }
    mount
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(table: &str, path: &str) -> (u32, u32, String) {
        let found = locate(&parse(table.as_bytes()), path.as_bytes()).unwrap();
        (
            found.device.0,
            found.device.1,
            found.path.to_str().unwrap().to_owned(),
        )
    }

    /// Read off a VM: the root mount is listed after mounts on it, and
    /// `/dev/shm` has a second tmpfs stacked on the first.
    const MACHINE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw
41 27 254:0 /tmp/t/locks /tmp/t/volume rw,relatime - ext4 /dev/vda rw
";

    /// Regression: three digits from 4 up anywhere in a mount point (a
    /// temporary directory named `.../onlyone-test-x456y`) overflowed a u8
    /// while checking for an escape, which panicked in a debug build
    /// (`bad_input::full_filesystem`, now and then).
    #[test]
    fn digits_that_are_no_byte_are_kept_as_they_are() {
        assert_eq!(
            unescape(b"/tmp/onlyone-test-x456y"),
            b"/tmp/onlyone-test-x456y"
        );
        assert_eq!(unescape(br"/a\777b"), br"/a\777b");
    }

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape(br"/mnt/my\040dir"), b"/mnt/my dir");
        assert_eq!(unescape(br"/a\011b\012c\134d"), b"/a\tb\nc\\d");
        // Not an escape: kept as it is.
        assert_eq!(unescape(br"/a\9b\04"), br"/a\9b\04");
        let table = "50 1 0:50 / / rw - tmpfs t rw\n51 50 0:51 /sub\\040dir /mnt/my\\040dir rw - tmpfs t rw\n";
        assert_eq!(
            location(table, "/mnt/my dir/locks"),
            (0, 51, "/sub dir/locks".to_owned())
        );
    }

    #[test]
    fn the_last_of_stacked_mounts_is_the_one_seen() {
        assert_eq!(
            location(MACHINE, "/dev/shm/onlyone-0"),
            (0, 27, "/onlyone-0".to_owned())
        );
        assert_eq!(location(MACHINE, "/dev/shm"), (0, 27, "/".to_owned()));
        assert_eq!(location(MACHINE, "/dev/null"), (0, 6, "/null".to_owned()));
        assert_eq!(location(MACHINE, "/"), (254, 0, "/".to_owned()));
    }

    #[test]
    fn a_directory_has_one_location_through_a_bind_mount() {
        let direct = location(MACHINE, "/tmp/t/locks");
        assert_eq!(direct, (254, 0, "/tmp/t/locks".to_owned()));
        assert_eq!(location(MACHINE, "/tmp/t/volume"), direct);
        // Not made yet, through either path.
        assert_eq!(
            location(MACHINE, "/tmp/t/volume/new"),
            location(MACHINE, "/tmp/t/locks/new")
        );
        // A name that only starts like the mount point is not under it.
        assert_eq!(
            location(MACHINE, "/tmp/t/volumes"),
            (254, 0, "/tmp/t/volumes".to_owned())
        );
    }

    #[test]
    fn the_same_path_on_two_tmpfs_is_two_locations() {
        let mine = "1 0 254:0 / / rw - ext4 /dev/vda rw\n2 1 0:40 / /dev/shm rw - tmpfs t rw\n";
        let theirs = "1 0 254:0 / / rw - ext4 /dev/vda rw\n2 1 0:41 / /dev/shm rw - tmpfs t rw\n";
        assert_ne!(
            location(mine, "/dev/shm/onlyone-0"),
            location(theirs, "/dev/shm/onlyone-0")
        );
    }

    /// `/a/b` was mounted, then `/a` over it: `/a/b` is now a directory of
    /// the later mount, and the earlier one is hidden.
    #[test]
    fn a_mount_hidden_by_a_later_mount_of_its_parent_is_not_entered() {
        let table = "\
1 0 254:0 / / rw - ext4 /dev/vda rw
2 1 0:40 / /a/b rw - tmpfs t rw
3 1 0:41 / /a rw - tmpfs t rw
";
        assert_eq!(location(table, "/a/b/x"), (0, 41, "/b/x".to_owned()));
    }

    /// In a chroot the table may show no root mount: the longest mount
    /// point that is a prefix, the last of equals.
    #[test]
    fn without_a_root_mount_the_longest_prefix_is_taken() {
        let table = "\
7 3 0:40 / /srv rw - tmpfs t rw
8 3 0:41 / /srv rw - tmpfs t rw
9 3 0:42 / /srv/locks/deep rw - tmpfs t rw
";
        assert_eq!(location(table, "/srv/locks"), (0, 41, "/locks".to_owned()));
        assert!(locate(&parse(table.as_bytes()), b"/elsewhere").is_none());
    }

    /// The table is read again as soon as something is mounted or
    /// unmounted, and for a thread in another mount namespace.
    #[test]
    fn a_mount_is_seen_at_once() {
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        let before = super::super::filesystem_location(&tmp).unwrap();
        // In a thread with a mount namespace of its own, so that the mount
        // touches nothing else.
        std::thread::spawn(move || {
            // SAFETY: unshare and mount take C strings that live across the
            // calls, and change only this thread's namespace.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    eprintln!("skipped: a mount namespace needs root");
                    return;
                }
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                let root = c"/".as_ptr();
                assert_eq!(
                    libc::mount(
                        c"none".as_ptr(),
                        root,
                        std::ptr::null(),
                        flags,
                        std::ptr::null()
                    ),
                    0
                );
            }
            let dir = tempfile::tempdir_in(&tmp).unwrap();
            let path = dir.path().canonicalize().unwrap();
            let plain = super::super::filesystem_location(&path).unwrap();
            assert_eq!(plain.device, before.device);
            let target = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
            // SAFETY: as above.
            let mounted = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(mounted, 0, "{}", std::io::Error::last_os_error());
            let on_tmpfs = super::super::filesystem_location(&path).unwrap();
            assert_ne!(on_tmpfs.device, plain.device);
            assert_eq!(on_tmpfs.path, Path::new("/"));
            // SAFETY: as above.
            assert_eq!(unsafe { libc::umount(target.as_ptr()) }, 0);
            assert_eq!(super::super::filesystem_location(&path).unwrap(), plain);
        })
        .join()
        .unwrap();
    }
}
