//! The HTTP edge: [`Node::handle`] turns every request into a response and never fails. It
//! routes `/fn/{name}/...` to the function's live version, `/admin/v1/...` to the admin API, and
//! serves `/healthz`, `/readyz` and `/metrics`. Every error becomes a JSON [`ApiError`] body.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::{Config, FunctionLimits, parse_duration, parse_size};
use crate::error::ApiError;
use crate::metrics::{FunctionMetrics, Metrics};
use crate::nn::onnx::{MAX_BATCH, ModelOptions, Target};
use crate::registry::{Deploy, Deployed, Registry};
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
}

impl Node {
    /// Wires the parts together.
    pub fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
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
        let (name, guest_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if name.is_empty() {
            return Err(ApiError::not_found(req.uri().path()));
        }
        let function = self
            .registry
            .route(name)
            .ok_or_else(|| ApiError::function_not_found(name))?;
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
        let guard = InFlight::enter(Arc::clone(&function.metrics), permit);
        let metrics = Arc::clone(&self.metrics);
        let result = self
            .runtime
            .invoke(invocation(&function, request_id), req, move |d| {
                metrics.instantiation.observe(d)
            })
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

    async fn admin(
        &self,
        rest: &str,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let segments: Vec<&str> = rest.split('/').collect();
        let method = req.method().clone();
        match (segments.as_slice(), &method) {
            (["functions"] | ["functions", ""], &Method::GET) => {
                Ok(json_response(StatusCode::OK, self.registry.list().await))
            }
            (["functions"], _) => Err(ApiError::method_not_allowed("GET")),
            (["functions", name], m) | (["functions", name, "versions"], m) if m == Method::GET => {
                let name = check_name(name)?;
                Ok(json_response(
                    StatusCode::OK,
                    self.registry.get(name).await?,
                ))
            }
            (["functions", name], &Method::DELETE) => {
                let name = check_name(name)?;
                Ok(json_response(
                    StatusCode::OK,
                    self.registry.delete(name).await?,
                ))
            }
            (["functions", _], _) => Err(ApiError::method_not_allowed("GET, DELETE")),
            (["functions", name, "versions"], &Method::POST) => {
                let name = check_name(name)?.to_string();
                self.deploy(&name, req).await
            }
            (["functions", _, "versions"], _) => Err(ApiError::method_not_allowed("GET, POST")),
            (["functions", name, "rollback"], &Method::POST) => {
                let name = check_name(name)?.to_string();
                let body = read_body(req, 64 * 1024).await?;
                let to = if body.iter().all(u8::is_ascii_whitespace) {
                    None
                } else {
                    let v: Value = serde_json::from_slice(&body).map_err(|e| {
                        ApiError::invalid_request(format!(
                            "rollback body must be JSON like {{\"to\": \"VERSION\"}}: {e}"
                        ))
                    })?;
                    match v.get("to") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(_) => {
                            return Err(ApiError::invalid_request(
                                "`to` must be a version id string",
                            ));
                        }
                    }
                };
                Ok(json_response(
                    StatusCode::OK,
                    self.registry.rollback(&name, to.as_deref()).await?,
                ))
            }
            (["functions", _, "rollback"], _) => Err(ApiError::method_not_allowed("POST")),
            (["functions", name, "logs"], &Method::GET) => {
                let name = check_name(name)?;
                let lines = self.registry.logs(name).await?;
                Ok(json_response(
                    StatusCode::OK,
                    json!({ "name": name, "lines": lines }),
                ))
            }
            (["functions", _, "logs"], _) => Err(ApiError::method_not_allowed("GET")),
            (["models"] | ["models", ""], &Method::GET) => Ok(json_response(
                StatusCode::OK,
                self.registry.list_models().await,
            )),
            (["models"], _) => Err(ApiError::method_not_allowed("GET")),
            (["models", name], m) | (["models", name, "versions"], m) if m == Method::GET => {
                let name = check_name(name)?;
                Ok(json_response(
                    StatusCode::OK,
                    self.registry.get_model(name).await?,
                ))
            }
            (["models", name], &Method::DELETE) => {
                let name = check_name(name)?;
                Ok(json_response(
                    StatusCode::OK,
                    self.registry.remove_model(name).await?,
                ))
            }
            (["models", _], _) => Err(ApiError::method_not_allowed("GET, DELETE")),
            (["models", name, "versions"], &Method::POST) => {
                let name = check_name(name)?.to_string();
                let options = model_options(req.uri().query().unwrap_or(""))?;
                let bytes = read_body(req, self.config.max_model_size).await?;
                match self.registry.add_model(&name, bytes, options).await? {
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
        let (limits, env, models) = deploy_settings(&self.config, req.uri().query().unwrap_or(""))?;
        let bytes = read_body(req, self.config.max_component_size)
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
            .deploy(name, bytes, limits, env, models)
            .await?
        {
            Deploy::Created(v) => Ok(json_response(StatusCode::CREATED, v)),
            Deploy::Existing(v) => Ok(json_response(StatusCode::OK, v)),
        }
    }
}

fn invocation(f: &Deployed, request_id: &str) -> Invocation {
    Invocation {
        name: Arc::clone(&f.name),
        version: Arc::clone(&f.version),
        pre: f.pre.clone(),
        limits: f.limits,
        env: Arc::clone(&f.env),
        logs: Arc::clone(&f.logs),
        request_id: Arc::from(request_id),
        models: Arc::clone(&f.models),
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
async fn read_body(req: Request<Incoming>, cap: u64) -> Result<Bytes, ApiError> {
    if content_length(&req).is_some_and(|n| n > cap) {
        return Err(ApiError::payload_too_large(format!(
            "the body is larger than {}",
            crate::config::format_size(cap)
        )));
    }
    match Limited::new(req.into_body(), cap as usize).collect().await {
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
fn check_name(name: &str) -> Result<&str, ApiError> {
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

/// Limits, environment and allowed models of a deploy.
type DeploySettings = (FunctionLimits, BTreeMap<String, String>, Vec<String>);

/// Parses deploy settings from the query string; unknown parameters are errors.
fn deploy_settings(config: &Config, query: &str) -> Result<DeploySettings, ApiError> {
    let mut limits = config.defaults;
    let mut env = BTreeMap::new();
    let mut models = Vec::new();
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
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown deploy parameter `{other}`: use memory, timeout, max_concurrency, max_request_body, max_response_body, env or model"
                )));
            }
        }
    }
    config
        .check_limits(&limits)
        .map_err(ApiError::invalid_request)?;
    Ok((limits, env, models))
}

/// Parses a model version's options (`target=cpu|gpu`, `max_batch=N`) from the query string.
fn model_options(query: &str) -> Result<ModelOptions, ApiError> {
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

fn percent_decode(s: &str) -> Result<String, ApiError> {
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
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Marks a request in flight and holds its concurrency permit until the response body is done.
struct InFlight {
    metrics: Arc<FunctionMetrics>,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn enter(metrics: Arc<FunctionMetrics>, permit: OwnedSemaphorePermit) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            metrics,
            _permit: permit,
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
        let (l, env, models) = deploy_settings(
            &c,
            "memory=16MiB&timeout=2s&env=A%3D1&env=B=x%20y&model=mlp",
        )
        .unwrap();
        assert_eq!(models, ["mlp"]);
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
