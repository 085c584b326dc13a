//! Bodies in and out of the service. Requests arrive with any body that yields `Bytes` (hyper's
//! `Incoming` from the server, a `Full` in tests), so the bound is named once here as
//! [`RequestBody`]; responses all share the one boxed type [`BoxBody`], whether a guest streams
//! them or a route builds them. Also here: the small response builders every route answers with,
//! the one translation of an [`ApiError`] into its response, and reading a whole admin upload
//! under a size cap and a deadline.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;

use crate::config::format_size;
use crate::error::ApiError;
use crate::pace::PauseReads;

/// Error type of request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the node sends. Unsync because guest bodies are only `Send`; the name
/// says "boxed", unlike `runtime::GuestBody`, which is the guest's body before boxing.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request body the service can take: hyper's `Incoming` on the server, anything else that
/// yields `Bytes` when the service is called in-process.
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// A complete body.
pub(super) fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A plain-text response.
pub(super) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response of one of the API's bodies ([`crate::api`]).
pub(super) fn json_response(
    status: StatusCode,
    value: &impl serde::Serialize,
) -> Response<BoxBody> {
    match serde_json::to_string(value) {
        Ok(json) => json_text(status, json),
        // The API's types have string keys only: this cannot fail, but would not panic if it did.
        Err(e) => error_response(
            &ApiError::internal(format!("cannot encode the answer: {e}")),
            "",
        ),
    }
}

/// 200 with a JSON body.
pub(super) fn ok(value: impl serde::Serialize) -> Result<Response<BoxBody>, ApiError> {
    Ok(json_response(StatusCode::OK, &value))
}

/// A response whose body is already JSON text.
fn json_text(status: StatusCode, json: String) -> Response<BoxBody> {
    let mut r = Response::new(full(json));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The response of an error: its JSON body, plus the headers its status calls for.
pub(super) fn error_response(e: &ApiError, request_id: &str) -> Response<BoxBody> {
    let mut r = json_text(e.status, e.body(request_id));
    if let Some(seconds) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        if e.pause_reads {
            r.extensions_mut()
                .insert(PauseReads(Duration::from_secs(seconds)));
        }
    } else if e.status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The Content-Length a request declares, if it sent a valid one.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads a whole (admin) body, refusing more than `cap` bytes or a body slower than `timeout`.
pub(super) async fn read_body<B: RequestBody>(
    req: Request<B>,
    cap: u64,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::payload_too_large(format!("the body is larger than {}", format_size(cap)));
    if content_length(req.headers()).is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        timeout,
        Limited::new(req.into_body(), cap as usize).collect(),
    )
    .await
    .map_err(|_| {
        ApiError::request_timeout(format!(
            "the body did not arrive within {}s (body_read_timeout): send it faster",
            timeout.as_secs()
        ))
    })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::invalid_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}
