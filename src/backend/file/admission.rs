//! Who may hold a lock in a directory: the test that the owner of a holder
//! socket must pass to count as the holder.
//!
//! The socket's abstract name can be computed by anyone, and an abstract
//! socket has no owner or mode: any local user can bind it. A socket bound
//! by someone who cannot hold locks in the directory is no holder. Ignoring
//! it never lets two holders run at once: the lock is the flock, which
//! still excludes; the socket only guards the moments when a holder's lock
//! file is missing (see docs/DESIGN.md).

use super::dir::{DirIdentity, DirRules};
use crate::sys::{self, HolderSocket, SocketPeer, SocketProbe};

/// Whose holder socket counts, in one lock directory.
#[derive(Clone, Copy, Debug)]
pub(super) struct Admission {
    /// The directory as it is; `None` when it does not exist (deleted).
    rules: Option<DirRules>,
    /// The per-user default directory, whose rules cannot change while it
    /// is usable (its owner is this user, its mode 0700).
    private: bool,
    me: u32,
    device: Option<(u32, u32)>,
}

impl Admission {
    pub(super) fn new(rules: Option<DirRules>, private: bool, identity: &DirIdentity) -> Admission {
        Admission {
            rules,
            private,
            me: sys::uid(),
            device: identity.device,
        }
    }

    /// True when the socket's owner `peer` may hold locks here, so that its
    /// socket stands for a holder: root; the directory's owner; a member of
    /// its group if the group may write to it; anyone if others may. Also,
    /// outside the default directory, whose rules can change, a process
    /// that holds a file lock on the directory's filesystem: a holder
    /// admitted before the directory was made again or its mode or owner
    /// changed under it, whose own lock file is gone. What the kernel does
    /// not tell is taken to count, as does anyone while a directory other
    /// than the default one is missing (its rules are unknown).
    pub(super) fn admits(&self, peer: &SocketPeer) -> bool {
        let Some(uid) = peer.uid else {
            return true;
        };
        if uid == 0 {
            return true;
        }
        let Some(rules) = self.rules else {
            return !self.private || uid == self.me;
        };
        uid == rules.owner
            || rules.mode & 0o002 != 0
            || (rules.mode & 0o020 != 0 && in_group(peer, rules.group))
            || (!self.private && self.holds_a_lock_here(peer))
    }

    /// The owner of the holder socket `socket_name`, when it is bound by
    /// someone admitted as a holder.
    pub(super) fn socket_holder(&self, socket_name: &[u8]) -> Option<SocketPeer> {
        match HolderSocket::probe(socket_name) {
            Ok(SocketProbe::Held(peer)) if self.admits(&peer) => Some(peer),
            _ => None,
        }
    }

    fn holds_a_lock_here(&self, peer: &SocketPeer) -> bool {
        match (peer.pid, self.device) {
            (Some(pid), Some(device)) => sys::holds_flock_on(pid, device),
            _ => false,
        }
    }
}

/// True when the socket's owner is a member of `group`: its group when it
/// bound the socket, or one of its supplementary groups now.
fn in_group(peer: &SocketPeer, group: u32) -> bool {
    peer.gid == Some(group)
        || peer
            .pid
            .and_then(sys::supplementary_groups)
            .is_some_and(|groups| groups.contains(&group))
}
