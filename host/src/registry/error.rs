//! What can go wrong with an admin change, in the registry's own terms. The registry speaks no
//! HTTP: the edge maps each kind to a status and a stable code (`impl From<RegistryError> for
//! ApiError` in [`crate::error`]). The constructors mirror the situations, so call sites read as
//! the rule they enforce.

use crate::nn::onnx::LoadError;

/// A refused or failed admin change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// No function by this name (in the caller's namespace).
    #[error("no function named `{0}`")]
    FunctionNotFound(String),
    /// The function has no such version.
    #[error("function `{name}` has no version `{version}`")]
    VersionNotFound {
        /// Function name.
        name: String,
        /// The version asked for.
        version: String,
    },
    /// The model has no such version.
    #[error("model `{name}` has no version `{version}`")]
    ModelVersionNotFound {
        /// Model name.
        name: String,
        /// The version asked for.
        version: String,
    },
    /// No such alias.
    #[error("`{name}` has no alias `{alias}`")]
    AliasNotFound {
        /// Function or model name.
        name: String,
        /// The alias asked for.
        alias: String,
    },
    /// The function has a running rollout already.
    #[error("`{0}` has a rollout running")]
    RolloutExists(String),
    /// The function has no rollout.
    #[error("`{0}` has no rollout")]
    RolloutNotFound(String),
    /// No model by this name.
    #[error("no model named `{0}`")]
    ModelNotFound(String),
    /// No tenant by this name.
    #[error("no tenant named `{0}`")]
    TenantNotFound(String),
    /// A tenant by this name exists already.
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    /// The tenant has no invoke key with this id.
    #[error("no invoke key `{0}`")]
    KeyNotFound(String),
    /// The change contradicts what exists (versions never change; a model still in use).
    #[error("{0}")]
    Conflict(String),
    /// The request makes no sense as it stands (with how to fix it).
    #[error("{0}")]
    Invalid(String),
    /// The tenant is at one of its quotas.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The upload is not a component this node can run.
    #[error("{0}")]
    InvalidComponent(String),
    /// The model could not be loaded.
    #[error("model `{name}`: {error}")]
    ModelLoad {
        /// Model name.
        name: String,
        /// Why.
        error: LoadError,
    },
    /// This node has no ONNX Runtime.
    #[error("this node has no ONNX Runtime")]
    OnnxUnavailable,
    /// The node failed (storage, a task): not the caller's fault.
    #[error("{0}")]
    Internal(String),
    /// The fleet's engine is unreachable or did not confirm: nothing was changed (or, when it
    /// did not confirm, the message says the outcome is unknown).
    #[error("{0}")]
    EngineUnavailable(String),
    /// The fleet's state moved on since this node read it: nothing was changed.
    #[error("{0}")]
    RevisionConflict(String),
    /// The fleet's OCI registry cannot be reached: the new blob could not be pushed.
    #[error("{0}")]
    BlobStoreUnavailable(String),
}

impl RegistryError {
    pub(crate) fn function_not_found(name: &str) -> Self {
        Self::FunctionNotFound(name.to_string())
    }

    pub(crate) fn version_not_found(name: &str, version: &str) -> Self {
        Self::VersionNotFound {
            name: name.to_string(),
            version: version.to_string(),
        }
    }

    pub(crate) fn model_not_found(name: &str) -> Self {
        Self::ModelNotFound(name.to_string())
    }

    pub(crate) fn tenant_not_found(name: &str) -> Self {
        Self::TenantNotFound(name.to_string())
    }

    pub(crate) fn version_conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub(crate) fn quota_exceeded(message: impl Into<String>) -> Self {
        Self::QuotaExceeded(message.into())
    }

    pub(crate) fn invalid_component(message: impl Into<String>) -> Self {
        Self::InvalidComponent(message.into())
    }

    pub(crate) fn model_load(name: &str, error: LoadError) -> Self {
        Self::ModelLoad {
            name: name.to_string(),
            error,
        }
    }

    pub(crate) fn onnx_unavailable() -> Self {
        Self::OnnxUnavailable
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// A blob store failure while storing `what`: the registry being unreachable is the
    /// operator's outage, not a node fault.
    pub(crate) fn store_failed(what: &str, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotConnected {
            Self::BlobStoreUnavailable(format!(
                "cannot store the {what}: {e}; nothing was changed, retry when the registry is back"
            ))
        } else {
            Self::Internal(format!("cannot store the {what}: {e}"))
        }
    }
}
