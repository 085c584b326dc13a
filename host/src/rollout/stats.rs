//! The numbers rollouts are judged on: each version's running totals on this node
//! ([`VersionStats`]), copies of them that nodes publish and add up ([`Totals`]), the windows
//! cut from them, and the rollout series on `/metrics` ([`RolloutMetrics`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Window;
use crate::metrics::Histogram;

/// A version's running totals on this node, from which windows are cut.
#[derive(Default)]
pub struct VersionStats {
    requests: AtomicU64,
    errors: AtomicU64,
    compared: AtomicU64,
    mismatches: AtomicU64,
    latency: Histogram,
}

/// A copy of [`VersionStats`] at one moment (in a fleet, each node publishes its own in its
/// report, and the deciding node adds them up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    requests: u64,
    errors: u64,
    // Defaults: reports of nodes that predate shadows.
    #[serde(default)]
    compared: u64,
    #[serde(default)]
    mismatches: u64,
    buckets: Vec<u64>,
}

/// Per function key, per version key: what a node has served of the versions in rollouts.
pub type RolloutTotals = BTreeMap<String, BTreeMap<String, Totals>>;

/// The rest of the fleet, for the analysis: the other live nodes' totals, and whether this node
/// is the one that decides (the lowest id among the live nodes: a lease held for as long as it
/// keeps reporting).
#[derive(Debug, Default)]
pub struct Peers {
    /// Whether this node decides.
    pub leader: bool,
    /// The other live nodes' totals.
    pub totals: Vec<RolloutTotals>,
}

impl VersionStats {
    /// Counts one answer.
    pub fn record(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one latency.
    pub fn observe(&self, d: Duration) {
        self.latency.observe(d);
    }

    /// Counts one shadow answer compared with stable's.
    pub fn compared(&self, same: bool) {
        self.compared.fetch_add(1, Ordering::Relaxed);
        if !same {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The totals now.
    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            compared: self.compared.load(Ordering::Relaxed),
            mismatches: self.mismatches.load(Ordering::Relaxed),
            buckets: self.latency.bucket_counts(),
        }
    }
}

impl Totals {
    /// Adds `other` (another node's totals of the same version).
    pub fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.compared += other.compared;
        self.mismatches += other.mismatches;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }

    /// The window from `earlier` to these totals.
    pub fn since(&self, earlier: &Totals) -> Window {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| c.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        Window {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            p50_ms: Histogram::quantile_ms(&buckets, 0.5),
            p99_ms: Histogram::quantile_ms(&buckets, 0.99),
            compared: self.compared.saturating_sub(earlier.compared),
            mismatches: self.mismatches.saturating_sub(earlier.mismatches),
        }
    }
}

/// What became of a request picked for shadowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOutcome {
    /// The candidate answered as stable did.
    Match,
    /// It answered differently.
    Mismatch,
    /// The candidate had no free concurrency slot: not run.
    Dropped,
    /// The request body was over the cap (or of unknown length): not copied.
    TooLarge,
    /// Stable's exchange did not finish (the client went away, or the guest left the body
    /// unread): nothing to compare with.
    Incomplete,
}

impl ShadowOutcome {
    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Match => "match",
            Self::Mismatch => "mismatch",
            Self::Dropped => "dropped",
            Self::TooLarge => "too_large",
            Self::Incomplete => "incomplete",
        }
    }
}

/// `tensorlet_rollout_step{function}` (the candidate's share, 0 when none runs),
/// `tensorlet_rollout_decisions_total{function,decision}` and
/// `tensorlet_rollout_shadow_total{function,outcome}`.
#[derive(Default)]
pub struct RolloutMetrics {
    series: Mutex<BTreeMap<String, Series>>,
}

/// One function's share now, its decisions by kind and its shadow copies by outcome.
#[derive(Default)]
struct Series {
    percent: u8,
    decisions: BTreeMap<String, u64>,
    shadows: BTreeMap<&'static str, u64>,
}

impl RolloutMetrics {
    fn with(&self, function: &str, f: impl FnOnce(&mut Series)) {
        let mut s = self.series.lock().unwrap_or_else(|e| e.into_inner());
        f(s.entry(function.to_string()).or_default())
    }

    /// Sets a function's current share.
    pub fn set_percent(&self, function: &str, percent: u8) {
        self.with(function, |s| s.percent = percent)
    }

    /// Counts a decision.
    pub fn count(&self, function: &str, decision: &str) {
        self.with(function, |s| {
            *s.decisions.entry(decision.to_string()).or_default() += 1
        })
    }

    /// Counts a shadow copy's outcome.
    pub fn shadow(&self, function: &str, outcome: ShadowOutcome) {
        self.with(function, |s| {
            *s.shadows.entry(outcome.label()).or_default() += 1
        })
    }

    /// The Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_empty() {
            return;
        }
        out.push_str("# HELP tensorlet_rollout_step The candidate's share of traffic in a running rollout, in percent.\n# TYPE tensorlet_rollout_step gauge\n");
        for (f, series) in s.iter() {
            let _ = writeln!(
                out,
                "tensorlet_rollout_step{{function=\"{f}\"}} {}",
                series.percent
            );
        }
        out.push_str("# HELP tensorlet_rollout_decisions_total Rollout decisions this node made.\n# TYPE tensorlet_rollout_decisions_total counter\n");
        for (f, series) in s.iter() {
            for (d, n) in &series.decisions {
                let _ = writeln!(
                    out,
                    "tensorlet_rollout_decisions_total{{function=\"{f}\",decision=\"{d}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP tensorlet_rollout_shadow_total Requests picked for shadowing on this node, by outcome.\n# TYPE tensorlet_rollout_shadow_total counter\n");
        for (f, series) in s.iter() {
            for (o, n) in &series.shadows {
                let _ = writeln!(
                    out,
                    "tensorlet_rollout_shadow_total{{function=\"{f}\",outcome=\"{o}\"}} {n}"
                );
            }
        }
    }
}
