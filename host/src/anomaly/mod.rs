//! Anomalies: the node watches every function version's error rate, latency and traffic against
//! its own rolling baseline ([`signals`]) and every model version's outputs against what it
//! answered when it started serving ([`drift`]), and raises and clears anomalies by itself. They
//! show in `GET /admin/v1/anomalies`, on `/metrics`, in the audit log, and at an optional webhook
//! ([`webhook`]). The [`Detector`] runs once per `interval` on numbers the request path already
//! keeps, so watching costs requests nothing but a few atomics (and a few floats per inference).

pub mod drift;
mod signals;
pub mod webhook;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::parse_duration;
use crate::rollout::Totals;
use crate::time::now_rfc3339;
pub use drift::{DriftWindows, OutputProfile, Outputs};
pub use signals::Rules;
use signals::{Change, History};

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// More 5xx than the baseline.
    ErrorRate,
    /// Slower p50 or p99 than the baseline.
    Latency,
    /// Far fewer requests than the baseline (the live version only).
    TrafficDrop,
    /// A model version's outputs moved away from its reference.
    OutputDrift,
}

impl Kind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::ErrorRate => "error_rate",
            Self::Latency => "latency",
            Self::TrafficDrop => "traffic_drop",
            Self::OutputDrift => "output_drift",
        }
    }
}

/// An anomaly, raised and not yet cleared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The function, for function anomalies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The model, for `output_drift`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Its owner, on a node with tenants (absent: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The version (id).
    pub version: String,
    /// What is wrong.
    pub kind: Kind,
    /// How much: the error rate in percent, the p99 ratio, the traffic ratio, or the PSI.
    pub score: f64,
    /// What was seen, in words.
    pub message: String,
    /// When it was raised (RFC 3339).
    pub since: String,
}

/// A change: an anomaly raised or cleared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When (RFC 3339).
    pub time: String,
    /// `raised` or `cleared`.
    pub event: String,
    /// The anomaly (as it was when cleared).
    #[serde(flatten)]
    pub anomaly: Anomaly,
}

/// `GET /admin/v1/anomalies`: what is wrong now, and the latest changes (newest last).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AnomalyList {
    /// Active anomalies.
    pub active: Vec<Anomaly>,
    /// The latest raised and cleared events.
    pub events: Vec<Event>,
}

/// `[anomalies]` in the config, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAnomalies {
    enabled: Option<bool>,
    interval: Option<String>,
    window: Option<String>,
    baseline: Option<String>,
    min_requests: Option<u64>,
    max_error_increase: Option<f64>,
    max_latency_ratio: Option<f64>,
    traffic_drop_ratio: Option<f64>,
    min_traffic: Option<f64>,
    confirm: Option<u32>,
    drift_reference: Option<usize>,
    drift_window: Option<usize>,
    drift_threshold: Option<f64>,
}

/// How anomalies are detected.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyConfig {
    /// Whether the node detects anomalies at all (and samples model outputs).
    pub enabled: bool,
    /// How often the detector evaluates.
    pub interval: Duration,
    /// The function rules.
    pub rules: Rules,
    /// The drift windows.
    pub drift: DriftWindows,
    /// PSI over which an output drifts (clears under 40% of it).
    pub drift_threshold: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self::from_file(FileAnomalies::default()).expect("the defaults are valid")
    }
}

