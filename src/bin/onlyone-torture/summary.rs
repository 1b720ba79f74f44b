//! The run's summary: JSON for machines (`--summary FILE`), a table for
//! people (stdout).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::analysis::Analysis;
use crate::chaos::{Event, Kind};
use onlyone::internals::nearest_rank;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub passed: bool,
    /// Why it did not pass (empty when it did).
    pub failures: Vec<String>,
    pub seed: u64,
    pub backend: String,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    pub machine: Machine,
    pub duration_seconds: f64,
    pub contenders: usize,
    pub acquisitions: u64,
    pub acquisitions_per_second: f64,
    pub chaos: ChaosCounts,
    pub overlaps: u64,
    /// The first OVERLAP lines of the witness log.
    pub overlap_lines: Vec<String>,
    /// Witnesses that found the witness file still locked by a holder that
    /// was already exiting, and waited for the kernel to finish closing its
    /// descriptors (not overlaps).
    pub late_releases: u64,
    pub late_release_max_ms: f64,
    pub tokens: TokenCounts,
    pub handoff_latency_ms: Latency,
    /// Holders whose end is unknown (no EXIT, no recorded kill: say, a
    /// command stopped after its supervisor was SIGSTOPped and lost the
    /// lock).
    pub holders_ended_unexplained: u64,
    /// With PostgreSQL: acquisitions that found the previous holder had not
    /// released cleanly and waited out a lock-delay (from onlyone's
    /// warnings), that is the unclean losses a successor saw.
    pub lock_delays_waited: u64,
    /// With PostgreSQL: starters whose session ended after they took the
    /// lock, before their command ran, and that started over.
    pub restarts_after_session_loss: u64,
    /// How the supervisors (`onlyone run`) ended before the final sweep.
    pub supervisor_exits: BTreeMap<String, u64>,
    /// Supervisor exits that no chaos explains: neither 0 (the witness
    /// finished), nor 137 (the witness was SIGKILLed), nor SIGKILL of the
    /// supervisor itself (nor, with PostgreSQL, 74: lock lost).
    pub unexpected_supervisor_exits: u64,
    /// Processes of the run still alive after the final sweep.
    pub leftover_processes: usize,
    pub stop_reason: String,
    pub work_dir: String,
    /// With `--fenced-writes`: the writes and what the database shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced_writes: Option<crate::fenced::FencedCounts>,
}

