//! Read-only views of the functions for the admin API: the list, one function with its
//! versions, its recent guest output. They read the admin state and build [`api`] bodies.

use super::{Registry, RegistryError};
use crate::api;
use crate::key::FunctionKey;
use crate::runtime::LogLine;
use crate::store::{self, VersionRecord};

impl Registry {
    /// Summary of every function of `owner` (a tenant, or `None` for the single user's).
    pub async fn list(&self, owner: Option<&str>) -> api::FunctionList {
        let state = self.admin.lock().await;
        let functions = state
            .meta
            .functions
            .iter()
            .filter(|(name, _)| name.owned_by(owner))
            .map(|(name, f)| api::FunctionSummary {
                name: name.name().to_string(),
                live: store::short_id(&f.live).to_string(),
                versions: f.versions.len(),
                updated_at: f.updated_at.clone(),
            })
            .collect();
        api::FunctionList { functions }
    }

    /// One function with its versions, newest first.
    pub async fn get(&self, name: &FunctionKey) -> Result<api::FunctionView, RegistryError> {
        let state = self.admin.lock().await;
        let f = super::rules::function(&state.meta, name)?;
        Ok(api::FunctionView {
            name: name.name().to_string(),
            live: store::short_id(&f.live).to_string(),
            versions: (f.versions.iter().rev())
                .map(|v| version_view(v, v.key() == f.live))
                .collect(),
        })
    }

    /// The function's recent guest output.
    pub async fn logs(&self, name: &FunctionKey) -> Result<Vec<LogLine>, RegistryError> {
        let state = self.admin.lock().await;
        if !state.meta.functions.contains_key(name) {
            return Err(RegistryError::function_not_found(name.name()));
        }
        Ok(state
            .logs
            .get(name)
            .map(|l| l.snapshot())
            .unwrap_or_default())
    }
}

/// The API's view of a version record.
pub fn version_view(v: &VersionRecord, live: bool) -> api::VersionView {
    api::VersionView {
        version: v.id().to_string(),
        digest: format!("sha256:{}", v.digest),
        created_at: v.created_at.clone(),
        size: v.size,
        live,
        memory: v.limits.memory,
        timeout_ms: v.limits.timeout_ms,
        max_concurrency: v.limits.max_concurrency,
        max_request_body: v.limits.max_request_body,
        max_response_body: v.limits.max_response_body,
        env: v.env.clone(),
        models: v.models.iter().map(|p| p.shown()).collect(),
        public: v.public,
    }
}
