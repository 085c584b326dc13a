//! The HTTP edge: [`HttpService::handle`] turns every request into a response and never fails.
//! This file is the dispatch: it names each request (`x-request-id`), routes `/fn/...` to the
//! function path (`invoke.rs`), `/admin/v1/...` to the admin API (`admin/`), and serves
//! `/healthz`, `/readyz` and `/metrics`. It is also the one place where a response leaves, so
//! what must happen to every response happens here, once: an [`ApiError`] becomes its JSON
//! body, a 5xx is logged, and a function's answer is counted in its metrics. Each request is
//! handled inside a `request` span with its `request_id`, so every line the node logs about it,
//! here or in any module it reaches, names the request.
//!
//! `handle` takes any [`RequestBody`], so the whole service can be called in-process, without a
//! socket (the tests in this module do).

mod admin;
mod admission;
mod body;
mod invoke;
mod oip;
mod query;
mod shadow;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tracing::Instrument;

pub use body::{BoxBody, BoxError, RequestBody};
// The parsers that `crate::fuzz_tests` drives with arbitrary input.
#[cfg(test)]
pub(crate) use admin::rollback_target;
#[cfg(test)]
pub(crate) use query::{check_name, deploy_settings, model_options, pairs};

use crate::audit::Audit;
use crate::config::Config;
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::oip::Inference;
use crate::registry::{Deployed, Registry};
use crate::runtime::Runtime;
use crate::traces::Tracer;
use body::{error_response, text};

/// The node's request handler; cheap to share.
pub struct HttpService {
    config: Arc<Config>,
    registry: Arc<Registry>,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    id_prefix: String,
    next_id: AtomicU64,
    /// Hash of the operator token; `None` on a node without tokens.
    operator: Option<String>,
    audit: Audit,
    /// This node's fleet, in fleet mode.
    fleet: Option<Arc<Fleet>>,
    /// `x-tensorlet-node`, in fleet mode.
    node_header: Option<HeaderValue>,
    /// Where function requests are traced, with `otlp_endpoint`.
    traces: Option<Arc<Tracer>>,
    /// The inference protocol's core, shared with its gRPC edge.
    inference: Arc<Inference>,
}

