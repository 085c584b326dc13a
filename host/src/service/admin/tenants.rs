//! Operator routes of a node with tenants: `tenants[/{name}[/token]]` to manage tenants and their
//! quotas, and `audit` to read the log of admin changes. Both exist only with `tenants = true`
//! and only for the operator token, checked before anything else so that neither a tenant nor a
//! node without tenants learns more than that.

use http::{Method, Request, StatusCode};

use super::super::HttpService;
use super::super::body::{RequestBody, json_response, ok, read_body};
use super::super::query::{audit_limit, check_name};
use super::{Call, Reply, owner};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::registry::QuotaPatch;

impl HttpService {
    /// `tenants`, `tenants/{name}`, `tenants/{name}/token`.
    pub(super) async fn tenants<B: RequestBody>(&self, call: Call<'_, B>) -> Reply {
        let Call(caller, segments, req) = call;
        self.operator_of_tenants(caller)?;
        match (segments, req.method()) {
            (["tenants"] | ["tenants", ""], &Method::GET) => ok(self.registry.list_tenants().await),
            (["tenants"], _) => Err(ApiError::method_not_allowed("GET")),
            (["tenants", name], &Method::POST) => {
                let name = check_name(name)?.to_string();
                let patch = quota_patch(req, self.config.body_read_timeout).await?;
                let created = self.registry.create_tenant(&name, &patch).await?;
                Ok(json_response(StatusCode::CREATED, &created))
            }
            (["tenants", name], &Method::PATCH) => {
                let name = check_name(name)?.to_string();
                let patch = quota_patch(req, self.config.body_read_timeout).await?;
                ok(self.registry.update_tenant(&name, &patch).await?)
            }
            (["tenants", name], &Method::DELETE) => {
                ok(self.registry.remove_tenant(check_name(name)?).await?)
            }
            (["tenants", _], _) => Err(ApiError::method_not_allowed("POST, PATCH, DELETE")),
            (["tenants", name, "token"], &Method::POST) => {
                ok(self.registry.rotate_token(check_name(name)?).await?)
            }
            (["tenants", _, "token"], _) => Err(ApiError::method_not_allowed("POST")),
            _ => Err(ApiError::not_found(req.uri().path())),
        }
    }

    /// `audit?limit=N`: the newest admin changes.
    pub(super) async fn audit_log<B: RequestBody>(&self, call: Call<'_, B>) -> Reply {
        let Call(caller, segments, req) = call;
        if segments != ["audit"] {
            return Err(ApiError::not_found(req.uri().path()));
        }
        self.operator_of_tenants(caller)?;
        if req.method() != Method::GET {
            return Err(ApiError::method_not_allowed("GET"));
        }
        let n = audit_limit(req.uri().query());
        ok(crate::api::AuditLog {
            records: self.audit.tail(n).await,
        })
    }

    /// Tenant management needs a node with tenants and the operator token.
    fn operator_of_tenants(&self, caller: &Caller) -> Result<(), ApiError> {
        if !self.config.tenants {
            return Err(ApiError::invalid_request(
                "this node has no tenants: set `tenants = true` in its config",
            ));
        }
        if owner(caller).is_some() {
            return Err(ApiError::forbidden("this needs the operator token"));
        }
        Ok(())
    }
}

/// A tenant's quotas as JSON (bytes and milliseconds); an empty body changes nothing.
async fn quota_patch<B: RequestBody>(
    req: Request<B>,
    timeout: std::time::Duration,
) -> Result<QuotaPatch, ApiError> {
    let body = read_body(req, 64 * 1024, timeout).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(QuotaPatch::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_request(format!(
            "quotas must be JSON like {{\"max_functions\": 10, \"max_memory\": 134217728}}: {e}"
        ))
    })
}
