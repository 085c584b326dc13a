//! How a node takes on a desired state it did not make itself (fleet mode): a newer revision
//! from the engine, applied by the syncer, or the current one after a lost race. The state is
//! readied first (blobs fetched and verified, components compiled, live models loaded), and
//! only then swapped in and saved, so a failure leaves the node serving what it served before.

use std::collections::HashSet;
use std::sync::Arc;

use super::models::wanted_sessions;
use super::{AdminState, Registry, RegistryError, blocking, load_prepared};
use crate::desired::Revision;
use crate::store::Meta;

impl Registry {
    /// The desired-state revision this node serves.
    pub async fn applied(&self) -> Revision {
        self.admin.lock().await.revision
    }

    /// Notes that the engine's record at `revision` is malformed (see [`crate::fleet`]'s record
    /// checks): the next change made through this node is committed over it, from the state the
    /// node serves, instead of conflicting with it forever.
    pub fn refuse(&self, revision: Revision) {
        self.refused
            .fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
    }

    /// The revision a change made now must replace: the node's own, or a newer one that it
    /// refused as malformed.
    pub(super) fn base_revision(&self, state: &AdminState) -> Revision {
        state
            .revision
            .max(self.refused.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Makes `meta`, the engine's state at `revision`, this node's: `Ok(false)` when the node
    /// is there already (or further). On error nothing changed.
    pub async fn apply(&self, meta: Meta, revision: Revision) -> Result<bool, RegistryError> {
        let mut state = self.admin.lock().await;
        self.adopt(&mut state, meta, revision).await
    }

    /// Catches up with the engine after a lost commit race (best effort: the syncer gets there
    /// anyway).
    pub(super) async fn catch_up(&self, state: &mut AdminState) {
        let desired = Arc::clone(&self.desired);
        let latest = blocking(move || {
            desired
                .load()
                .map_err(|e| RegistryError::internal(format!("{e:#}")))
        })
        .await;
        match latest {
            Ok((meta, revision)) => {
                if let Err(e) = self.adopt(state, meta, revision).await {
                    tracing::warn!("cannot catch up with revision {revision}: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot read the current desired state: {e}"),
        }
    }

    /// A node that ran alone, first in an empty fleet: makes its state the fleet's (its blobs
    /// pushed to the registry first). `Ok(false)` when there is nothing to seed.
    pub async fn seed(&self) -> Result<bool, RegistryError> {
        let mut state = self.admin.lock().await;
        let m = &state.meta;
        if self.base_revision(&state) != 0
            || (m.functions.is_empty() && m.models.is_empty() && m.tenants.is_empty())
        {
            return Ok(false);
        }
        let digests: Vec<String> = super::referenced(&state.meta)
            .into_iter()
            .map(str::to_string)
            .collect();
        for digest in digests {
            let (local, blobs) = (Arc::clone(&self.local), Arc::clone(&self.blobs));
            blocking(move || {
                let bytes = local
                    .read_blob(&digest)
                    .map_err(|e| RegistryError::internal(format!("{e:#}")))?;
                blobs
                    .put(&digest, &bytes)
                    .map_err(|e| RegistryError::store_failed("blob", e))
            })
            .await?;
        }
        self.commit(&mut state, |_| Ok(())).await?;
        tracing::info!(
            revision = state.revision,
            "fleet: seeded the empty engine with this node's state"
        );
        Ok(true)
    }

    async fn adopt(
        &self,
        state: &mut AdminState,
        mut meta: Meta,
        revision: Revision,
    ) -> Result<bool, RegistryError> {
        if revision <= state.revision {
            return Ok(false);
        }
        self.prepare(state, &meta).await?;
        meta.revision = revision;
        meta.engine = self.engine_id.clone();
        let (local, saved) = (Arc::clone(&self.local), meta.clone());
        blocking(move || {
            local
                .save_meta(&saved)
                .map_err(|e| RegistryError::internal(format!("cannot save the state: {e}")))
        })
        .await?;
        state.meta = meta;
        state.revision = revision;
        self.collect_garbage(state).await;
        self.publish(state);
        self.publish_models(state);
        self.publish_tenants(state);
        Ok(true)
    }

    /// Readies everything `meta` serves: compiled code for each function version (a live one
    /// must succeed; an older one that fails is left for a rollback to retry), and sessions for
    /// each live model. Blobs the node lacks come from the blob store (in a fleet, the registry,
    /// checked against their digest). A no-op for what the node has already.
    pub(super) async fn prepare(
        &self,
        state: &mut AdminState,
        meta: &Meta,
    ) -> Result<(), RegistryError> {
        let live: HashSet<&str> = meta
            .functions
            .values()
            .filter_map(|f| f.live_version())
            .map(|v| v.digest.as_str())
            .collect();
        let mut wanted: Vec<String> = meta
            .functions
            .values()
            .flat_map(|f| f.versions.iter().map(|v| v.digest.clone()))
            .filter(|d| !state.compiled.contains_key(d))
            .collect();
        wanted.sort();
        wanted.dedup();
        for digest in wanted {
            let (runtime, local, blobs, d) = (
                Arc::clone(&self.runtime),
                Arc::clone(&self.local),
                Arc::clone(&self.blobs),
                digest.clone(),
            );
            let loaded = blocking(move || {
                load_prepared(&runtime, &local, &*blobs, &d)
                    .map_err(|e| RegistryError::internal(format!("{e:#}")))
            })
            .await;
            match loaded {
                Ok(pre) => {
                    state.compiled.insert(digest, pre);
                }
                Err(e) if live.contains(digest.as_str()) => {
                    return Err(RegistryError::internal(format!(
                        "version {} cannot be readied: {e}",
                        crate::store::short_id(&digest)
                    )));
                }
                Err(e) => tracing::warn!(
                    version = crate::store::short_id(&digest),
                    "an older version cannot be readied (a rollback to it will retry): {e}"
                ),
            }
        }
        for (name, digest, key, options) in wanted_sessions(meta) {
            if state.loaded_models.contains_key(&key) {
                continue;
            }
            let Some(onnx) = self.nn.onnx.clone() else {
                return Err(RegistryError::onnx_unavailable());
            };
            let (blobs, label) = (Arc::clone(&self.blobs), name.to_string());
            let (count, metrics) = (self.config.model_sessions, self.metrics.model(&label));
            let sessions = blocking(move || {
                let bytes = blobs
                    .get(&digest)
                    .map_err(|e| RegistryError::internal(format!("model `{label}`: {e:#}")))?;
                onnx.sessions(&label, &bytes, count, options, &metrics)
                    .map_err(|e| RegistryError::model_load(&label, e))
            })
            .await?;
            state.loaded_models.insert(key, Arc::new(sessions));
        }
        Ok(())
    }
}