impl HttpService {
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
        let inference = Arc::new(Inference::new(Arc::clone(&config), Arc::clone(&registry)));
        Self {
            inference,
            config,
            registry,
            runtime,
            metrics,
            id_prefix: format!("{:08x}", seed as u32),
            next_id: AtomicU64::new(1),
            operator,
            audit,
            fleet: None,
            node_header: None,
            traces: None,
        }
    }

    /// Runs the service as a node of `fleet`.
    pub fn with_fleet(mut self, fleet: Arc<Fleet>) -> Self {
        self.node_header = HeaderValue::from_str(fleet.node_id()).ok();
        self.fleet = Some(fleet);
        self
    }

    /// Traces function requests to `tracer`.
    pub fn with_traces(mut self, tracer: Arc<Tracer>) -> Self {
        self.traces = Some(tracer);
        self
    }

    /// The inference protocol's core, for its gRPC edge.
    pub fn inference(&self) -> Arc<Inference> {
        Arc::clone(&self.inference)
    }

    /// Handles one request. Never fails: errors become JSON error responses.
    pub async fn handle<B: RequestBody>(&self, req: Request<B>) -> Response<BoxBody> {
        let request_id = format!(
            "{}-{:x}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        // At error level: a span exists only where its level is logged, and the request id
        // must be on every line that is, down to errors.
        // As a string (not `%`): text shows it quoted, as it always was, and JSON as a string.
        let span = tracing::error_span!("request", request_id = request_id.as_str());
        self.handle_in_span(req, request_id).instrument(span).await
    }

    async fn handle_in_span<B: RequestBody>(
        &self,
        mut req: Request<B>,
        request_id: String,
    ) -> Response<BoxBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        // Only function requests are traced: the admin API and probes are the operator's.
        let (mut span, mut error) = (None, None);
        let (function, result) = if let Some(rest) = path.strip_prefix("/fn/") {
            span = self
                .traces
                .as_ref()
                .and_then(|t| t.begin(&mut req, &request_id));
            self.invoke(rest, req, &request_id).await
        } else if let Some(rest) = path.strip_prefix("/admin/v1/") {
            (None, self.admin(rest, req).await)
        } else if let Some(rest) = path
            .strip_prefix("/v2")
            .filter(|r| r.is_empty() || r.starts_with('/'))
        {
            // The inference protocol answers its errors in its own shape.
            (None, Ok(self.oip(rest, req).await))
        } else {
            (None, self.node_route(req.method(), &path))
        };
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                log_server_error(&e, &path, function.as_deref());
                // What failed, for the trace (a 4xx is the client's and no error of the span).
                if span.is_some() && e.status.is_server_error() {
                    error = Some(e.message.clone());
                }
                error_response(&e, &request_id)
            }
        };
        tracing::debug!(%method, path, status = response.status().as_u16(), "answered");
        if let Some(function) = &function {
            function.metrics.count(response.status().as_u16());
            function.stats.record(response.status().as_u16());
            // Which version answered (or refused): what a client needs to tell a rollout apart.
            if let Ok(v) = HeaderValue::from_str(&function.function.version) {
                response.headers_mut().insert("x-tensorlet-version", v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", v);
        }
        // Which node answered: what a client behind a load balancer needs to tell nodes apart.
        if let Some(node) = &self.node_header {
            response
                .headers_mut()
                .insert("x-tensorlet-node", node.clone());
        }
        if let Some(mut span) = span {
            if let Some(f) = &function {
                // On a node with tenants the path starts with the function's tenant.
                let tenant = (self.config.tenants)
                    .then(|| path["/fn/".len()..].split('/').next())
                    .flatten();
                span.function(&f.function.name, &f.function.version, tenant);
            }
            span.status(response.status(), error.as_deref());
            response = response.map(|body| span.attach(body).boxed_unsync());
        }
        response
    }

    /// The node's own routes: probes and metrics.
    fn node_route(&self, method: &Method, path: &str) -> Result<Response<BoxBody>, ApiError> {
        match (method, path) {
            (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
            (&Method::GET, "/readyz") => Ok(text(StatusCode::OK, "ready\n")),
            (&Method::GET, "/metrics") => {
                let mut metrics = self.metrics.render();
                self.registry.log_store().render(&mut metrics);
                if let Some(fleet) = &self.fleet {
                    fleet.state.render(&mut metrics);
                }
                if let Some(traces) = &self.traces {
                    traces.render(&mut metrics);
                }
                self.runtime.outbound().render(&mut metrics);
                let mut r = text(StatusCode::OK, metrics);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(r)
            }
            (_, "/healthz" | "/readyz" | "/metrics") => Err(ApiError::method_not_allowed("GET")),
            (&Method::GET, "/ui") => ui_asset(""),
            (&Method::GET, p) if p.starts_with("/ui/") => ui_asset(&p[3..]),
            _ => Err(ApiError::not_found(path)),
        }
    }
}

/// An embedded asset of the dashboard. The page is public (it holds no data; the admin API it
/// calls checks the token), and forbids framing and foreign scripts.
fn ui_asset(path: &str) -> Result<Response<BoxBody>, ApiError> {
    let (bytes, content_type) =
        crate::dashboard::asset(path).ok_or_else(|| ApiError::not_found(&format!("/ui{path}")))?;
    let mut r = text(StatusCode::OK, bytes);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// A 5xx is the node's or a guest's fault, not the client's, so the operator needs to see it;
/// the request id (from the request's span) ties the log line to what the client was told. 4xx
/// are the client's business and are not logged.
fn log_server_error(e: &ApiError, path: &str, function: Option<&Deployed>) {
    if !e.status.is_server_error() {
        return;
    }
    let function = function.map(|f| &*f.function.name);
    let status = e.status.as_u16();
    // One event, at a level chosen at run time (tracing's levels are fixed per call site).
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(status, code = e.code, path, function, "{}", e.message)
        };
    }
    if e.status == StatusCode::INTERNAL_SERVER_ERROR {
        log!(error);
    } else {
        // 503 and 504: load and slow guests, expected in bursts.
        log!(warn);
    }
}
