//! `stop` on a database backend meets a holder between two states: one
//! that has taken the lock but not recorded itself yet, or one that has
//! recorded its clean release but not unlocked yet. Neither is another
//! holder nor one to stop: it is looked at again.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long `stop` looks again at a holder between two states, and how
/// often: one that has taken the lock but not recorded itself yet (a
/// starter before its token is committed: milliseconds, or as long as the
/// previous holder's fenced transactions keep it waiting), or one that has
/// recorded its clean release but not unlocked yet. The state row has no
/// event to wait on.
const SETTLING_HOLDER: Duration = Duration::from_secs(2);
const LOOK_AGAIN: Duration = Duration::from_millis(20);

/// Why one look at a lock's holder could not stop it.
pub(crate) enum Unidentified {
    /// The holder is between two states (starting or releasing): it is
    /// looked at again, and the error stands only if it stays there.
    Settling(Error),
    /// Anything else: the error stands.
    Other(Error),
}

impl From<Error> for Unidentified {
    fn from(err: Error) -> Unidentified {
        Unidentified::Other(err)
    }
}

/// Runs `look` until it answers, or its holder has been settling for
/// [`SETTLING_HOLDER`].
pub(crate) fn once_settled<T>(
    mut look: impl FnMut() -> std::result::Result<T, Unidentified>,
) -> Result<T> {
    let until = Instant::now().checked_add(SETTLING_HOLDER);
    loop {
        match look() {
            Ok(answer) => return Ok(answer),
            Err(Unidentified::Other(err)) => return Err(err),
            Err(Unidentified::Settling(err)) => {
                if until.is_none_or(|until| Instant::now() >= until) {
                    return Err(err);
                }
                std::thread::sleep(LOOK_AGAIN);
            }
        }
    }
}
