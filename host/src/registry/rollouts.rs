//! Rollouts in the registry: starting one, its status, promoting or aborting it by hand, and the
//! analysis pass that steps, promotes or rolls back by itself (the rule is
//! [`crate::rollout::decide`]). Every decision is an ordinary commit, so it is durable, survives
//! restarts and reaches every node of a fleet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{AdminState, Registry, RegistryError, rules};
use crate::config::{format_size, parse_duration, parse_size};
use crate::key::FunctionKey;
use crate::rollout::{
    Decision, Peers, Rollout, RolloutRequest, RolloutTotals, RolloutView, Shadow, State,
    Thresholds, Totals, Verdict, Window, decide,
};
use crate::time::now_rfc3339;

/// Decisions kept per rollout.
const MAX_DECISIONS: usize = 200;

/// What the analysis compares a step against: both versions' totals when the step began here.
pub struct Baseline {
    step: usize,
    candidate_key: String,
    since: Instant,
    candidate: Totals,
    stable: Totals,
}

/// The analysis's memory between passes, per function.
pub type Baselines = HashMap<FunctionKey, Baseline>;

fn invalid(message: String) -> RegistryError {
    RegistryError::invalid_request(message)
}

/// What a request asks for, checked.
struct Plan {
    steps: Vec<u8>,
    interval: Duration,
    thresholds: Thresholds,
    shadow: Option<Shadow>,
}

/// Checks a request's numbers; the steps, interval, thresholds and shadow to use.
fn plan(req: &RolloutRequest) -> Result<Plan, RegistryError> {
    let canary_asked = req.canary.is_some() || req.steps.is_some();
    let mut steps = match (&req.steps, req.shadow) {
        (Some(steps), _) => steps.clone(),
        // A shadow alone is promoted once healthy.
        (None, Some(_)) if !canary_asked => vec![100],
        (None, _) => vec![5, 25, 50, 100],
    };
    if let Some(first) = req.canary {
        steps.retain(|s| *s > first);
        steps.insert(0, first);
    }
    if steps.last() != Some(&100) {
        steps.push(100);
    }
    if steps.iter().any(|s| !(1..=100).contains(s)) || steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid(format!(
            "steps {steps:?} must be ascending shares from 1 to 100 percent (e.g. --canary 5 --steps 5,25,50,100)"
        )));
    }
    let interval = match &req.interval {
        Some(text) => parse_duration(text).map_err(|e| invalid(format!("bad interval: {e:#}")))?,
        None => Duration::from_secs(60),
    };
    if !(Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&interval) {
        return Err(invalid("interval must be between 100ms and 24h".into()));
    }
    let d = Thresholds::default();
    let t = Thresholds {
        max_error_increase: req.max_error_increase.unwrap_or(d.max_error_increase),
        max_latency_ratio: req.max_latency_ratio.unwrap_or(d.max_latency_ratio),
        min_requests: req.min_requests.unwrap_or(d.min_requests),
        max_mismatch: req.max_mismatch.unwrap_or(d.max_mismatch),
    };
    if !(0.0..=100.0).contains(&t.max_error_increase) {
        return Err(invalid(
            "max_error_increase must be 0 to 100 (percentage points)".into(),
        ));
    }
    if !(1.0..=1000.0).contains(&t.max_latency_ratio) {
        return Err(invalid("max_latency_ratio must be 1 to 1000".into()));
    }
    if !(1..=1_000_000).contains(&t.min_requests) {
        return Err(invalid("min_requests must be 1 to 1000000".into()));
    }
    if !(0.0..=100.0).contains(&t.max_mismatch) {
        return Err(invalid("max_mismatch must be 0 to 100 (percent)".into()));
    }
    let shadow = match req.shadow {
        Some(percent) => Some(shadow(req, percent)?),
        None if req.shadow_max_body.is_some() || req.tolerance.is_some() => {
            return Err(invalid(
                "shadow_max_body and tolerance apply to a shadow: add --shadow PERCENT".into(),
            ));
        }
        None => None,
    };
    if shadow.is_some() {
        // Step 0 at 0%: the shadow phase.
        steps.insert(0, 0);
    }
    Ok(Plan {
        steps,
        interval,
        thresholds: t,
        shadow,
    })
}

