//! `LossWatch`: how a held lock tells everyone who watches it that it is
//! gone, once, with the reason.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Fires once when a held lock is lost, with the reason.
#[derive(Clone, Default)]
pub struct LossWatch(Arc<(Mutex<LossState>, Condvar)>);

type LossCallback = Box<dyn FnOnce(String) + Send>;

/// Callbacks of a loss or a stop request, to run later (by a shared
/// PostgreSQL session's thread, which keeps other locks).
#[cfg(feature = "postgres")]
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;

/// Something that happens once (the loss, a stop request), with the
/// callbacks waiting for it.
#[derive(Default)]
struct Once {
    value: Option<String>,
    callbacks: Vec<LossCallback>,
}

impl Once {
    /// Records `value` if nothing was yet; the callbacks to run with it.
    fn set(&mut self, value: String) -> Option<(String, Vec<LossCallback>)> {
        if self.value.is_some() {
            return None;
        }
        self.value = Some(value.clone());
        Some((value, std::mem::take(&mut self.callbacks)))
    }

    /// Keeps `callback` for later, or gives it back with the value to run
    /// it with now.
    fn subscribe(&mut self, callback: LossCallback) -> Option<(String, LossCallback)> {
        match self.value.clone() {
            Some(value) => Some((value, callback)),
            None => {
                self.callbacks.push(callback);
                None
            }
        }
    }
}

#[derive(Default)]
struct LossState {
    loss: Once,
    /// For a lock known held only through periodic checks (a database
    /// session), not by the kernel: how long a check that found it held
    /// vouches for it.
    checks_vouch_for: Option<Duration>,
    /// When the last check that found the lock held was sent.
    last_proof: Option<Instant>,
    /// Who asked the holder to stop, once someone did.
    stop_request: Once,
}

impl fmt::Debug for LossWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LossWatch").field(&self.reason()).finish()
    }
}

impl LossWatch {
    /// A watch that has not fired.
    pub fn new() -> LossWatch {
        LossWatch::default()
    }

    /// A watch for a lock that is known held only through periodic checks
    /// (a database session), each of which vouches for the lock for
    /// `deadline` from when it was sent; report each success with
    /// [`LossWatch::proven`].
    pub fn proven_by_checks(deadline: Duration) -> LossWatch {
        let watch = LossWatch::default();
        watch.state().checks_vouch_for = Some(deadline);
        watch
    }

    /// Records that a check sent at `sent` found the lock held.
    pub fn proven(&self, sent: Instant) {
        let mut state = self.state();
        if state.last_proof.is_none_or(|last| last < sent) {
            state.last_proof = Some(sent);
        }
        drop(state);
        self.0.1.notify_all();
    }

