//! The lock directory: creating it, and the rules it must follow.

use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::FileBackend;
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::sys;

impl FileBackend {
    /// Creates the directory if needed and checks that it is safe to use.
    pub(super) fn prepare_dir(&self) -> Result<DirRules> {
        // Looked at first, made only when missing: a mkdir that fails with
        // EEXIST costs a system call at every acquisition.
        if let Ok(meta) = std::fs::symlink_metadata(&self.dir) {
            return check_dir(&self.dir, &meta, self.private);
        }
        loop {
            if let Err(err) = std::fs::DirBuilder::new().mode(0o700).create(&self.dir)
                && err.kind() != io::ErrorKind::AlreadyExists
            {
                return Err(Error::io(
                    "cannot create the lock directory",
                    &self.dir,
                    err,
                ));
            }
            match std::fs::symlink_metadata(&self.dir) {
                Ok(meta) => return check_dir(&self.dir, &meta, self.private),
                // Deleted again right after it was made or found (a cleanup
                // script): make it again.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(Error::io("cannot read the lock directory", &self.dir, err));
                }
            }
        }
    }

    /// The directory's identity (see [`DirIdentity`]). Worked out once per
    /// process for a directory that exists, and again whenever its path
    /// names another directory (see [`IDENTITIES`]).
    pub(super) fn identity(&self) -> Result<DirIdentity> {
        crate::backend::ticker::install_fork_hooks();
        let unresolved = |err| Error::io("cannot resolve the lock directory", &self.dir, err);
        // The canonical path as well as the inode: a parent renamed while
        // the path is kept (`mv a b && ln -s b a`) keeps the inode but moves the
        // directory inside its filesystem, and every other process names
        // the sockets after where it is now.
        let canonical = canonical_path(&self.dir).map_err(unresolved)?;
        let inode = std::fs::symlink_metadata(&self.dir)
            .ok()
            .filter(std::fs::Metadata::is_dir)
            .map(|meta| (meta.dev(), meta.ino(), meta.created().ok()));
        let mut known = IDENTITIES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(inode) = inode
            && let Some((.., identity)) = known
                .iter()
                .find(|(dir, real, at, _)| *at == inode && *dir == self.dir && *real == canonical)
        {
            return Ok(identity.clone());
        }
        drop(known);
        let identity = DirIdentity::of(&self.dir).map_err(unresolved)?;
        if let Some(inode) = inode {
            known = IDENTITIES.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|(dir, ..)| *dir != self.dir);
            if known.len() >= KNOWN_IDENTITIES {
                known.remove(0);
            }
            known.push((self.dir.clone(), canonical, inode, identity.clone()));
        }
        Ok(identity)
    }

    /// [`FileBackend::prepare_dir`] alone, for the benchmark to time it.
    pub(crate) fn ensure_dir(&self) -> Result<()> {
        self.prepare_dir().map(drop)
    }

    /// The holder socket's name for `name` in this directory.
    pub(crate) fn socket_name(&self, name: &LockName) -> Result<Vec<u8>> {
        Ok(socket_name(&self.identity()?, name))
    }

    /// The directory's rules as it is now; `None` when it does not exist.
    pub(super) fn rules_now(&self) -> Result<Option<DirRules>> {
        match std::fs::symlink_metadata(&self.dir) {
            Ok(meta) => check_dir(&self.dir, &meta, self.private).map(Some),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::io("cannot read the lock directory", &self.dir, err)),
        }
    }
}

/// The identities worked out in this process: a directory path, its
/// canonical path and the directory it named then (device, inode, birth
/// time), and that directory's identity.
/// The identity is a fact of the directory itself (its filesystem and its
/// path inside it), so it holds while the path resolves to the same place
/// and names the same directory: the path resolved and one lstat(2)
/// instead of also looking the mount up at every acquisition. A directory
/// replaced (deleted and made again, a symlink or a mount put in its place
/// or above it) is another inode, or no directory; a parent renamed while
/// the path is kept (`mv /a /b && ln -s b /a`) gives another canonical
/// path: either is worked out again. A holder keeps the socket named at its
/// acquisition through a rename.
static IDENTITIES: Mutex<Vec<KnownIdentity>> = Mutex::new(Vec::new());

