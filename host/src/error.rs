//! The one error type of the HTTP edge. Every failure on the request path and the admin API ends
//! up as an [`ApiError`], which knows its status and stable code and renders the JSON body
//! `{"error": {"code", "message"}, "request_id"}`. Messages tell the user what to do.

use http::StatusCode;

/// A failure that becomes an HTTP error response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status to answer with.
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation that says how to fix the problem.
    pub message: String,
    /// Seconds to send in `Retry-After` (rate limits).
    pub retry_after: Option<u64>,
    /// The client keeps sending past a refusal: its connection reads nothing more until
    /// `Retry-After` is over ([`crate::pace`]).
    pub pause_reads: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            pause_reads: false,
        }
    }

    /// An error of a status and code that only one place uses.
    pub fn new_pub(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, code, message)
    }

    /// 401: no token, or not a valid one. The same message whatever was wrong with it.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a valid token that may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 403: the tenant is at one of its quotas.
    pub fn quota_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "quota_exceeded", message)
    }

    /// 429: the tenant's request rate is used up for now.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this tenant is over its requests_per_second quota: retry after {seconds}s, or ask the operator for more"
            ),
        );
        e.retry_after = Some(seconds);
        e
    }

    /// 429: the tenant already runs as many requests as its quota allows.
    pub fn tenant_busy(limit: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "tenant_busy",
            format!(
                "this tenant already runs {limit} requests at once (its max_concurrency quota): retry shortly"
            ),
        );
        e.retry_after = Some(1);
        e
    }

    /// 408: the client sent its body too slowly.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// 404: no such tenant.
    pub fn tenant_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "tenant_not_found",
            format!("no tenant named `{name}`: see `tensorlet tenant list`"),
        )
    }

    /// 404 with a specific code.
    pub fn not_found_code(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409 with a specific code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 400: the request itself is malformed.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 400: the uploaded component cannot be deployed.
    pub fn invalid_component(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_component", message)
    }

    /// 404: no such function.
    pub fn function_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!(
                "no function named `{name}` is deployed here: deploy it with `tensorlet deploy {name} FILE.wasm`"
            ),
        )
    }

    /// 404: no such version of a function.
    pub fn version_not_found(name: &str, version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!(
                "function `{name}` has no version `{version}`: see `tensorlet versions {name}`"
            ),
        )
    }

    /// 404: no such model.
    pub fn model_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "no model named `{name}` on this node: add it with `tensorlet model add {name} FILE.onnx`"
            ),
        )
    }

    /// 400: the uploaded model cannot be loaded.
    pub fn invalid_model(name: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_model",
            format!("model `{name}` cannot be loaded by ONNX Runtime: {reason}"),
        )
    }

    /// Why a model could not be loaded, with the status that fits: the model's fault (400), a
    /// GPU this node does not have (503), or the node's own failure (500).
    pub fn model_load(name: &str, e: crate::nn::onnx::LoadError) -> Self {
        use crate::nn::onnx::LoadError;
        match e {
            LoadError::Invalid(reason) => Self::invalid_model(name, reason),
            LoadError::GpuUnavailable(reason) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "gpu_unavailable",
                format!("model `{name}` cannot run here: {reason}"),
            ),
            LoadError::Internal(reason) => {
                Self::internal(format!("model `{name}` could not be loaded: {reason}"))
            }
        }
    }

    /// 503: this node has no ONNX Runtime.
    pub fn onnx_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "onnx_unavailable",
            "this node has no ONNX Runtime loaded: run scripts/fetch-onnxruntime.sh and restart the node \
             with ORT_DYLIB_PATH (or `onnxruntime` in its config) pointing at libonnxruntime.so",
        )
    }

    /// 404: nothing is routed at this path.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "nothing here at `{path}`: functions live under /fn/NAME, the admin API under /admin/v1"
            ),
        )
    }

    /// 405.
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this route accepts {allowed}"),
        )
    }

    /// 409: a version with this digest exists with other settings.
    pub fn version_conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "version_conflict", message)
    }

    /// 413.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 413: a request body over function `name`'s cap, whether declared up front or found while
    /// the guest read it.
    pub fn request_body_too_large(name: &str, cap: u64) -> Self {
        Self::payload_too_large(format!(
            "the request body is larger than function `{name}`'s max_request_body of {}: send less or redeploy with a higher --max-request-body",
            crate::config::format_size(cap)
        ))
    }

    /// 503: the function is at its concurrency limit.
    pub fn overloaded(name: &str, limit: u32) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "function `{name}` is running its maximum of {limit} concurrent requests: retry later or deploy it with a higher --max-concurrency"
            ),
        )
    }

    /// 504: the request outlived the function's timeout.
    pub fn timeout(name: &str, timeout_ms: u64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "function `{name}` did not finish within its timeout of {timeout_ms}ms: make it faster or deploy it with a longer --timeout"
            ),
        )
    }

    /// 500: the guest trapped.
    pub fn guest_trap(name: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "guest_trap",
            format!("function `{name}` crashed: {detail}; see `tensorlet logs {name}`"),
        )
    }

    /// 500: the guest answered with a wasi:http error code instead of a response.
    pub fn guest_error(name: &str, code: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "guest_error",
            format!(
                "function `{name}` answered with the error {code}; see `tensorlet logs {name}`"
            ),
        )
    }

    /// 500: the guest returned without setting a response.
    pub fn no_response(name: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_response",
            format!(
                "function `{name}` returned without sending a response: call ResponseOutparam::set in the handler"
            ),
        )
    }

    /// 500: a failure of the node itself; details go to the node's log.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Renders the JSON body.
    pub fn body(&self, request_id: &str) -> String {
        serde_json::json!({
            "error": { "code": self.code, "message": self.message },
            "request_id": request_id,
        })
        .to_string()
    }
}

