//! Deployed functions: immutable versions (by content digest), the `live` alias, rollback and
//! delete. Admin changes are serialised by one async mutex and persisted through [`Store`]
//! before they are acknowledged; the request path only reads an immutable snapshot of the live
//! versions ([`Registry::route`]), swapped atomically after each change, so in-flight requests
//! keep the version they started on. Models (`models.rs`) live in the same metadata and follow
//! the same rules.

mod aliases;
mod deploy;
mod error;
mod models;
mod overview;
mod rollouts;
mod routes;
mod rules;
mod seams;
mod sync;
mod tenants;
#[cfg(test)]
mod tests;
mod views;

pub use crate::api::QuotaPatch;
pub(crate) use rules::pin_exists;
pub use tenants::TenantLive;
#[cfg(test)]
pub(crate) use tenants::apply_quotas;
pub use views::version_view;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::api;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::desired::{BlobStore, CommitError, DesiredState, Revision};
use crate::key::FunctionKey;
use crate::logs::{FunctionLog, LogStore};
use crate::metrics::{FunctionMetrics, Metrics};
use crate::nn::NnNode;
use crate::nn::onnx::Sessions;
use crate::runtime::{Function, Prepared, Runtime};
use crate::store::{self, DataDir, Meta};
use crate::time::now_rfc3339;
pub use deploy::DeploySettings;
pub use error::RegistryError;
use models::live_key;
pub use rollouts::Baselines;
use routes::RouteMap;
pub use routes::Routes;
use rules::{check_models_exist, referenced, resolve};
pub use seams::Seams;
use seams::load_prepared;

/// One version of one function, ready to serve requests: what the runtime runs, plus what the
/// registry and admission keep about it.
pub struct Deployed {
    /// What the runtime runs: one `Arc` that each request shares instead of copying its fields.
    pub function: Arc<Function>,
    /// The version's full identity ([`VersionRecord::key`]).
    pub version: String,
    /// `max_concurrency` permits.
    pub permits: Arc<Semaphore>,
    /// Metrics of the function.
    pub metrics: Arc<FunctionMetrics>,
    /// Whether callers need no invoke key (on a node with tenants).
    pub public: bool,
    /// This version's numbers on this node, for rollouts.
    pub stats: Arc<crate::rollout::VersionStats>,
}

/// State only admin operations touch.
struct AdminState {
    meta: Meta,
    /// The desired state's revision `meta` is at.
    revision: Revision,
    /// Compiled components by digest (shared between functions deploying the same bytes).
    compiled: HashMap<String, Prepared>,
    /// Where each function's versions write their output ([`routes`] hands them out).
    logs: HashMap<FunctionKey, Arc<FunctionLog>>,
    /// Loaded model sessions by [`models::sessions_key`] (digest and target).
    loaded_models: HashMap<String, Arc<Sessions>>,
}

/// The node's functions.
pub struct Registry {
    config: Arc<Config>,
    runtime: Arc<Runtime>,
    /// Where admin changes are committed.
    desired: Arc<dyn DesiredState>,
    /// Where components and models are stored, by digest.
    blobs: Arc<dyn BlobStore>,
    /// This node's data directory (the compiled-code cache).
    local: Arc<DataDir>,
    /// Whether the desired state lives elsewhere (a fleet's engine), so that each committed or
    /// applied state is also saved to the data directory.
    mirror: bool,
    /// In a fleet, the engine's id, recorded with the state saved locally.
    engine_id: Option<String>,
    /// The newest engine revision refused as malformed ([`Registry::refuse`]).
    refused: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
    live: RwLock<Arc<RouteMap>>,
    admin: tokio::sync::Mutex<AdminState>,
    nn: Arc<NnNode>,
    tenants: RwLock<Arc<HashMap<String, Arc<TenantLive>>>>,
    /// The functions' guest output.
    logs: Arc<LogStore>,
}

/// Whether a deploy (or model add) created a new version; `V` is the version's view.
pub enum Deploy<V> {
    /// A new version was stored.
    Created(V),
    /// The same version existed and is live now.
    Existing(V),
}

impl Registry {
    /// Opens the data directory and loads every retained version (compiled code from the
    /// cache when present, else compiled now and cached).
    pub fn open(
        config: Arc<Config>,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        nn: Arc<NnNode>,
    ) -> anyhow::Result<Registry> {
        let local = Arc::new(DataDir::open(&config.data_dir)?);
        Self::open_with(config, runtime, metrics, nn, Seams::local(local))
    }

