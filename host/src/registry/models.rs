//! The node's ONNX models: add (a new immutable version, checked by building its sessions),
//! list, inspect and remove, persisted with the functions; the live set is swapped into
//! [`crate::nn::ModelSet`] after each change.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::api;
use bytes::Bytes;

use super::RegistryError;
use super::rules::check_tenant_model;
use super::{AdminState, Deploy, Registry};
use crate::key::{ModelKey, ModelPin};
use crate::nn::onnx::{Model, ModelOptions};
use crate::store::{self, Meta, ModelRecord, ModelVersion};
use crate::time::now_rfc3339;

impl Registry {
    /// Checks, stores and makes live a version of a model (a new one, or one it already has).
    ///
    /// Everything slow happens off the async workers and outside the admin lock: hashing the
    /// upload, building its ONNX Runtime sessions (parsing and optimising the model) and writing
    /// the blob. Only the commit itself (metadata saved, then published) holds the lock.
    pub async fn add_model(
        &self,
        name: &ModelKey,
        bytes: Bytes,
        options: ModelOptions,
    ) -> Result<Deploy<api::ModelVersionView>, RegistryError> {
        let Some(onnx) = self.nn.onnx.clone() else {
            return Err(RegistryError::onnx_unavailable());
        };
        let digest = super::blocking({
            let bytes = bytes.clone();
            move || Ok(store::digest(&bytes))
        })
        .await?;
        let key = sessions_key(&digest, options);
        let size = bytes.len() as u64;
        let (existing, loaded) = {
            let state = self.admin.lock().await;
            let existing = self.check_model_add(&state, name, &digest, options, size)?;
            // The same bytes may live under another name, or be this model's version already
            // loaded: share those sessions.
            (existing, state.loaded_models.get(&key).cloned())
        };
        let sessions = match loaded {
            Some(sessions) => sessions,
            None => {
                let count = self.config.model_sessions;
                let (n, b) = (name.to_string(), bytes.clone());
                let metrics = self.metrics.model(&n);
                let built = super::blocking(move || {
                    onnx.sessions(&n, &b, count, options, &metrics)
                        .map_err(|e| RegistryError::model_load(&n, e))
                })
                .await?;
                Arc::new(built)
            }
        };
        let _hold = self.blobs.hold(&digest);
        if existing.is_none() {
            let (blobs, d) = (Arc::clone(&self.blobs), digest.clone());
            super::blocking(move || {
                blobs
                    .put(&d, &bytes)
                    .map_err(|e| RegistryError::store_failed("model", e))
            })
            .await?;
        }

        let mut state = self.admin.lock().await;
        // Another change may have come in while the sessions were built: check again.
        let existing = self.check_model_add(&state, name, &digest, options, size)?;
        let created = existing.is_none();
        // The live version added again: nothing to commit.
        if let Some(v) = existing
            .as_ref()
            .filter(|v| (state.meta.models.get(name)).is_some_and(|m| m.live == v.digest))
        {
            return Ok(Deploy::Existing(model_version_view(v, true)));
        }
        // The sessions are there before the version is published (a failed commit leaves them
        // to the next collection).
        state.loaded_models.entry(key).or_insert(sessions);
        let max_versions = self.config.max_versions;
        let record = self
            .commit(&mut state, |meta| {
                Ok(match existing {
                    Some(v) => {
                        let m = meta
                            .models
                            .get_mut(name)
                            .ok_or_else(|| RegistryError::model_not_found(name.name()))?;
                        m.make_live(&digest, now_rfc3339());
                        v
                    }
                    None => {
                        let record = ModelVersion {
                            digest: digest.clone(),
                            created_at: now_rfc3339(),
                            size,
                            target: options.target,
                            max_batch: options.max_batch,
                            public: options.public,
                        };
                        // Versions a function version pins stay (a rollback brings them back).
                        let mut pinned = pinned_versions(meta, name);
                        if let Some(m) = meta.models.get(name) {
                            pinned.extend(m.aliases.values().cloned());
                        }
                        meta.models
                            .entry(name.clone())
                            .or_default()
                            .push_live_keeping(record.clone(), max_versions, |v| {
                                pinned.contains(&v.digest)
                            });
                        record
                    }
                })
            })
            .await?;
        tracing::info!(
            model = %name,
            version = store::short_id(&digest),
            "model version live"
        );
        let view = model_version_view(&record, true);
        Ok(if created {
            Deploy::Created(view)
        } else {
            Deploy::Existing(view)
        })
    }

