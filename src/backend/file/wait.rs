//! Waiting in the file backend without polling: for a lock to be released
//! (or its file deleted), and for a holder to restore its deleted lock
//! file. Both wait on inotify events, and neither is woken by what the
//! waiter itself does to the lock files.

use std::os::unix::fs::MetadataExt;
use std::thread;
use std::time::{Duration, Instant};

use super::FileBackend;
use super::admission::Admission;
use super::dir::socket_name;
use super::lock_file::LockFile;
use crate::name::LockName;
use crate::sys::{self, DirEvents, DirWatch};

/// The longest wait for a release without looking again: only a holder that
/// unlocks without closing its file (`flock -u`) wakes no watch.
const RELEASE_RECHECK: Duration = Duration::from_secs(1);

/// The longest wait for a holder to restore its deleted lock file without
/// looking again: the holder may exit instead (its socket closing wakes no
/// watch), or the path may name a file it does not write into.
const RESTORATION_RECHECK: Duration = Duration::from_millis(100);

/// How long a waiter sleeps between looks where there is no inotify.
const NO_WATCH_NAP: Duration = Duration::from_millis(50);

/// How long a waiter sleeps between looks where there is no inotify and
/// no holder socket to wait on: a flock held with no socket is most often
/// an exiting holder's (its socket closes first, its command may keep the
/// flock an instant longer), or a holder that is not onlyone. Each look is
/// a directory read and a shared flock tried: cheap.
const NO_SOCKET_NAP: Duration = Duration::from_millis(10);

impl FileBackend {
    /// After a round found every one of `names` held: waits until one of
    /// them may be free, at most `left`. The watch is made after that
    /// round, whose own opening and closing of the lock files must not wake
    /// it; then each name is looked at again without opening anything, so
    /// that a release before the watch existed is not missed either.
    pub(super) fn wait_for_release(&self, names: &[LockName], left: Duration) {
        let left = left.min(RELEASE_RECHECK);
        let watch = self
            .prepare_dir()
            .ok()
            .and_then(|_| DirWatch::new(&self.dir, DirEvents::Releases));
        let Some(watch) = watch else {
            // No directory events (the portable path): each holder's
            // socket hangs up on a waiter when it releases the lock.
            if !self.wait_for_hangup(names, left) {
                thread::sleep(left.min(NO_SOCKET_NAP));
            }
            return;
        };
        if names.iter().any(|name| self.seen_free(name)) {
            return;
        }
        watch.wait(left);
    }

    /// Waits up to `left` for a holder of one of `names` to hang up on a
    /// connection to its socket; false when one of them cannot be waited
    /// for so (no socket: a holder that is not onlyone, or a system that
    /// has other events).
    fn wait_for_hangup(&self, names: &[LockName], left: Duration) -> bool {
        let Ok(identity) = self.identity() else {
            return false;
        };
        let addresses: Vec<Vec<u8>> = names
            .iter()
            .map(|name| socket_name(&identity, name))
            .collect();
        sys::wait_for_hangup(&addresses, left)
    }

    /// True when `name` is seen free without opening its file, which would
    /// wake a watch; false when held, or when this system cannot tell. A
    /// missing file is free unless the holder socket is taken (its holder
    /// cannot restore it, say).
    fn seen_free(&self, name: &LockName) -> bool {
        if let Ok(meta) = std::fs::symlink_metadata(self.path(name)) {
            match sys::flock_holders(meta.dev(), meta.ino()) {
                Some(pids) if pids.is_empty() => {}
                _ => return false,
            }
        }
        let (Ok(rules), Ok(identity)) = (self.rules_now(), self.identity()) else {
            return false;
        };
        let admission = Admission::new(rules, self.private, &identity);
        admission
            .socket_holder(&socket_name(&identity, name))
            .is_none()
    }

    /// The flock on `lock_file` was free but the holder socket is bound:
    /// the lock file was deleted while held, and its holder restores it
    /// (into this very file once we let go of it, or into a new one). Lets
    /// go of it and waits for the holder's write, until `deadline` at the
    /// latest; false once the deadline has passed.
    pub(super) fn wait_for_restoration(
        &self,
        lock_file: LockFile,
        deadline: Option<Instant>,
    ) -> bool {
        let left = deadline.map_or(RESTORATION_RECHECK, |at| {
            at.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return false;
        }
        // Made before letting go, so that a restoration right after is not
        // missed; closing the file is not an event this watch wakes on.
        let watch = DirWatch::new(&self.dir, DirEvents::Writes);
        drop(lock_file);
        log::debug!(
            "the lock file in {} was deleted while held; waiting for its holder to restore it",
            self.dir.display()
        );
        let pause = left.min(RESTORATION_RECHECK);
        match watch {
            Some(watch) => watch.wait(pause),
            None => thread::sleep(pause.min(NO_WATCH_NAP)),
        }
        true
    }
}