/// The shadow phase a request asks for, checked.
fn shadow(req: &RolloutRequest, percent: u8) -> Result<Shadow, RegistryError> {
    if !(1..=100).contains(&percent) {
        return Err(invalid(format!(
            "shadow {percent} must be a share of 1 to 100 percent of requests"
        )));
    }
    let max_body = match &req.shadow_max_body {
        Some(text) => {
            parse_size(text).map_err(|e| invalid(format!("bad shadow_max_body: {e:#}")))?
        }
        None => Shadow::MAX_BODY,
    };
    if max_body > Shadow::MAX_CAP {
        return Err(invalid(format!(
            "shadow_max_body must be at most {}",
            format_size(Shadow::MAX_CAP)
        )));
    }
    let tolerance = req.tolerance.unwrap_or(Shadow::TOLERANCE);
    if !(0.0..=1.0).contains(&tolerance) {
        return Err(invalid(
            "tolerance must be 0 to 1 (relative; e.g. 0.0001)".into(),
        ));
    }
    Ok(Shadow {
        percent,
        max_body,
        tolerance,
    })
}

impl Registry {
    /// Starts a canary of `req.candidate` against the live version.
    pub async fn start_rollout(
        &self,
        name: &FunctionKey,
        req: RolloutRequest,
    ) -> Result<RolloutView, RegistryError> {
        let Plan {
            steps,
            interval,
            thresholds,
            shadow,
        } = plan(&req)?;
        if let Some(h) = &req.sticky_header
            && h.parse::<http::HeaderName>().is_err()
        {
            return Err(invalid(format!(
                "`{}` is not a header name",
                h.escape_default()
            )));
        }
        let mut state = self.admin.lock().await;
        let f = rules::function(&state.meta, name)?;
        if state
            .meta
            .rollouts
            .get(name)
            .is_some_and(|r| r.state == State::Running)
        {
            return Err(RegistryError::RolloutExists(name.name().to_string()));
        }
        let candidate = match f.aliases.get(&req.candidate) {
            Some(key) => key.clone(),
            None => rules::resolve(name.name(), f, &req.candidate)?
                .key()
                .to_string(),
        };
        if candidate == f.live {
            return Err(invalid(format!(
                "version {} of `{}` is live already: stage another (`tensorlet deploy --stage`)",
                crate::store::short_id(&candidate),
                name.name()
            )));
        }
        let rollout = Rollout {
            stable: f.live.clone(),
            candidate,
            decisions: vec![Decision {
                time: now_rfc3339(),
                decision: "start".into(),
                percent: steps[0],
                reason: "started".into(),
                candidate: Window::default(),
                stable: Window::default(),
            }],
            steps,
            step: 0,
            interval_ms: interval.as_millis() as u64,
            sticky_header: req.sticky_header.map(|h| h.to_ascii_lowercase()),
            shadow,
            thresholds,
            state: State::Running,
            started_at: now_rfc3339(),
        };
        self.commit(&mut state, |meta| {
            meta.rollouts.insert(name.clone(), rollout.clone());
            Ok(())
        })
        .await?;
        self.metrics.rollouts.count(&name.to_string(), "start");
        tracing::info!(function = %name, candidate = crate::store::short_id(&rollout.candidate), "rollout started");
        Ok(RolloutView::of(name.name(), &rollout))
    }

    /// A function's rollout, running or last finished.
    pub async fn rollout(&self, name: &FunctionKey) -> Result<RolloutView, RegistryError> {
        let state = self.admin.lock().await;
        rules::function(&state.meta, name)?;
        let r = state
            .meta
            .rollouts
            .get(name)
            .ok_or_else(|| RegistryError::RolloutNotFound(name.name().to_string()))?;
        Ok(RolloutView::of(name.name(), r))
    }

