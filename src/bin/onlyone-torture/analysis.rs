//! What the witness log and the chaos record say, once the run is over:
//! overlaps, fencing-token order, and how long each handoff took.

use std::collections::HashMap;

use crate::chaos::{Event, Kind};
use crate::witness_log::Line;

/// A kill is matched to a holder only if it came at most this long before
/// the holder's ENTER (a supervisor killed while starting its command), so
/// that a kill of an earlier process with the same pid is never matched.
const KILL_LOOKBACK_NS: u64 = 1_000_000_000;

/// One holder, from its ENTER line (and its EXIT, if it got that far).
#[derive(Clone, Debug)]
struct Entry {
    pid: u32,
    ppid: u32,
    token: Option<u64>,
    enter: u64,
    exit: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Analysis {
    /// ENTER lines: holders that ran.
    pub acquisitions: u64,
    /// OVERLAP lines, verbatim.
    pub overlaps: Vec<String>,
    /// Witnesses that waited for a dying previous holder's descriptors.
    pub late_releases: u64,
    pub late_release_max_ns: u64,
    pub tokens: Tokens,
    /// Handoff latencies: each ENTER minus the end (EXIT or kill) of the
    /// holder before it.
    pub latencies_ns: Vec<u64>,
    /// Holders followed by another whose end is unknown: no EXIT and no
    /// recorded kill. (Not a safety failure; it would mean the command was
    /// ended by something other than the chaos, say a lost lock.)
    pub unexplained_ends: u64,
}

#[derive(Debug, Default)]
pub struct Tokens {
    /// Holders started without `ONLYONE_TOKEN`.
    pub missing: u64,
    /// Tokens not larger than the previous holder's.
    pub regressions: u64,
    /// ... of which a lock file or directory deletion happened in the
    /// window where it can reset the count.
    pub after_deletion: u64,
    /// ... and those with no deletion that explains them: bugs.
    pub unexplained: Vec<String>,
}

/// Analyzes a finished run. `stop_ns` is when the run began to stop:
/// holders after it may follow a holder killed by the final sweep, so
/// their handoff is not measured.
pub fn analyze(lines: &[Line], events: &[Event], stop_ns: u64) -> Analysis {
    let entries = entries(lines);
    let mut analysis = Analysis {
        acquisitions: entries.len() as u64,
        tokens: check_tokens(&entries, events),
        ..Analysis::default()
    };
    for line in lines {
        match line {
            Line::Overlap { .. } => analysis.overlaps.push(line.to_text().trim().to_owned()),
            Line::Late { waited_ns, .. } => {
                analysis.late_releases += 1;
                analysis.late_release_max_ns = analysis.late_release_max_ns.max(*waited_ns);
            }
            _ => {}
        }
    }
    let kills = Kills::new(events);
    for pair in entries.windows(2) {
        let (previous, next) = (&pair[0], &pair[1]);
        if next.enter > stop_ns {
            break;
        }
        match end_of(previous, next.enter, &kills) {
            Some(end) => analysis.latencies_ns.push(next.enter.saturating_sub(end)),
            None => analysis.unexplained_ends += 1,
        }
    }
    analysis.latencies_ns.sort_unstable();
    analysis
}

/// The holders in log order, each with its EXIT time when it logged one.
fn entries(lines: &[Line]) -> Vec<Entry> {
    let mut entries = Vec::new();
    // pid -> index of its ENTER; a pid reused later replaces the dead one.
    let mut running: HashMap<u32, usize> = HashMap::new();
    for line in lines {
        match *line {
            Line::Enter {
                pid,
                ppid,
                token,
                t,
            } => {
                running.insert(pid, entries.len());
                entries.push(Entry {
                    pid,
                    ppid,
                    token,
                    enter: t,
                    exit: None,
                });
            }
            Line::Exit { pid, t } => {
                if let Some(index) = running.remove(&pid) {
                    entries[index].exit = Some(t);
                }
            }
            _ => {}
        }
    }
    entries
}

/// Kill times by target pid, sorted.
struct Kills {
    /// Kills of a witness (its pid).
    of_witness: HashMap<u32, Vec<u64>>,
    /// Kills of a supervisor (its pid), and terminations of its session.
    of_supervisor: HashMap<u32, Vec<u64>>,
}

impl Kills {
    fn new(events: &[Event]) -> Kills {
        let mut kills = Kills {
            of_witness: HashMap::new(),
            of_supervisor: HashMap::new(),
        };
        for event in events {
            let map = match event.kind {
                Kind::HolderSigkill => &mut kills.of_witness,
                Kind::HolderSupervisorSigkill
                | Kind::RandomSupervisorSigkill
                | Kind::SessionTermination => &mut kills.of_supervisor,
                _ => continue,
            };
            // The time before the act: a handoff is never measured shorter
            // than it was.
            map.entry(event.pid).or_default().push(event.t_before);
        }
        for times in kills
            .of_witness
            .values_mut()
            .chain(kills.of_supervisor.values_mut())
        {
            times.sort_unstable();
        }
        kills
    }

