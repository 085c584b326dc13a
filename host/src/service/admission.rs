//! Whether a request for a function may run now, decided in one step before any guest work:
//! the invoke key of a private function, the tenant's request rate and concurrency, the
//! function's concurrency, and the request body's declared size. The order is part of the
//! contract: a caller without a valid key learns nothing about load and uses up none of the
//! tenant's rate. The answer is either an [`ApiError`] or an [`Admission`]: the permits and the
//! in-flight mark, held until the response body is finished ([`Guarded`]), so a streaming
//! response keeps counting against the limits for as long as it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::body::content_length;
use crate::auth;
use crate::error::ApiError;
use crate::metrics::FunctionMetrics;
use crate::registry::{Deployed, TenantLive};

/// A request allowed to run: marks it in flight and holds its concurrency permits.
pub(super) struct Admission {
    metrics: Arc<FunctionMetrics>,
    _permit: OwnedSemaphorePermit,
    _tenant: Option<OwnedSemaphorePermit>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admits a request for `function` (called `name` in messages), sent with `headers`; on a node
/// with tenants, `tenant` is the tenant named in the path, with its live state. `internal`: the
/// node sent it itself, for one of that tenant's functions (no key needed).
pub(super) fn admit(
    function: &Deployed,
    name: &str,
    tenant: Option<(&str, &TenantLive)>,
    headers: &HeaderMap,
    internal: bool,
) -> Result<Admission, ApiError> {
    let tenant_permit = match tenant {
        Some((tenant, live)) => Some(admit_tenant(
            function, name, tenant, live, headers, internal,
        )?),
        None => None,
    };
    let limits = function.function.limits;
    let Ok(permit) = Arc::clone(&function.permits).try_acquire_owned() else {
        return Err(ApiError::overloaded(name, limits.max_concurrency));
    };
    if content_length(headers).is_some_and(|n| n > limits.max_request_body) {
        return Err(ApiError::request_body_too_large(
            name,
            limits.max_request_body,
        ));
    }
    function.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    Ok(Admission {
        metrics: Arc::clone(&function.metrics),
        _permit: permit,
        _tenant: tenant_permit,
    })
}

/// The tenant's part: its invoke key (unless the function is public), rate and concurrency.
fn admit_tenant(
    function: &Deployed,
    name: &str,
    tenant: &str,
    live: &TenantLive,
    headers: &HeaderMap,
    internal: bool,
) -> Result<OwnedSemaphorePermit, ApiError> {
    if !function.public && !internal {
        let key_ok = auth::bearer(headers)
            .and_then(auth::parse_key)
            .is_some_and(|(kt, id, secret)| kt == tenant && live.key_matches(id, secret));
        if !key_ok {
            return Err(ApiError::unauthorized(format!(
                "function `{name}` is private: send one of its tenant's invoke keys as `Authorization: Bearer tlk_...` \
                 (`tensorlet key create`), or deploy it with --public"
            )));
        }
    }
    if let Err(wait) = live.admit() {
        live.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut e = ApiError::rate_limited(wait);
        e.pause_reads = live.flooding();
        return Err(e);
    }
    let Ok(permit) = Arc::clone(&live.concurrency).try_acquire_owned() else {
        live.metrics.busy.fetch_add(1, Ordering::Relaxed);
        let mut e = ApiError::tenant_busy(live.quotas.max_concurrency);
        e.pause_reads = live.flooding();
        return Err(e);
    };
    Ok(permit)
}

/// A response body that keeps its request's [`Admission`] until it is finished or dropped.
pub(super) struct Guarded<B> {
    inner: B,
    _admission: Admission,
}

impl<B> Guarded<B> {
    pub(super) fn new(inner: B, admission: Admission) -> Self {
        Self {
            inner,
            _admission: admission,
        }
    }
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
