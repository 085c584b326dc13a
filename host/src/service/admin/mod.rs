//! The admin API, `/admin/v1/...`. Every call goes through the same step here: find out who is
//! calling ([`HttpService::authenticate`]), run the call in the caller's namespace, and record
//! every change (anything but GET and HEAD, refused ones included) in the audit log. The routes
//! of each resource live in their own file; they share the namespace rules below.

mod anomalies;
mod dashboard;
mod fleet;
mod functions;
mod keys;
mod logs;
mod models;
mod tenants;

use http::{HeaderMap, Method, Request, Response};

#[cfg(test)]
pub(crate) use functions::rollback_target;

use super::HttpService;
use super::body::{BoxBody, RequestBody};
use super::query::check_name;
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::key::{FunctionKey, ModelKey};

/// One admin call on its way to its resource's routes: who asks, the path below `/admin/v1/`
/// split at `/`, and the request.
pub(super) struct Call<'a, B>(&'a Caller, &'a [&'a str], Request<B>);

/// What a route answers.
pub(super) type Reply = Result<Response<BoxBody>, ApiError>;

impl HttpService {
    /// The admin API: authenticates the caller, runs the call in the caller's scope, and
    /// records every change in the audit log.
    pub(super) async fn admin<B: RequestBody>(
        &self,
        rest: &str,
        req: Request<B>,
    ) -> Result<Response<BoxBody>, ApiError> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let caller = self.authenticate(req.headers());
        let changing = method != Method::GET && method != Method::HEAD;
        let result = match &caller {
            Ok(caller) if changing => match fleet::take_wait(req) {
                Ok((req, wait)) => match self.admin_as(caller, rest, req).await {
                    Ok(response) => self
                        .wait_for_fleet(response.status(), wait)
                        .await
                        .map(|()| response),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Ok(caller) => self.admin_as(caller, rest, req).await,
            Err(e) => Err(e.clone()),
        };
        if changing {
            let who = match &caller {
                Ok(Caller::Operator) => "operator".to_string(),
                Ok(Caller::Tenant(t)) => format!("tenant:{t}"),
                Err(_) => "unauthenticated".to_string(),
            };
            let status = match &result {
                Ok(r) => r.status().as_u16(),
                Err(e) => e.status.as_u16(),
            };
            self.audit
                .record(&who, method.as_str(), &path, status)
                .await;
        }
        result
    }

    /// Who sent an admin request. Without tokens on the node, everyone is the operator (the
    /// node then only listens on loopback). One message for every bad token, whatever is wrong.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(operator) = &self.operator else {
            return Ok(Caller::Operator);
        };
        let token = auth::bearer(headers).ok_or_else(|| {
            ApiError::unauthorized(
                "this node needs a token: pass --token or set TENSORLET_TOKEN (sent as `Authorization: Bearer ...`)",
            )
        })?;
        if token.starts_with(auth::OPERATOR_PREFIX) && auth::matches(token, operator) {
            return Ok(Caller::Operator);
        }
        // An unknown tenant costs the same hash and comparison as a known one, so timing does
        // not tell which tenants exist.
        let tenant = auth::parse_tenant_token(token).filter(|(tenant, secret)| {
            match self.registry.tenant(tenant) {
                Some(live) => live.token_matches(secret),
                None => {
                    // The result is thrown away: only the time it takes matters.
                    std::hint::black_box(auth::matches(secret, auth::UNKNOWN_HASH));
                    false
                }
            }
        });
        if let Some((tenant, _)) = tenant {
            return Ok(Caller::Tenant(tenant.to_string()));
        }
        Err(ApiError::unauthorized(
            "the token is not valid: check --token or TENSORLET_TOKEN",
        ))
    }

    /// Sends the call to its resource by the first path segment.
    async fn admin_as<B: RequestBody>(
        &self,
        caller: &Caller,
        rest: &str,
        req: Request<B>,
    ) -> Result<Response<BoxBody>, ApiError> {
        let segments: Vec<&str> = rest.split('/').collect();
        let call = Call(caller, &segments, req);
        match segments[0] {
            "tenants" => self.tenants(call).await,
            "audit" => self.audit_log(call).await,
            "keys" => self.keys(call).await,
            "functions" => self.functions(call).await,
            "models" => self.models(call).await,
            "fleet" => self.fleet_status(call).await,
            "anomalies" => self.anomalies(call).await,
            "dashboard" => self.dashboard(call).await,
            _ => Err(ApiError::not_found(call.2.uri().path())),
        }
    }

    /// The key of function `name` in the caller's namespace.
    fn function_key(&self, caller: &Caller, name: &str) -> Result<FunctionKey, ApiError> {
        self.may_manage_functions(caller)?;
        Ok(FunctionKey::new(owner(caller), check_name(name)?))
    }

    /// The key of model `name` in the caller's namespace.
    fn model_key(&self, caller: &Caller, name: &str) -> Result<ModelKey, ApiError> {
        Ok(ModelKey::new(owner(caller), check_name(name)?))
    }

    /// On a node with tenants, functions belong to tenants: the operator has none.
    fn may_manage_functions(&self, caller: &Caller) -> Result<(), ApiError> {
        if self.config.tenants && *caller == Caller::Operator {
            return Err(ApiError::forbidden(
                "functions belong to tenants: use a tenant's token (the operator token manages tenants and shared models)",
            ));
        }
        Ok(())
    }
}

/// The tenant whose namespace a call runs in; `None` for the operator's.
fn owner(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Tenant(t) => Some(t.as_str()),
        Caller::Operator => None,
    }
}
