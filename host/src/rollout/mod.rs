//! Rollouts: a staged version first answers copies of requests that are compared with the
//! stable version's answers (a shadow), then takes a growing share of a function's traffic (a
//! canary); over each interval it is compared with stable, and is promoted step by step or
//! rolled back by itself when a threshold is crossed. The rollout's state lives in the desired
//! state (so it survives restarts and, in a fleet, reaches every node); the numbers it is judged
//! on are each node's own ([`VersionStats`]); the decision rule is [`decide`].

mod compare;
mod stats;

use serde::{Deserialize, Serialize};

pub use compare::same_answer;
pub use stats::{Peers, RolloutMetrics, RolloutTotals, ShadowOutcome, Totals, VersionStats};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Traffic is split; the analysis runs.
    Running,
    /// The candidate is live.
    Promoted,
    /// A threshold was crossed: stable kept all the traffic.
    RolledBack,
    /// Stopped by hand (or because live moved by other means).
    Aborted,
}

/// When a candidate is judged unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Most the candidate's error rate (5xx) may exceed stable's, in percentage points.
    pub max_error_increase: f64,
    /// Most the candidate's p99 latency may be, as a multiple of stable's.
    pub max_latency_ratio: f64,
    /// Requests the candidate must have served in a window before it is judged.
    pub min_requests: u64,
    /// Most of the candidate's shadow answers that may differ from stable's, in percent.
    #[serde(default = "default_max_mismatch")]
    pub max_mismatch: f64,
}

fn default_max_mismatch() -> f64 {
    1.0
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_error_increase: 5.0,
            max_latency_ratio: 2.0,
            min_requests: 20,
            max_mismatch: default_max_mismatch(),
        }
    }
}

/// A shadow phase: the candidate answers copies of a share of the requests; its answers are
/// compared with stable's and never sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Shadow {
    /// The share of requests copied, in percent.
    pub percent: u8,
    /// The largest body copied or compared, in bytes: requests with a larger (or unknown-length)
    /// body are not copied; answers with one are compared on their status only.
    pub max_body: u64,
    /// JSON numbers that differ by at most this much (relative, absolute below 1) count as equal.
    pub tolerance: f64,
}

impl Shadow {
    /// Defaults: 1 MiB bodies, tolerance 1e-4.
    pub const MAX_BODY: u64 = 1 << 20;
    /// The default tolerance.
    pub const TOLERANCE: f64 = 1e-4;
    /// The most `max_body` may be: a copy is host memory.
    pub const MAX_CAP: u64 = 16 << 20;
}

/// A version's numbers over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx (guest traps, timeouts, node errors).
    pub errors: u64,
    /// Median latency, ms (bucket upper bound).
    pub p50_ms: f64,
    /// 99th percentile latency, ms (bucket upper bound).
    pub p99_ms: f64,
    /// Shadow answers compared with stable's.
    #[serde(default)]
    pub compared: u64,
    /// Of which differed.
    #[serde(default)]
    pub mismatches: u64,
}

impl Window {
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn mismatch_rate(&self) -> f64 {
        if self.compared == 0 {
            0.0
        } else {
            self.mismatches as f64 / self.compared as f64
        }
    }
}

/// One decision, with its numbers and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When (RFC 3339).
    pub time: String,
    /// `start`, `step`, `promote`, `rollback` or `abort`.
    pub decision: String,
    /// The candidate's share after it, in percent.
    pub percent: u8,
    /// Why.
    pub reason: String,
    /// The candidate's window.
    pub candidate: Window,
    /// Stable's window.
    pub stable: Window,
}

/// A rollout, as the desired state holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The candidate version's key.
    pub candidate: String,
    /// The version that was live when it started.
    pub stable: String,
    /// The candidate's share at each step, in percent, ascending; the last is 100. With a
    /// shadow, the first is 0: the shadow phase.
    pub steps: Vec<u8>,
    /// The current step.
    pub step: usize,
    /// How long each step lasts before the next, in milliseconds.
    pub interval_ms: u64,
    /// A header whose value keeps a client on one side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    /// The shadow phase, if it has one (the step at 0%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    /// When it is rolled back.
    pub thresholds: Thresholds,
    /// Where it is.
    pub state: State,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Every decision so far, oldest first.
    pub decisions: Vec<Decision>,
}

impl Rollout {
    /// The candidate's share now, in percent (0 once it is over).
    pub fn percent(&self) -> u8 {
        match self.state {
            State::Running => self.steps.get(self.step).copied().unwrap_or(100),
            _ => 0,
        }
    }

    /// The shadow settings while it is in its shadow phase.
    pub fn shadowing(&self) -> Option<Shadow> {
        self.shadow
            .filter(|_| self.state == State::Running && self.percent() == 0)
    }

