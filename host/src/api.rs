//! The bodies of the admin API (`/admin/v1`), typed once for both ends: the node builds its
//! answers from these and reads its request bodies into them; the CLI (`crate::client`) reads
//! the answers back. One definition per body keeps field names and shapes from drifting apart.
//!
//! Answers do not deny unknown fields, so an older CLI still reads a newer node's answers; the
//! request bodies the node reads ([`QuotaPatch`], [`RollbackRequest`]) do, so a misspelt field is
//! an error rather than silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Quotas;
use crate::nn::onnx::Target;

// --- Functions ---------------------------------------------------------------------------------

/// A function version: the answer to `POST /functions/{name}/versions` (deploy), and each of
/// [`FunctionView::versions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// The short id: the first 12 hex digits of the digest.
    pub version: String,
    /// `sha256:` and the component's hex digest.
    pub digest: String,
    /// When it was deployed (RFC 3339, UTC).
    pub created_at: String,
    /// Component size in bytes.
    pub size: u64,
    /// Whether it is the live version.
    pub live: bool,
    /// Linear memory cap per instance, in bytes.
    pub memory: u64,
    /// Wall-clock limit per request, in milliseconds.
    pub timeout_ms: u64,
    /// Requests served at once.
    pub max_concurrency: u32,
    /// Request body cap in bytes.
    pub max_request_body: u64,
    /// Response body cap in bytes.
    pub max_response_body: u64,
    /// Environment the guest sees.
    pub env: BTreeMap<String, String>,
    /// Models it may load by name (short names, without the tenant).
    pub models: Vec<String>,
    /// Whether anyone may invoke it.
    pub public: bool,
    /// Destinations its outbound HTTP may reach (`scheme://host[:port]` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_outbound: Vec<String>,
}

/// One entry of [`FunctionList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSummary {
    /// Function name.
    pub name: String,
    /// Short id of the live version.
    pub live: String,
    /// How many versions are kept.
    pub versions: usize,
    /// When the live version last changed.
    pub updated_at: String,
}

/// `GET /functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionList {
    /// The caller's functions.
    pub functions: Vec<FunctionSummary>,
}

/// `GET /functions/{name}` and `GET /functions/{name}/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionView {
    /// Function name.
    pub name: String,
    /// Short id of the live version.
    pub live: String,
    /// Its versions, newest first.
    pub versions: Vec<VersionView>,
}

/// The body of `POST /functions/{name}/rollback`; an empty body means the same as no `to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to make live (id, digest or unique prefix); `None`: the one deployed before
    /// the live one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `POST /functions/{name}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMoved {
    /// Function name.
    pub name: String,
    /// Short id of the version that is live now.
    pub live: String,
}

/// `GET`, `PUT` and `DELETE /functions/{name}/aliases[/{alias}]` (and the same for models):
/// every alias, `live` included, with the short id of the version it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aliases {
    /// Function or model name.
    pub name: String,
    /// Alias to short version id.
    pub aliases: BTreeMap<String, String>,
}

/// The body of `PUT /functions/{name}/aliases/{alias}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRequest {
    /// The version (id, digest or prefix), another alias, or `live`.
    pub version: String,
}

/// `DELETE /functions/{name}` and `DELETE /models/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// The function's or model's name.
    pub name: String,
    /// Always `true`: a failed delete is an error answer instead.
    pub deleted: bool,
}

/// One line of [`Logs`], and each line of the answer to `logs?follow=true` (JSON lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLineView {
    /// When the request that wrote it finished (RFC 3339, UTC).
    pub time: String,
    /// Short id of the version that wrote it.
    pub version: String,
    /// The request that wrote it.
    pub request_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, control characters escaped.
    pub line: String,
}

/// `GET /functions/{name}/logs` (without `follow=true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    /// Function name.
    pub name: String,
    /// The newest lines the query asks for, oldest first.
    pub lines: Vec<LogLineView>,
}

// --- Models ------------------------------------------------------------------------------------

