//! The Open Inference Protocol (KServe "v2", as Triton and `tritonclient` speak it): every model
//! on the node answers model-server clients directly, over REST (`service/oip.rs` maps
//! [`rest`]'s bodies onto the node's listener) and gRPC ([`grpc`], a listener of its own).
//!
//! Both edges turn their requests into one [`InferRequest`] and hand it to [`Inference`], which
//! owns what the protocol shares with wasi:nn: the same loaded models and sessions (so batching
//! merges both paths' requests), the same input checks, the tenants' keys and quotas, and the
//! model metrics (with `path="oip"`). Errors are one [`OipError`] with a [`Kind`]; each edge
//! maps the kind to its own status (HTTP or gRPC) and nothing else.

pub mod data;
pub mod grpc;
pub mod rest;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth;
use crate::config::Config;
use crate::key::{ModelKey, ModelPin};
use crate::metrics::InferencePath;
use crate::nn::bindings::wasi::nn::errors::ErrorCode;
use crate::nn::checked::Named;
use crate::nn::onnx::{Model, Slot};
use crate::nn::{Failure, ModelEntry, NnNode};
use crate::registry::{Registry, TenantLive};

/// The platform models report: ONNX on ONNX Runtime, as Triton names it.
pub const PLATFORM: &str = "onnxruntime_onnx";

/// Protocol extensions this node implements.
pub const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

/// What kind of failure an [`OipError`] is; each edge maps it to its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad input: names, types, shapes, sizes, encodings.
    Invalid,
    /// No such model, or no such version of it loaded.
    NotFound,
    /// A private model without a valid invoke key.
    Unauthenticated,
    /// A request over the body cap.
    TooLarge,
    /// The tenant's request rate or concurrency is used up; retry after the seconds given.
    Exhausted(u64),
    /// Did not finish within `model_timeout`.
    Timeout,
    /// The node cannot run models now (no ONNX Runtime).
    Unavailable,
    /// The model or the node failed.
    Internal,
}

/// A refused or failed protocol request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct OipError {
    /// Which kind.
    pub kind: Kind,
    /// What went wrong and what to do.
    pub message: String,
}

impl OipError {
    /// A failure of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Bad input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, message)
    }

    /// A wasi:nn failure of the model run, by whose fault it is.
    fn from_failure(f: Failure) -> Self {
        let kind = match f.code() {
            ErrorCode::Timeout => Kind::Timeout,
            _ if f.is_callers() => Kind::Invalid,
            _ => Kind::Internal,
        };
        Self::new(kind, f.message())
    }
}

/// An inference request, from either edge: inputs as the node's tensors (not checked yet).
#[derive(Debug, Default)]
pub struct InferRequest {
    /// The client's request id, echoed.
    pub id: Option<String>,
    /// Named inputs.
    pub inputs: Named,
    /// The outputs asked for, by name, in order; `None` asks for all.
    pub outputs: Option<Vec<String>>,
}

/// The answer to an [`InferRequest`].
#[derive(Debug)]
pub struct InferResponse {
    /// The model as the client named it.
    pub model_name: String,
    /// The version that answered (its short id).
    pub model_version: String,
    /// The request's id, if it had one.
    pub id: Option<String>,
    /// The outputs asked for, in the order asked (else the model's).
    pub outputs: Named,
}

/// A tensor's name, datatype and shape as the protocol shows them (`-1` = any size).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: String,
    /// Protocol datatype (`FP32`, ...).
    pub datatype: String,
    /// Dimensions, `-1` for dynamic ones.
    pub shape: Vec<i64>,
}

/// A model's metadata, as both edges answer it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelMetadata {
    /// The model as the client named it.
    pub name: String,
    /// Every retained version's short id, oldest first.
    pub versions: Vec<String>,
    /// [`PLATFORM`].
    pub platform: &'static str,
    /// Declared inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Declared outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// A model version a request named, found, loaded, and allowed for its caller.
pub struct Resolved {
    name: String,
    version: String,
    entry: Arc<ModelEntry>,
    model: Arc<Model>,
    /// The tenant whose quotas the request uses, if any.
    tenant: Option<Arc<TenantLive>>,
}

/// Held while a request runs: its tenant's concurrency permit.
pub struct Admitted {
    _concurrency: Option<tokio::sync::OwnedSemaphorePermit>,
    deadline: Instant,
}

/// The protocol's core, shared by both edges.
pub struct Inference {
    config: Arc<Config>,
    registry: Arc<Registry>,
}

impl Inference {
    /// The protocol over `registry`'s models and tenants.
    pub fn new(config: Arc<Config>, registry: Arc<Registry>) -> Self {
        Self { config, registry }
    }

    fn nn(&self) -> &Arc<NnNode> {
        self.registry.nn()
    }

    /// Whether the node can run models: ONNX Runtime is loaded.
    pub fn ready(&self) -> bool {
        self.nn().onnx.is_some()
    }

