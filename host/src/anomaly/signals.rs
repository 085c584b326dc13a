//! The rules for a function version: its numbers over the recent window against its rolling
//! baseline (the period before the window). A rule must hold on [`Rules::confirm`] evaluations in
//! a row to raise an anomaly and fail as many times to clear it; while one is raised its baseline
//! is frozen, so a fault that lasts does not become the new normal.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Kind;
use crate::rollout::{MIN_LATENCY_GAP_MS, Totals, Window};

/// The thresholds of the function rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// The recent window.
    pub window: Duration,
    /// The baseline: the period before the window.
    pub baseline: Duration,
    /// Requests a window needs before its error rate or latency means anything.
    pub min_requests: u64,
    /// `error_rate`: percentage points over the baseline's rate.
    pub max_error_increase: f64,
    /// `latency`: p50 or p99 over this multiple of the baseline's (and by 10 ms or more).
    pub max_latency_ratio: f64,
    /// `traffic_drop`: the recent rate under this share of the baseline's.
    pub traffic_drop_ratio: f64,
    /// `traffic_drop`: the least baseline rate (requests per second) that is watched.
    pub min_traffic: f64,
    /// Evaluations in a row a rule must hold (or fail) to raise (or clear).
    pub confirm: u32,
}

/// One version's totals over time, and the state of its rules.
#[derive(Default)]
pub struct History {
    snapshots: VecDeque<(Instant, Totals)>,
    rules: [RuleState; 3],
}

/// A rule's state.
#[derive(Default, Clone)]
struct RuleState {
    /// Evaluations in a row that disagreed with `active`.
    streak: u32,
    /// The frozen baseline while raised.
    active: Option<Frozen>,
}

#[derive(Clone, Copy)]
struct Frozen {
    baseline: Window,
    rate: f64,
}

/// What an evaluation found for one rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Newly raised: score and message.
    Raised(f64, String),
    /// Still raised: its score now.
    Still(f64),
    /// Newly cleared.
    Cleared,
}

/// What a rule sees in one evaluation.
struct Seen {
    recent: Window,
    recent_rate: f64,
    baseline: Window,
    baseline_rate: f64,
    /// Whether the history covers a whole window before the recent one.
    baseline_whole: bool,
}

const KINDS: [Kind; 3] = [Kind::ErrorRate, Kind::Latency, Kind::TrafficDrop];

impl History {
    /// Records `totals` at `now` and evaluates the rules (`traffic_drop` only when `live`).
    pub fn evaluate(
        &mut self,
        now: Instant,
        totals: Totals,
        live: bool,
        rules: &Rules,
    ) -> Vec<(Kind, Change)> {
        // A snapshot equal to the last one adds nothing: windows are differences, and their
        // durations come from the snapshots' times. So an idle version holds one or two.
        if self
            .snapshots
            .back()
            .is_none_or(|(_, last)| *last != totals)
        {
            self.snapshots.push_back((now, totals));
        }
        let horizon = rules.window + rules.baseline;
        // Keep one snapshot at or before the horizon: the baseline's start.
        while self.snapshots.len() > 2 && self.snapshots[1].0 + horizon <= now {
            self.snapshots.pop_front();
        }
        let Some(seen) = self.seen(now, rules) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        for (i, kind) in KINDS.into_iter().enumerate() {
            if kind == Kind::TrafficDrop && !live {
                // A version that stopped being live loses its traffic by design.
                if self.rules[i].active.is_some() {
                    self.rules[i] = RuleState::default();
                    changes.push((kind, Change::Cleared));
                }
                continue;
            }
            let state = &mut self.rules[i];
            let frozen = state.active.unwrap_or(Frozen {
                baseline: seen.baseline,
                rate: seen.baseline_rate,
            });
            let verdict = judge(kind, &seen, frozen, state.active.is_some(), rules);
            match (&state.active, verdict) {
                (None, Some((score, message))) => {
                    state.streak += 1;
                    if state.streak >= rules.confirm {
                        state.streak = 0;
                        state.active = Some(frozen);
                        changes.push((kind, Change::Raised(score, message)));
                    }
                }
                (None, None) => state.streak = 0,
                (Some(_), Some((score, _))) => {
                    state.streak = 0;
                    changes.push((kind, Change::Still(score)));
                }
                (Some(_), None) => {
                    state.streak += 1;
                    if state.streak >= rules.confirm {
                        *state = RuleState::default();
                        changes.push((kind, Change::Cleared));
                    }
                }
            }
        }
        changes
    }

