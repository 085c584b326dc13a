//! `keys[/{id}]`: a tenant's invoke keys, which callers of its private functions send. Keys
//! belong to the tenant whose token makes the call; the operator has none.

use http::{Method, StatusCode};

use super::super::HttpService;
use super::super::body::{RequestBody, json_response, ok};
use super::{Call, Reply, owner};
use crate::error::ApiError;

impl HttpService {
    /// `keys` (list, create) and `keys/{id}` (remove).
    pub(super) async fn keys<B: RequestBody>(&self, call: Call<'_, B>) -> Reply {
        let Call(caller, segments, req) = call;
        let Some(tenant) = owner(caller) else {
            return Err(ApiError::forbidden(
                "invoke keys belong to tenants: use a tenant's token",
            ));
        };
        match (segments, req.method()) {
            (["keys"] | ["keys", ""], &Method::GET) => ok(self.registry.list_keys(tenant).await?),
            (["keys"], &Method::POST) => {
                let key = self.registry.create_key(tenant).await?;
                Ok(json_response(StatusCode::CREATED, &key))
            }
            (["keys"], _) => Err(ApiError::method_not_allowed("GET, POST")),
            (["keys", id], &Method::DELETE) => ok(self.registry.remove_key(tenant, id).await?),
            (["keys", _], _) => Err(ApiError::method_not_allowed("DELETE")),
            _ => Err(ApiError::not_found(req.uri().path())),
        }
    }
}
