//! How requests reach a function's versions: the live one, and, for direct calls
//! (`/fn/{name}@{version|alias}/...`), every retained version ready to run and the aliases that
//! name them. Rebuilt from the metadata after each change and swapped in as a whole; a version
//! that stays keeps its `Deployed` (and so its concurrency permits) across swaps.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{AdminState, Deployed, Registry};
use crate::key::FunctionKey;
use crate::logs::FunctionLog;
use crate::rollout::{Rollout, Shadow};
use crate::runtime::{Function, Prepared};
use crate::store::VersionRecord;

/// Every function's routes.
pub(super) type RouteMap = HashMap<FunctionKey, Arc<Routes>>;

/// How requests reach one function's versions.
pub struct Routes {
    /// The live version.
    pub live: Arc<Deployed>,
    /// Every retained version that is ready to run, by full key.
    versions: HashMap<String, Arc<Deployed>>,
    /// Aliases (not `live`) to version keys.
    aliases: HashMap<String, String>,
    /// A running canary: the candidate and its share.
    split: Option<Split>,
    /// A rollout's shadow phase: the candidate and its settings.
    shadow: Option<(Arc<Deployed>, Shadow)>,
}

/// A canary's traffic split.
struct Split {
    candidate: Arc<Deployed>,
    percent: u8,
    sticky: Option<http::HeaderName>,
}

impl Routes {
    /// The version a request without `@` goes to: live, or during a canary the candidate for
    /// its share of requests (by the sticky header's value, when the rollout has one).
    pub fn pick(&self, headers: &http::HeaderMap) -> Arc<Deployed> {
        if let Some(s) = &self.split {
            let sticky = s
                .sticky
                .as_ref()
                .and_then(|h| headers.get(h))
                .map(|v| v.as_bytes());
            if crate::rollout::to_candidate(s.percent, sticky) {
                return Arc::clone(&s.candidate);
            }
        }
        Arc::clone(&self.live)
    }

    /// Whether to copy a request to a shadow candidate: the candidate and the shadow's settings,
    /// for the shadow's share of the requests that went to `picked` (only those to stable).
    pub fn shadow_for(&self, picked: &Deployed) -> Option<(Arc<Deployed>, Shadow)> {
        let (candidate, shadow) = self.shadow.as_ref()?;
        let to_stable = std::ptr::eq(picked, &*self.live);
        (to_stable && crate::rollout::to_candidate(shadow.percent, None))
            .then(|| (Arc::clone(candidate), *shadow))
    }

    /// A retained version by its full key.
    pub fn version(&self, key: &str) -> Option<Arc<Deployed>> {
        self.versions.get(key).cloned()
    }

    /// The version `at` names: `live`, an alias, or a version (its id, full key or a unique
    /// prefix of at least 4 hex digits).
    pub fn at(&self, at: &str) -> Option<Arc<Deployed>> {
        if at == "live" {
            return Some(Arc::clone(&self.live));
        }
        if let Some(key) = self.aliases.get(at) {
            return self.versions.get(key).cloned();
        }
        if at.len() < 4 || !at.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut found = self.versions.iter().filter(|(k, _)| k.starts_with(at));
        match (found.next(), found.next()) {
            (Some((_, d)), None) => Some(Arc::clone(d)),
            _ => None,
        }
    }
}

impl Registry {
    /// Rebuilds the routes from the metadata and swaps them in.
    pub(super) fn publish(&self, state: &mut AdminState) {
        let current = Arc::clone(&self.live.read().unwrap_or_else(|e| e.into_inner()));
        let mut next = RouteMap::new();
        for (name, f) in &state.meta.functions {
            let known = current.get(name);
            let mut versions = HashMap::new();
            for v in &f.versions {
                let kept = known.and_then(|r| r.versions.get(v.key()));
                let deployed = match kept {
                    Some(d) => Arc::clone(d),
                    None => match self.deployed(&state.compiled, &mut state.logs, name, v) {
                        Some(d) => d,
                        // Not compiled (a fleet node could not fetch it): not callable.
                        None => continue,
                    },
                };
                versions.insert(v.key().to_string(), deployed);
            }
            let Some(live) = versions.get(&f.live).cloned() else {
                continue;
            };
            // Only while the version the rollout started from is still live.
            let rollout = (state.meta.rollouts.get(name))
                .filter(|r| r.state == crate::rollout::State::Running && r.stable == f.live);
            let candidate = rollout.and_then(|r| versions.get(&r.candidate).cloned());
            let split = rollout.zip(candidate.clone()).and_then(|(r, candidate)| {
                (r.percent() > 0).then(|| Split {
                    candidate,
                    percent: r.percent(),
                    sticky: r.sticky_header.as_deref().and_then(|h| h.parse().ok()),
                })
            });
            let shadow = rollout
                .and_then(Rollout::shadowing)
                .and_then(|s| Some((candidate?, s)));
            let aliases = f.aliases.iter().map(|(a, k)| (a.clone(), k.clone()));
            let routes = Routes {
                live,
                versions,
                aliases: aliases.collect(),
                split,
                shadow,
            };
            next.insert(name.clone(), Arc::new(routes));
        }
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        // A function that is gone (deleted, its tenant removed, or so in the fleet's state)
        // takes its logs along.
        let meta = &state.meta;
        state.logs.retain(|name, log| {
            let kept = meta.functions.contains_key(name);
            if !kept {
                log.retire();
                self.logs.remove(name);
            }
            kept
        });
    }

    /// Every version ready to run, with its numbers now, for the anomaly detector.
    pub fn observed(&self) -> Vec<crate::anomaly::Observed> {
        let routes = Arc::clone(&self.live.read().unwrap_or_else(|e| e.into_inner()));
        let mut seen = Vec::new();
        for (key, r) in routes.iter() {
            for d in r.versions.values() {
                seen.push(crate::anomaly::Observed {
                    function: key.clone(),
                    version: d.function.version.to_string(),
                    live: Arc::ptr_eq(d, &r.live),
                    totals: d.stats.totals(),
                });
            }
        }
        seen
    }

    /// A version ready to run, if its code is compiled.
    fn deployed(
        &self,
        compiled: &HashMap<String, Prepared>,
        logs: &mut HashMap<FunctionKey, Arc<FunctionLog>>,
        name: &FunctionKey,
        v: &VersionRecord,
    ) -> Option<Arc<Deployed>> {
        let pre = compiled.get(&v.digest)?.clone();
        let logs = logs
            .entry(name.clone())
            .or_insert_with(|| Arc::new(self.logs.function(name)));
        let logs = Arc::clone(logs);
        Some(Arc::new(Deployed {
            function: Arc::new(Function {
                name: Arc::from(name.name()),
                version: Arc::from(v.id()),
                pre,
                limits: v.limits,
                env: v.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                logs,
                models: v.models.iter().cloned().collect(),
                // Checked when it was deployed; a record edited since allows nothing.
                outbound: Arc::new(
                    crate::outbound::AllowList::parse(&v.allow_outbound).unwrap_or_default(),
                ),
            }),
            version: v.key().to_string(),
            permits: Arc::new(Semaphore::new(v.limits.max_concurrency as usize)),
            metrics: self.metrics.function(&name.to_string()),
            public: v.public,
            stats: Arc::default(),
        }))
    }
}