impl AnomalyConfig {
    /// Checks `[anomalies]`.
    pub fn from_file(f: FileAnomalies) -> anyhow::Result<Self> {
        let duration = |v: &Option<String>, default: u64, what: &str| -> anyhow::Result<Duration> {
            match v {
                Some(text) => {
                    parse_duration(text).map_err(|e| anyhow::anyhow!("anomalies.{what}: {e:#}"))
                }
                None => Ok(Duration::from_secs(default)),
            }
        };
        let c = Self {
            enabled: f.enabled.unwrap_or(true),
            interval: duration(&f.interval, 10, "interval")?,
            rules: Rules {
                window: duration(&f.window, 300, "window")?,
                baseline: duration(&f.baseline, 3600, "baseline")?,
                min_requests: f.min_requests.unwrap_or(20),
                max_error_increase: f.max_error_increase.unwrap_or(5.0),
                max_latency_ratio: f.max_latency_ratio.unwrap_or(2.0),
                traffic_drop_ratio: f.traffic_drop_ratio.unwrap_or(0.1),
                min_traffic: f.min_traffic.unwrap_or(0.1),
                confirm: f.confirm.unwrap_or(2),
            },
            drift: DriftWindows {
                reference: f.drift_reference.unwrap_or(1000),
                recent: f.drift_window.unwrap_or(1000),
            },
            drift_threshold: f.drift_threshold.unwrap_or(0.25),
        };
        let r = &c.rules;
        anyhow::ensure!(
            c.interval >= Duration::from_millis(100) && r.window >= c.interval,
            "anomalies.interval must be at least 100ms and anomalies.window at least the interval"
        );
        anyhow::ensure!(
            (1..=100).contains(&r.confirm),
            "anomalies.confirm must be 1 to 100"
        );
        anyhow::ensure!(
            (0.0..=100.0).contains(&r.max_error_increase)
                && (1.0..=1000.0).contains(&r.max_latency_ratio)
                && (0.0..1.0).contains(&r.traffic_drop_ratio)
                && r.min_traffic.is_finite()
                && r.min_traffic >= 0.0,
            "anomalies: max_error_increase is 0 to 100, max_latency_ratio 1 to 1000, traffic_drop_ratio 0 to 1, min_traffic >= 0"
        );
        anyhow::ensure!(
            (10..=1_000_000).contains(&c.drift.reference)
                && (10..=1_000_000).contains(&c.drift.recent),
            "anomalies.drift_reference and drift_window must be 10 to 1000000 samples"
        );
        anyhow::ensure!(
            c.drift_threshold > 0.0 && c.drift_threshold.is_finite(),
            "anomalies.drift_threshold must be a positive number (0.25: a large shift)"
        );
        Ok(c)
    }
}

/// One function version as the detector sees it on a pass.
pub struct Observed {
    /// The function's key (`tenant/name` or `name`).
    pub function: crate::key::FunctionKey,
    /// The version id.
    pub version: String,
    /// Whether it is the live version.
    pub live: bool,
    /// Its totals now.
    pub totals: Totals,
}

/// Events kept in memory for the API.
const MAX_EVENTS: usize = 200;

/// Who an anomaly is about: function or model key, version, kind.
type Subject = (String, String, Kind);

/// The detector: function histories, drift latches, active anomalies and the latest events.
pub struct Detector {
    config: AnomalyConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By subject (`function:KEY` or `model:KEY`) and version.
    histories: HashMap<(String, String), History>,
    /// Output-drift streaks, by the same.
    drift: HashMap<(String, String), u32>,
    active: BTreeMap<Subject, Anomaly>,
    events: VecDeque<Event>,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new(AnomalyConfig::default())
    }
}

impl Detector {
    /// A detector with `config`.
    pub fn new(config: AnomalyConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The config it runs with.
    pub fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    /// One pass over every function version and model version; returns the events it made.
    pub fn evaluate(&self, now: Instant, versions: Vec<Observed>, outputs: &Outputs) -> Vec<Event> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        let mut made = Vec::new();
        let mut seen = HashSet::new();
        for o in versions {
            let id = (format!("function:{}", o.function), o.version.clone());
            seen.insert(id.clone());
            let fresh = |kind| Anomaly {
                function: Some(o.function.name().to_string()),
                model: None,
                tenant: o.function.tenant().map(str::to_string),
                version: o.version.clone(),
                kind,
                score: 0.0,
                message: String::new(),
                since: now_rfc3339(),
            };
            self.evaluate_rules(state, &mut made, (now, id, o.totals, o.live), fresh);
        }
        // Model versions: their inferences as a function's requests (no traffic rule: a pinned
        // version loses its traffic by design), then their outputs.
        for (model, version, profile) in outputs.all() {
            let id = (format!("model:{model}"), version.clone());
            seen.insert(id.clone());
            let (tenant, name) = match model.split_once('/') {
                Some((t, n)) => (Some(t.to_string()), n.to_string()),
                None => (None, model.clone()),
            };
            let fresh = |kind| Anomaly {
                function: None,
                model: Some(name.clone()),
                tenant: tenant.clone(),
                version: version.clone(),
                kind,
                score: 0.0,
                message: String::new(),
                since: now_rfc3339(),
            };
            let totals = profile.inferences.totals();
            self.evaluate_rules(state, &mut made, (now, id.clone(), totals, false), fresh);
            self.evaluate_drift(state, &mut made, id, &profile, fresh);
        }
        // Versions no longer retained or served: forget them, and clear what they had raised.
        state.histories.retain(|id, _| seen.contains(id));
        state.drift.retain(|id, _| seen.contains(id));
        let gone: Vec<Subject> = (state.active.keys())
            .filter(|(s, v, _)| !seen.contains(&(s.clone(), v.clone())))
            .cloned()
            .collect();
        for subject in gone {
            clear(state, &mut made, &subject);
        }
        made
    }

