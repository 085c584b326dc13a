//! Tenants (a node with `tenants = true`): create, list, update quotas, remove, rotate tokens,
//! and invoke keys. Tenant records live in the metadata with the functions and models; the
//! request path reads an immutable snapshot ([`Registry::tenant`]) holding each tenant's token
//! and key hashes and its limiters, swapped after each change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{self, QuotaPatch};
use tokio::sync::Semaphore;

use super::RegistryError;
use super::{AdminState, Registry};
use crate::auth;
use crate::config::Quotas;
use crate::key::FunctionKey;
use crate::metrics::TenantMetrics;
use crate::nn::InferenceQuota;
use crate::store::{KeyRecord, Meta, TenantRecord};
use crate::time::now_rfc3339;

/// What the request path needs of a tenant. Rebuilt whenever the tenant's record changes (a
/// key, its token, its quotas), but its limiters are carried over from the previous one and
/// resized, never replaced: a tenant cannot reset its own concurrency or rate by changing its
/// record.
pub struct TenantLive {
    /// The tenant's name.
    pub name: Arc<str>,
    token_hash: String,
    keys: Vec<(String, String)>,
    /// The tenant's quotas.
    pub quotas: Quotas,
    /// `max_concurrency` permits shared by the tenant's requests.
    pub concurrency: Arc<Semaphore>,
    /// `max_inferences` permits shared by the tenant's wasi:nn computes, and its metrics.
    pub inferences: InferenceQuota,
    /// The tenant's series.
    pub metrics: Arc<TenantMetrics>,
    rates: Arc<Rates>,
}

/// A tenant's token buckets.
struct Rates {
    requests: Bucket,
    /// Refusals answered at full speed; past them a refusal also pauses its connection
    /// ([`crate::pace`]), so a flood of refused requests cannot eat the node's CPU.
    refusals: Bucket,
}

/// Refused requests a tenant gets answered at full speed every second (or its
/// `requests_per_second`, if higher) before their connections are paused.
const MIN_REFUSALS_PER_SECOND: u32 = 100;

