//! The function path, `/fn/{name}/...` (`/fn/{tenant}/{name}/...` on a node with tenants): which
//! function a path names, the request as its guest sees it, and the call into the runtime. What
//! may run is decided by [`super::admission`]; what is counted and logged, by the dispatch that
//! sends the answer, so every refusal here is just an `Err`.

use crate::key::FunctionKey;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;

use super::HttpService;
use super::admission::{self, Guarded};
use super::body::{BoxBody, RequestBody};
use super::shadow::{self, Pending, Stable, Tee};
use crate::error::ApiError;
use crate::registry::{Deployed, TenantLive};
use crate::rollout::{Shadow, ShadowOutcome};
use crate::runtime::{Invocation, InvokeError};

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
        // `name@{version|alias}` calls that version directly.
        let (name, at) = match name.split_once('@') {
            Some((name, at)) => (name, Some(at)),
            None => (name, None),
        };
        if name.is_empty() {
            return (None, Err(ApiError::not_found(req.uri().path())));
        }
        let key = FunctionKey::new(tenant_name, name);
        let Some(routes) = self.registry.routes(&key) else {
            return (None, Err(ApiError::function_not_found(name)));
        };
        let mut shadow = None;
        let function = match at {
            None => {
                let picked = routes.pick(req.headers());
                shadow = routes.shadow_for(&picked);
                picked
            }
            Some(at) => match routes.at(at) {
                Some(d) => d,
                None => {
                    let e = ApiError::not_found_code(
                        "version_not_found",
                        format!(
                            "function `{name}` has no version or alias `{}`: see `tensorlet versions {name}` and `tensorlet alias list {name}`",
                            at.escape_default()
                        ),
                    );
                    return (None, Err(e));
                }
            },
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
            .run(&function, name, tenant, guest_path, req, request_id, shadow)
            .await;
        (Some(function), result)
    }

    /// Admits the request and runs it through a fresh instance of the function; with `shadow`,
    /// also hands a copy to a rollout's candidate.
    #[allow(clippy::too_many_arguments)]
    async fn run<B: RequestBody>(
        &self,
        deployed: &Deployed,
        name: &str,
        tenant: Option<(&str, &TenantLive)>,
        guest_path: &str,
        req: Request<B>,
        request_id: &str,
        shadow: Option<(Arc<Deployed>, Shadow)>,
    ) -> Result<Response<BoxBody>, ApiError> {
        // A call from another function of this node (`{name}.fn.internal`) carries the node's
        // own secret: it stands in for an invoke key of the tenant in the path, which is the
        // caller's own.
        let hops = self.runtime.outbound().internal_hops(req.headers());
        let admission = admission::admit(deployed, name, tenant, req.headers(), hops.is_some())?;
        let req = guest_request(req, guest_path)?;
        let label = || FunctionKey::new(tenant.map(|(t, _)| t), name).to_string();
        let shadow = match shadow {
            Some((_, s)) if !shadow::fits(req.headers(), &s) => {
                (self.metrics.rollouts).shadow(&label(), ShadowOutcome::TooLarge);
                None
            }
            shadow => shadow,
        };
        let (req, pending) = match shadow {
            Some((candidate, shadow)) => {
                let request = shadow::head(&req);
                let (parts, body) = req.into_parts();
                let (body, copy) = Tee::copying(Box::pin(body), shadow.max_body);
                let pending = Pending {
                    function: label(),
                    candidate,
                    shadow,
                    request,
                    body: copy,
                    request_id: request_id.to_string(),
                };
                (Request::from_parts(parts, body), Some(pending))
            }
            None => (req.map(|b| Tee::through(Box::pin(b))), None),
        };
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let inv = Invocation {
            function: Arc::clone(&deployed.function),
            request_id: Arc::from(request_id),
            inferences: tenant.map(|(_, live)| live.inferences.clone()),
            tenant: tenant.map(|(_, live)| Arc::clone(&live.name)),
            hops: hops.unwrap_or(0),
        };
        let result = self
            .runtime
            .invoke(inv, req, move |d| metrics.instantiation.observe(d))
            .await;
        deployed.metrics.latency.observe(started.elapsed());
        deployed.stats.observe(started.elapsed());
        let response = result.map_err(|e| match e {
            // The same 413 as admission's for a declared length over the cap, named as the path
            // names the function.
            e @ InvokeError::RequestBodyTooLarge { .. } => ApiError::from_invoke(name, e),
            e => ApiError::from_invoke(&deployed.function.name, e),
        });
        let Some(pending) = pending else {
            return Ok(response?.map(|b| Guarded::new(b, admission).boxed_unsync()));
        };
        let (stable, response) = match response {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let max_body = pending.shadow.max_body;
                let (body, copy) = Tee::copying(Guarded::new(body, admission), max_body);
                let stable = Stable::Answered(parts.status, copy);
                (stable, Ok(Response::from_parts(parts, body.boxed_unsync())))
            }
            Err(e) => (Stable::Failed(e.status), Err(e)),
        };
        let (runtime, metrics) = (Arc::clone(&self.runtime), Arc::clone(&self.metrics));
        // The copy's lines name the request it copies.
        let copy = shadow::run(pending, stable, runtime, metrics);
        shadow::spawn(tracing::Instrument::in_current_span(copy));
        response
    }
}

/// The request as the guest sees it: path `/{rest}` plus the original query, and a Host header.
/// The body stays as it came: the runtime caps it at the function's `max_request_body`.
fn guest_request<B: RequestBody>(
    req: Request<B>,
    guest_path: &str,
) -> Result<Request<B>, ApiError> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{guest_path}?{q}"),
        None => guest_path.to_string(),
    };
    parts.uri = http::Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ApiError::invalid_request(format!("bad request target: {e}")))?;
    // The node's own secret and hop count are never a guest's to see.
    parts.headers.remove(crate::outbound::local::INTERNAL);
    parts.headers.remove(crate::outbound::local::HOPS);
    if !parts.headers.contains_key(header::HOST) {
        // wasi:http requires an authority; HTTP/1.0 clients may not send one.
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_guest_never_sees_the_node_s_own_headers() {
        let req = http::Request::builder()
            .uri("/fn/f/x?y=1")
            .header(crate::outbound::local::INTERNAL, "secret")
            .header(crate::outbound::local::HOPS, "2")
            .header("x-other", "kept")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let seen = super::guest_request(req, "/x").unwrap();
        assert_eq!(seen.uri(), "/x?y=1");
        assert!(
            seen.headers()
                .get(crate::outbound::local::INTERNAL)
                .is_none()
        );
        assert!(seen.headers().get(crate::outbound::local::HOPS).is_none());
        assert_eq!(seen.headers()["x-other"], "kept");
        assert_eq!(seen.headers()["host"], "localhost");
    }
}
