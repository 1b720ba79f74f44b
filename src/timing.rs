//! `Timing`: the durations a holder lives by, with their defaults written
//! once. The backend (heartbeat, lock-delay) and the supervisor (kill
//! grace) share one value, because the lock-delay a successor waits is
//! derived from both.

use std::time::Duration;

use crate::error::{Error, Result};

/// How often a database holder checks its lock, how long a command gets
/// to stop once the lock is lost, and how long a successor waits after an
/// unclean release. [`Timing::default`] holds the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often a holder checks its session (PostgreSQL). Default 1 s.
    pub heartbeat: Duration,
    /// The grace period a supervisor gives its command between SIGTERM
    /// and SIGKILL when the lock is lost. Default 5 s.
    pub kill_grace: Duration,
    /// How long a new holder waits before it returns when the previous
    /// holder lost the lock uncleanly (PostgreSQL). `None`: heartbeat
    /// deadline + kill grace + 2 s (10 s with the defaults); see
    /// [`Timing::lock_delay`].
    pub lock_delay: Option<Duration>,
}

/// What the heartbeat deadline allows beyond two heartbeats: one slow
/// round trip.
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// What the default lock-delay adds to heartbeat deadline + kill grace, for
/// scheduling and clock jitter.
pub(crate) const LOCK_DELAY_MARGIN: Duration = Duration::from_secs(2);

/// The longest kill grace or lock-delay: 100 years (of 365.25 days, as
/// `100years` reads). A holder records its heartbeat deadline + kill grace
/// in milliseconds in a bigint of the PostgreSQL state table, and its
/// successors add margins to it; supervisors and starters add them to the
/// clock. A bound far from either limit keeps every sum exact.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(36_525 * 24 * 3600);

impl Timing {
    /// The default heartbeat interval.
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
    /// The default kill grace.
    pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

    /// The heartbeat deadline T = 2 × heartbeat + 1 s (3 s by default): a
    /// holder whose heartbeat has not succeeded for this long considers
    /// its lock lost.
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat
            .saturating_mul(2)
            .saturating_add(DEADLINE_SLACK)
    }

    /// How long a holder may take to stop its command once it has lost the
    /// lock: heartbeat deadline + kill grace.
    pub fn stop_within(&self) -> Duration {
        self.heartbeat_deadline().saturating_add(self.kill_grace)
    }

    /// Refuses (where a state row records them: PostgreSQL) a kill grace or
    /// lock-delay longer than [`MAX_DURATION`]
    /// (a usage error).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn check(&self) -> Result<()> {
        let named = [
            ("kill grace", Some(self.kill_grace)),
            ("lock-delay", self.lock_delay),
        ];
        for (what, duration) in named {
            if let Some(duration) = duration.filter(|d| *d > MAX_DURATION) {
                return Err(Error::usage(format!(
                    "the {what} of {} is too long: at most {} (it is recorded in milliseconds in the state table and added to the clock)",
                    humantime::format_duration(duration),
                    humantime::format_duration(MAX_DURATION)
                )));
            }
        }
        Ok(())
    }

    /// The lock-delay in effect: the configured one, else
    /// [`Timing::stop_within`] + 2 s.
    pub fn lock_delay(&self) -> Duration {
        self.lock_delay
            .unwrap_or_else(|| self.stop_within().saturating_add(LOCK_DELAY_MARGIN))
    }
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat: Timing::DEFAULT_HEARTBEAT,
            kill_grace: Timing::DEFAULT_KILL_GRACE,
            lock_delay: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lock_delay_exceeds_deadline_plus_grace() {
        let timing = Timing::default();
        assert_eq!(timing.heartbeat_deadline(), Duration::from_secs(3));
        assert_eq!(timing.lock_delay(), Duration::from_secs(10));
        assert!(timing.lock_delay() > timing.heartbeat_deadline() + timing.kill_grace);
    }

    #[test]
    fn durations_past_a_hundred_years_are_refused() {
        assert_eq!(
            humantime::format_duration(MAX_DURATION).to_string(),
            "100years"
        );
        let longest = Timing {
            kill_grace: MAX_DURATION,
            lock_delay: Some(MAX_DURATION),
            ..Timing::default()
        };
        assert!(longest.check().is_ok());
        // The sums a holder records and its successor makes stay exact.
        let recorded = longest.stop_within() + LOCK_DELAY_MARGIN;
        assert!(recorded.as_millis() < i64::MAX as u128 / 1000);
        for too_long in [
            Timing {
                kill_grace: MAX_DURATION + Duration::from_millis(1),
                ..Timing::default()
            },
            Timing {
                lock_delay: Some(Duration::MAX),
                ..Timing::default()
            },
        ] {
            let err = too_long.check().unwrap_err();
            assert!(err.is_usage(), "{err}");
        }
    }
}
