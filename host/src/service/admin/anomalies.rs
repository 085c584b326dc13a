//! `anomalies`: what the node's detector has raised and not cleared, and the latest changes. A
//! tenant sees its own; the operator sees everything.

use http::Method;

use super::super::HttpService;
use super::super::body::{RequestBody, ok};
use super::{Call, Reply, owner};
use crate::error::ApiError;

impl HttpService {
    /// `GET /admin/v1/anomalies`.
    pub(super) async fn anomalies<B: RequestBody>(&self, call: Call<'_, B>) -> Reply {
        let Call(caller, segments, req) = call;
        match (segments, req.method()) {
            (["anomalies"], &Method::GET) => ok(self.metrics.anomalies.list(owner(caller))),
            (["anomalies"], _) => Err(ApiError::method_not_allowed("GET")),
            _ => Err(ApiError::not_found(req.uri().path())),
        }
    }
}