/// A token bucket: `rate` tokens a second, holding at most one second's worth.
struct Bucket {
    /// (rate, tokens, last refill).
    state: Mutex<(f64, f64, Instant)>,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            state: Mutex::new((rate, rate, Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (rate, tokens, last) = *s;
        let now = Instant::now();
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
        if tokens >= 1.0 {
            *s = (rate, tokens - 1.0, now);
            Ok(())
        } else {
            *s = (rate, tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }

    /// Changes the rate; the tokens already earned stay (capped at the new rate), so a change
    /// never refills the bucket.
    fn set_rate(&self, rate: u32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rate = f64::from(rate.max(1));
        s.0 = rate;
        s.1 = s.1.min(rate);
    }
}

/// Moves a semaphore's capacity from `from` to `to` permits. Growing adds permits at once;
/// shrinking takes back what is free now and the rest as holders give it back (a task waits for
/// those permits and forgets them), so the limit is never exceeded for longer than the requests
/// already admitted run.
fn resize(semaphore: &Arc<Semaphore>, from: u32, to: u32) {
    if to >= from {
        semaphore.add_permits((to - from) as usize);
        return;
    }
    let wanted = (from - to) as usize;
    let owed = wanted - semaphore.forget_permits(wanted);
    if owed == 0 {
        return;
    }
    let semaphore = Arc::clone(semaphore);
    let Ok(owed) = u32::try_from(owed) else {
        return;
    };
    tokio::spawn(async move {
        if let Ok(permits) = semaphore.acquire_many_owned(owed).await {
            permits.forget();
        }
    });
}

impl TenantLive {
    /// The request path's view of `record`, keeping `previous`'s limiters (resized to the new
    /// quotas) when there is one.
    fn new(
        name: &str,
        record: &TenantRecord,
        metrics: Arc<TenantMetrics>,
        previous: Option<&TenantLive>,
    ) -> Self {
        let q = record.quotas;
        let (concurrency, inferences, rates) = match previous {
            Some(p) => {
                resize(&p.concurrency, p.quotas.max_concurrency, q.max_concurrency);
                resize(
                    &p.inferences.permits,
                    p.quotas.max_inferences,
                    q.max_inferences,
                );
                if p.quotas.requests_per_second != q.requests_per_second {
                    p.rates.requests.set_rate(q.requests_per_second);
                    let refusals = q.requests_per_second.max(MIN_REFUSALS_PER_SECOND);
                    p.rates.refusals.set_rate(refusals);
                }
                (
                    Arc::clone(&p.concurrency),
                    Arc::clone(&p.inferences.permits),
                    Arc::clone(&p.rates),
                )
            }
            None => (
                Arc::new(Semaphore::new(q.max_concurrency as usize)),
                Arc::new(Semaphore::new(q.max_inferences as usize)),
                Arc::new(Rates {
                    requests: Bucket::new(q.requests_per_second),
                    refusals: Bucket::new(q.requests_per_second.max(MIN_REFUSALS_PER_SECOND)),
                }),
            ),
        };
        Self {
            name: Arc::from(name),
            token_hash: record.token_hash.clone(),
            keys: record
                .keys
                .iter()
                .map(|(id, k)| (id.clone(), k.hash.clone()))
                .collect(),
            quotas: q,
            concurrency,
            inferences: InferenceQuota {
                permits: inferences,
                metrics: Arc::clone(&metrics),
            },
            metrics,
            rates,
        }
    }

    /// Takes one request from the rate budget, or says how long until one is available.
    pub fn admit(&self) -> Result<(), Duration> {
        self.rates.requests.take()
    }

    /// Called for each refused request: whether the tenant is refused so often that the
    /// refusal should also pause its connection.
    pub fn flooding(&self) -> bool {
        self.rates.refusals.take().is_err()
    }

    /// Whether `secret` is this tenant's token.
    pub fn token_matches(&self, secret: &str) -> bool {
        auth::matches(secret, &self.token_hash)
    }

    /// Whether `(id, secret)` is one of this tenant's invoke keys.
    pub fn key_matches(&self, id: &str, secret: &str) -> bool {
        self.keys
            .iter()
            .any(|(i, hash)| i == id && auth::matches(secret, hash))
    }
}

/// Applies the quota changes of `tenant create` or `tenant update` (bytes and milliseconds);
/// a zero is refused.
pub(crate) fn apply_quotas(patch: &QuotaPatch, q: &mut Quotas) -> Result<(), RegistryError> {
    let p = patch;
    {
        let fields: [(&str, Option<u64>); 8] = [
            ("max_functions", p.max_functions.map(u64::from)),
            ("max_models", p.max_models.map(u64::from)),
            ("max_stored", p.max_stored),
            ("max_memory", p.max_memory),
            ("max_timeout_ms", p.max_timeout_ms),
            ("max_concurrency", p.max_concurrency.map(u64::from)),
            ("requests_per_second", p.requests_per_second.map(u64::from)),
            ("max_inferences", p.max_inferences.map(u64::from)),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == Some(0)) {
            return Err(RegistryError::invalid_request(format!(
                "`{name}` must be at least 1"
            )));
        }
        q.max_functions = p.max_functions.unwrap_or(q.max_functions);
        q.max_models = p.max_models.unwrap_or(q.max_models);
        q.max_stored = p.max_stored.unwrap_or(q.max_stored);
        q.max_memory = p.max_memory.unwrap_or(q.max_memory);
        q.max_timeout_ms = p.max_timeout_ms.unwrap_or(q.max_timeout_ms);
        q.max_concurrency = p.max_concurrency.unwrap_or(q.max_concurrency);
        q.requests_per_second = p.requests_per_second.unwrap_or(q.requests_per_second);
        q.max_inferences = p.max_inferences.unwrap_or(q.max_inferences);
        Ok(())
    }
}

/// What a tenant holds now, for quota checks and `tenant list`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// Functions it has.
    pub functions: u32,
    /// Models it has.
    pub models: u32,
    /// Bytes of its retained function and model versions.
    pub stored: u64,
}

/// A tenant's usage in `meta`.
pub fn usage(meta: &Meta, tenant: &str) -> Usage {
    let functions: Vec<u64> = (meta.functions.iter())
        .filter(|(k, _)| k.owned_by(Some(tenant)))
        .map(|(_, f)| f.versions.iter().map(|v| v.size).sum())
        .collect();
    let models: Vec<u64> = (meta.models.iter())
        .filter(|(k, _)| k.owned_by(Some(tenant)))
        .map(|(_, m)| m.versions.iter().map(|v| v.size).sum())
        .collect();
    Usage {
        functions: functions.len() as u32,
        models: models.len() as u32,
        stored: functions.iter().chain(&models).sum(),
    }
}

fn tenant_view(name: &str, t: &TenantRecord, u: Usage) -> api::TenantView {
    api::TenantView {
        name: name.to_string(),
        created_at: t.created_at.clone(),
        quotas: t.quotas,
        usage: api::TenantUsage {
            functions: u.functions,
            models: u.models,
            stored: u.stored,
        },
        keys: t.keys.len(),
    }
}

impl Registry {
    /// The request path's view of tenant `name`.
    pub fn tenant(&self, name: &str) -> Option<Arc<TenantLive>> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Rebuilds the tenant snapshot. A tenant that was there before keeps its limiters (see
    /// [`TenantLive`]); a removed tenant's go with it.
    pub(super) fn publish_tenants(&self, state: &AdminState) {
        let current = Arc::clone(&self.tenants.read().unwrap_or_else(|e| e.into_inner()));
        let next: HashMap<String, Arc<TenantLive>> = state
            .meta
            .tenants
            .iter()
            .map(|(name, t)| {
                let previous = current.get(name).map(Arc::as_ref);
                let live = TenantLive::new(name, t, self.metrics.tenant(name), previous);
                (name.clone(), Arc::new(live))
            })
            .collect();
        *self.tenants.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    /// Creates a tenant; the answer holds its token, shown only this once.
    pub async fn create_tenant(
        &self,
        name: &str,
        patch: &QuotaPatch,
    ) -> Result<api::CreatedTenant, RegistryError> {
        let mut quotas = self.config.tenant_defaults;
        apply_quotas(patch, &mut quotas)?;
        let secret = auth::secret().map_err(|e| RegistryError::internal(format!("{e:#}")))?;
        let mut state = self.admin.lock().await;
        if state.meta.tenants.contains_key(name) {
            return Err(RegistryError::TenantExists(name.to_string()));
        }
        let record = TenantRecord {
            created_at: now_rfc3339(),
            token_hash: auth::hash(&secret),
            keys: Default::default(),
            quotas,
        };
        self.commit(&mut state, |meta| {
            meta.tenants.insert(name.to_string(), record.clone());
            Ok(())
        })
        .await?;
        tracing::info!(tenant = name, "tenant created");
        Ok(api::CreatedTenant {
            tenant: tenant_view(name, &record, Usage::default()),
            token: format!("{}{name}_{secret}", auth::TENANT_PREFIX),
        })
    }

    /// Every tenant with its quotas and usage.
    pub async fn list_tenants(&self) -> api::TenantList {
        let state = self.admin.lock().await;
        let tenants = (state.meta.tenants.iter())
            .map(|(name, t)| tenant_view(name, t, usage(&state.meta, name)))
            .collect();
        api::TenantList { tenants }
    }

    /// Changes one tenant's record (`change` also sees the metadata as it was): saved first,
    /// then made live for the request path; nothing changes if `change` or the save fails.
    async fn change_tenant<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut TenantRecord, &Meta) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut state = self.admin.lock().await;
        let before = state.meta.clone();
        self.commit(&mut state, |meta| {
            let t = meta
                .tenants
                .get_mut(name)
                .ok_or_else(|| RegistryError::tenant_not_found(name))?;
            change(t, &before)
        })
        .await
    }

    /// Changes a tenant's quotas (what it already holds stays; new work is checked).
    pub async fn update_tenant(
        &self,
        name: &str,
        patch: &QuotaPatch,
    ) -> Result<api::TenantView, RegistryError> {
        let answer = self
            .change_tenant(name, |t, meta| {
                apply_quotas(patch, &mut t.quotas)?;
                Ok(tenant_view(name, t, usage(meta, name)))
            })
            .await?;
        tracing::info!(tenant = name, "tenant quotas updated");
        Ok(answer)
    }

    /// Removes a tenant with all its functions, models and keys.
    pub async fn remove_tenant(&self, name: &str) -> Result<api::RemovedTenant, RegistryError> {
        let mut state = self.admin.lock().await;
        if !state.meta.tenants.contains_key(name) {
            return Err(RegistryError::tenant_not_found(name));
        }
        let owner = Some(name);
        let (functions, models) = self
            .commit(&mut state, |meta| {
                meta.tenants.remove(name);
                let functions: Vec<FunctionKey> =
                    (meta.functions.keys().filter(|k| k.owned_by(owner)).cloned()).collect();
                let models: Vec<String> = (meta.models.keys())
                    .filter(|k| k.owned_by(owner))
                    .map(|k| k.name().to_string())
                    .collect();
                meta.functions.retain(|k, _| !k.owned_by(owner));
                meta.models.retain(|k, _| !k.owned_by(owner));
                Ok((functions, models))
            })
            .await?;
        // Answer once its functions' logs are gone from the disk too.
        for f in &functions {
            self.logs.remove(f);
        }
        self.logs.settled().await;
        tracing::info!(tenant = name, "tenant removed");
        Ok(api::RemovedTenant {
            name: name.to_string(),
            deleted: true,
            functions: functions.iter().map(|k| k.name().to_string()).collect(),
            models,
        })
    }

    /// Gives a tenant a new token; the old one stops working at once.
    pub async fn rotate_token(&self, name: &str) -> Result<api::Token, RegistryError> {
        let secret = auth::secret().map_err(|e| RegistryError::internal(format!("{e:#}")))?;
        self.change_tenant(name, |t, _| {
            t.token_hash = auth::hash(&secret);
            Ok(())
        })
        .await?;
        tracing::info!(tenant = name, "tenant token rotated");
        Ok(api::Token {
            name: name.to_string(),
            token: format!("{}{name}_{secret}", auth::TENANT_PREFIX),
        })
    }

    /// Issues an invoke key for the tenant's private functions; shown only this once.
    pub async fn create_key(&self, tenant: &str) -> Result<api::CreatedKey, RegistryError> {
        let secret = auth::secret().map_err(|e| RegistryError::internal(format!("{e:#}")))?;
        let created_at = now_rfc3339();
        let id = self
            .change_tenant(tenant, |t, _| {
                if t.keys.len() >= 100 {
                    return Err(RegistryError::quota_exceeded(
                        "a tenant has at most 100 invoke keys: remove one with `tensorlet key rm ID`",
                    ));
                }
                let id = loop {
                    let id = auth::key_id().map_err(|e| RegistryError::internal(format!("{e:#}")))?;
                    if !t.keys.contains_key(&id) {
                        break id;
                    }
                };
                let hash = auth::hash(&secret);
                let created_at = created_at.clone();
                t.keys.insert(id.clone(), KeyRecord { hash, created_at });
                Ok(id)
            })
            .await?;
        let key = format!("{}{tenant}_{id}_{secret}", auth::KEY_PREFIX);
        Ok(api::CreatedKey {
            id,
            created_at,
            key,
        })
    }

    /// The tenant's invoke keys (ids and dates, never the keys).
    pub async fn list_keys(&self, tenant: &str) -> Result<api::KeyList, RegistryError> {
        let state = self.admin.lock().await;
        let t = super::rules::tenant(&state.meta, tenant)?;
        let keys = (t.keys.iter())
            .map(|(id, k)| api::KeySummary {
                id: id.clone(),
                created_at: k.created_at.clone(),
            })
            .collect();
        Ok(api::KeyList { keys })
    }

    /// Revokes an invoke key.
    pub async fn remove_key(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<api::RemovedKey, RegistryError> {
        self.change_tenant(tenant, |t, _| match t.keys.remove(id) {
            Some(_) => Ok(()),
            None => Err(RegistryError::KeyNotFound(id.to_string())),
        })
        .await?;
        Ok(api::RemovedKey {
            id: id.to_string(),
            deleted: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(quotas: Quotas) -> TenantRecord {
        TenantRecord {
            created_at: String::new(),
            token_hash: String::new(),
            keys: Default::default(),
            quotas,
        }
    }

    fn quotas() -> Quotas {
        crate::config::Config::from_toml("")
            .unwrap()
            .tenant_defaults
    }

    #[tokio::test]
    async fn limiters_survive_record_changes_and_follow_quota_changes() {
        let mut q = quotas();
        q.max_concurrency = 2;
        q.requests_per_second = 1;
        let metrics = Arc::new(TenantMetrics::default());
        let first = TenantLive::new("t", &record(q), Arc::clone(&metrics), None);
        assert!(first.admit().is_ok());
        let held = Arc::clone(&first.concurrency)
            .try_acquire_many_owned(2)
            .unwrap();

        // A new key (any record change without a quota change): same limiters, nothing refilled.
        let mut keyed = record(q);
        keyed.keys.insert(
            "k1".into(),
            KeyRecord {
                hash: String::new(),
                created_at: String::new(),
            },
        );
        let second = TenantLive::new("t", &keyed, Arc::clone(&metrics), Some(&first));
        assert!(second.admit().is_err(), "the rate bucket was refilled");
        assert!(
            Arc::clone(&second.concurrency).try_acquire_owned().is_err(),
            "the concurrency limit was reset"
        );

        // A quota change resizes: up at once, down as permits come back.
        let mut more = q;
        more.max_concurrency = 3;
        let grown = TenantLive::new("t", &record(more), Arc::clone(&metrics), Some(&second));
        let extra = Arc::clone(&grown.concurrency).try_acquire_owned().unwrap();
        assert!(Arc::clone(&grown.concurrency).try_acquire_owned().is_err());
        let mut less = more;
        less.max_concurrency = 1;
        let shrunk = TenantLive::new("t", &record(less), Arc::clone(&metrics), Some(&grown));
        drop(extra);
        drop(held);
        // The shrink owes two permits (all three were held); they are taken back as they return,
        // leaving exactly one.
        let one = tokio::time::timeout(
            Duration::from_secs(5),
            Arc::clone(&shrunk.concurrency).acquire_owned(),
        )
        .await
        .expect("one permit comes back")
        .unwrap();
        tokio::task::yield_now().await;
        assert!(Arc::clone(&shrunk.concurrency).try_acquire_owned().is_err());
        drop(one);
    }
}
