//! The HTTP edge: [`Node::handle`] turns every request into a response and never fails. It
//! routes `/fn/{name}/...` to the function's live version, `/admin/v1/...` to the admin API, and
//! serves `/healthz`, `/readyz` and `/metrics`. Every error becomes a JSON [`ApiError`] body.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::audit::Audit;
use crate::auth::{self, Caller};
use crate::config::{Config, FunctionLimits, parse_duration, parse_size};
use crate::error::ApiError;
use crate::metrics::{FunctionMetrics, Metrics};
use crate::nn::onnx::{MAX_BATCH, ModelOptions, Target};
use crate::pace::PauseReads;
use crate::registry::{Deploy, Deployed, QuotaPatch, Registry, TenantLive};
use crate::runtime::{Invocation, Runtime, request_body_error};

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the node sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The node's request handler; cheap to share.
pub struct Node {
    config: Arc<Config>,
    registry: Arc<Registry>,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    id_prefix: String,
    next_id: AtomicU64,
    /// Hash of the operator token; `None` on a node without tokens.
    operator: Option<String>,
    audit: Audit,
}

impl Node {
    /// Wires the parts together.
    pub fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        operator: Option<String>,
        audit: Audit,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            config,
            registry,
            runtime,
            metrics,
            id_prefix: format!("{:08x}", seed as u32),
            next_id: AtomicU64::new(1),
            operator,
            audit,
        }
    }

    /// Handles one request. Never fails: errors become JSON error responses.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let request_id = format!(
            "{}-{:x}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let path = req.uri().path().to_string();
        let result = if let Some(rest) = path.strip_prefix("/fn/") {
            self.invoke(rest, req, &request_id).await
        } else if let Some(rest) = path.strip_prefix("/admin/v1/") {
            self.admin(rest, req).await
        } else {
            match (req.method(), path.as_str()) {
                (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
                (&Method::GET, "/readyz") => Ok(text(StatusCode::OK, "ready\n")),
                (&Method::GET, "/metrics") => {
                    let mut r = text(StatusCode::OK, self.metrics.render());
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    Ok(r)
                }
                (_, "/healthz" | "/readyz" | "/metrics") => {
                    Err(ApiError::method_not_allowed("GET"))
                }
                _ => Err(ApiError::not_found(&path)),
            }
        };
        let mut response = result.unwrap_or_else(|e| error_response(&e, &request_id));
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", v);
        }
        response
    }

    async fn invoke(
        &self,
        rest: &str,
        req: Request<Incoming>,
        request_id: &str,
    ) -> Result<Response<ResponseBody>, ApiError> {
        // With tenants a function is `/fn/{tenant}/{name}/...`, else `/fn/{name}/...`.
        let (tenant_name, rest) = if self.config.tenants {
            match rest.split_once('/') {
                Some((t, rest)) if !t.is_empty() => (Some(t), rest),
                _ => return Err(ApiError::not_found(req.uri().path())),
            }
        } else {
            (None, rest)
        };
        let (name, guest_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if name.is_empty() {
            return Err(ApiError::not_found(req.uri().path()));
        }
        let key: std::borrow::Cow<str> = match tenant_name {
            Some(t) => format!("{t}/{name}").into(),
            None => name.into(),
        };
        let not_found = || ApiError::function_not_found(name);
        let function = self.registry.route(&key).ok_or_else(not_found)?;
        let tenant = match tenant_name {
            Some(t) => Some(self.registry.tenant(t).ok_or_else(not_found)?),
            None => None,
        };
        let mut tenant_permit = None;
        if let (Some(t), Some(live)) = (tenant_name, &tenant) {
            if !function.public {
                let key_ok = auth::bearer(req.headers())
                    .and_then(auth::parse_key)
                    .is_some_and(|(kt, id, secret)| kt == t && live.key_matches(id, secret));
                if !key_ok {
                    function.metrics.count(401);
                    return Err(ApiError::unauthorized(format!(
                        "function `{name}` is private: send one of its tenant's invoke keys as `Authorization: Bearer tlk_...` \
                         (`tensorlet key create`), or deploy it with --public"
                    )));
                }
            }
            if let Err(wait) = live.admit() {
                function.metrics.count(429);
                live.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                let mut e = ApiError::rate_limited(wait);
                e.pause_reads = live.flooding();
                return Err(e);
            }
            let Ok(p) = Arc::clone(&live.concurrency).try_acquire_owned() else {
                function.metrics.count(429);
                live.metrics.busy.fetch_add(1, Ordering::Relaxed);
                let mut e = ApiError::tenant_busy(live.quotas.max_concurrency);
                e.pause_reads = live.flooding();
                return Err(e);
            };
            tenant_permit = Some(p);
        }
        let limits = function.limits;
        let Ok(permit) = Arc::clone(&function.permits).try_acquire_owned() else {
            function.metrics.count(503);
            return Err(ApiError::overloaded(name, limits.max_concurrency));
        };
        if content_length(&req).is_some_and(|n| n > limits.max_request_body) {
            function.metrics.count(413);
            return Err(too_large_body(name, limits.max_request_body));
        }

        let overflowed = Arc::new(AtomicBool::new(false));
        let req = guest_request(
            req,
            guest_path,
            limits.max_request_body,
            Arc::clone(&overflowed),
        )?;
        let started = Instant::now();
        let guard = InFlight::enter(Arc::clone(&function.metrics), permit, tenant_permit);
        let metrics = Arc::clone(&self.metrics);
        let inv = invocation(&function, tenant.as_deref(), request_id);
        let result = self
            .runtime
            .invoke(inv, req, move |d| metrics.instantiation.observe(d))
            .await;
        function.metrics.latency.observe(started.elapsed());
        // A chunked body can only be found too large while the guest reads it; whatever the guest
        // answered then, the client gets the same 413 as with a Content-Length over the cap.
        let result = match result {
            _ if overflowed.load(Ordering::Relaxed) => {
                Err(too_large_body(name, limits.max_request_body))
            }
            other => other,
        };
        match result {
            Ok(response) => {
                function.metrics.count(response.status().as_u16());
                Ok(response.map(|b| {
                    Guarded {
                        inner: b,
                        _guard: guard,
                    }
                    .boxed_unsync()
                }))
            }
            Err(e) => {
                function.metrics.count(e.status.as_u16());
                if e.status.is_server_error() {
                    tracing::warn!(function = name, request_id, code = e.code, "{}", e.message);
                }
                Err(e)
            }
        }
    }

    /// The admin API: authenticates the caller, runs the call in the caller's scope, and
    /// records every change in the audit log.
    async fn admin(
        &self,
        rest: &str,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let caller = self.authenticate(req.headers());
        let result = match &caller {
            Ok(caller) => self.admin_as(caller, rest, req).await,
            Err(e) => Err(e.clone()),
        };
        if method != Method::GET && method != Method::HEAD {
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
    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
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

    /// The key of `name` in the caller's namespace, for functions (`models` = false) or models.
    fn key(&self, caller: &Caller, name: &str, models: bool) -> Result<String, ApiError> {
        let name = check_name(name)?;
        if !models {
            self.may_manage_functions(caller)?;
        }
        Ok(match caller {
            Caller::Tenant(t) => format!("{t}/{name}"),
            Caller::Operator => name.to_string(),
        })
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

    async fn admin_as(
        &self,
        caller: &Caller,
        rest: &str,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let segments: Vec<&str> = rest.split('/').collect();
        let method = req.method().clone();
        let owner = match caller {
            Caller::Tenant(t) => Some(t.as_str()),
            Caller::Operator => None,
        };
        let ok = |v: Value| Ok(json_response(StatusCode::OK, v));
        match (segments.as_slice(), &method) {
            (["tenants", ..] | ["audit"], _) if !self.config.tenants => {
                Err(ApiError::invalid_request(
                    "this node has no tenants: set `tenants = true` in its config",
                ))
            }
            (["tenants", ..] | ["audit"], _) if owner.is_some() => {
                Err(ApiError::forbidden("this needs the operator token"))
            }
            (["tenants"] | ["tenants", ""], &Method::GET) => ok(self.registry.list_tenants().await),
            (["tenants"], _) => Err(ApiError::method_not_allowed("GET")),
            (["tenants", name], &Method::POST) => {
                let name = check_name(name)?.to_string();
                let patch = quota_patch(req, self.config.body_read_timeout).await?;
                let created = self.registry.create_tenant(&name, &patch).await?;
                Ok(json_response(StatusCode::CREATED, created))
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
            (["audit"], &Method::GET) => {
                let n = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("limit="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100usize);
                ok(json!({ "records": self.audit.tail(n).await }))
            }
            (["audit"], _) => Err(ApiError::method_not_allowed("GET")),
            (["keys", ..], _) if owner.is_none() => Err(ApiError::forbidden(
                "invoke keys belong to tenants: use a tenant's token",
            )),
            (["keys"] | ["keys", ""], &Method::GET) => {
                ok(self.registry.list_keys(owner.unwrap_or_default()).await?)
            }
            (["keys"], &Method::POST) => {
                let key = self.registry.create_key(owner.unwrap_or_default()).await?;
                Ok(json_response(StatusCode::CREATED, key))
            }
            (["keys"], _) => Err(ApiError::method_not_allowed("GET, POST")),
            (["keys", id], &Method::DELETE) => ok(self
                .registry
                .remove_key(owner.unwrap_or_default(), id)
                .await?),
            (["keys", _], _) => Err(ApiError::method_not_allowed("DELETE")),
            (["functions"] | ["functions", ""], &Method::GET) => {
                self.may_manage_functions(caller)?;
                ok(self.registry.list(owner).await)
            }
            (["functions"], _) => Err(ApiError::method_not_allowed("GET")),
            (["functions", name], m) | (["functions", name, "versions"], m) if m == Method::GET => {
                ok(self.registry.get(&self.key(caller, name, false)?).await?)
            }
            (["functions", name], &Method::DELETE) => ok(self
                .registry
                .delete(&self.key(caller, name, false)?)
                .await?),
            (["functions", _], _) => Err(ApiError::method_not_allowed("GET, DELETE")),
            (["functions", name, "versions"], &Method::POST) => {
                let key = self.key(caller, name, false)?;
                self.deploy(&key, req).await
            }
            (["functions", _, "versions"], _) => Err(ApiError::method_not_allowed("GET, POST")),
            (["functions", name, "rollback"], &Method::POST) => {
                let key = self.key(caller, name, false)?;
                let body = read_body(req, 64 * 1024, self.config.body_read_timeout).await?;
                let to = rollback_target(&body)?;
                ok(self.registry.rollback(&key, to.as_deref()).await?)
            }
            (["functions", _, "rollback"], _) => Err(ApiError::method_not_allowed("POST")),
            (["functions", name, "logs"], &Method::GET) => {
                let key = self.key(caller, name, false)?;
                let lines = self.registry.logs(&key).await?;
                ok(json!({ "name": name, "lines": lines }))
            }
            (["functions", _, "logs"], _) => Err(ApiError::method_not_allowed("GET")),
            (["models"] | ["models", ""], &Method::GET) => {
                ok(self.registry.list_models(owner).await)
            }
            (["models"], _) => Err(ApiError::method_not_allowed("GET")),
            (["models", name], m) | (["models", name, "versions"], m) if m == Method::GET => {
                let key = self.key(caller, name, true)?;
                match self.registry.get_model(&key).await {
                    // A tenant may read the operator's shared models too.
                    Err(crate::registry::RegistryError::ModelNotFound(_)) if owner.is_some() => {
                        ok(self.registry.get_model(check_name(name)?).await?)
                    }
                    other => ok(other?),
                }
            }
            (["models", name], &Method::DELETE) => ok(self
                .registry
                .remove_model(&self.key(caller, name, true)?)
                .await?),
            (["models", _], _) => Err(ApiError::method_not_allowed("GET, DELETE")),
            (["models", name, "versions"], &Method::POST) => {
                let key = self.key(caller, name, true)?;
                let options = model_options(req.uri().query().unwrap_or(""))?;
                let bytes = read_body(
                    req,
                    self.config.max_model_size,
                    self.config.body_read_timeout,
                )
                .await?;
                match self.registry.add_model(&key, bytes, options).await? {
                    Deploy::Created(v) => Ok(json_response(StatusCode::CREATED, v)),
                    Deploy::Existing(v) => Ok(json_response(StatusCode::OK, v)),
                }
            }
            (["models", _, "versions"], _) => Err(ApiError::method_not_allowed("GET, POST")),
            _ => Err(ApiError::not_found(req.uri().path())),
        }
    }

    async fn deploy(
        &self,
        name: &str,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let (limits, env, models, public) =
            deploy_settings(&self.config, req.uri().query().unwrap_or(""))?;
        let bytes = read_body(
            req,
            self.config.max_component_size,
            self.config.body_read_timeout,
        )
        .await
        .map_err(|e| {
            if e.code == "payload_too_large" {
                ApiError::payload_too_large(format!(
                    "the component is larger than this node's max_component_size of {}",
                    crate::config::format_size(self.config.max_component_size)
                ))
            } else {
                e
            }
        })?;
        match self
            .registry
            .deploy(name, bytes, limits, env, models, public)
            .await?
        {
            Deploy::Created(v) => Ok(json_response(StatusCode::CREATED, v)),
            Deploy::Existing(v) => Ok(json_response(StatusCode::OK, v)),
        }
    }
}

fn invocation(f: &Deployed, tenant: Option<&TenantLive>, request_id: &str) -> Invocation {
    Invocation {
        name: Arc::clone(&f.name),
        version: Arc::clone(&f.version),
        pre: f.pre.clone(),
        limits: f.limits,
        env: Arc::clone(&f.env),
        logs: Arc::clone(&f.logs),
        request_id: Arc::from(request_id),
        models: Arc::clone(&f.models),
        inferences: tenant.map(|t| t.inferences.clone()),
        tenant: tenant.map(|t| Arc::clone(&t.name)),
    }
}

/// The request as the guest sees it: path `/{rest}` plus the original query, a Host header, and
/// a body that fails once it exceeds the function's cap.
fn guest_request(
    req: Request<Incoming>,
    guest_path: &str,
    max_body: u64,
    overflowed: Arc<AtomicBool>,
) -> Result<
    Request<impl Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static>,
    ApiError,
> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{guest_path}?{q}"),
        None => guest_path.to_string(),
    };
    parts.uri = http::Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ApiError::invalid_request(format!("bad request target: {e}")))?;
    if !parts.headers.contains_key(header::HOST) {
        // wasi:http requires an authority; HTTP/1.0 clients may not send one.
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    let body =
        Limited::new(body, max_body as usize).map_err(request_body_error(max_body, overflowed));
    Ok(Request::from_parts(parts, body))
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large_body(name: &str, cap: u64) -> ApiError {
    ApiError::payload_too_large(format!(
        "the request body is larger than function `{name}`'s max_request_body of {}: send less or redeploy with a higher --max-request-body",
        crate::config::format_size(cap)
    ))
}

/// Reads a whole (admin) body, refusing more than `cap` bytes.
async fn read_body(
    req: Request<Incoming>,
    cap: u64,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    if content_length(&req).is_some_and(|n| n > cap) {
        return Err(ApiError::payload_too_large(format!(
            "the body is larger than {}",
            crate::config::format_size(cap)
        )));
    }
    let collected = tokio::time::timeout(
        timeout,
        Limited::new(req.into_body(), cap as usize).collect(),
    )
    .await
    .map_err(|_| {
        ApiError::request_timeout(format!(
            "the body did not arrive within {}s (body_read_timeout): send it faster",
            timeout.as_secs()
        ))
    })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::payload_too_large(format!(
                "the body is larger than {}",
                crate::config::format_size(cap)
            )))
        }
        Err(e) => Err(ApiError::invalid_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Function names are DNS-label-like so they are safe in paths, files, logs and metrics.
pub(crate) fn check_name(name: &str) -> Result<&str, ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(name)
    } else {
        Err(ApiError::invalid_request(format!(
            "`{}` is not a valid function name: use 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'",
            name.escape_default()
        )))
    }
}

/// Limits, environment, allowed models and visibility of a deploy.
pub(crate) type DeploySettings = (FunctionLimits, BTreeMap<String, String>, Vec<String>, bool);

/// Parses deploy settings from the query string; unknown parameters are errors.
pub(crate) fn deploy_settings(config: &Config, query: &str) -> Result<DeploySettings, ApiError> {
    let mut limits = config.defaults;
    let mut env = BTreeMap::new();
    let mut models = Vec::new();
    let mut public = false;
    let bad = |k: &str, e: anyhow::Error| ApiError::invalid_request(format!("bad `{k}`: {e:#}"));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        match k.as_str() {
            "memory" => limits.memory = parse_size(&v).map_err(|e| bad(&k, e))?,
            "timeout" => {
                limits.timeout_ms = parse_duration(&v).map_err(|e| bad(&k, e))?.as_millis() as u64
            }
            "max_concurrency" => {
                limits.max_concurrency = v
                    .parse()
                    .map_err(|e: std::num::ParseIntError| bad(&k, e.into()))?
            }
            "max_request_body" => {
                limits.max_request_body = parse_size(&v).map_err(|e| bad(&k, e))?
            }
            "max_response_body" => {
                limits.max_response_body = parse_size(&v).map_err(|e| bad(&k, e))?
            }
            "env" => {
                let (ek, ev) = v
                    .split_once('=')
                    .filter(|(ek, _)| !ek.is_empty() && !ek.contains('\0'))
                    .ok_or_else(|| {
                        ApiError::invalid_request(format!("bad `env`: `{v}` is not KEY=VALUE"))
                    })?;
                env.insert(ek.to_string(), ev.to_string());
            }
            "model" => models.push(check_name(&v)?.to_string()),
            "public" => {
                public = match v.as_str() {
                    "true" | "" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::invalid_request(format!(
                            "bad `public`: `{v}` is neither true nor false"
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown deploy parameter `{other}`: use memory, timeout, max_concurrency, max_request_body, max_response_body, env, model or public"
                )));
            }
        }
    }
    config
        .check_limits(&limits)
        .map_err(ApiError::invalid_request)?;
    Ok((limits, env, models, public))
}