    /// Waits until the lock is known to be held now, or is lost (then the
    /// reason). A lock the kernel holds is known held at once. One held
    /// through checks is while the last successful check is younger than
    /// its deadline: then whoever watches the checks stops what the lock
    /// protects in time. Past that (this process was paused: a stopped
    /// job, a suspended machine, and its checks with it), a check sent
    /// from now on must succeed first.
    pub fn wait_held(&self) -> Option<String> {
        let mut state = self.state();
        loop {
            if state.loss.value.is_some() {
                return state.loss.value.clone();
            }
            // A kernel lock needs no check.
            let vouch = state.checks_vouch_for?;
            let fresh = state
                .last_proof
                .and_then(|proof| proof.checked_add(vouch))
                .is_some_and(|until| Instant::now() < until);
            if fresh {
                return None;
            }
            state = self.0.1.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// When the last check that found the lock held stops vouching for
    /// it, for a lock held through checks (`None` for a kernel lock, and
    /// before the first check). Whoever runs what the lock protects can
    /// hold the checker to it: a checker stuck (a heartbeat thread blocked
    /// writing to a full stderr) declares no loss, and its session is
    /// ended by the server all the same.
    pub(crate) fn proof_expires(&self) -> Option<Instant> {
        let state = self.state();
        state.last_proof?.checked_add(state.checks_vouch_for?)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LossState> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the lock is lost, wakes every waiter and runs every
    /// callback. Only the first reason is kept.
    pub fn fire(&self, reason: impl Into<String>) {
        let fired = self.state().loss.set(reason.into());
        self.run(fired);
    }

    /// Records that the lock is lost and wakes every waiter, as
    /// [`LossWatch::fire`] does, but leaves the callbacks to the caller
    /// (`None`: there are none): for a thread that must not run them
    /// itself (a shared session's, which keeps other locks).
    #[cfg(feature = "postgres")]
    pub(crate) fn fire_deferred(&self, reason: String) -> Option<Deferred> {
        let fired = self.state().loss.set(reason);
        self.deferred(fired)
    }

    /// [`LossWatch::request_stop`], the callbacks left to the caller.
    #[cfg(feature = "postgres")]
    pub(crate) fn request_stop_deferred(&self, from: String) -> Option<Deferred> {
        let fired = self.state().stop_request.set(from);
        self.deferred(fired)
    }

    #[cfg(feature = "postgres")]
    fn deferred(&self, fired: Option<(String, Vec<LossCallback>)>) -> Option<Deferred> {
        let (value, callbacks) = fired?;
        self.0.1.notify_all();
        if callbacks.is_empty() {
            return None;
        }
        Some(Box::new(move || {
            for callback in callbacks {
                callback(value.clone());
            }
        }))
    }

    /// Wakes every waiter and runs `callbacks` with `value`, outside the
    /// lock.
    fn run(&self, fired: Option<(String, Vec<LossCallback>)>) {
        if let Some((value, callbacks)) = fired {
            self.0.1.notify_all();
            for callback in callbacks {
                callback(value.clone());
            }
        }
    }

    /// Why the lock was lost, if it was.
    pub fn reason(&self) -> Option<String> {
        self.state().loss.value.clone()
    }

    /// Calls `callback` with the reason once the lock is lost (at once, if
    /// it already is).
    pub fn on_loss(&self, callback: impl FnOnce(String) + Send + 'static) {
        let now = self.state().loss.subscribe(Box::new(callback));
        if let Some((reason, callback)) = now {
            callback(reason);
        }
    }

    /// Records that someone asked the holder to stop (`from`: who, as
    /// `HOST:PID`): not a loss, the lock is still held. A backend that can
    /// be asked (PostgreSQL: `onlyone stop` and `--replace` write a request
    /// naming the holder's token) reports it here; the holder should stop
    /// its work and release the lock (drop the guard) within the
    /// stopper's bound, else its session is ended (a loss, and its
    /// successor waits the lock-delay). Only the first request is kept.
    pub fn request_stop(&self, from: impl Into<String>) {
        let fired = self.state().stop_request.set(from.into());
        self.run(fired);
    }

    /// Who asked the holder to stop (`HOST:PID`), if someone did (see
    /// [`LossWatch::request_stop`]).
    pub fn stop_requested(&self) -> Option<String> {
        self.state().stop_request.value.clone()
    }

    /// Calls `callback` with who asked once someone asks the holder to stop
    /// (at once, if someone already did).
    pub fn on_stop_request(&self, callback: impl FnOnce(String) + Send + 'static) {
        let now = self.state().stop_request.subscribe(Box::new(callback));
        if let Some((from, callback)) = now {
            callback(from);
        }
    }

    /// Waits until the lock is lost or `timeout` passes; the reason if lost.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<String> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.state();
        while state.loss.value.is_none() {
            match deadline {
                None => state = self.0.1.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = self
                        .0
                        .1
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        state.loss.value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop request is told once, to callbacks registered before and
    /// after it, and is not a loss: the lock is still held.
    #[test]
    fn a_stop_request_is_not_a_loss_and_is_told_once() {
        let watch = LossWatch::new();
        let (tell, told) = std::sync::mpsc::channel();
        let early = tell.clone();
        watch.on_stop_request(move |from| early.send(from).unwrap());
        watch.request_stop("db1:42");
        watch.request_stop("db2:7");
        watch.on_stop_request(move |from| tell.send(from).unwrap());
        assert_eq!(told.iter().collect::<Vec<_>>(), ["db1:42", "db1:42"]);
        assert_eq!(watch.stop_requested().as_deref(), Some("db1:42"));
        assert_eq!(watch.reason(), None);
        assert_eq!(watch.wait_held(), None);
    }

    #[test]
    fn a_kernel_lock_is_held_at_once() {
        assert_eq!(LossWatch::new().wait_held(), None);
    }

    #[test]
    fn a_checked_lock_is_held_while_its_last_check_vouches_for_it() {
        let watch = LossWatch::proven_by_checks(Duration::from_secs(60));
        watch.proven(Instant::now());
        assert_eq!(watch.wait_held(), None);
    }

    /// After a pause longer than the deadline, an old check proves nothing:
    /// the wait ends with a new check, or with the loss.
    #[test]
    fn after_a_pause_a_checked_lock_needs_a_new_check() {
        let deadline = Duration::from_millis(50);
        let old = Instant::now();
        let watch = LossWatch::proven_by_checks(deadline);
        watch.proven(old);
        std::thread::sleep(deadline * 2);
        let checker = watch.clone();
        let check = std::thread::spawn(move || checker.proven(Instant::now()));
        assert_eq!(watch.wait_held(), None);
        check.join().unwrap();

        std::thread::sleep(deadline * 2);
        let checker = watch.clone();
        let loss = std::thread::spawn(move || checker.fire("session ended"));
        assert_eq!(watch.wait_held().as_deref(), Some("session ended"));
        loss.join().unwrap();
    }
}