    /// Whether `name` may get the version `digest` with `options`: the version it already has
    /// (same options, or a conflict), else a new one within the tenant's quotas.
    fn check_model_add(
        &self,
        state: &AdminState,
        name: &ModelKey,
        digest: &str,
        options: ModelOptions,
        size: u64,
    ) -> Result<Option<ModelVersion>, RegistryError> {
        match state.meta.models.get(name).and_then(|m| m.find(digest)) {
            Some(v) if v.options() != options => Err(RegistryError::version_conflict(format!(
                "model `{}` already has version {} with other options, and versions never change: \
                 add it with --target {} --max-batch {}{}",
                name.name(),
                store::short_id(&v.digest),
                serde_json::to_value(v.target)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("cpu"),
                v.max_batch,
                if v.public { " --public" } else { "" }
            ))),
            Some(v) => Ok(Some(v.clone())),
            None => {
                check_tenant_model(&state.meta, name, size)?;
                Ok(None)
            }
        }
    }

    /// Every model `owner` may use: its own and, for a tenant, the operator's shared ones.
    pub async fn list_models(&self, owner: Option<&str>) -> api::ModelList {
        let state = self.admin.lock().await;
        let models = state
            .meta
            .models
            .iter()
            .filter(|(name, _)| {
                let of = name.tenant();
                of == owner || of.is_none()
            })
            .map(|(name, m)| api::ModelSummary {
                name: name.name().to_string(),
                shared: owner.is_some() && name.tenant().is_none(),
                live: store::short_id(&m.live).to_string(),
                versions: m.versions.len(),
                updated_at: m.updated_at.clone(),
                loaded: state.loaded_models.contains_key(&live_key(m)),
            })
            .collect();
        api::ModelList { models }
    }

    /// One model with its versions, newest first, and its declared inputs and outputs.
    pub async fn get_model(&self, name: &ModelKey) -> Result<api::ModelView, RegistryError> {
        let state = self.admin.lock().await;
        let m = super::rules::model(&state.meta, name)?;
        let versions = (m.versions.iter().rev())
            .map(|v| model_version_view(v, v.digest == m.live))
            .collect();
        let slots = |s: &[crate::nn::onnx::Slot]| -> Vec<api::SlotView> {
            s.iter()
                .map(|s| api::SlotView {
                    name: s.name.clone(),
                    ty: (s.ty.map(crate::nn::tensor::type_name))
                        .unwrap_or("unsupported")
                        .to_string(),
                    dims: s.dims.clone(),
                })
                .collect()
        };
        let (inputs, outputs) = match state.loaded_models.get(&live_key(m)) {
            Some(model) => (slots(model.inputs()), slots(model.outputs())),
            None => (Vec::new(), Vec::new()),
        };
        Ok(api::ModelView {
            name: name.name().to_string(),
            live: store::short_id(&m.live).to_string(),
            versions,
            inputs,
            outputs,
        })
    }