/// `{"to": VERSION}` (or an empty body: the version before the live one).
pub(crate) fn rollback_target(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!(
            "rollback body must be JSON like {{\"to\": \"VERSION\"}}: {e}"
        ))
    })?;
    match v.get("to") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid_request(
            "`to` must be a version id string",
        )),
    }
}

/// A tenant's quotas as JSON (bytes and milliseconds); an empty body changes nothing.
async fn quota_patch(
    req: Request<Incoming>,
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

/// Parses a model version's options (`target=cpu|gpu`, `max_batch=N`) from the query string.
pub(crate) fn model_options(query: &str) -> Result<ModelOptions, ApiError> {
    let mut options = ModelOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        match k.as_str() {
            "target" => {
                options.target = match v.as_str() {
                    "cpu" => Target::Cpu,
                    "gpu" => Target::Gpu,
                    _ => {
                        return Err(ApiError::invalid_request(format!(
                            "bad `target`: `{v}` is neither cpu nor gpu"
                        )));
                    }
                }
            }
            "max_batch" => {
                options.max_batch = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_BATCH).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_request(format!(
                            "bad `max_batch`: `{v}` is not a number from 1 to {MAX_BATCH}"
                        ))
                    })?
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown model parameter `{other}`: use target (cpu or gpu) or max_batch"
                )));
            }
        }
    }
    Ok(options)
}

