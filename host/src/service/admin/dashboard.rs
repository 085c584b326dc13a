//! `dashboard`: the one read the web dashboard is drawn from ([`crate::dashboard::Overview`]),
//! in the caller's namespace: a tenant sees its functions, its own models and the operator's
//! shared ones, and its anomalies; the operator sees everything.

use http::Method;

use super::super::HttpService;
use super::super::body::{RequestBody, ok};
use super::{Call, Reply, owner};
use crate::dashboard::Overview;
use crate::error::ApiError;

impl HttpService {
    /// `GET /admin/v1/dashboard`.
    pub(super) async fn dashboard<B: RequestBody>(&self, call: Call<'_, B>) -> Reply {
        let Call(caller, segments, req) = call;
        match (segments, req.method()) {
            (["dashboard"], &Method::GET) => {}
            (["dashboard"], _) => return Err(ApiError::method_not_allowed("GET")),
            _ => return Err(ApiError::not_found(req.uri().path())),
        }
        let owner = owner(caller);
        // A tenant's own models are `tenant/name`; shared ones have no tenant.
        let visible = |name: &str| match (owner, name.split_once('/')) {
            (None, _) => true,
            (Some(_), None) => true,
            (Some(t), Some((of, _))) => of == t,
        };
        ok(Overview {
            time: crate::time::now_rfc3339(),
            buckets_ms: crate::metrics::bucket_bounds_ms(),
            functions: self.registry.overview(owner).await,
            models: self.metrics.model_overviews(visible),
            anomalies: self.metrics.anomalies.list(owner).active,
        })
    }
}
