//! The dashboard's view of the functions: each with its versions, aliases and rollout, and what
//! each version has served here (the per-version totals rollouts and anomalies also read).

use super::Registry;
use crate::dashboard::{FunctionOverview, VersionOverview};
use crate::rollout::RolloutView;
use crate::store;

impl Registry {
    /// Every function of `owner` (a tenant, or `None` for the single user's).
    pub async fn overview(&self, owner: Option<&str>) -> Vec<FunctionOverview> {
        let state = self.admin.lock().await;
        let mut functions = Vec::new();
        for (name, f) in state
            .meta
            .functions
            .iter()
            .filter(|(n, _)| n.owned_by(owner))
        {
            let routes = self.routes(name);
            let versions = (f.versions.iter().rev())
                .map(|v| VersionOverview {
                    version: v.id().to_string(),
                    created_at: v.created_at.clone(),
                    live: v.key() == f.live,
                    models: v.models.iter().map(|p| p.shown()).collect(),
                    totals: (routes.as_ref())
                        .and_then(|r| r.version(v.key()))
                        .map(|d| d.stats.totals()),
                })
                .collect();
            let short = |key: &String| store::short_id(key).to_string();
            let by_id = |key: &String| {
                f.find(key)
                    .map(|v| v.id().to_string())
                    .unwrap_or_else(|| short(key))
            };
            functions.push(FunctionOverview {
                name: name.name().to_string(),
                live: by_id(&f.live),
                versions,
                aliases: (f.aliases.iter())
                    .map(|(a, k)| (a.clone(), by_id(k)))
                    .collect(),
                rollout: (state.meta.rollouts.get(name)).map(|r| RolloutView::of(name.name(), r)),
            });
        }
        functions
    }
}