impl ApiError {
    /// The answer to a failed invocation of function `name`. The runtime's errors name no
    /// function and no status; both are chosen here, at the HTTP edge.
    pub fn from_invoke(name: &str, e: crate::runtime::InvokeError) -> Self {
        use crate::runtime::InvokeError as E;
        match e {
            E::Timeout { timeout_ms } => Self::timeout(name, timeout_ms),
            E::Trap(detail) => Self::guest_trap(name, detail),
            E::GuestError(code) => Self::guest_error(name, code),
            E::NoResponse => Self::no_response(name),
            E::RequestBodyTooLarge { limit } => Self::request_body_too_large(name, limit),
            E::BadRequest(message) => Self::invalid_request(message),
            E::Internal(message) => Self::internal(message),
        }
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(e: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError as E;
        match e {
            E::FunctionNotFound(name) => Self::function_not_found(&name),
            E::VersionNotFound { name, version } => Self::version_not_found(&name, &version),
            E::ModelNotFound(name) => Self::model_not_found(&name),
            E::RolloutExists(name) => Self::conflict(
                "rollout_exists",
                format!(
                    "`{name}` has a rollout running: `tensorlet rollout promote {name}` or `abort` it first"
                ),
            ),
            E::RolloutNotFound(name) => Self::not_found_code(
                "rollout_not_found",
                format!(
                    "`{name}` has no running rollout: start one with `tensorlet rollout start {name} VERSION`"
                ),
            ),
            E::AliasNotFound { name, alias } => Self::not_found_code(
                "alias_not_found",
                format!("`{name}` has no alias `{alias}`: see `tensorlet alias list {name}`"),
            ),
            E::ModelVersionNotFound { name, version } => Self::not_found_code(
                "version_not_found",
                format!(
                    "model `{name}` has no version `{version}`: see `tensorlet model versions {name}`"
                ),
            ),
            E::TenantNotFound(name) => Self::tenant_not_found(&name),
            E::TenantExists(name) => Self::conflict(
                "tenant_exists",
                format!(
                    "tenant `{name}` already exists: pick another name, or `tensorlet tenant token rotate {name}` for a new token"
                ),
            ),
            E::KeyNotFound(id) => Self::not_found_code(
                "key_not_found",
                format!("no invoke key `{id}`: see `tensorlet key list`"),
            ),
            E::Conflict(message) => Self::version_conflict(message),
            E::Invalid(message) => Self::invalid_request(message),
            E::QuotaExceeded(message) => Self::quota_exceeded(message),
            E::InvalidComponent(message) => Self::invalid_component(message),
            E::ModelLoad { name, error } => Self::model_load(&name, error),
            E::OnnxUnavailable => Self::onnx_unavailable(),
            E::Internal(message) => Self::internal(message),
            E::EngineUnavailable(message) => Self::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "engine_unavailable",
                format!(
                    "the fleet's engine is unavailable: {message}. Nodes keep serving what they applied; retry when NATS is back"
                ),
            ),
            E::RevisionConflict(message) => Self::conflict("revision_conflict", message),
            E::BlobStoreUnavailable(message) => Self::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "registry_unavailable",
                message,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::InvokeError;

    #[test]
    fn invoke_errors_keep_their_status_code_and_message() {
        let cases = [
            (
                InvokeError::Timeout { timeout_ms: 250 },
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "function `f` did not finish within its timeout of 250ms: make it faster or deploy it with a longer --timeout",
            ),
            (
                InvokeError::Trap("wasm trap: unreachable".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "guest_trap",
                "function `f` crashed: wasm trap: unreachable; see `tensorlet logs f`",
            ),
            (
                InvokeError::GuestError("HttpRequestDenied".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "guest_error",
                "function `f` answered with the error HttpRequestDenied; see `tensorlet logs f`",
            ),
            (
                InvokeError::NoResponse,
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_response",
                "function `f` returned without sending a response: call ResponseOutparam::set in the handler",
            ),
            (
                InvokeError::RequestBodyTooLarge { limit: 1 << 20 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than function `f`'s max_request_body of 1MiB: send less or redeploy with a higher --max-request-body",
            ),
            (
                InvokeError::BadRequest("unusable request: no authority".into()),
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unusable request: no authority",
            ),
            (
                InvokeError::Internal("guest task failed: panicked".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "guest task failed: panicked",
            ),
        ];
        for (invoke, status, code, message) in cases {
            let e = ApiError::from_invoke("f", invoke);
            assert_eq!(
                (e.status, e.code, e.message.as_str()),
                (status, code, message)
            );
            assert_eq!((e.retry_after, e.pause_reads), (None, false));
        }
    }
}
