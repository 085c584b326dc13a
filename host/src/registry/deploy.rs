//! Deploying a function version: hashing, checking and compiling the upload off the admin lock,
//! storing its blob before the commit that names it, and making it live (or staging it for a
//! rollout). A version is the component and every setting ([`DeploySettings`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::rules::{self, check_tenant_deploy, has_version, resolve_models};
use super::{AdminState, Deploy, Registry, RegistryError, blocking, version_view};
use crate::api;
use crate::config::FunctionLimits;
use crate::key::{FunctionKey, ModelPin};
use crate::runtime::Prepared;
use crate::store::{self, VersionRecord};
use crate::time::now_rfc3339;

impl Registry {
    /// Validates, compiles, stores and makes live a new version.
    pub async fn deploy(
        &self,
        name: &FunctionKey,
        bytes: Bytes,
        settings: DeploySettings,
    ) -> Result<Deploy<api::VersionView>, RegistryError> {
        let digest = blocking({
            let bytes = bytes.clone();
            move || Ok(store::digest(&bytes))
        })
        .await?;
        let (settings, version) = {
            let state = self.admin.lock().await;
            let models = resolve_models(&state.meta, name.tenant(), settings.models)?;
            let settings = DeploySettings {
                limits: settings.limits,
                env: settings.env,
                models,
                public: settings.public,
                allow_outbound: settings.allow_outbound,
                stage: settings.stage,
            };
            if settings.stage && !state.meta.functions.contains_key(name) {
                return Err(RegistryError::invalid_request(format!(
                    "`{}` has no live version yet: its first version goes live (deploy it without --stage)",
                    name.name()
                )));
            }
            let version = rules::identity(&digest, &settings, &self.config.defaults);
            // A version it already has stores nothing new: only a new one must fit the quotas.
            if !has_version(&state.meta, name, &version) {
                check_tenant_deploy(&state.meta, name, &settings.limits, bytes.len() as u64)?;
            }
            (settings, version)
        };
        let compiled = {
            let mut state = self.admin.lock().await;
            let found = self.existing_locked(&mut state, name, &version, &settings);
            if let Some(existing) = found.await? {
                return Ok(existing);
            }
            state.compiled.get(&digest).cloned()
        };
        let pre = match compiled {
            Some(pre) => pre,
            None => {
                // Compilation is CPU-bound and can take a while: keep it off the async workers
                // and outside the admin lock.
                let runtime = Arc::clone(&self.runtime);
                let store = Arc::clone(&self.local);
                let d = digest.clone();
                let bytes = bytes.clone();
                tokio::task::spawn_blocking(move || -> Result<Prepared, RegistryError> {
                    let component = runtime
                        .compile(&bytes)
                        .map_err(RegistryError::invalid_component)?;
                    let pre = runtime
                        .prepare(&component)
                        .map_err(RegistryError::invalid_component)?;
                    // The cache only saves start-up time: a failure to write it is not fatal.
                    match runtime.serialize(&component) {
                        Ok(code) => {
                            if let Err(e) = store.put_cache(runtime.engine_hash(), &d, &code) {
                                tracing::warn!("cannot cache compiled code: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("cannot serialize compiled code: {e:#}"),
                    }
                    Ok(pre)
                })
                .await
                .map_err(|e| RegistryError::internal(format!("compilation task failed: {e}")))??
            }
        };

        // The blob is written (and fsynced) before the commit, outside the admin lock; the hold
        // keeps a collection in between from taking it.
        let _hold = self.blobs.hold(&digest);
        let size = bytes.len() as u64;
        blocking({
            let (blobs, d) = (Arc::clone(&self.blobs), digest.clone());
            move || {
                blobs
                    .put(&d, &bytes)
                    .map_err(|e| RegistryError::store_failed("version", e))
            }
        })
        .await?;

        let mut state = self.admin.lock().await;
        // Another deploy may have raced us while we compiled.
        if let Some(existing) = self
            .existing_locked(&mut state, name, &version, &settings)
            .await?
        {
            return Ok(existing);
        }
        check_tenant_deploy(&state.meta, name, &settings.limits, size)?;
        let record = VersionRecord {
            // Empty when it is the component's digest: records stay as they were.
            version: if version == digest {
                String::new()
            } else {
                version
            },
            digest: digest.clone(),
            created_at: now_rfc3339(),
            size,
            limits: settings.limits,
            env: settings.env,
            models: settings.models,
            public: settings.public,
            allow_outbound: settings.allow_outbound.clone(),
        };
        state.compiled.insert(digest, pre);
        let stage = settings.stage;
        let max_versions = self.config.max_versions;
        self.commit(&mut state, |meta| {
            // Versions an alias or a rollout names stay.
            let rollout = meta.rollouts.get(name).map(|r| r.candidate.clone());
            let f = meta.functions.entry(name.clone()).or_default();
            let mut kept: HashSet<String> = f.aliases.values().cloned().collect();
            kept.extend(rollout);
            let keep = |v: &VersionRecord| kept.contains(v.key());
            if stage {
                f.push_staged(record.clone(), max_versions, keep);
            } else {
                f.push_live_keeping(record.clone(), max_versions, keep);
            }
            Ok(())
        })
        .await?;
        tracing::info!(function = %name, version = record.id(), staged = stage, "deployed");
        Ok(Deploy::Created(version_view(&record, !stage)))
    }

    /// A deploy of a version this function already has (the same component and settings) makes
    /// it live. A record from before versions covered their settings may share the identity
    /// with other settings: that conflicts.
    async fn existing_locked(
        &self,
        state: &mut AdminState,
        name: &FunctionKey,
        version: &str,
        s: &DeploySettings<ModelPin>,
    ) -> Result<Option<Deploy<api::VersionView>>, RegistryError> {
        let Some(v) = state.meta.functions.get(name).and_then(|f| f.find(version)) else {
            return Ok(None);
        };
        if v.limits != s.limits
            || v.env != s.env
            || v.models != s.models
            || v.public != s.public
            || v.allow_outbound != s.allow_outbound
        {
            return Err(RegistryError::version_conflict(format!(
                "function `{}` has version {} from before version ids covered settings, with other \
                 settings: deploy it with the same settings, or roll back and delete the function",
                name.name(),
                v.id()
            )));
        }
        let record = v.clone();
        if s.stage {
            let live = rules::function(&state.meta, name)?.live == version;
            return Ok(Some(Deploy::Existing(version_view(&record, live))));
        }
        self.set_live(state, name, version).await?;
        Ok(Some(Deploy::Existing(version_view(&record, true))))
    }
}

/// Limits, environment, allowed models and visibility of a deploy, fixed with the version. `M`
/// names the models: as the deploy gave them (`--model NAME`), then resolved to model keys in
/// the deployer's namespace or the shared one (sorted) for the version record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploySettings<M = String> {
    /// Limits, starting from the node's defaults.
    pub limits: FunctionLimits,
    /// Guest environment, from repeated `env=KEY=VALUE`.
    pub env: BTreeMap<String, String>,
    /// Models the function may load, from repeated `model=NAME`.
    pub models: Vec<M>,
    /// Whether callers need no invoke key (`public`, `public=true`).
    pub public: bool,
    /// Destinations its outbound HTTP may reach, from repeated `allow_outbound=PATTERN`.
    pub allow_outbound: Vec<String>,
    /// Store the version without making it live (`stage=true`), for a rollout. Not part of the
    /// version.
    pub stage: bool,
}