    /// Moves a model's live version to `to` (a version id, digest or prefix) or, without it, to
    /// the version added before the live one. Function versions that pin a version keep it;
    /// those that follow `@live` follow.
    pub async fn rollback_model(
        &self,
        name: &ModelKey,
        to: Option<&str>,
    ) -> Result<api::LiveMoved, RegistryError> {
        let mut state = self.admin.lock().await;
        let m = super::rules::model(&state.meta, name)?;
        let target = match to {
            Some(to) => super::rules::resolve_model_version(name.name(), m, to)?,
            None => {
                let live = m
                    .versions
                    .iter()
                    .position(|v| v.digest == m.live)
                    .unwrap_or(0);
                match live.checked_sub(1) {
                    Some(i) => m.versions[i].digest.clone(),
                    None => {
                        return Err(RegistryError::invalid_request(format!(
                            "the live version of model `{short}` is its oldest retained version: name one with --to (see `tensorlet model versions {short}`)",
                            short = name.name()
                        )));
                    }
                }
            }
        };
        if m.live != target {
            // The commit readies the version's sessions before anything changes.
            self.commit(&mut state, |meta| {
                let m = meta
                    .models
                    .get_mut(name)
                    .ok_or_else(|| RegistryError::model_not_found(name.name()))?;
                m.make_live(&target, now_rfc3339());
                Ok(())
            })
            .await?;
            tracing::info!(model = %name, version = store::short_id(&target), "model live moved");
        }
        Ok(api::LiveMoved {
            name: name.name().to_string(),
            live: store::short_id(&target).to_string(),
        })
    }

    /// Removes a model, unless a live function version may use it.
    pub async fn remove_model(&self, name: &ModelKey) -> Result<api::Deleted, RegistryError> {
        let mut state = self.admin.lock().await;
        if !state.meta.models.contains_key(name) {
            return Err(RegistryError::model_not_found(name.name()));
        }
        let users: Vec<&str> = state
            .meta
            .functions
            .iter()
            .filter(|(_, f)| {
                f.live_version()
                    .is_some_and(|v| v.models.iter().any(|p| p.model == *name))
            })
            .map(|(n, _)| n.name())
            .collect();
        if !users.is_empty() {
            return Err(RegistryError::version_conflict(format!(
                "model `{}` is used by the live version of {users:?}: redeploy or delete those functions first",
                name.name()
            )));
        }
        self.commit(&mut state, |meta| {
            meta.models.remove(name);
            Ok(())
        })
        .await?;
        tracing::info!(model = %name, "model removed");
        Ok(api::Deleted {
            name: name.name().to_string(),
            deleted: true,
        })
    }

    /// Swaps in the set of models: each one's live version, and the versions that live function
    /// versions pin.
    pub(super) fn publish_models(&self, state: &AdminState) {
        let detection = self.metrics.anomalies.config();
        let (windows, sampled) = (detection.drift, detection.enabled);
        let mut profiled = HashSet::new();
        let mut model = |pin: ModelPin, key: String, digest: &str| {
            let sessions = state.loaded_models.get(&key)?;
            let label = pin.model.to_string();
            let version = crate::store::short_id(digest).to_string();
            let mut model = Model::new(&label, Arc::clone(sessions), self.metrics.model(&label));
            if sampled {
                model = model.with_outputs(self.metrics.outputs.profile(&label, &version, windows));
                profiled.insert((label.clone(), version));
            }
            Some((pin, Arc::new(model)))
        };
        let live: Vec<_> = (state.meta.models.iter())
            .filter_map(|(name, m)| {
                let pin = ModelPin {
                    model: name.clone(),
                    version: None,
                };
                model(pin, live_key(m), &m.live)
            })
            .collect();
        let pinned: Vec<_> = pinned_by_served(&state.meta)
            .into_iter()
            .filter_map(|(pin, key)| {
                let digest = pin.version.clone()?;
                model(pin, key, &digest)
            })
            .collect();
        let set = live.into_iter().chain(pinned).collect();
        let entries = (state.meta.models.iter())
            .map(|(name, m)| {
                let entry = crate::nn::ModelEntry {
                    live: m.live.clone(),
                    versions: m.versions.iter().map(|v| v.digest.clone()).collect(),
                    aliases: m.aliases.clone(),
                    public: m.live_version().is_some_and(|v| v.public),
                };
                (name.clone(), Arc::new(entry))
            })
            .collect();
        self.nn.models.replace(set, entries);
        // Profiles of versions no longer served are forgotten (a version served again starts a
        // new reference).
        (self.metrics.outputs).retain(|m, v| profiled.contains(&(m.to_string(), v.to_string())));
        self.metrics
            .models_loaded
            .store(state.loaded_models.len() as u64, Ordering::Relaxed);
    }
}