/// The identities' mutex, held across a fork (see `backend/ticker.rs`).
pub(crate) fn hold_for_fork() -> Box<dyn std::any::Any> {
    Box::new(IDENTITIES.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A directory path, its canonical path, the directory it named (device,
/// inode, and its birth time where the filesystem keeps one, so that an
/// inode number used again for a new directory is not taken for the old
/// one), and its identity.
type KnownIdentity = (
    PathBuf,
    PathBuf,
    (u64, u64, Option<std::time::SystemTime>),
    DirIdentity,
);

/// How many directories' identities a process keeps.
const KNOWN_IDENTITIES: usize = 16;

/// The one identity of a lock directory, which names its holder sockets.
/// Every process computes the same for one directory, whatever the path it
/// is reached by (a trailing slash, a relative path, a symlinked parent,
/// `..`, a bind mount) and whether or not it exists yet; and two
/// directories that share a path in different mount namespaces (each
/// container's own `/dev/shm`) get two. On Linux it is the filesystem the
/// directory is on and its path inside it; elsewhere its canonical path.
#[derive(Clone, Debug)]
pub(super) struct DirIdentity {
    /// What the holder sockets are named after.
    key: Vec<u8>,
    /// The filesystem (major, minor), when known.
    pub(super) device: Option<(u32, u32)>,
    /// The directory as given, where a holder socket that is a file lives
    /// (not part of the identity: any path to the directory reaches it).
    dir: PathBuf,
}

impl PartialEq for DirIdentity {
    fn eq(&self, other: &DirIdentity) -> bool {
        (&self.key, self.device) == (&other.key, other.device)
    }
}

impl Eq for DirIdentity {}

impl DirIdentity {
    pub(super) fn of(dir: &Path) -> io::Result<DirIdentity> {
        let canonical = canonical_path(dir)?;
        Ok(match sys::filesystem_location(&canonical) {
            Some(location) => {
                let (major, minor) = location.device;
                // The path inside the filesystem starts with '/', which no
                // device number holds: the key is unambiguous.
                let mut key = format!("{major}:{minor}").into_bytes();
                key.extend_from_slice(location.path.as_os_str().as_bytes());
                DirIdentity {
                    key,
                    device: Some(location.device),
                    dir: dir.to_owned(),
                }
            }
            None => DirIdentity {
                key: canonical.into_os_string().into_vec(),
                device: None,
                dir: dir.to_owned(),
            },
        })
    }
}

/// The one canonical path of a lock directory, the same whatever the
/// spelling and whether or not the directory exists yet: the path made
/// absolute against the working directory, the symlinks of its deepest
/// existing ancestor resolved, and the rest (not made yet) appended with
/// `.` and `..` applied lexically. A fallback to the raw spelling when the
/// directory is missing gave two processes two identities right after a
/// cleanup script removed it.
pub(super) fn canonical_path(dir: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(dir)?;
    let components: Vec<Component<'_>> = absolute.components().collect();
    for existing in (1..=components.len()).rev() {
        let ancestor: PathBuf = components[..existing].iter().collect();
        let mut identity = match ancestor.canonicalize() {
            Ok(real) => real,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for component in &components[existing..] {
            match component {
                Component::ParentDir => {
                    identity.pop();
                }
                Component::Normal(part) => identity.push(part),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        return Ok(identity);
    }
    // Not even the root exists: nothing can be locked there.
    Err(io::ErrorKind::NotFound.into())
}

/// The abstract holder socket that stands for lock `name` in the directory
/// `identity`: `onlyone/v1/H` for a plain lock, `onlyone/v1/H/N` for slot
/// N of a pool, where H is the hash of the directory and the (base) name.
/// So the slots of a pool share a prefix ([`slot_prefix`]), and a plain
/// lock can find them when their files are gone.
/// Where the socket is, the system decides ([`sys::holder_socket_address`]):
/// the abstract name itself on Linux, a file in the directory elsewhere.
pub(super) fn socket_name(identity: &DirIdentity, name: &LockName) -> Vec<u8> {
    let socket = match name.slot_number() {
        Some(slot) => format!("onlyone/v1/{}/{slot}", name_hash(identity, name.base())),
        None => format!("onlyone/v1/{}", name_hash(identity, name.as_str())),
    };
    sys::holder_socket_address(&identity.dir, socket.as_bytes())
}

/// What the holder sockets of every slot of the pool `base` start with.
pub(super) fn slot_prefix(identity: &DirIdentity, base: &str) -> Vec<u8> {
    let prefix = format!("onlyone/v1/{}/", name_hash(identity, base));
    sys::holder_socket_address(&identity.dir, prefix.as_bytes())
}

/// 16 bytes of SHA-256 over the directory's identity, a NUL and `name`, in
/// hex.
fn name_hash(identity: &DirIdentity, name: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(&identity.key);
    hasher.update([0]);
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What the directory's ownership and mode allow.
#[derive(Clone, Copy, Debug)]
pub(super) struct DirRules {
    /// The directory is shared by a group: lock files are group-writable and
    /// may belong to other members.
    pub(super) shared_group: bool,
    pub(super) file_mode: u32,
    /// The directory's owner, group and mode, which say who else may hold
    /// locks in it.
    pub(super) owner: u32,
    pub(super) group: u32,
    pub(super) mode: u32,
}

pub(super) fn check_dir(dir: &Path, meta: &std::fs::Metadata, private: bool) -> Result<DirRules> {
    if meta.file_type().is_symlink() {
        return Err(Error::unsafe_("refusing a lock directory that is a symlink").with_path(dir));
    }
    if !meta.is_dir() {
        return Err(Error::unavailable("the lock directory is not a directory").with_path(dir));
    }
    if let Some(filesystem) = sys::network_filesystem(dir) {
        return Err(Error::on_network_filesystem(filesystem, dir));
    }
    let me = sys::uid();
    let mode = meta.mode() & 0o7777;
    if private {
        if meta.uid() != me {
            return Err(Error::unsafe_(format!(
                "refusing the default lock directory: it is owned by uid {}, not by you (uid {me})",
                meta.uid()
            ))
            .with_path(dir));
        }
        if mode & 0o077 != 0 {
            return Err(Error::unsafe_(format!(
                "refusing the default lock directory: its mode is {mode:04o}, it must be 0700"
            ))
            .with_path(dir));
        }
        return Ok(DirRules {
            shared_group: false,
            file_mode: 0o600,
            owner: meta.uid(),
            group: meta.gid(),
            mode,
        });
    }
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(Error::unsafe_(format!(
            "refusing a lock directory that anyone may write to without the sticky bit (mode {mode:04o})"
        ))
        .with_path(dir));
    }
    let shared_group = mode & 0o020 != 0 && sys::in_group(meta.gid());
    if meta.uid() != me && meta.uid() != 0 && !shared_group {
        return Err(Error::unsafe_(format!(
            "refusing a lock directory owned by another user (uid {}); a directory shared by a group must be group-writable and its group yours",
            meta.uid()
        ))
        .with_path(dir));
    }
    Ok(DirRules {
        shared_group,
        file_mode: if shared_group { 0o660 } else { 0o600 },
        owner: meta.uid(),
        group: meta.gid(),
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_missing_directory_has_one_identity() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        let expected = real.join("locks");
        for spelling in [
            real.join("locks"),
            real.join("locks/"),
            real.join("./locks/."),
            real.join("sub/../locks"),
            real.join("link/locks"),
            real.join("link/sub/../locks/"),
            real.join("missing/../locks"),
        ] {
            assert_eq!(canonical_path(&spelling).unwrap(), expected, "{spelling:?}");
            assert_eq!(
                DirIdentity::of(&spelling).unwrap(),
                DirIdentity::of(&expected).unwrap(),
                "{spelling:?}"
            );
        }
        let before = DirIdentity::of(&expected).unwrap();
        std::fs::create_dir(&expected).unwrap();
        assert_eq!(canonical_path(&real.join("link/locks/")).unwrap(), expected);
        assert_eq!(DirIdentity::of(&real.join("link/locks/")).unwrap(), before);
    }

    /// The identity is kept per directory, not per path: a path that
    /// names another directory now gets that directory's identity.
    #[test]
    fn a_kept_identity_follows_the_directory_its_path_names() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().canonicalize().unwrap();
        for parent in ["one", "two"] {
            std::fs::create_dir_all(real.join(parent).join("locks")).unwrap();
        }
        std::os::unix::fs::symlink(real.join("one"), real.join("link")).unwrap();
        let files = FileBackend::new(real.join("link/locks"));
        let first = files.identity().unwrap();
        assert_eq!(first, DirIdentity::of(&real.join("one/locks")).unwrap());
        assert_eq!(files.identity().unwrap(), first);

        // The parent's symlink now leads to another directory.
        std::fs::remove_file(real.join("link")).unwrap();
        std::os::unix::fs::symlink(real.join("two"), real.join("link")).unwrap();
        let second = files.identity().unwrap();
        assert_eq!(second, DirIdentity::of(&real.join("two/locks")).unwrap());
        assert_ne!(second, first);

        // Deleted and made again at the same path: worked out again.
        std::fs::remove_dir(real.join("two/locks")).unwrap();
        std::fs::create_dir(real.join("two/locks")).unwrap();
        assert_eq!(
            files.identity().unwrap(),
            DirIdentity::of(&real.join("two/locks")).unwrap()
        );
    }

    #[test]
    fn a_relative_directory_is_resolved_against_the_working_directory() {
        let relative = canonical_path(Path::new("no-such-dir/x")).unwrap();
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(relative, cwd.join("no-such-dir/x"));
    }
}
