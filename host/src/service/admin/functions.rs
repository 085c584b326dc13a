//! `functions[/{name}[/versions|rollback|logs|aliases[/{alias}]|rollout[/promote|abort]]]`: deploying, listing, rolling back and removing
//! functions, and reading their guest logs (`logs.rs`). On a node with tenants functions belong
//! to tenants, so these routes refuse the operator token.

use http::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::super::HttpService;
use super::super::body::{BoxBody, RequestBody, json_response, ok, read_body};
use super::super::query::deploy_settings;
use super::{Call, Reply, owner};
use crate::config::format_size;
use crate::error::ApiError;
use crate::key::FunctionKey;
use crate::registry::Deploy;

impl HttpService {
    /// The function routes.
    pub(super) async fn functions<B: RequestBody>(&self, call: Call<'_, B>) -> Reply {
        let Call(caller, segments, req) = call;
        match (segments, req.method()) {
            (["functions"] | ["functions", ""], &Method::GET) => {
                self.may_manage_functions(caller)?;
                ok(self.registry.list(owner(caller)).await)
            }
            (["functions"], _) => Err(ApiError::method_not_allowed("GET")),
            (["functions", name] | ["functions", name, "versions"], &Method::GET) => {
                ok(self.registry.get(&self.function_key(caller, name)?).await?)
            }
            (["functions", name], &Method::DELETE) => ok(self
                .registry
                .delete(&self.function_key(caller, name)?)
                .await?),
            (["functions", _], _) => Err(ApiError::method_not_allowed("GET, DELETE")),
            (["functions", name, "versions"], &Method::POST) => {
                let key = self.function_key(caller, name)?;
                self.deploy(&key, req).await
            }
            (["functions", _, "versions"], _) => Err(ApiError::method_not_allowed("GET, POST")),
            (["functions", name, "rollback"], &Method::POST) => {
                let key = self.function_key(caller, name)?;
                let body = read_body(req, 64 * 1024, self.config.body_read_timeout).await?;
                let to = rollback_target(&body)?;
                ok(self.registry.rollback(&key, to.as_deref()).await?)
            }
            (["functions", _, "rollback"], _) => Err(ApiError::method_not_allowed("POST")),
            (["functions", name, "rollout"], &Method::POST) => {
                let key = self.function_key(caller, name)?;
                let body = read_body(req, 64 * 1024, self.config.body_read_timeout).await?;
                let spec: crate::rollout::RolloutRequest = serde_json::from_slice(&body)
                    .map_err(|e| {
                        ApiError::invalid_request(format!(
                            "rollout body must be JSON like {{\"candidate\": \"VERSION\", \"canary\": 5}}: {e}"
                        ))
                    })?;
                let view = self.registry.start_rollout(&key, spec).await?;
                Ok(json_response(StatusCode::CREATED, &view))
            }
            (["functions", name, "rollout"], &Method::GET) => {
                let key = self.function_key(caller, name)?;
                ok(self.registry.rollout(&key).await?)
            }
            (["functions", _, "rollout"], _) => Err(ApiError::method_not_allowed("GET, POST")),
            (["functions", name, "rollout", end @ ("promote" | "abort")], &Method::POST) => {
                let key = self.function_key(caller, name)?;
                ok(self
                    .registry
                    .finish_rollout(&key, *end == "promote")
                    .await?)
            }
            (["functions", _, "rollout", "promote" | "abort"], _) => {
                Err(ApiError::method_not_allowed("POST"))
            }
            (["functions", name, "aliases"], &Method::GET) => {
                let key = self.function_key(caller, name)?;
                ok(self.registry.function_aliases(&key).await?)
            }
            (["functions", _, "aliases"], _) => Err(ApiError::method_not_allowed("GET")),
            (["functions", name, "aliases", alias], &Method::PUT) => {
                let key = self.function_key(caller, name)?;
                let body = read_body(req, 64 * 1024, self.config.body_read_timeout).await?;
                let to = alias_target(&body)?;
                ok(self.registry.set_function_alias(&key, alias, &to).await?)
            }
            (["functions", name, "aliases", alias], &Method::DELETE) => {
                let key = self.function_key(caller, name)?;
                ok(self.registry.remove_function_alias(&key, alias).await?)
            }
            (["functions", _, "aliases", _], _) => Err(ApiError::method_not_allowed("PUT, DELETE")),
            (["functions", name, "logs"], &Method::GET) => {
                let key = self.function_key(caller, name)?;
                self.function_logs(&key, req.uri().query().unwrap_or(""))
                    .await
            }
            (["functions", _, "logs"], _) => Err(ApiError::method_not_allowed("GET")),
            _ => Err(ApiError::not_found(req.uri().path())),
        }
    }

    /// Deploys the uploaded component as a new version of `key` (201), or answers with the
    /// version these exact bytes and settings already are (200).
    async fn deploy<B: RequestBody>(
        &self,
        key: &FunctionKey,
        req: Request<B>,
    ) -> Result<Response<BoxBody>, ApiError> {
        let settings = deploy_settings(&self.config, req.uri().query().unwrap_or(""))?;
        let max = self.config.max_component_size;
        let bytes = read_body(req, max, self.config.body_read_timeout)
            .await
            .map_err(|e| {
                if e.code == "payload_too_large" {
                    ApiError::payload_too_large(format!(
                        "the component is larger than this node's max_component_size of {}",
                        format_size(max)
                    ))
                } else {
                    e
                }
            })?;
        match self.registry.deploy(key, bytes, settings).await? {
            Deploy::Created(v) => Ok(json_response(StatusCode::CREATED, &v)),
            Deploy::Existing(v) => Ok(json_response(StatusCode::OK, &v)),
        }
    }
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

/// The version an alias is set to: `{"version": "VERSION"}` (an id, digest, prefix, another alias
/// or `live`).
pub(crate) fn alias_target(body: &[u8]) -> Result<String, ApiError> {
    let r: crate::api::AliasRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!(
            "alias body must be JSON like {{\"version\": \"VERSION\"}}: {e}"
        ))
    })?;
    Ok(r.version)
}
