//! The inference protocol's REST routes, `/v2/...`, on the node's listener: health, server and
//! model metadata, readiness and `infer`. The work is [`crate::oip`]'s; this edge reads the
//! body (within `max_infer_body`), maps each [`OipError`] to its HTTP status and writes every
//! error in the protocol's own shape, `{"error": "..."}`.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::json;

use super::HttpService;
use super::body::{BoxBody, RequestBody, full, read_body};
use crate::auth;
use crate::oip::{Kind, OipError, rest};

impl HttpService {
    /// Answers `/v2{rest}`.
    pub(super) async fn oip<B: RequestBody>(
        &self,
        rest: &str,
        req: Request<B>,
    ) -> Response<BoxBody> {
        match self.oip_route(rest, req).await {
            Ok(response) => response,
            Err(e) => {
                if matches!(e.kind, Kind::Internal) {
                    tracing::error!(
                        status = 500u16,
                        code = "oip_internal",
                        path = rest,
                        "{}",
                        e.message
                    );
                }
                oip_error(&e)
            }
        }
    }

    async fn oip_route<B: RequestBody>(
        &self,
        rest: &str,
        req: Request<B>,
    ) -> Result<Response<BoxBody>, OipError> {
        let inf = &self.inference;
        let get = req.method() == Method::GET;
        let method = |allowed: &str| {
            OipError::new(
                Kind::Invalid,
                format!("{} is not allowed here: use {allowed}", req.method()),
            )
        };
        match rest {
            "" | "/" => {
                if !get {
                    return Err(method("GET"));
                }
                return Ok(json_ok(&json!({
                    "name": "tensorlet",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": crate::oip::EXTENSIONS,
                })));
            }
            "/health/live" if get => return Ok(json_ok(&json!({"live": true}))),
            "/health/ready" if get => {
                let ready = inf.ready();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return Ok(json_with(status, &json!({"ready": ready})));
            }
            "/health/live" | "/health/ready" => return Err(method("GET")),
            _ => {}
        }
        let Some(path) = rest.strip_prefix("/models/") else {
            return Err(not_found(rest));
        };
        // {name}[/versions/{version}][/ready|/infer]
        let (name, tail) = path.split_once('/').unwrap_or((path, ""));
        let (version, action) = match tail.strip_prefix("versions/") {
            Some(v) => match v.split_once('/') {
                Some((v, action)) => (Some(v), action),
                None => (Some(v), ""),
            },
            None => (None, tail),
        };
        if name.is_empty() || version.is_some_and(str::is_empty) {
            return Err(not_found(rest));
        }
        let token = auth::bearer(req.headers());
        match (action, req.method()) {
            ("", &Method::GET) => {
                let r = inf.resolve(name, version, token)?;
                Ok(json_ok(&inf.metadata(&r)))
            }
            ("ready", &Method::GET) => {
                // Found, loaded and allowed is ready; anything else is its error.
                inf.resolve(name, version, token)?;
                Ok(json_ok(&json!({"name": name, "ready": true})))
            }
            ("infer", &Method::POST) => {
                let r = inf.resolve(name, version, token)?;
                let admitted = inf.admit(&r)?;
                let header_length = (req.headers().get(rest::HEADER_LENGTH))
                    .map(|v| v.to_str().unwrap_or("?").to_string());
                let body = read_body(req, inf.max_body(), self.config.body_read_timeout)
                    .await
                    .map_err(|e| {
                        let kind = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                            Kind::TooLarge
                        } else {
                            Kind::Invalid
                        };
                        OipError::new(kind, format!("{} (max_infer_body)", e.message))
                    })?;
                let (request, binary) = rest::parse_request(&body, header_length.as_deref())?;
                drop(body);
                let answer = inf.infer(&r, &admitted, request).await?;
                let (body, header) = rest::write_response(&answer, &binary);
                let mut response = Response::new(full(Bytes::from(body)));
                let h = response.headers_mut();
                match header {
                    Some(n) => {
                        h.insert(rest::HEADER_LENGTH, HeaderValue::from(n));
                        h.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/octet-stream"),
                        );
                    }
                    None => {
                        h.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                    }
                }
                Ok(response)
            }
            ("" | "ready", _) => Err(method("GET")),
            ("infer", _) => Err(method("POST")),
            _ => Err(not_found(rest)),
        }
    }
}

fn not_found(rest: &str) -> OipError {
    OipError::new(
        Kind::NotFound,
        format!(
            "no route /v2{}: the protocol's routes are /v2, /v2/health/{{live,ready}} and \
             /v2/models/{{name}}[/versions/{{version}}][/ready|/infer]",
            rest.escape_default()
        ),
    )
}

/// The HTTP status of a protocol error.
fn http_status(kind: Kind) -> StatusCode {
    match kind {
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::Exhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error in the protocol's shape, with the headers its status calls for.
fn oip_error(e: &OipError) -> Response<BoxBody> {
    let mut r = json_with(http_status(e.kind), &json!({"error": e.message}));
    let h = r.headers_mut();
    match e.kind {
        Kind::Exhausted(seconds) => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        Kind::Unauthenticated => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    r
}

fn json_ok(value: &impl serde::Serialize) -> Response<BoxBody> {
    json_with(StatusCode::OK, value)
}

fn json_with(status: StatusCode, value: &impl serde::Serialize) -> Response<BoxBody> {
    // Metadata and JSON literals only: serialising cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
