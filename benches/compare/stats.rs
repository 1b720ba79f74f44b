//! Order statistics over timing samples, and how to print them.

use std::time::Duration;

/// Timing samples of one thing measured, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn push(&mut self, sample: Duration) {
        self.push_ns(u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn push_ns(&mut self, ns: u64) {
        self.ns.push(ns);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    /// The sample at quantile `q` (0..=1), nearest rank.
    pub fn quantile(&mut self, q: f64) -> f64 {
        assert!(!self.ns.is_empty(), "no samples");
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
        onlyone::internals::nearest_rank(&self.ns, q).expect("samples") as f64
    }

    pub fn median(&mut self) -> f64 {
        self.quantile(0.5)
    }

    /// Median, p10, p90, p99 as one table cell each.
    pub fn summary(&mut self) -> Summary {
        Summary {
            n: self.len(),
            p10: self.quantile(0.10),
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            max: self.quantile(1.0),
        }
    }
}

/// The quantiles shown in the report.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A duration in nanoseconds with a unit that keeps 3 significant digits.
pub fn fmt_ns(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {unit}")
}

/// A ratio such as `1.23×`.
pub fn fmt_ratio(ratio: f64) -> String {
    if ratio < 10.0 {
        format!("{ratio:.2}×")
    } else {
        format!("{ratio:.1}×")
    }
}

/// Memory in kB as MB with one decimal (what /proc reports is kB = KiB).
pub fn fmt_kb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}