    /// The first kill of `pid` in `from..=to`.
    fn first(map: &HashMap<u32, Vec<u64>>, pid: u32, from: u64, to: u64) -> Option<u64> {
        map.get(&pid)?
            .iter()
            .copied()
            .find(|&t| (from..=to).contains(&t))
    }
}

/// When `holder` stopped holding: its EXIT, or else the first kill of it or
/// of its supervisor before `next_enter`.
fn end_of(holder: &Entry, next_enter: u64, kills: &Kills) -> Option<u64> {
    if let Some(exit) = holder.exit {
        return Some(exit);
    }
    let from = holder.enter.saturating_sub(KILL_LOOKBACK_NS);
    let witness_kill = Kills::first(&kills.of_witness, holder.pid, from, next_enter);
    let supervisor_kill = Kills::first(&kills.of_supervisor, holder.ppid, from, next_enter);
    let kill = witness_kill.into_iter().chain(supervisor_kill).min()?;
    Some(kill.max(holder.enter))
}

/// Checks that fencing tokens grow from holder to holder.
///
/// A token may start again from 1 only when the lock file was lost: deleted
/// (or its directory) while nobody held the lock, or while its holder was
/// about to leave, before the holder restored it. Such a deletion comes
/// after the previous token was written, so after the previous holder's
/// predecessor entered: a regression with no deletion in that window has no
/// excuse.
fn check_tokens(entries: &[Entry], events: &[Event]) -> Tokens {
    let deletions: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::LockFileDeletion | Kind::LockDirDeletion))
        .map(|e| (e.t_before, e.t_after))
        .collect();
    let mut tokens = Tokens::default();
    // The last holder that had a token, by index.
    let mut last: Option<usize> = None;
    for (index, entry) in entries.iter().enumerate() {
        let Some(token) = entry.token else {
            tokens.missing += 1;
            continue;
        };
        if let Some(previous) = last {
            let previous_token = entries[previous].token.unwrap_or(0);
            if token <= previous_token {
                tokens.regressions += 1;
                let window_start = previous.checked_sub(1).map_or(0, |i| entries[i].enter);
                let deleted = deletions
                    .iter()
                    .any(|&(before, after)| after > window_start && before < entry.enter);
                if deleted {
                    tokens.after_deletion += 1;
                } else {
                    tokens.unexplained.push(format!(
                        "token {previous_token} (pid {}) was followed by token {token} (pid {}) with no deletion in between",
                        entries[previous].pid, entry.pid
                    ));
                }
            }
        }
        last = Some(index);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enter(pid: u32, ppid: u32, token: u64, t: u64) -> Line {
        Line::Enter {
            pid,
            ppid,
            token: Some(token),
            t,
        }
    }

    fn event(kind: Kind, pid: u32, t: u64) -> Event {
        Event {
            kind,
            pid,
            t_before: t,
            t_after: t + 1,
            before_command: false,
        }
    }

    #[test]
    fn handoff_from_exit_and_from_kills() {
        let lines = [
            enter(10, 100, 1, 1_000),
            Line::Exit { pid: 10, t: 2_000 },
            enter(11, 101, 2, 2_500), // 500 after the EXIT
            enter(12, 102, 3, 4_000), // 11 was SIGKILLed at 3_000
            enter(13, 103, 4, 6_000), // 102 (12's supervisor) killed at 5_500
        ];
        let events = [
            event(Kind::HolderSigkill, 11, 3_000),
            event(Kind::RandomSupervisorSigkill, 102, 5_500),
        ];
        let analysis = analyze(&lines, &events, u64::MAX);
        assert_eq!(analysis.latencies_ns, vec![500, 500, 1_000]);
        assert_eq!(analysis.unexplained_ends, 0);
        assert_eq!(analysis.acquisitions, 4);
    }

    #[test]
    fn holder_with_no_exit_and_no_kill_is_counted() {
        let lines = [enter(10, 100, 1, 1_000), enter(11, 101, 2, 2_000)];
        let analysis = analyze(&lines, &[], u64::MAX);
        assert_eq!(analysis.unexplained_ends, 1);
        assert!(analysis.latencies_ns.is_empty());
    }

    #[test]
    fn token_regression_needs_a_deletion_to_be_excused() {
        let lines = [
            enter(10, 100, 5, 1_000),
            enter(11, 101, 6, 2_000),
            enter(12, 102, 1, 3_000),
            enter(13, 103, 1, 4_000),
        ];
        let deletion = [event(Kind::LockDirDeletion, 0, 2_500)];
        let tokens = analyze(&lines, &deletion, u64::MAX).tokens;
        assert_eq!(tokens.regressions, 2);
        // 6 -> 1 follows the deletion; 1 -> 1 at 4_000 does too (window
        // starts at 2_000, the ENTER before the previous one).
        assert_eq!(tokens.after_deletion, 2);

        let tokens = analyze(&lines, &[], u64::MAX).tokens;
        assert_eq!(tokens.unexplained.len(), 2);
    }
}