    /// The recent window and the baseline before it, once the history spans a whole window.
    fn seen(&self, now: Instant, rules: &Rules) -> Option<Seen> {
        let (first_at, first) = self.snapshots.front()?;
        let (_, last) = self.snapshots.back()?;
        // The recent window starts at the last snapshot at or before `now - window`.
        let (start_at, start) = self
            .snapshots
            .iter()
            .rev()
            .find(|(at, _)| *at + rules.window <= now)?;
        // Snapshots are only kept when something changed, so a window's first snapshot may be
        // older than the window: nothing happened in between, and the rate is over the window.
        let secs = |d: Duration, most: Duration| d.min(most).as_secs_f64().max(1e-3);
        let recent = last.since(start);
        let baseline = start.since(first);
        Some(Seen {
            recent_rate: recent.requests as f64 / secs(now - *start_at, rules.window),
            recent,
            baseline_rate: baseline.requests as f64 / secs(*start_at - *first_at, rules.baseline),
            baseline,
            baseline_whole: *start_at - *first_at >= rules.window,
        })
    }
}

/// Whether `kind` holds: its score and message. While raised (`active`) the rule clears only
/// well inside its threshold (half the error increase, the midpoint of the latency ratio, twice
/// the traffic share), so a value that hovers at the threshold does not flap.
fn judge(
    kind: Kind,
    seen: &Seen,
    base: Frozen,
    active: bool,
    rules: &Rules,
) -> Option<(f64, String)> {
    let r = &seen.recent;
    match kind {
        Kind::ErrorRate => {
            if r.requests < rules.min_requests {
                return None;
            }
            let rate = |w: &Window| w.errors as f64 / w.requests.max(1) as f64 * 100.0;
            let base_rate = if base.baseline.requests >= rules.min_requests {
                rate(&base.baseline)
            } else {
                0.0
            };
            let limit = match active {
                true => rules.max_error_increase / 2.0,
                false => rules.max_error_increase,
            };
            (rate(r) - base_rate > limit).then(|| {
                (
                    rate(r),
                    format!(
                        "error rate {:.1}% over the last {}s against {:.1}% before",
                        rate(r),
                        rules.window.as_secs_f64(),
                        base_rate
                    ),
                )
            })
        }
        Kind::Latency => {
            let b = &base.baseline;
            if r.requests < rules.min_requests || b.requests < rules.min_requests {
                return None;
            }
            let ratio = match active {
                true => (1.0 + rules.max_latency_ratio) / 2.0,
                false => rules.max_latency_ratio,
            };
            let slower = |now: f64, before: f64| {
                before > 0.0 && now > ratio * before && now - before >= MIN_LATENCY_GAP_MS
            };
            (slower(r.p50_ms, b.p50_ms) || slower(r.p99_ms, b.p99_ms)).then(|| {
                (
                    r.p99_ms / b.p99_ms.max(1e-3),
                    format!(
                        "latency p50 {} ms, p99 {} ms against {} ms and {} ms before",
                        r.p50_ms, r.p99_ms, b.p50_ms, b.p99_ms
                    ),
                )
            })
        }
        Kind::TrafficDrop => {
            // Once raised, the frozen baseline is the measure, however little history is left.
            if !active && (!seen.baseline_whole || base.rate < rules.min_traffic) {
                return None;
            }
            let share = match active {
                true => rules.traffic_drop_ratio * 2.0,
                false => rules.traffic_drop_ratio,
            };
            let ratio = seen.recent_rate / base.rate;
            (ratio < share).then(|| {
                (
                    ratio,
                    format!(
                        "{:.2} requests/s over the last {}s against {:.2}/s before",
                        seen.recent_rate,
                        rules.window.as_secs_f64(),
                        base.rate
                    ),
                )
            })
        }
        Kind::OutputDrift => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::VersionStats;

    const RULES: Rules = Rules {
        window: Duration::from_secs(10),
        baseline: Duration::from_secs(60),
        min_requests: 20,
        max_error_increase: 5.0,
        max_latency_ratio: 2.0,
        traffic_drop_ratio: 0.1,
        min_traffic: 1.0,
        confirm: 2,
    };

    /// Drives a history with one evaluation a second: `per_second` answers of `status` taking
    /// `ms` each, for `seconds`; returns every change.
    fn drive(
        h: &mut History,
        stats: &VersionStats,
        clock: &mut Instant,
        seconds: u32,
        (per_second, status, ms): (u32, u16, u64),
    ) -> Vec<(Kind, Change)> {
        let mut changes = Vec::new();
        for _ in 0..seconds {
            for _ in 0..per_second {
                stats.record(status);
                stats.observe(Duration::from_millis(ms));
            }
            *clock += Duration::from_secs(1);
            changes.extend(h.evaluate(*clock, stats.totals(), true, &RULES));
        }
        changes
    }

    /// The kinds raised (`true`) or cleared (`false`) in `changes`.
    fn kinds(changes: &[(Kind, Change)], raised: bool) -> Vec<Kind> {
        let wanted = |c: &Change| match raised {
            true => matches!(c, Change::Raised(..)),
            false => *c == Change::Cleared,
        };
        changes
            .iter()
            .filter(|(_, c)| wanted(c))
            .map(|(k, _)| *k)
            .collect()
    }

    #[test]
    fn faults_are_raised_held_and_cleared_and_steady_traffic_raises_nothing() {
        let (mut h, stats, mut clock) =
            (History::default(), VersionStats::default(), Instant::now());
        assert!(drive(&mut h, &stats, &mut clock, 120, (50, 200, 2)).is_empty());
        // Failing: raised after two evaluations, held while it lasts (the baseline is frozen).
        let failing = drive(&mut h, &stats, &mut clock, 90, (50, 500, 2));
        assert_eq!(kinds(&failing, true), [Kind::ErrorRate]);
        assert!(kinds(&failing, false).is_empty());
        let healed = drive(&mut h, &stats, &mut clock, 30, (50, 200, 2));
        assert_eq!(kinds(&healed, false), [Kind::ErrorRate]);
        // Slower by 50 ms.
        drive(&mut h, &stats, &mut clock, 80, (50, 200, 2));
        let slow = drive(&mut h, &stats, &mut clock, 20, (50, 200, 60));
        assert_eq!(kinds(&slow, true), [Kind::Latency]);
        let fast = drive(&mut h, &stats, &mut clock, 30, (50, 200, 2));
        assert_eq!(kinds(&fast, false), [Kind::Latency]);
        // Traffic stops.
        drive(&mut h, &stats, &mut clock, 80, (50, 200, 2));
        let stopped = drive(&mut h, &stats, &mut clock, 200, (0, 200, 2));
        assert_eq!(kinds(&stopped, true), [Kind::TrafficDrop]);
        // An idle version holds almost no history.
        assert!(h.snapshots.len() <= 3, "{}", h.snapshots.len());
        let back = drive(&mut h, &stats, &mut clock, 30, (50, 200, 2));
        assert_eq!(kinds(&back, false), [Kind::TrafficDrop]);
    }
}