pub(crate) fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_request("bad percent-encoding in the query string")
                    })?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::invalid_request("the query string is not UTF-8"))
}

fn full(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, value: Value) -> Response<ResponseBody> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError, request_id: &str) -> Response<ResponseBody> {
    let mut r = Response::new(full(e.body(request_id)));
    *r.status_mut() = e.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        if e.pause_reads {
            r.extensions_mut()
                .insert(PauseReads(Duration::from_secs(seconds)));
        }
    } else if e.status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Marks a request in flight and holds its concurrency permit until the response body is done.
struct InFlight {
    metrics: Arc<FunctionMetrics>,
    _permit: OwnedSemaphorePermit,
    _tenant: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    fn enter(
        metrics: Arc<FunctionMetrics>,
        permit: OwnedSemaphorePermit,
        tenant: Option<OwnedSemaphorePermit>,
    ) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            metrics,
            _permit: permit,
            _tenant: tenant,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A body that keeps a guard alive until it is finished or dropped.
struct Guarded<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("hello-2").is_ok());
        for bad in ["", "Bad_Name", "-x", "a/b", "a%2Fb", "é", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deploy_query() {
        let c = Config::from_toml("").unwrap();
        let (l, env, models, public) = deploy_settings(
            &c,
            "memory=16MiB&timeout=2s&env=A%3D1&env=B=x%20y&model=mlp&public=true",
        )
        .unwrap();
        assert_eq!(models, ["mlp"]);
        assert!(public);
        assert!(!deploy_settings(&c, "").unwrap().3);
        assert!(deploy_settings(&c, "public=yes").is_err());
        assert_eq!(l.memory, 16 << 20);
        assert_eq!(l.timeout_ms, 2000);
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x y");
        assert!(deploy_settings(&c, "memroy=1").is_err());
        assert!(deploy_settings(&c, "memory=99GiB").is_err());
        assert!(deploy_settings(&c, "env=nokey").is_err());
        assert!(deploy_settings(&c, "timeout=%zz").is_err());
    }
}