    /// Runs the rate and latency rules of one version on its totals now.
    fn evaluate_rules(
        &self,
        state: &mut State,
        made: &mut Vec<Event>,
        (now, id, totals, live): (Instant, (String, String), Totals, bool),
        fresh: impl Fn(Kind) -> Anomaly,
    ) {
        let history = state.histories.entry(id.clone()).or_default();
        for (kind, change) in history.evaluate(now, totals, live, &self.config.rules) {
            let subject = (id.0.clone(), id.1.clone(), kind);
            apply(state, made, subject, change, || fresh(kind));
        }
    }

    /// The drift rule of one model version.
    fn evaluate_drift(
        &self,
        state: &mut State,
        made: &mut Vec<Event>,
        id: (String, String),
        profile: &OutputProfile,
        fresh: impl Fn(Kind) -> Anomaly,
    ) {
        let threshold = self.config.drift_threshold;
        let worst = profile
            .drift()
            .into_iter()
            .max_by(|a, b| a.psi.total_cmp(&b.psi));
        let Some(worst) = worst else {
            return;
        };
        let subject = (id.0.clone(), id.1.clone(), Kind::OutputDrift);
        let active = state.active.contains_key(&subject);
        let holds = match active {
            true => worst.psi >= threshold * 0.4,
            false => worst.psi > threshold,
        };
        let streak = state.drift.entry(id).or_default();
        let change = match (active, holds) {
            (true, true) => {
                *streak = 0;
                Change::Still(worst.psi)
            }
            (false, false) => {
                *streak = 0;
                return;
            }
            _ => {
                *streak += 1;
                if *streak < self.config.rules.confirm {
                    return;
                }
                *streak = 0;
                if active {
                    Change::Cleared
                } else {
                    Change::Raised(
                        worst.psi,
                        format!(
                            "output `{}` drifted: PSI {:.3} of the last {} samples against the first {} (over {threshold})",
                            worst.output,
                            worst.psi,
                            self.config.drift.recent,
                            self.config.drift.reference
                        ),
                    )
                }
            }
        };
        apply(state, made, subject, change, || fresh(Kind::OutputDrift));
    }

    /// The active anomalies and latest events, of one tenant (`Some`) or all (`None`).
    pub fn list(&self, tenant: Option<&str>) -> AnomalyList {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mine = |a: &Anomaly| tenant.is_none() || a.tenant.as_deref() == tenant;
        AnomalyList {
            active: state.active.values().filter(|a| mine(a)).cloned().collect(),
            events: state
                .events
                .iter()
                .filter(|e| mine(&e.anomaly))
                .cloned()
                .collect(),
        }
    }