    /// Ends a running rollout by hand: `promote` makes the candidate live, `abort` keeps stable.
    pub async fn finish_rollout(
        &self,
        name: &FunctionKey,
        promote: bool,
    ) -> Result<RolloutView, RegistryError> {
        let mut state = self.admin.lock().await;
        let (decision, reason) = match promote {
            true => ("promote", "promoted by hand"),
            false => ("abort", "aborted by hand"),
        };
        let r = self
            .conclude(
                &mut state,
                name,
                None,
                decision,
                reason.into(),
                Window::default(),
                Window::default(),
            )
            .await?;
        Ok(RolloutView::of(name.name(), &r))
    }

    /// Commits a decision on `name`'s running rollout (at `step`, when given: a pass that read an
    /// older state decides nothing).
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &self,
        state: &mut AdminState,
        name: &FunctionKey,
        step: Option<usize>,
        decision: &str,
        reason: String,
        candidate: Window,
        stable: Window,
    ) -> Result<Rollout, RegistryError> {
        let r = state
            .meta
            .rollouts
            .get(name)
            .filter(|r| r.state == State::Running)
            .ok_or_else(|| RegistryError::RolloutNotFound(name.name().to_string()))?;
        if step.is_some_and(|s| s != r.step) {
            return Ok(r.clone());
        }
        let now = now_rfc3339();
        let r = self
            .commit(state, |meta| {
                let mut r = meta.rollouts.get(name).cloned().expect("checked above");
                match decision {
                    "step" => r.step += 1,
                    "promote" => {
                        r.state = State::Promoted;
                        rules::function_mut(meta, name)?.make_live(&r.candidate, now.clone());
                    }
                    "rollback" => r.state = State::RolledBack,
                    _ => r.state = State::Aborted,
                }
                r.decisions.push(Decision {
                    time: now.clone(),
                    decision: decision.to_string(),
                    percent: if r.state == State::Promoted {
                        100
                    } else {
                        r.percent()
                    },
                    reason: reason.clone(),
                    candidate,
                    stable,
                });
                let over = r.decisions.len().saturating_sub(MAX_DECISIONS);
                r.decisions.drain(..over);
                meta.rollouts.insert(name.clone(), r.clone());
                Ok(r)
            })
            .await?;
        self.metrics.rollouts.count(&name.to_string(), decision);
        self.metrics
            .rollouts
            .set_percent(&name.to_string(), r.percent());
        tracing::info!(function = %name, decision, reason = %r.decisions.last().map(|d| d.reason.as_str()).unwrap_or(""), "rollout decision");
        Ok(r)
    }

    /// What this node has served of the versions in running rollouts (for its fleet report).
    pub async fn rollout_totals(&self) -> RolloutTotals {
        let keys: Vec<(FunctionKey, [String; 2])> = {
            let state = self.admin.lock().await;
            (state.meta.rollouts.iter())
                .filter(|(_, r)| r.state == State::Running)
                .map(|(n, r)| (n.clone(), [r.candidate.clone(), r.stable.clone()]))
                .collect()
        };
        let mut totals = RolloutTotals::new();
        for (name, versions) in keys {
            let Some(routes) = self.routes(&name) else {
                continue;
            };
            let of = totals.entry(name.to_string()).or_default();
            for key in versions {
                if let Some(d) = routes.version(&key) {
                    of.insert(key, d.stats.totals());
                }
            }
        }
        totals
    }

    /// One pass of the analysis over every running rollout (the node runs one every 250 ms),
    /// on this node's numbers plus `peers'` (a fleet's other nodes), and only if this node
    /// decides. Returns the decisions it committed: function, decision and reason.
    pub async fn analyze_rollouts(
        &self,
        baselines: &mut Baselines,
        peers: &Peers,
    ) -> Vec<(FunctionKey, String, String)> {
        if !peers.leader {
            baselines.clear();
            return Vec::new();
        }
        let mut made = Vec::new();
        let running: Vec<(FunctionKey, Rollout, String)> = {
            let state = self.admin.lock().await;
            state
                .meta
                .rollouts
                .iter()
                .filter(|(_, r)| r.state == State::Running)
                .filter_map(|(name, r)| {
                    let live = state.meta.functions.get(name)?.live.clone();
                    Some((name.clone(), r.clone(), live))
                })
                .collect()
        };
        baselines.retain(|name, _| running.iter().any(|(n, _, _)| n == name));
        for (name, r, live) in running {
            let verdict = if live != r.stable {
                Some((
                    "abort",
                    "live moved by other means (a deploy or rollback)".to_string(),
                    None,
                ))
            } else {
                self.judge(&name, &r, baselines, peers)
            };
            let Some((decision, reason, windows)) = verdict else {
                self.metrics
                    .rollouts
                    .set_percent(&name.to_string(), r.percent());
                continue;
            };
            let (wc, ws) = windows.unwrap_or_default();
            let mut state = self.admin.lock().await;
            let concluded = self
                .conclude(
                    &mut state,
                    &name,
                    Some(r.step),
                    decision,
                    reason.clone(),
                    wc,
                    ws,
                )
                .await;
            match concluded {
                Ok(_) => made.push((name.clone(), decision.to_string(), reason)),
                Err(e) => tracing::warn!(function = %name, "rollout decision not committed: {e}"),
            }
            baselines.remove(&name);
        }
        made
    }

    /// The verdict on one rollout's current step, from this node's numbers.
    #[allow(clippy::type_complexity)]
    fn judge(
        &self,
        name: &FunctionKey,
        r: &Rollout,
        baselines: &mut Baselines,
        peers: &Peers,
    ) -> Option<(&'static str, String, Option<(Window, Window)>)> {
        let routes = self.routes(name)?;
        let (candidate, stable) = (routes.version(&r.candidate)?, routes.version(&r.stable)?);
        // This node's totals plus every other live node's.
        let function = name.to_string();
        let summed = |local: Totals, key: &str| {
            let mut sum = local;
            let theirs = peers
                .totals
                .iter()
                .filter_map(|t| t.get(&function)?.get(key));
            theirs.for_each(|t| sum.add(t));
            sum
        };
        let candidate_now = summed(candidate.stats.totals(), &r.candidate);
        let stable_now = summed(stable.stats.totals(), &r.stable);
        let fresh = |b: &Baseline| b.step != r.step || b.candidate_key != r.candidate;
        if baselines.get(name).is_none_or(fresh) {
            baselines.insert(
                name.clone(),
                Baseline {
                    step: r.step,
                    candidate_key: r.candidate.clone(),
                    since: Instant::now(),
                    candidate: candidate_now.clone(),
                    stable: stable_now.clone(),
                },
            );
        }
        let base = baselines.get(name)?;
        let wc = candidate_now.since(&base.candidate);
        let ws = stable_now.since(&base.stable);
        let over = base.since.elapsed() >= Duration::from_millis(r.interval_ms);
        let windows = Some((wc, ws));
        match decide(r, &wc, &ws, over)? {
            Verdict::Step => Some((
                "step",
                match r.shadowing() {
                    Some(_) => format!(
                        "shadow healthy for {} ms: {} of {} answers differed",
                        r.interval_ms, wc.mismatches, wc.compared
                    ),
                    None => format!(
                        "healthy for {} ms over {} requests",
                        r.interval_ms, wc.requests
                    ),
                },
                windows,
            )),
            Verdict::Promote => Some(("promote", "healthy through every step".into(), windows)),
            Verdict::Rollback(reason) => Some(("rollback", reason, windows)),
        }
    }
}