    /// [`Registry::open`] with the desired state and blobs kept by `seams`; the node still
    /// starts from (and serves) what its data directory holds.
    pub fn open_with(
        config: Arc<Config>,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        nn: Arc<NnNode>,
        seams: Seams,
    ) -> anyhow::Result<Registry> {
        let store = Arc::clone(&seams.local);
        let (mut meta, mut revision) = store.load()?;
        if seams.engine.is_some() && meta.engine != seams.engine {
            // Revisions of another store (this node ran alone, or in another fleet): serve what
            // is here until the fleet's state arrives, which replaces it (or seeds an empty one).
            if revision > 0 {
                tracing::warn!(
                    "this data directory's state was not made in this fleet: it is served until \
                     the fleet's state arrives (an empty fleet is seeded with it)"
                );
            }
            revision = 0;
        }
        // Every function the node has, served or not (a version that cannot be loaded now may
        // load at the next start): their logs stay, those of any other function go.
        let logs = LogStore::open(
            &config.data_dir.join("logs"),
            config.logs,
            meta.functions.keys(),
        )?;
        let mut compiled = HashMap::new();
        for (name, f) in meta.functions.iter_mut() {
            f.versions.retain(|v| {
                if compiled.contains_key(&v.digest) {
                    return true;
                }
                match load_prepared(&runtime, &store, &*store, &v.digest) {
                    Ok(pre) => {
                        compiled.insert(v.digest.clone(), pre);
                        true
                    }
                    Err(e) => {
                        tracing::error!(function = %name, version = v.id(), "cannot load version, skipping it: {e:#}");
                        false
                    }
                }
            });
        }
        meta.functions.retain(|name, f| {
            let ok = f.live_version().is_some();
            if !ok {
                tracing::error!(function = %name, "live version cannot be loaded; the function is not served");
            }
            ok
        });
        store.collect_garbage(&referenced(&meta));
        let mut loaded_models = HashMap::new();
        for (name, digest, key, options) in models::wanted_sessions(&meta) {
            let Some(onnx) = &nn.onnx else {
                tracing::warn!(model = %name, "ONNX Runtime is not loaded; model not served");
                continue;
            };
            let loaded = store.read_blob(&digest).and_then(|bytes| {
                onnx.sessions(
                    &name.to_string(),
                    &bytes,
                    config.model_sessions,
                    options,
                    &metrics.model(&name.to_string()),
                )
                .map_err(anyhow::Error::new)
            });
            match loaded {
                Ok(sessions) => {
                    loaded_models.insert(key, Arc::new(sessions));
                }
                Err(e) => tracing::error!(model = %name, "cannot load model: {e:#}"),
            }
        }
        let registry = Registry {
            config,
            runtime,
            desired: seams.desired,
            blobs: seams.blobs,
            local: store,
            mirror: seams.mirror,
            engine_id: seams.engine,
            refused: Default::default(),
            metrics,
            live: RwLock::new(Arc::default()),
            admin: tokio::sync::Mutex::new(AdminState {
                meta,
                revision,
                compiled,
                logs: HashMap::new(),
                loaded_models,
            }),
            nn,
            tenants: RwLock::new(Arc::default()),
            logs: Arc::new(logs),
        };
        let mut state = registry
            .admin
            .try_lock()
            .expect("new registry is not shared yet");
        registry.publish(&mut state);
        registry.publish_models(&state);
        registry.publish_tenants(&state);
        drop(state);
        Ok(registry)
    }

    /// The live version of `name`, for the request path.
    pub fn route(&self, name: &FunctionKey) -> Option<Arc<Deployed>> {
        self.routes(name).map(|r| Arc::clone(&r.live))
    }

    /// How requests reach `name`'s versions (live, aliases, every retained version).
    pub fn routes(&self, name: &FunctionKey) -> Option<Arc<Routes>> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The functions' guest output.
    pub fn log_store(&self) -> &Arc<LogStore> {
        &self.logs
    }

    /// ONNX Runtime and the loaded models.
    pub fn nn(&self) -> &Arc<NnNode> {
        &self.nn
    }

