//! Conversions between `wasi:http` resources and the [`http`](::http) crate's types.
//!
//! The request path is: the host hands the export an `incoming-request` and a `response-outparam`;
//! [`serve`] reads the request into a [`Request`], calls the handler, and writes its
//! [`Response`] to the outparam. Everything here is synchronous: one request per instance, so
//! blocking on the host's streams is the simplest correct thing.

use ::http::{HeaderValue, StatusCode, header};
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

/// The request a handler receives: the body has been read to its end.
pub type Request = ::http::Request<Vec<u8>>;

/// The response a handler produces, directly or through [`IntoResponse`].
pub type Response = ::http::Response<Vec<u8>>;

/// `blocking-write-and-flush` accepts at most 4096 bytes per call (wasi:io/streams).
const WRITE_CHUNK: usize = 4096;

/// How many bytes to ask for per read of the request body.
const READ_CHUNK: u64 = 64 * 1024;

/// Anything a handler may return.
///
/// Implemented for [`Response`] and `http::Response<String>`, for bodies alone (`String` and
/// `&'static str` as `text/plain; charset=utf-8`, `Vec<u8>` as `application/octet-stream`), for
/// `(StatusCode, body)` to pick the status, and for `Result<T, E>` where both sides are
/// responses, so that `?` works in handlers.
pub trait IntoResponse {
    /// Converts `self` into the response sent to the client.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for ::http::Response<String> {
    fn into_response(self) -> Response {
        self.map(String::into_bytes)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        with_type(self.into_bytes(), "text/plain; charset=utf-8")
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        self.to_string().into_response()
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        with_type(self, "application/octet-stream")
    }
}

/// The status code replaces the one of the body's response, so `(StatusCode::NOT_FOUND,
/// "no such page")` keeps the `text/plain` content type of `&str`.
impl<B: IntoResponse> IntoResponse for (StatusCode, B) {
    fn into_response(self) -> Response {
        let mut response = self.1.into_response();
        *response.status_mut() = self.0;
        response
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => err.into_response(),
        }
    }
}

fn with_type(body: Vec<u8>, content_type: &'static str) -> Response {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Runs one request through `handler`: used by [`export_handler!`](crate::export_handler).
///
/// A request that cannot be converted gets a 400 without calling the handler.
pub fn serve<R: IntoResponse>(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Request) -> R,
) {
    let response = match read_request(request) {
        Ok(request) => handler(request).into_response(),
        Err(reason) => {
            (StatusCode::BAD_REQUEST, format!("bad request: {reason}\n")).into_response()
        }
    };
    write_response(response, response_out);
}

fn read_request(incoming: IncomingRequest) -> Result<Request, String> {
    let method = match incoming.method() {
        Method::Get => ::http::Method::GET,
        Method::Head => ::http::Method::HEAD,
        Method::Post => ::http::Method::POST,
        Method::Put => ::http::Method::PUT,
        Method::Delete => ::http::Method::DELETE,
        Method::Connect => ::http::Method::CONNECT,
        Method::Options => ::http::Method::OPTIONS,
        Method::Trace => ::http::Method::TRACE,
        Method::Patch => ::http::Method::PATCH,
        Method::Other(other) => ::http::Method::from_bytes(other.as_bytes())
            .map_err(|_| format!("invalid method {other:?}"))?,
    };
    let path = incoming
        .path_with_query()
        .unwrap_or_else(|| "/".to_string());
    let mut builder = ::http::Request::builder().method(method).uri(path.as_str());
    // `entries` keeps repeated headers as separate entries, in order.
    for (name, value) in incoming.headers().entries() {
        builder = builder.header(name, value);
    }
    let body = read_body(&incoming)?;
    builder.body(body).map_err(|err| err.to_string())
}

fn read_body(incoming: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = incoming
        .consume()
        .map_err(|()| "request body already consumed")?;
    let stream = body
        .stream()
        .map_err(|()| "request body stream already taken")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(format!(
                    "reading the body failed: {}",
                    err.to_debug_string()
                ));
            }
        }
    }
    // The stream is a child of the body: drop it before finishing the body.
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

fn write_response(response: Response, response_out: ResponseOutparam) {
    let (parts, body) = response.into_parts();
    let headers = Fields::new();
    for (name, value) in &parts.headers {
        // The host refuses some headers (hop-by-hop ones such as `connection`): drop them
        // rather than failing the whole response.
        if let Err(err) = headers.append(name.as_str(), value.as_bytes()) {
            eprintln!("tensorlet-sdk: response header `{name}` dropped: {err:?}");
        }
    }
    let outgoing = OutgoingResponse::new(headers);
    // Every `http::StatusCode` (100..=999) is a valid wasi:http status code.
    let _ = outgoing.set_status_code(parts.status.as_u16());
    let outgoing_body = outgoing
        .body()
        .expect("a new response's body is taken once");
    ResponseOutparam::set(response_out, Ok(outgoing));

    let stream = outgoing_body
        .write()
        .expect("a new body's stream is taken once");
    for chunk in body.chunks(WRITE_CHUNK) {
        // An error means the client hung up (or the host closed the stream): nothing to do.
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing_body, None);
}