    /// `tensorlet_anomaly{function|model,version,kind}` (1 while active) and
    /// `tensorlet_anomaly_score{...}`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP tensorlet_anomaly 1 while an anomaly is raised.\n# TYPE tensorlet_anomaly gauge\n");
        let labels = |a: &Anomaly| {
            let (what, name) = match (&a.function, &a.model) {
                (Some(f), _) => ("function", f),
                (None, Some(m)) => ("model", m),
                (None, None) => ("function", &a.version),
            };
            let tenant = a
                .tenant
                .as_deref()
                .map(|t| format!(",tenant=\"{t}\""))
                .unwrap_or_default();
            format!(
                "{what}=\"{name}\"{tenant},version=\"{}\",kind=\"{}\"",
                a.version,
                a.kind.label()
            )
        };
        for a in state.active.values() {
            let _ = writeln!(out, "tensorlet_anomaly{{{}}} 1", labels(a));
        }
        out.push_str("# HELP tensorlet_anomaly_score The score of a raised anomaly (error rate in percent, p99 ratio, traffic ratio, or PSI).\n# TYPE tensorlet_anomaly_score gauge\n");
        for a in state.active.values() {
            let _ = writeln!(out, "tensorlet_anomaly_score{{{}}} {}", labels(a), a.score);
        }
    }
}

/// Applies one rule's change to the active set (`fresh`: the anomaly, were it raised now).
fn apply(
    state: &mut State,
    made: &mut Vec<Event>,
    subject: Subject,
    change: Change,
    fresh: impl FnOnce() -> Anomaly,
) {
    match change {
        Change::Raised(score, message) => {
            let mut a = fresh();
            a.score = score;
            a.message = message;
            state.active.insert(subject, a.clone());
            record(state, made, "raised", a);
        }
        Change::Still(score) => {
            if let Some(a) = state.active.get_mut(&subject) {
                a.score = score;
            }
        }
        Change::Cleared => clear(state, made, &subject),
    }
}

fn clear(state: &mut State, made: &mut Vec<Event>, subject: &Subject) {
    if let Some(a) = state.active.remove(subject) {
        record(state, made, "cleared", a);
    }
}

fn record(state: &mut State, made: &mut Vec<Event>, event: &str, anomaly: Anomaly) {
    let e = Event {
        time: now_rfc3339(),
        event: event.to_string(),
        anomaly,
    };
    state.events.push_back(e.clone());
    while state.events.len() > MAX_EVENTS {
        state.events.pop_front();
    }
    made.push(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::drift::DriftWindows;

    fn detector() -> Detector {
        let mut config = AnomalyConfig::default();
        config.rules.window = Duration::from_secs(10);
        config.rules.baseline = Duration::from_secs(60);
        Detector::new(config)
    }

    #[test]
    fn a_failing_model_version_is_raised_and_cleared_when_it_is_no_longer_served() {
        let (d, outputs, mut now) = (detector(), Outputs::default(), Instant::now());
        let windows = DriftWindows {
            reference: 100,
            recent: 100,
        };
        let p = outputs.profile("acme/minilm", "2f62c9bfb830", windows);
        let mut events = Vec::new();
        for second in 0..60 {
            for _ in 0..30 {
                // Healthy for 40 s, then every compute fails.
                p.inferences.record(if second < 40 { 200 } else { 500 });
                p.inferences.observe(Duration::from_millis(3));
            }
            now += Duration::from_secs(1);
            events.extend(d.evaluate(now, Vec::new(), &outputs));
        }
        let raised: Vec<&Event> = events.iter().filter(|e| e.event == "raised").collect();
        assert_eq!(raised.len(), 1, "{events:?}");
        let a = &raised[0].anomaly;
        assert_eq!(
            (
                a.kind,
                a.model.as_deref(),
                a.tenant.as_deref(),
                a.function.as_deref()
            ),
            (Kind::ErrorRate, Some("minilm"), Some("acme"), None)
        );
        assert_eq!(d.list(Some("acme")).active.len(), 1);
        assert!(d.list(Some("other")).active.is_empty());
        let mut text = String::new();
        d.render(&mut text);
        assert!(text.contains(
            "tensorlet_anomaly{model=\"minilm\",tenant=\"acme\",version=\"2f62c9bfb830\",kind=\"error_rate\"} 1"
        ));
        // The version is no longer served: its anomaly clears with it.
        outputs.retain(|_, _| false);
        let cleared = d.evaluate(now + Duration::from_secs(1), Vec::new(), &outputs);
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].event, "cleared");
        assert!(d.list(None).active.is_empty());
    }
}