/// A model version: the answer to `POST /models/{name}/versions`, and each of
/// [`ModelView::versions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersionView {
    /// The short id: the first 12 hex digits of the digest.
    pub version: String,
    /// `sha256:` and the model file's hex digest.
    pub digest: String,
    /// When it was added (RFC 3339, UTC).
    pub created_at: String,
    /// Model size in bytes.
    pub size: u64,
    /// Whether it is the live version.
    pub live: bool,
    /// Where it runs.
    pub target: Target,
    /// Most queued requests one inference stacks (1: no batching).
    pub max_batch: u32,
    /// Callable over the inference protocol without an invoke key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

/// One entry of [`ModelList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Model name.
    pub name: String,
    /// Whether it is the operator's, listed to a tenant that may use it.
    pub shared: bool,
    /// Short id of the live version.
    pub live: String,
    /// How many versions are kept.
    pub versions: usize,
    /// When the live version last changed.
    pub updated_at: String,
    /// Whether its live version's sessions are loaded.
    pub loaded: bool,
}

/// `GET /models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// The caller's models and, for a tenant, the operator's shared ones.
    pub models: Vec<ModelSummary>,
}

/// An input or output of a model, as the model declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotView {
    /// Tensor name.
    pub name: String,
    /// Element type (`fp32`, `i64`, ...), or `unsupported` when wasi:nn cannot carry it.
    #[serde(rename = "type")]
    pub ty: String,
    /// Dimensions; -1 for a dynamic one.
    pub dims: Vec<i64>,
}

/// `GET /models/{name}` and `GET /models/{name}/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelView {
    /// Model name.
    pub name: String,
    /// Short id of the live version.
    pub live: String,
    /// Its versions, newest first.
    pub versions: Vec<ModelVersionView>,
    /// The live version's inputs (empty while it is not loaded).
    pub inputs: Vec<SlotView>,
    /// The live version's outputs (empty while it is not loaded).
    pub outputs: Vec<SlotView>,
}

// --- Tenants, keys and the audit log -----------------------------------------------------------

/// What a tenant holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantUsage {
    /// Functions it has.
    pub functions: u32,
    /// Models it has.
    pub models: u32,
    /// Bytes of its retained function and model versions.
    pub stored: u64,
}

/// A tenant: each of [`TenantList::tenants`], and the answer to `PATCH /tenants/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantView {
    /// Tenant name.
    pub name: String,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// Its quotas (bytes and milliseconds).
    pub quotas: Quotas,
    /// What it holds.
    pub usage: TenantUsage,
    /// How many invoke keys it has.
    pub keys: usize,
}

/// `POST /tenants/{name}`: the tenant and its token, which is shown only this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedTenant {
    /// The new tenant.
    #[serde(flatten)]
    pub tenant: TenantView,
    /// Its token (`tlt_{name}_...`).
    pub token: String,
}

/// `GET /tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantList {
    /// Every tenant.
    pub tenants: Vec<TenantView>,
}

/// `DELETE /tenants/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedTenant {
    /// Tenant name.
    pub name: String,
    /// Always `true`: a failed removal is an error answer instead.
    pub deleted: bool,
    /// The functions removed with it.
    pub functions: Vec<String>,
    /// The models removed with it.
    pub models: Vec<String>,
}

/// `POST /tenants/{name}/token`: the tenant's new token, shown only this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Tenant name.
    pub name: String,
    /// The new token (`tlt_{name}_...`); the old one no longer works.
    pub token: String,
}

/// The body of `POST /tenants/{name}` and `PATCH /tenants/{name}`: the quotas to set (bytes and
/// milliseconds); those left out keep their value (the node's `[tenant_defaults]` on create).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaPatch {
    /// Functions the tenant may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_functions: Option<u32>,
    /// Models the tenant may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_models: Option<u32>,
    /// Bytes of function and model versions it may store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stored: Option<u64>,
    /// Largest memory one of its instances may ask for, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// Longest timeout its functions may ask for, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_ms: Option<u64>,
    /// Requests running at once across its functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Sustained requests per second across its functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// wasi:nn inferences running or queued at once across its functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inferences: Option<u32>,
}

/// `POST /keys`: a new invoke key, shown only this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The key's id (what `key rm` takes).
    pub id: String,
    /// When it was made (RFC 3339, UTC).
    pub created_at: String,
    /// The key itself (`tlk_{tenant}_{id}_...`).
    pub key: String,
}

