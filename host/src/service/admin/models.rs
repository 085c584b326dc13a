//! `models[/{name}[/versions|rollback|aliases[/{alias}]]]`: ONNX models that functions may load by name. Unlike functions,
//! models have an operator namespace on every node: the operator's models are shared, and a
//! tenant may read them besides its own.

use http::{Method, StatusCode};

use super::super::HttpService;
use super::super::body::{RequestBody, json_response, ok, read_body};
use super::super::query::{check_name, model_options};
use super::{Call, Reply, owner};
use crate::error::ApiError;
use crate::key::ModelKey;
use crate::registry::Deploy;

impl HttpService {
    /// The model routes.
    pub(super) async fn models<B: RequestBody>(&self, call: Call<'_, B>) -> Reply {
        let Call(caller, segments, req) = call;
        match (segments, req.method()) {
            (["models"] | ["models", ""], &Method::GET) => {
                ok(self.registry.list_models(owner(caller)).await)
            }
            (["models"], _) => Err(ApiError::method_not_allowed("GET")),
            (["models", name] | ["models", name, "versions"], &Method::GET) => {
                let key = self.model_key(caller, name)?;
                match self.registry.get_model(&key).await {
                    // A tenant may read the operator's shared models too.
                    Err(crate::registry::RegistryError::ModelNotFound(_))
                        if owner(caller).is_some() =>
                    {
                        ok(self
                            .registry
                            .get_model(&ModelKey::new(None, check_name(name)?))
                            .await?)
                    }
                    other => ok(other?),
                }
            }
            (["models", name], &Method::DELETE) => ok(self
                .registry
                .remove_model(&self.model_key(caller, name)?)
                .await?),
            (["models", _], _) => Err(ApiError::method_not_allowed("GET, DELETE")),
            (["models", name, "rollback"], &Method::POST) => {
                let key = self.model_key(caller, name)?;
                let body = read_body(req, 64 * 1024, self.config.body_read_timeout).await?;
                let to = super::functions::rollback_target(&body)?;
                ok(self.registry.rollback_model(&key, to.as_deref()).await?)
            }
            (["models", _, "rollback"], _) => Err(ApiError::method_not_allowed("POST")),
            (["models", name, "aliases"], &Method::GET) => {
                let key = self.model_key(caller, name)?;
                ok(self.registry.model_aliases(&key).await?)
            }
            (["models", _, "aliases"], _) => Err(ApiError::method_not_allowed("GET")),
            (["models", name, "aliases", alias], &Method::PUT) => {
                let key = self.model_key(caller, name)?;
                let body = read_body(req, 64 * 1024, self.config.body_read_timeout).await?;
                let to = super::functions::alias_target(&body)?;
                ok(self.registry.set_model_alias(&key, alias, &to).await?)
            }
            (["models", name, "aliases", alias], &Method::DELETE) => {
                let key = self.model_key(caller, name)?;
                ok(self.registry.remove_model_alias(&key, alias).await?)
            }
            (["models", _, "aliases", _], _) => Err(ApiError::method_not_allowed("PUT, DELETE")),
            (["models", name, "versions"], &Method::POST) => {
                let key = self.model_key(caller, name)?;
                let options = model_options(req.uri().query().unwrap_or(""))?;
                let config = &self.config;
                let bytes = read_body(req, config.max_model_size, config.body_read_timeout).await?;
                match self.registry.add_model(&key, bytes, options).await? {
                    Deploy::Created(v) => Ok(json_response(StatusCode::CREATED, &v)),
                    Deploy::Existing(v) => Ok(json_response(StatusCode::OK, &v)),
                }
            }
            (["models", _, "versions"], _) => Err(ApiError::method_not_allowed("GET, POST")),
            _ => Err(ApiError::not_found(req.uri().path())),
        }
    }
}