    /// The largest request body (REST) or message (gRPC).
    pub fn max_body(&self) -> u64 {
        self.config.max_infer_body
    }

    /// Finds model `name` (`{tenant}.{name}` on a node with tenants; a bare name is an
    /// operator's model) at `version` (its live one when `None` or empty; else a short id, a
    /// digest or an alias) and checks that `token` (the bearer token sent, if any) may call it.
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
        token: Option<&str>,
    ) -> Result<Resolved, OipError> {
        let not_found = || {
            OipError::new(
                Kind::NotFound,
                format!(
                    "no model named `{}` on this node: `tensorlet model list` shows its models{}",
                    name.escape_default(),
                    if self.config.tenants {
                        " (a tenant's model is `{tenant}.{name}`)"
                    } else {
                        ""
                    }
                ),
            )
        };
        let key = match name.split_once('.') {
            Some((tenant, model)) if self.config.tenants => ModelKey::new(Some(tenant), model),
            Some(_) => return Err(not_found()),
            None => ModelKey::new(None, name),
        };
        let entry = self.nn().models.entry(&key).ok_or_else(not_found)?;
        let tenant = self.caller(name, &key, &entry, token)?;
        let digest = pick_version(&entry, version).ok_or_else(|| {
            OipError::new(
                Kind::NotFound,
                format!(
                    "model `{name}` has no version or alias `{}`: GET /v2/models/{name} lists its versions",
                    version.unwrap_or_default().escape_default()
                ),
            )
        })?;
        let pin = ModelPin {
            model: key,
            version: (digest != entry.live).then(|| digest.clone()),
        };
        let model = self.nn().models.get(&pin).ok_or_else(|| {
            OipError::new(
                Kind::NotFound,
                format!(
                    "version {} of model `{name}` is not loaded on this node: only the live version, aliased \
                     versions and versions that functions pin are; make it live with `tensorlet model rollback`",
                    crate::store::short_id(&digest)
                ),
            )
        })?;
        if self.nn().onnx.is_none() {
            return Err(OipError::new(
                Kind::Unavailable,
                "this node has no ONNX Runtime loaded: run scripts/fetch-onnxruntime.sh and restart it with ORT_DYLIB_PATH",
            ));
        }
        Ok(Resolved {
            name: name.to_string(),
            version: crate::store::short_id(&digest).to_string(),
            entry,
            model,
            tenant,
        })
    }

    /// On a node with tenants, who pays for a call of `key` made with `token`: the model's
    /// tenant for a tenant's model (its invoke key needed unless the model is public); for an
    /// operator's model, the tenant whose key was sent (any tenant's key; none if public).
    fn caller(
        &self,
        name: &str,
        key: &ModelKey,
        entry: &ModelEntry,
        token: Option<&str>,
    ) -> Result<Option<Arc<TenantLive>>, OipError> {
        if !self.config.tenants {
            return Ok(None);
        }
        let sender = token.and_then(auth::parse_key).and_then(|(t, id, secret)| {
            let live = self.registry.tenant(t)?;
            live.key_matches(id, secret).then_some(live)
        });
        let allowed = match key.tenant() {
            Some(owner) => sender.as_ref().is_some_and(|s| &*s.name == owner),
            None => sender.is_some(),
        };
        if !allowed && !entry.public {
            let whose = match key.tenant() {
                Some(owner) => format!("one of tenant `{owner}`'s invoke keys"),
                None => "an invoke key of any tenant".to_string(),
            };
            return Err(OipError::new(
                Kind::Unauthenticated,
                format!(
                    "model `{name}` is private: send {whose} as `Authorization: Bearer tlk_...` (gRPC metadata \
                     `authorization`; `tensorlet key create`), or add the model with --public"
                ),
            ));
        }
        Ok(match key.tenant() {
            Some(owner) => self.registry.tenant(owner),
            None => sender,
        })
    }

    /// The resolved model's metadata.
    pub fn metadata(&self, r: &Resolved) -> ModelMetadata {
        let meta = |slots: &[Slot]| {
            slots
                .iter()
                .map(|s| TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.ty.map_or("BYTES", data::datatype).to_string(),
                    shape: s
                        .dims
                        .iter()
                        .map(|d| if *d < 0 { -1 } else { *d })
                        .collect(),
                })
                .collect()
        };
        ModelMetadata {
            name: r.name.clone(),
            versions: (r.entry.versions.iter())
                .map(|d| crate::store::short_id(d).to_string())
                .collect(),
            platform: PLATFORM,
            inputs: meta(r.model.inputs()),
            outputs: meta(r.model.outputs()),
        }
    }

    /// Takes the request's share of its tenant's rate and concurrency, before its body is
    /// read; its deadline starts now.
    pub fn admit(&self, r: &Resolved) -> Result<Admitted, OipError> {
        let deadline = Instant::now() + self.config.model_timeout;
        let Some(tenant) = &r.tenant else {
            return Ok(Admitted {
                _concurrency: None,
                deadline,
            });
        };
        let exhausted = |wait: Duration, message: String| {
            OipError::new(
                Kind::Exhausted(wait.as_secs_f64().ceil().max(1.0) as u64),
                message,
            )
        };
        if let Err(wait) = tenant.admit() {
            tenant
                .metrics
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(exhausted(
                wait,
                format!(
                    "tenant `{}` is over its requests_per_second quota: retry later, or ask the operator for more",
                    tenant.name
                ),
            ));
        }
        let Ok(permit) = Arc::clone(&tenant.concurrency).try_acquire_owned() else {
            tenant
                .metrics
                .busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(exhausted(
                Duration::from_secs(1),
                format!(
                    "tenant `{}` already runs {} requests at once (its max_concurrency quota): retry shortly",
                    tenant.name, tenant.quotas.max_concurrency
                ),
            ));
        };
        Ok(Admitted {
            _concurrency: Some(permit),
            deadline,
        })
    }

    /// Runs an admitted request: its requested outputs checked against the model's, then the
    /// tenant's inference quota, a session and the inference, all within `model_timeout`.
    pub async fn infer(
        &self,
        r: &Resolved,
        admitted: &Admitted,
        req: InferRequest,
    ) -> Result<InferResponse, OipError> {
        if let Some(wanted) = &req.outputs {
            let declared = r.model.outputs();
            for (i, name) in wanted.iter().enumerate() {
                if !declared.iter().any(|s| s.name == *name) {
                    let names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
                    return Err(OipError::invalid(format!(
                        "model `{}` has no output `{}`; its outputs are {names:?}",
                        r.name,
                        name.escape_default()
                    )));
                }
                if wanted[..i].contains(name) {
                    return Err(OipError::invalid(format!(
                        "output `{name}` is asked for twice"
                    )));
                }
            }
        }
        let deadline = admitted.deadline;
        let _inference = match &r.tenant {
            Some(t) => match t.inferences.acquire(deadline).await {
                Some(permit) => Some(permit),
                None => {
                    return Err(OipError::new(
                        Kind::Timeout,
                        "the tenant's max_inferences quota kept this request waiting past model_timeout",
                    ));
                }
            },
            None => None,
        };
        let outputs = r
            .model
            .run(req.inputs, deadline, None, InferencePath::Oip)
            .await
            .map_err(OipError::from_failure)?;
        let outputs = match req.outputs {
            None => outputs,
            Some(wanted) => {
                let mut outputs = outputs;
                wanted
                    .iter()
                    .filter_map(|name| {
                        let at = outputs.iter().position(|(n, _)| n == name)?;
                        Some(outputs.swap_remove(at))
                    })
                    .collect()
            }
        };
        Ok(InferResponse {
            model_name: r.name.clone(),
            model_version: r.version.clone(),
            id: req.id,
            outputs,
        })
    }
}