    /// Number of functions served.
    pub fn len(&self) -> usize {
        self.live.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no function is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn set_live(
        &self,
        state: &mut AdminState,
        name: &FunctionKey,
        digest: &str,
    ) -> Result<(), RegistryError> {
        let f = rules::function(&state.meta, name)?;
        if f.live == digest {
            return Ok(());
        }
        self.commit(state, |meta| {
            let f = rules::function_mut(meta, name)?;
            f.make_live(digest, now_rfc3339());
            Ok(())
        })
        .await
    }

    /// Moves `live` to `to` (a version id or digest prefix) or, without it, to the version
    /// deployed before the live one.
    pub async fn rollback(
        &self,
        name: &FunctionKey,
        to: Option<&str>,
    ) -> Result<api::LiveMoved, RegistryError> {
        let mut state = self.admin.lock().await;
        let f = rules::function(&state.meta, name)?;
        let target = match to {
            Some(to) => resolve(name.name(), f, to)?.key().to_string(),
            None => {
                let live = f
                    .versions
                    .iter()
                    .position(|v| v.key() == f.live)
                    .unwrap_or(0);
                match live.checked_sub(1) {
                    Some(i) => f.versions[i].key().to_string(),
                    None => {
                        return Err(RegistryError::invalid_request(format!(
                            "the live version of `{short}` is its oldest retained version: name one with --to (see `tensorlet versions {short}`)",
                            short = name.name()
                        )));
                    }
                }
            }
        };
        check_models_exist(&state.meta, name, &target)?;
        self.set_live(&mut state, name, &target).await?;
        tracing::info!(
            function = %name,
            version = store::short_id(&target),
            "live moved"
        );
        Ok(api::LiveMoved {
            name: name.name().to_string(),
            live: store::short_id(&target).to_string(),
        })
    }

    /// Removes a function and all its versions.
    pub async fn delete(&self, name: &FunctionKey) -> Result<api::Deleted, RegistryError> {
        let mut state = self.admin.lock().await;
        if !state.meta.functions.contains_key(name) {
            return Err(RegistryError::function_not_found(name.name()));
        }
        self.commit(&mut state, |meta| {
            meta.functions.remove(name);
            Ok(())
        })
        .await?;
        // Answer once its logs are gone from the disk too.
        self.logs.remove(name);
        self.logs.settled().await;
        tracing::info!(function = %name, "deleted");
        Ok(api::Deleted {
            name: name.name().to_string(),
            deleted: true,
        })
    }

    /// The one commit path of every admin change: `change` turns a copy of the current metadata
    /// into the next (or refuses with a domain error, and nothing happens); the next state is
    /// committed to the desired-state store (durable before this returns), becomes the admin
    /// state, is published to the request path (functions, models, tenants), and whatever no
    /// retained version needs any more is collected. Runs under the admin lock (`state`).
    async fn commit<T>(
        &self,
        state: &mut AdminState,
        change: impl FnOnce(&mut Meta) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut next = state.meta.clone();
        let out = change(&mut next)?;
        // In a fleet, the change may make live what this node has not compiled or loaded yet
        // (a rollback to a version it never served): ready it first, or refuse.
        self.prepare(state, &next).await?;
        let (desired, expected, to_commit) = (
            Arc::clone(&self.desired),
            self.base_revision(state),
            next.clone(),
        );
        let committed = blocking(move || Ok(desired.commit(expected, &to_commit))).await?;
        let revision = match committed {
            Ok(revision) => revision,
            Err(CommitError::Conflict { current, .. }) => {
                // Another node's change got in first. Catch up now, so that a retry starts
                // from the current state, and let the caller decide again.
                self.catch_up(state).await;
                return Err(RegistryError::RevisionConflict(format!(
                    "another change was committed to the fleet (revision {current}) while this one \
                     was made from revision {expected}: nothing was changed. Check the current state \
                     and retry"
                )));
            }
            Err(CommitError::Unavailable(message)) => {
                return Err(RegistryError::EngineUnavailable(message));
            }
            Err(e @ CommitError::Io(_)) => return Err(RegistryError::internal(e.to_string())),
        };
        next.revision = revision;
        next.engine = self.engine_id.clone();
        if self.mirror {
            // The node's own copy, which it serves from after a restart.
            let (local, saved) = (Arc::clone(&self.local), next.clone());
            if let Err(e) = blocking(move || {
                local
                    .save_meta(&saved)
                    .map_err(|e| RegistryError::internal(e.to_string()))
            })
            .await
            {
                tracing::warn!("committed revision {revision}, but cannot save it locally: {e}");
            }
        }
        state.revision = revision;
        state.meta = next;
        // Collect first: the published model set counts what stays loaded.
        self.collect_garbage(state).await;
        self.publish(state);
        self.publish_models(state);
        self.publish_tenants(state);
        Ok(out)
    }

    /// Drops compiled code and blobs no retained version refers to. The files go on the
    /// blocking pool (still under the admin lock, so no commit races the collection).
    async fn collect_garbage(&self, state: &mut AdminState) {
        let referenced: HashSet<String> = referenced(&state.meta)
            .into_iter()
            .map(str::to_string)
            .collect();
        state.compiled.retain(|d, _| referenced.contains(d));
        let pinned = models::pinned_by_served(&state.meta)
            .into_iter()
            .map(|(_, key)| key);
        let live: HashSet<String> = state
            .meta
            .models
            .values()
            .map(live_key)
            .chain(pinned)
            .collect();
        state.loaded_models.retain(|key, _| live.contains(key));
        let blobs = Arc::clone(&self.blobs);
        let collected = blocking(move || {
            blobs.retain(&referenced.iter().map(String::as_str).collect());
            Ok(())
        });
        if let Err(e) = collected.await {
            tracing::warn!("garbage collection failed: {e}");
        }
    }
}

/// Runs file I/O or CPU-bound work on the blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RegistryError::internal(format!("a blocking task failed: {e}")))?
}
