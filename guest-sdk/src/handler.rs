//! Conversions between `wasi:http` resources and the [`http`](::http) crate's types.
//!
//! The request path is: the host hands the export an `incoming-request` and a `response-outparam`;
//! [`serve`] turns the request into what the handler takes ([`FromRequest`]: a whole [`Request`]
//! or a [`StreamRequest`]), calls the handler, and sends what it returns ([`IntoResponse`]) to
//! the outparam, the body whole or as it is produced. One request per instance: blocking on the
//! host's streams is the simplest correct thing; [`serve_async`] runs an async handler on
//! [`rt::block_on`](crate::rt::block_on).

use std::future::Future;

use ::http::{HeaderName, HeaderValue, StatusCode, header};
use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingResponse, ResponseOutparam};

use crate::body::{self, Body, BodyReader};

/// The request a handler receives: the body has been read to its end.
///
/// ```no_run
/// fn handle(req: tensorlet_sdk::Request) -> String {
///     format!("{} {} with {} bytes\n", req.method(), req.uri(), req.body().len())
/// }
/// # tensorlet_sdk::export_handler!(handle);
/// ```
pub type Request = ::http::Request<Vec<u8>>;

/// A request whose body is read as it arrives (take it instead of [`Request`] to handle
/// uploads larger than the function's memory).
/// See [`BodyReader`] for an example.
pub type StreamRequest = ::http::Request<BodyReader>;

/// The response a handler produces, directly or through [`IntoResponse`]: its [`Body`] is whole
/// bytes (`Vec<u8>` and `String` convert with `.into()`) or streamed.
///
/// ```
/// use tensorlet_sdk::{Response, StatusCode, http};
///
/// let response: Response = http::Response::builder()
///     .status(StatusCode::ACCEPTED)
///     .header("x-job", "42")
///     .body("queued\n".into())
///     .unwrap();
/// assert_eq!(response.body().as_bytes(), Some(&b"queued\n"[..]));
/// ```
pub type Response = ::http::Response<Body>;

/// What a handler can take: a [`Request`] (body read whole first) or a [`StreamRequest`].
pub trait FromRequest: Sized {
    /// Reads the request's head (and, for [`Request`], its body).
    #[doc(hidden)]
    fn from_incoming(incoming: IncomingRequest) -> Result<Self, String>;
}

impl FromRequest for Request {
    fn from_incoming(incoming: IncomingRequest) -> Result<Self, String> {
        let (head, mut body) = StreamRequest::from_incoming(incoming)?.into_parts();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.chunk() {
            bytes.extend_from_slice(&chunk.map_err(|e| e.message().to_string())?);
        }
        Ok(::http::Request::from_parts(head, bytes))
    }
}

impl FromRequest for StreamRequest {
    fn from_incoming(incoming: IncomingRequest) -> Result<Self, String> {
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
        let body = BodyReader::of_request(incoming)?;
        builder.body(body).map_err(|err| err.to_string())
    }
}

/// Anything a handler may return.
///
/// Implemented for [`Response`] and `http::Response<Vec<u8>>` or `<String>`, for bodies
/// alone (`String` and `&'static str` as `text/plain; charset=utf-8`, `Vec<u8>` as
/// `application/octet-stream`, a [`Body`] as it is), for `(StatusCode, body)` to pick the status,
/// `([(name, value); N], body)` and `(StatusCode, [(name, value); N], body)` to set headers, and
/// for `Result<T, E>` where both sides are responses, so that `?` works in handlers.
///
/// ```
/// use tensorlet_sdk::{IntoResponse, StatusCode, header};
///
/// let r = (StatusCode::CREATED, [(header::LOCATION, "/items/7")], "made").into_response();
/// assert_eq!(r.status(), StatusCode::CREATED);
/// assert_eq!(r.headers()[header::LOCATION], "/items/7");
/// assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
/// ```
pub trait IntoResponse {
    /// Converts `self` into the response sent to the client.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for ::http::Response<Vec<u8>> {
    fn into_response(self) -> Response {
        self.map(Body::from)
    }
}

impl IntoResponse for ::http::Response<String> {
    fn into_response(self) -> Response {
        self.map(Body::from)
    }
}

impl IntoResponse for Body {
    fn into_response(self) -> Response {
        ::http::Response::new(self)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        with_type(self.into(), "text/plain; charset=utf-8")
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        with_type(self.into(), "text/plain; charset=utf-8")
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        with_type(self.into(), "application/octet-stream")
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

/// Headers set on (replacing those of) the body's response, e.g.
/// `([(header::CONTENT_TYPE, "text/csv")], csv)`. A name or value that is not valid in HTTP
/// answers 500 `invalid_header` instead.
impl<K, V, B, const N: usize> IntoResponse for ([(K, V); N], B)
where
    K: TryInto<HeaderName>,
    V: TryInto<HeaderValue>,
    B: IntoResponse,
{
    fn into_response(self) -> Response {
        let mut response = self.1.into_response();
        for (name, value) in self.0 {
            match (name.try_into(), value.try_into()) {
                (Ok(name), Ok(value)) => {
                    response.headers_mut().insert(name, value);
                }
                _ => {
                    return crate::Error::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "invalid_header",
                        "the handler set a header name or value that is not valid in HTTP",
                    )
                    .into_response();
                }
            }
        }
        response
    }
}

/// A status, headers and a body.
impl<K, V, B, const N: usize> IntoResponse for (StatusCode, [(K, V); N], B)
where
    K: TryInto<HeaderName>,
    V: TryInto<HeaderValue>,
    B: IntoResponse,
{
    fn into_response(self) -> Response {
        (self.0, (self.1, self.2)).into_response()
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

fn with_type(body: Body, content_type: &'static str) -> Response {
    let mut response = ::http::Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Runs one request through `handler`: used by [`export_handler!`](crate::export_handler).
///
/// A request that cannot be converted gets a 400 without calling the handler.
pub fn serve<Q: FromRequest, R: IntoResponse>(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Q) -> R,
) {
    let response = match Q::from_incoming(request) {
        Ok(request) => handler(request).into_response(),
        Err(reason) => bad_request(&reason),
    };
    write_response(response, response_out);
}

/// Runs one request through an async `handler` on [`rt::block_on`](crate::rt::block_on): used by
/// [`export_async_handler!`](crate::export_async_handler).
pub fn serve_async<Q, F, R>(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Q) -> F,
) where
    Q: FromRequest,
    F: Future<Output = R>,
    R: IntoResponse,
{
    let response = match Q::from_incoming(request) {
        Ok(request) => crate::rt::block_on(handler(request)).into_response(),
        Err(reason) => bad_request(&reason),
    };
    write_response(response, response_out);
}

fn bad_request(reason: &str) -> Response {
    crate::Error::bad_request(
        "bad_request",
        format!("the request could not be read: {reason}"),
    )
    .into_response()
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
    body::send(body, outgoing_body);
}
