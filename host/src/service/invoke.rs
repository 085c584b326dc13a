//! The function path, `/fn/{name}/...` (`/fn/{tenant}/{name}/...` on a node with tenants): which
//! function a path names, the request as its guest sees it, and the call into the runtime. What
//! may run is decided by [`super::admission`]; what is counted and logged, by the dispatch that
//! sends the answer, so every refusal here is just an `Err`.

use crate::key::FunctionKey;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;

use super::HttpService;
use super::admission::{self, Guarded, too_large_body};
use super::body::{BoxBody, RequestBody};
use crate::error::ApiError;
use crate::registry::{Deployed, TenantLive};
use crate::runtime::{Invocation, request_body_error};

impl HttpService {
    /// Runs `/fn/{rest}`. Also returns the function the path named, if there is one, so the
    /// dispatch can count the answer in its metrics.
    pub(super) async fn invoke<B: RequestBody>(
        &self,
        rest: &str,
        req: Request<B>,
        request_id: &str,
    ) -> (Option<Arc<Deployed>>, Result<Response<BoxBody>, ApiError>) {
        // With tenants a function is `/fn/{tenant}/{name}/...`, else `/fn/{name}/...`.
        let (tenant_name, rest) = if self.config.tenants {
            match rest.split_once('/') {
                Some((t, rest)) if !t.is_empty() => (Some(t), rest),
                _ => return (None, Err(ApiError::not_found(req.uri().path()))),
            }
        } else {
            (None, rest)
        };
        let (name, guest_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if name.is_empty() {
            return (None, Err(ApiError::not_found(req.uri().path())));
        }
        let key = FunctionKey::new(tenant_name, name);
        let Some(function) = self.registry.route(&key) else {
            return (None, Err(ApiError::function_not_found(name)));
        };
        let tenant = match tenant_name {
            Some(t) => match self.registry.tenant(t) {
                Some(live) => Some((t, live)),
                None => return (None, Err(ApiError::function_not_found(name))),
            },
            None => None,
        };
        let tenant = tenant.as_ref().map(|(t, live)| (*t, &**live));
        let result = self
            .run(&function, name, tenant, guest_path, req, request_id)
            .await;
        (Some(function), result)
    }

    /// Admits the request and runs it through a fresh instance of the function.
    async fn run<B: RequestBody>(
        &self,
        function: &Deployed,
        name: &str,
        tenant: Option<(&str, &TenantLive)>,
        guest_path: &str,
        req: Request<B>,
        request_id: &str,
    ) -> Result<Response<BoxBody>, ApiError> {
        let admission = admission::admit(function, name, tenant, req.headers())?;
        let limits = function.limits;
        let overflowed = Arc::new(AtomicBool::new(false));
        let req = guest_request(
            req,
            guest_path,
            limits.max_request_body,
            Arc::clone(&overflowed),
        )?;
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let inv = invocation(function, tenant.map(|(_, live)| live), request_id);
        let result = self
            .runtime
            .invoke(inv, req, move |d| metrics.instantiation.observe(d))
            .await;
        function.metrics.latency.observe(started.elapsed());
        // A chunked body can only be found too large while the guest reads it; whatever the guest
        // answered then, the client gets the same 413 as with a Content-Length over the cap.
        if overflowed.load(Ordering::Relaxed) {
            return Err(too_large_body(name, limits.max_request_body));
        }
        Ok(result?.map(|b| Guarded::new(b, admission).boxed_unsync()))
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
/// a body that fails once it exceeds the function's cap. `Limited` turns the body's own errors
/// into boxed ones, which `request_body_error` maps to wasi:http's error type.
fn guest_request<B: RequestBody>(
    req: Request<B>,
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
