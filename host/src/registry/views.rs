//! Read-only views of the functions for the admin API: the list, one function with its
//! versions, its guest output. They read the admin state and build [`api`] bodies.

use std::sync::Arc;

use super::{Registry, RegistryError, blocking};
use crate::api;
use crate::key::FunctionKey;
use crate::logs::{Follow, LogLine, LogQuery};
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

    /// The function's guest output that `query` asks for, oldest first.
    pub async fn logs(
        &self,
        name: &FunctionKey,
        query: LogQuery,
    ) -> Result<Vec<LogLine>, RegistryError> {
        self.check_function(name).await?;
        let (logs, key) = (Arc::clone(&self.logs), name.clone());
        blocking(move || Ok(logs.read(&key, &query))).await
    }

    /// The function's guest output that `query` asks for, then its new lines as they come.
    pub async fn follow_logs(
        &self,
        name: &FunctionKey,
        query: LogQuery,
    ) -> Result<Follow, RegistryError> {
        self.check_function(name).await?;
        let (logs, key) = (Arc::clone(&self.logs), name.clone());
        blocking(move || Ok(logs.follow(&key, query))).await
    }

    /// Refuses a function that does not exist.
    async fn check_function(&self, name: &FunctionKey) -> Result<(), RegistryError> {
        let state = self.admin.lock().await;
        if !state.meta.functions.contains_key(name) {
            return Err(RegistryError::function_not_found(name.name()));
        }
        Ok(())
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
        allow_outbound: v.allow_outbound.clone(),
    }
}