/// One entry of [`KeyList`]: never the key itself, which the node does not keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySummary {
    /// The key's id.
    pub id: String,
    /// When it was made.
    pub created_at: String,
}

/// `GET /keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// The tenant's invoke keys.
    pub keys: Vec<KeySummary>,
}

/// `DELETE /keys/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedKey {
    /// The revoked key's id.
    pub id: String,
    /// Always `true`: a failed revocation is an error answer instead.
    pub deleted: bool,
}

/// One admin change, as `DATA/audit.log` holds it (one JSON line each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// `operator`, `tenant:NAME` or `unauthenticated`.
    pub who: String,
    /// Method and path, never the query.
    pub action: String,
    /// The HTTP status it got.
    pub status: u16,
    /// In a fleet, the node that took the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `GET /audit?limit=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// The latest records, oldest first.
    pub records: Vec<AuditRecord>,
}

// --- Errors ------------------------------------------------------------------------------------

/// What went wrong, in [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`function_not_found`, `quota_exceeded`, ...).
    pub code: String,
    /// For people: what happened and what to do.
    pub message: String,
}

/// Every error answer, admin or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
    /// The request's id, as in the node's log.
    pub request_id: String,
}

/// Each literal is written from the `json!` the node builds today (registry/mod.rs,
/// registry/models.rs, registry/tenants.rs, service.rs, audit.rs, error.rs). Reading it into the
/// typed body and writing that back must give the literal again: a field missing from the type
/// fails the read, a field the type adds or renames fails the comparison.
#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;

    #[track_caller]
    fn round_trip<T: Serialize + DeserializeOwned>(expected: Value) -> T {
        let typed: T = serde_json::from_value(expected.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), expected);
        typed
    }

    const T0: &str = "2025-01-02T03:04:05Z";

    #[test]
    fn function_bodies_match_the_node() {
        let version = json!({
            "version": "3f2a9c41d0be", "digest": "sha256:3f2a9c41d0be77", "created_at": T0,
            "size": 1234, "live": true, "memory": 67108864, "timeout_ms": 10000,
            "max_concurrency": 100, "max_request_body": 10485760, "max_response_body": 67108864,
            "env": {"K": "V"}, "models": ["add"], "public": false,
        });
        let v: VersionView = round_trip(version.clone());
        assert_eq!((v.size, v.env["K"].as_str()), (1234, "V"));
        round_trip::<FunctionList>(json!({"functions": [
            {"name": "hello", "live": "3f2a9c41d0be", "versions": 2, "updated_at": T0}
        ]}));
        round_trip::<FunctionView>(
            json!({"name": "hello", "live": "3f2a9c41d0be", "versions": [version]}),
        );
        round_trip::<LiveMoved>(json!({"name": "hello", "live": "3f2a9c41d0be"}));
        round_trip::<Deleted>(json!({"name": "hello", "deleted": true}));
        round_trip::<Logs>(json!({"name": "hello", "lines": [{
            "time": T0, "version": "3f2a9c41d0be", "request_id": "r-1", "stream": "stderr",
            "line": "oops",
        }]}));
    }

    #[test]
    fn a_rollback_body_names_a_version_or_nothing() {
        let none: RollbackRequest = round_trip(json!({}));
        assert_eq!(none.to, None);
        let to: RollbackRequest = round_trip(json!({"to": "3f2a"}));
        assert_eq!(to.to.as_deref(), Some("3f2a"));
        let null: RollbackRequest = serde_json::from_value(json!({"to": null})).unwrap();
        assert_eq!(null, RollbackRequest::default());
        let typo = serde_json::from_value::<RollbackRequest>(json!({"too": "3f2a"}));
        assert!(
            typo.unwrap_err()
                .to_string()
                .contains("unknown field `too`")
        );
    }

    #[test]
    fn model_bodies_match_the_node() {
        let version = json!({
            "version": "aa11bb22cc33", "digest": "sha256:aa11bb22cc33dd", "created_at": T0,
            "size": 99, "live": true, "target": "gpu", "max_batch": 8,
        });
        let v: ModelVersionView = round_trip(version.clone());
        assert_eq!(v.target, Target::Gpu);
        round_trip::<ModelList>(json!({"models": [{
            "name": "add", "shared": true, "live": "aa11bb22cc33", "versions": 1,
            "updated_at": T0, "loaded": false,
        }]}));
        let m: ModelView = round_trip(json!({
            "name": "add", "live": "aa11bb22cc33", "versions": [version],
            "inputs": [{"name": "a", "type": "fp32", "dims": [-1, 3]}],
            "outputs": [{"name": "y", "type": "unsupported", "dims": []}],
        }));
        assert_eq!(
            (m.inputs[0].ty.as_str(), &m.inputs[0].dims),
            ("fp32", &vec![-1, 3])
        );
    }

    #[test]
    fn tenant_bodies_match_the_node() {
        let q = Quotas::default();
        let tenant = json!({
            "name": "acme", "created_at": T0,
            "quotas": {
                "max_functions": q.max_functions, "max_models": q.max_models,
                "max_stored": q.max_stored, "max_memory": q.max_memory,
                "max_timeout_ms": q.max_timeout_ms, "max_concurrency": q.max_concurrency,
                "requests_per_second": q.requests_per_second, "max_inferences": q.max_inferences,
            },
            "usage": {"functions": 1, "models": 2, "stored": 300},
            "keys": 4,
        });
        let list: TenantList = round_trip(json!({"tenants": [tenant.clone()]}));
        assert_eq!(
            (list.tenants[0].quotas, list.tenants[0].usage.stored),
            (q, 300)
        );
        // The node adds `token` beside the tenant's fields, not under a key of its own.
        let mut created = tenant;
        created["token"] = json!("tlt_acme_s3cret");
        let created: CreatedTenant = round_trip(created);
        assert_eq!(
            (created.tenant.name.as_str(), created.tenant.keys),
            ("acme", 4)
        );
        round_trip::<RemovedTenant>(
            json!({"name": "acme", "deleted": true, "functions": ["hello"], "models": []}),
        );
        round_trip::<Token>(json!({"name": "acme", "token": "tlt_acme_n3w"}));
    }

    #[test]
    fn a_quota_patch_carries_only_what_changes() {
        assert_eq!(round_trip::<QuotaPatch>(json!({})), QuotaPatch::default());
        let patch = QuotaPatch {
            max_functions: Some(3),
            max_timeout_ms: Some(5000),
            ..QuotaPatch::default()
        };
        assert_eq!(
            serde_json::to_value(patch).unwrap(),
            json!({"max_functions": 3, "max_timeout_ms": 5000})
        );
        round_trip::<QuotaPatch>(json!({
            "max_functions": 1, "max_models": 2, "max_stored": 3, "max_memory": 4,
            "max_timeout_ms": 5, "max_concurrency": 6, "requests_per_second": 7,
            "max_inferences": 8,
        }));
        let typo = serde_json::from_value::<QuotaPatch>(json!({"max_function": 3}));
        assert!(typo.unwrap_err().to_string().contains("max_function"));
    }

    #[test]
    fn key_audit_and_error_bodies_match_the_node() {
        round_trip::<CreatedKey>(
            json!({"id": "k1a2b3", "created_at": T0, "key": "tlk_acme_k1a2b3_s3cret"}),
        );
        round_trip::<KeyList>(json!({"keys": [{"id": "k1a2b3", "created_at": T0}]}));
        round_trip::<RemovedKey>(json!({"id": "k1a2b3", "deleted": true}));
        let log: AuditLog = round_trip(json!({"records": [{
            "time": T0, "who": "tenant:acme", "action": "DELETE /admin/v1/functions/hello",
            "status": 404,
        }]}));
        assert_eq!(log.records[0].status, 404);
        round_trip::<ErrorBody>(json!({
            "error": {"code": "function_not_found", "message": "no function `x`"},
            "request_id": "r-1",
        }));
    }

    /// A CLI older than the node still reads answers that gained fields.
    #[test]
    fn answers_may_carry_fields_this_build_does_not_know() {
        let v = json!({"name": "hello", "live": "3f2a9c41d0be", "versions": 2,
                       "updated_at": T0, "region": "eu"});
        let summary: FunctionSummary = serde_json::from_value(v).unwrap();
        assert_eq!(summary.versions, 2);
    }
}
