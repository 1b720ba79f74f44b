//! How long an acquisition waits, and the one waiting loop that every
//! backend uses when the kernel or the server cannot do the waiting.

use std::time::{Duration, Instant};

use super::{Attempt, Backend, Guard, Holder};
use crate::error::Result;
use crate::name::LockName;

/// How long to wait for a lock that someone else holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Try once, never waiting.
    No,
    /// Wait until this instant, or without limit (`None`).
    Until(Option<Instant>),
}

impl Wait {
    /// Wait at most `timeout` from now, or without limit (`None`). A
    /// timeout too far away to represent is no limit.
    pub fn at_most(timeout: Option<Duration>) -> Wait {
        Wait::Until(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// The time left: zero for [`Wait::No`] or a deadline that has passed,
    /// `None` without limit.
    pub fn left(self) -> Option<Duration> {
        match self {
            Wait::No => Some(Duration::ZERO),
            Wait::Until(None) => None,
            Wait::Until(Some(deadline)) => Some(deadline.saturating_duration_since(Instant::now())),
        }
    }
}

/// What one round of a waiting loop found.
pub(crate) enum Round<T, P> {
    /// What was waited for.
    Done(T),
    /// Not yet; this is what to report if time runs out now.
    Pending(P),
}

/// Runs `round` until it is done, or until the wait is over (then the last
/// round's pending value is the error); [`Wait::No`] runs one round. A
/// watch is made before each round, so that a change during the round is
/// not missed, and `block` blocks on it between rounds for at most the
/// time left.
pub(crate) fn rounds<T, P, W>(
    wait: Wait,
    watch: impl Fn() -> W,
    block: impl Fn(&W, Duration),
    mut round: impl FnMut() -> Result<Round<T, P>>,
) -> Result<std::result::Result<T, P>> {
    loop {
        let watcher = watch();
        let pending = match round()? {
            Round::Done(done) => return Ok(Ok(done)),
            Round::Pending(pending) => pending,
        };
        let left = wait.left();
        if left == Some(Duration::ZERO) {
            return Ok(Err(pending));
        }
        block(&watcher, left.unwrap_or(Duration::MAX));
    }
}

/// Waiting without an event to wake up on: check again in 50 ms.
pub(crate) fn nap<W>(_: &W, left: Duration) {
    std::thread::sleep(left.min(Duration::from_millis(50)));
}

/// One try at each of `names`: the first taken, or the first holder seen.
pub(crate) fn first_free(
    backend: &(impl Backend + ?Sized),
    names: &[LockName],
    command: &[String],
) -> Result<Round<Guard, Holder>> {
    let mut first_holder = None;
    for name in names {
        match backend.acquire(name, command, Wait::No)? {
            Attempt::Acquired(guard) => return Ok(Round::Done(guard)),
            Attempt::Held(holder) => {
                first_holder.get_or_insert(holder);
            }
        }
    }
    Ok(Round::Pending(first_holder.unwrap_or_default()))
}

/// Whether `name` is free now, as a round of waiting for it.
pub(crate) fn free_now(
    backend: &(impl Backend + ?Sized),
    name: &LockName,
) -> Result<Round<(), ()>> {
    Ok(if backend.status(name)?.held {
        Round::Pending(())
    } else {
        Round::Done(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timeout too far away to represent waits without limit instead of
    /// panicking (`Instant::now() + t` overflowed on files).
    #[test]
    fn an_unrepresentable_timeout_is_no_limit() {
        assert_eq!(Wait::at_most(Some(Duration::MAX)), Wait::Until(None));
        assert_eq!(Wait::at_most(Some(Duration::MAX)).left(), None);
        assert_eq!(Wait::No.left(), Some(Duration::ZERO));
    }
}