    /// `shadow`, `canary` or `done`.
    pub fn phase(&self) -> &'static str {
        match (self.state, self.shadowing()) {
            (State::Running, Some(_)) => "shadow",
            (State::Running, None) => "canary",
            _ => "done",
        }
    }
}

/// The least p99 difference, in milliseconds, that counts as a slowdown.
pub const MIN_LATENCY_GAP_MS: f64 = 10.0;

/// What the analysis decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go to the next step.
    Step,
    /// Make the candidate live.
    Promote,
    /// Keep stable, stop.
    Rollback(String),
}

/// The rule: a crossed threshold rolls back at once (once the candidate has `min_requests` in
/// the window); otherwise, when the step's interval is over and the candidate has been judged on
/// enough requests, it moves on to the next step, and is promoted instead of moving to the last
/// (100%). `None`: keep going.
pub fn decide(
    r: &Rollout,
    candidate: &Window,
    stable: &Window,
    step_over: bool,
) -> Option<Verdict> {
    let t = &r.thresholds;
    if candidate.requests >= t.min_requests {
        let increase = (candidate.error_rate() - stable.error_rate()) * 100.0;
        if increase > t.max_error_increase {
            return Some(Verdict::Rollback(format!(
                "error rate {:.1}% against stable's {:.1}%: over the allowed increase of {} points",
                candidate.error_rate() * 100.0,
                stable.error_rate() * 100.0,
                t.max_error_increase
            )));
        }
        // Latencies of a few milliseconds jitter by whole histogram buckets on a busy machine:
        // a slowdown must also be large in absolute terms.
        if stable.requests >= t.min_requests
            && stable.p99_ms > 0.0
            && candidate.p99_ms > t.max_latency_ratio * stable.p99_ms
            && candidate.p99_ms - stable.p99_ms >= MIN_LATENCY_GAP_MS
        {
            return Some(Verdict::Rollback(format!(
                "p99 latency {} ms against stable's {} ms: over {}x",
                candidate.p99_ms, stable.p99_ms, t.max_latency_ratio
            )));
        }
        let mismatch = candidate.mismatch_rate() * 100.0;
        if candidate.compared > 0 && mismatch > t.max_mismatch {
            return Some(Verdict::Rollback(format!(
                "{} of {} shadow answers ({mismatch:.1}%) differ from stable's: over the allowed {}%",
                candidate.mismatches, candidate.compared, t.max_mismatch
            )));
        }
    }
    if !step_over || candidate.requests < t.min_requests {
        return None;
    }
    // The last step is 100%: reaching it is the promotion.
    if r.step + 2 >= r.steps.len() {
        Some(Verdict::Promote)
    } else {
        Some(Verdict::Step)
    }
}

/// Which side a request goes to: with a sticky value, the same side for the same value; else
/// at random. True: the candidate.
pub fn to_candidate(percent: u8, sticky: Option<&[u8]>) -> bool {
    let roll = match sticky {
        Some(value) => {
            // FNV-1a: stable across nodes and restarts, so a client stays on its side.
            let hash = value.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
            });
            hash % 100
        }
        None => random() % 100,
    };
    roll < percent as u64
}

fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(0x9e37_79b9_7f4a_7c15),
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(step: usize) -> Rollout {
        Rollout {
            candidate: "c".into(),
            stable: "s".into(),
            steps: vec![5, 50, 100],
            step,
            interval_ms: 1000,
            sticky_header: None,
            shadow: None,
            thresholds: Thresholds::default(),
            state: State::Running,
            started_at: String::new(),
            decisions: Vec::new(),
        }
    }

    fn w(requests: u64, errors: u64, p99_ms: f64) -> Window {
        Window {
            requests,
            errors,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            ..Window::default()
        }
    }

    #[test]
    fn shadow_answers_that_differ_roll_back() {
        let mut r = rollout(0);
        r.steps = vec![0, 100];
        r.shadow = Some(Shadow {
            percent: 20,
            max_body: Shadow::MAX_BODY,
            tolerance: Shadow::TOLERANCE,
        });
        assert_eq!(r.phase(), "shadow");
        let shadowed = |compared, mismatches| Window {
            compared,
            mismatches,
            ..w(compared, 0, 1.0)
        };
        // One in a hundred is allowed by default; two are not.
        assert_eq!(
            decide(&r, &shadowed(100, 1), &w(500, 0, 1.0), true),
            Some(Verdict::Promote)
        );
        let v = decide(&r, &shadowed(100, 2), &w(500, 0, 1.0), false);
        assert!(matches!(v, Some(Verdict::Rollback(m)) if m.contains("2 of 100")));
        // Past the shadow phase the canary steps take over.
        r.steps = vec![0, 10, 100];
        assert_eq!(
            decide(&r, &shadowed(30, 0), &w(500, 0, 1.0), true),
            Some(Verdict::Step)
        );
        r.step = 1;
        assert_eq!((r.phase(), r.percent()), ("canary", 10));
        assert_eq!(r.shadowing(), None);
    }

    #[test]
    fn the_rule() {
        let r = rollout(0);
        // Too few requests: nothing, even with errors, even after the interval.
        assert_eq!(decide(&r, &w(5, 5, 1.0), &w(100, 0, 1.0), true), None);
        // A fifth failing: rolled back at once, before the interval is over.
        let v = decide(&r, &w(50, 10, 1.0), &w(100, 0, 1.0), false);
        assert!(matches!(v, Some(Verdict::Rollback(m)) if m.contains("20.0%")));
        // Slow: rolled back.
        assert!(matches!(
            decide(&r, &w(50, 0, 25.0), &w(100, 0, 10.0), false),
            Some(Verdict::Rollback(_))
        ));
        // Jitter of a few milliseconds is not a slowdown.
        assert_eq!(decide(&r, &w(50, 0, 2.5), &w(100, 0, 1.0), false), None);
        // Healthy: waits for the interval, then steps, then promotes after the last step.
        assert_eq!(decide(&r, &w(50, 1, 1.0), &w(100, 1, 1.0), false), None);
        assert_eq!(
            decide(&r, &w(50, 1, 1.0), &w(100, 1, 1.0), true),
            Some(Verdict::Step)
        );
        assert_eq!(
            decide(&rollout(1), &w(50, 0, 1.0), &w(9, 0, 1.0), true),
            Some(Verdict::Promote)
        );
    }

    #[test]
    fn sticky_values_stay_on_their_side_and_shares_hold() {
        for v in [&b"alice"[..], b"bob", b"carol"] {
            let first = to_candidate(30, Some(v));
            assert!((0..20).all(|_| to_candidate(30, Some(v)) == first));
        }
        let n = (0..10_000).filter(|_| to_candidate(20, None)).count();
        assert!((1_500..2_500).contains(&n), "{n}");
        assert!(!(0..1000).any(|_| to_candidate(0, None)));
        assert!((0..1000).all(|_| to_candidate(100, None)));
    }
}

/// `POST /admin/v1/functions/{name}/rollout`: what to roll out and how. Unset fields take the
/// documented defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The candidate: a version (id, digest or prefix) or an alias.
    pub candidate: String,
    /// The candidate's first share, in percent (default: the first step, else 5).
    #[serde(default)]
    pub canary: Option<u8>,
    /// The shares after it, ascending (default 5, 25, 50, 100; 100 is added when missing).
    #[serde(default)]
    pub steps: Option<Vec<u8>>,
    /// How long each step lasts (default `1m`).
    #[serde(default)]
    pub interval: Option<String>,
    /// A header whose value keeps each client on one side.
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// See [`Thresholds`] (default 5 points).
    #[serde(default)]
    pub max_error_increase: Option<f64>,
    /// See [`Thresholds`] (default 2).
    #[serde(default)]
    pub max_latency_ratio: Option<f64>,
    /// See [`Thresholds`] (default 20).
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// See [`Thresholds`] (default 1 percent).
    #[serde(default)]
    pub max_mismatch: Option<f64>,
    /// A shadow phase first, copying this share of requests (percent). Without `canary` or
    /// `steps`, a healthy shadow is promoted; with them, the canary follows.
    #[serde(default)]
    pub shadow: Option<u8>,
    /// See [`Shadow`]: a size such as `1MiB` (default).
    #[serde(default)]
    pub shadow_max_body: Option<String>,
    /// See [`Shadow`] (default 0.0001).
    #[serde(default)]
    pub tolerance: Option<f64>,
}

/// A rollout as the API shows it: the record (with short version ids), its function's name and
/// the candidate's share now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    /// Function name.
    pub name: String,
    /// The candidate's share now, in percent.
    pub percent: u8,
    /// `shadow`, `canary` or `done`.
    pub phase: String,
    /// The rollout.
    #[serde(flatten)]
    pub rollout: Rollout,
}

impl RolloutView {
    /// The view of `r`, a rollout of function `name`.
    pub fn of(name: &str, r: &Rollout) -> Self {
        let mut rollout = r.clone();
        for key in [&mut rollout.candidate, &mut rollout.stable] {
            *key = key.chars().take(12).collect();
        }
        Self {
            name: name.to_string(),
            percent: r.percent(),
            phase: r.phase().to_string(),
            rollout,
        }
    }
}