/// Loaded sessions are keyed by digest and target: the same bytes load once per node, however
/// many names they are added under.
pub(super) fn sessions_key(digest: &str, options: ModelOptions) -> String {
    format!("{digest}/{:?}/{}", options.target, options.max_batch)
}

/// The model sessions a state needs: each model's live version, and each version a live
/// function version pins (model, digest, sessions key, options), without repeats.
pub(super) fn wanted_sessions(meta: &Meta) -> Vec<(ModelKey, String, String, ModelOptions)> {
    let live = meta
        .models
        .iter()
        .map(|(name, m)| (name.clone(), m.live.clone(), live_key(m), live_options(m)));
    let pinned = pinned_by_served(meta).into_iter().filter_map(|(pin, key)| {
        let digest = pin.version?;
        let options = meta.models.get(&pin.model)?.find(&digest)?.options();
        Some((pin.model, digest, key, options))
    });
    let mut seen = HashSet::new();
    live.chain(pinned)
        .filter(|(_, _, key, _)| seen.insert(key.clone()))
        .collect()
}

/// Every model version that a function version that may be called pins, with its sessions
/// key: the live version, aliased ones, a running rollout's candidate, and versions deployed
/// after the live one (staged, to be tried directly before they take traffic); and every model
/// version an alias of the model names (callable by that alias over the inference protocol).
/// Older versions' models load again when they go live.
pub(super) fn pinned_by_served(meta: &Meta) -> Vec<(ModelPin, String)> {
    let served = meta.functions.iter().flat_map(|(name, f)| {
        let candidate = (meta.rollouts.get(name))
            .filter(|r| r.state == crate::rollout::State::Running)
            .map(|r| r.candidate.as_str());
        let live_at = f.versions.iter().position(|v| v.key() == f.live);
        f.versions.iter().enumerate().filter(move |(i, v)| {
            v.key() == f.live
                || f.aliases.values().any(|a| a == v.key())
                || candidate == Some(v.key())
                || live_at.is_some_and(|at| *i > at)
        })
    });
    let served = served.map(|(_, v)| v);
    let mut pins: Vec<(ModelPin, String)> = served
        .flat_map(|v| v.models.iter())
        .filter_map(|pin| {
            let digest = pin.version.as_deref()?;
            let v = meta.models.get(&pin.model)?.find(digest)?;
            Some((pin.clone(), sessions_key(digest, v.options())))
        })
        .collect();
    for (name, m) in &meta.models {
        for digest in m.aliases.values() {
            if let Some(v) = m.find(digest) {
                let pin = ModelPin {
                    model: name.clone(),
                    version: Some(digest.clone()),
                };
                pins.push((pin, sessions_key(digest, v.options())));
            }
        }
    }
    pins.sort();
    pins.dedup();
    pins
}

/// The versions of model `name` that any function version pins.
fn pinned_versions(meta: &Meta, name: &ModelKey) -> HashSet<String> {
    meta.functions
        .values()
        .flat_map(|f| f.versions.iter())
        .flat_map(|v| v.models.iter())
        .filter(|p| p.model == *name)
        .filter_map(|p| p.version.clone())
        .collect()
}

/// The sessions key of a model's live version.
pub(super) fn live_key(m: &ModelRecord) -> String {
    sessions_key(&m.live, live_options(m))
}

/// How the live version of a model runs.
pub(super) fn live_options(m: &ModelRecord) -> ModelOptions {
    m.live_version()
        .map(ModelVersion::options)
        .unwrap_or_default()
}

/// The API's view of a model version.
pub fn model_version_view(v: &ModelVersion, live: bool) -> api::ModelVersionView {
    api::ModelVersionView {
        version: store::short_id(&v.digest).to_string(),
        digest: format!("sha256:{}", v.digest),
        created_at: v.created_at.clone(),
        size: v.size,
        live,
        target: v.target,
        max_batch: v.max_batch,
        public: v.public,
    }
}