/// How many supervisors ended in a way the chaos does not explain.
pub fn unexpected_exits(exits: &BTreeMap<String, u64>, postgres: bool) -> u64 {
    let expected = |status: &str| {
        matches!(status, "exit 0" | "exit 137" | "signal 9") || (postgres && status == "exit 74")
    };
    exits
        .iter()
        .filter(|(status, _)| !expected(status))
        .map(|(_, count)| count)
        .sum()
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ChaosCounts {
    pub holder_sigkill: u64,
    /// Every supervisor SIGKILL: the two kinds below together.
    pub supervisor_sigkill: u64,
    pub holder_supervisor_sigkill: u64,
    pub random_supervisor_sigkill: u64,
    pub holder_sigstop: u64,
    pub lock_file_deletions: u64,
    pub lock_dir_deletions: u64,
    pub session_terminations: u64,
    pub supervisor_sigstop: u64,
    /// Acts on the holder's supervisor or session while no command of its
    /// ran (most often during its lock-delay).
    pub before_command: u64,
}

impl ChaosCounts {
    pub fn count(events: &[Event]) -> ChaosCounts {
        let mut counts = ChaosCounts::default();
        for event in events {
            let counter = match event.kind {
                Kind::HolderSigkill => &mut counts.holder_sigkill,
                Kind::HolderSupervisorSigkill => &mut counts.holder_supervisor_sigkill,
                Kind::RandomSupervisorSigkill => &mut counts.random_supervisor_sigkill,
                Kind::HolderSigstop => &mut counts.holder_sigstop,
                Kind::LockFileDeletion => &mut counts.lock_file_deletions,
                Kind::LockDirDeletion => &mut counts.lock_dir_deletions,
                Kind::SessionTermination => &mut counts.session_terminations,
                Kind::SupervisorSigstop => &mut counts.supervisor_sigstop,
            };
            *counter += 1;
            if event.before_command
                && matches!(
                    event.kind,
                    Kind::HolderSupervisorSigkill
                        | Kind::SessionTermination
                        | Kind::SupervisorSigstop
                )
            {
                counts.before_command += 1;
            }
        }
        counts.supervisor_sigkill =
            counts.holder_supervisor_sigkill + counts.random_supervisor_sigkill;
        counts
    }
}

#[derive(Debug, Serialize)]
pub struct TokenCounts {
    pub missing: u64,
    pub regressions: u64,
    pub regressions_after_deletion: u64,
    pub regressions_unexplained: u64,
    pub unexplained: Vec<String>,
}

impl TokenCounts {
    pub fn from(analysis: &Analysis) -> TokenCounts {
        let tokens = &analysis.tokens;
        TokenCounts {
            missing: tokens.missing,
            regressions: tokens.regressions,
            regressions_after_deletion: tokens.after_deletion,
            regressions_unexplained: tokens.unexplained.len() as u64,
            unexplained: tokens.unexplained.iter().take(10).cloned().collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Latency {
    pub fn from_sorted_ns(sorted: &[u64]) -> Latency {
        let ms = |percent: f64| nearest_rank(sorted, percent / 100.0).map(|ns| ns as f64 / 1e6);
        Latency {
            count: sorted.len(),
            p50: ms(50.0),
            p90: ms(90.0),
            p99: ms(99.0),
            max: ms(100.0),
        }
    }
}

impl Summary {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let mut out = format!(
            "onlyone torture {verdict}: {} backend, seed {} (repeat its chaos with --seed {})\n",
            self.backend, self.seed, self.seed
        );
        let mut row = |label: &str, value: String| {
            let _ = writeln!(out, "  {label:<22} {value}");
        };
        row("started", self.started_at.clone());
        row(
            "machine",
            format!("{} CPUs, Linux {}", self.machine.cpus, self.machine.kernel),
        );
        row(
            "duration",
            format!("{:.1} s ({})", self.duration_seconds, self.stop_reason),
        );
        row("contenders", self.contenders.to_string());
        row(
            "acquisitions",
            format!(
                "{} ({:.0}/s)",
                self.acquisitions, self.acquisitions_per_second
            ),
        );
        let c = &self.chaos;
        row("holder SIGKILL", c.holder_sigkill.to_string());
        row(
            "supervisor SIGKILL",
            format!(
                "{} ({} of the holder's, {} at random)",
                c.supervisor_sigkill, c.holder_supervisor_sigkill, c.random_supervisor_sigkill
            ),
        );
        row("holder SIGSTOP", c.holder_sigstop.to_string());
        row("lock file deletions", c.lock_file_deletions.to_string());
        row("lock dir deletions", c.lock_dir_deletions.to_string());
        if c.session_terminations > 0 {
            row("session terminations", c.session_terminations.to_string());
        }
        if c.supervisor_sigstop > 0 {
            row("supervisor SIGSTOP", c.supervisor_sigstop.to_string());
        }
        if c.before_command > 0 {
            row(
                "hit before command",
                format!(
                    "{} (holder's supervisor or session hit while no command of it ran)",
                    c.before_command
                ),
            );
        }
        if self.lock_delays_waited > 0 {
            row(
                "lock-delays waited",
                format!(
                    "{} (unclean losses seen by the next holder)",
                    self.lock_delays_waited
                ),
            );
        }
        if self.restarts_after_session_loss > 0 {
            row(
                "restarts",
                format!(
                    "{} (session lost after taking the lock, before the command)",
                    self.restarts_after_session_loss
                ),
            );
        }
        row("OVERLAPS", self.overlaps.to_string());
        row(
            "late releases",
            format!(
                "{} (dying holder's descriptors, longest wait {:.3} ms)",
                self.late_releases, self.late_release_max_ms
            ),
        );
        let t = &self.tokens;
        row(
            "token regressions",
            format!(
                "{} ({} after a deletion, {} unexplained); {} missing",
                t.regressions, t.regressions_after_deletion, t.regressions_unexplained, t.missing
            ),
        );
        let l = &self.handoff_latency_ms;
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        row(
            "handoff latency (ms)",
            format!(
                "p50 {}  p90 {}  p99 {}  max {}  (n={})",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.max),
                l.count
            ),
        );
        row(
            "ends unexplained",
            self.holders_ended_unexplained.to_string(),
        );
        let exits: Vec<String> = self
            .supervisor_exits
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        row("supervisor exits", exits.join(", "));
        row(
            "unexpected exits",
            format!(
                "{} (see onlyone.stderr in the work dir)",
                self.unexpected_supervisor_exits
            ),
        );
        row("leftover processes", self.leftover_processes.to_string());
        if let Some(fenced) = &self.fenced_writes {
            row(
                "fenced writes",
                format!(
                    "{} committed by {} holders, {} refused as stale; {} under a stale token, {} before their token",
                    fenced.writes,
                    fenced.writing_holders,
                    fenced.refused,
                    fenced.stale_commits,
                    fenced.early_commits
                ),
            );
        }
        row("work dir", self.work_dir.clone());
        for failure in &self.failures {
            let _ = writeln!(out, "  FAILURE: {failure}");
        }
        out
    }
}