/// The full digest `version` names among `entry`'s versions: the live one for none, else a
/// short id (or any longer prefix), a digest (`sha256:` optional) or an alias.
fn pick_version(entry: &ModelEntry, version: Option<&str>) -> Option<String> {
    let v = match version {
        None | Some("") => return Some(entry.live.clone()),
        Some(v) => v.strip_prefix("sha256:").unwrap_or(v),
    };
    if let Some(d) = entry.aliases.get(v) {
        return Some(d.clone());
    }
    if v.len() < 12 {
        return None;
    }
    let mut found = entry.versions.iter().filter(|d| d.starts_with(v));
    match (found.next(), found.next()) {
        (Some(d), None) => Some(d.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_found_by_short_id_digest_or_alias() {
        let (a, b) = (
            "a".repeat(64),
            format!("{}{}", "a".repeat(12), "b".repeat(52)),
        );
        let entry = ModelEntry {
            live: a.clone(),
            versions: vec![a.clone(), b.clone()],
            aliases: [("stable".to_string(), b.clone())].into(),
            public: false,
        };
        assert_eq!(pick_version(&entry, None), Some(a.clone()));
        assert_eq!(pick_version(&entry, Some("")), Some(a.clone()));
        assert_eq!(pick_version(&entry, Some("stable")), Some(b.clone()));
        assert_eq!(pick_version(&entry, Some(&b)), Some(b.clone()));
        assert_eq!(
            pick_version(&entry, Some(&format!("sha256:{a}"))),
            Some(a.clone())
        );
        // Both share their first 12 digits: a short id that is not unique finds nothing.
        assert_eq!(pick_version(&entry, Some(&a[..12])), None);
        assert_eq!(pick_version(&entry, Some(&b[..13])), Some(b.clone()));
        assert_eq!(pick_version(&entry, Some("1")), None);
        assert_eq!(pick_version(&entry, Some("aaaa")), None);
    }
}
