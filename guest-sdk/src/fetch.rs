//! Outbound HTTP from a handler, through the host's `wasi:http/outgoing-handler`.
//!
//! The node allows only the destinations a function was deployed with (`--allow-outbound`, or
//! `http://NAME.fn.internal` for another function of the same node); anything else fails with
//! 502 `fetch_http_request_denied`.
//!
//! ```no_run
//! use tensorlet_sdk::{Error, Request, fetch, rt};
//!
//! // Two upstream calls at once; the answer joins their bodies.
//! async fn handle(_req: Request) -> Result<String, Error> {
//!     let get = |url: &str| fetch(tensorlet_sdk::http::Request::get(url).body(Vec::new()).unwrap());
//!     let both = rt::join_all([get("http://hello.fn.internal/"), get("https://example.com/")]).await;
//!     let mut out = String::new();
//!     for answer in both {
//!         out.push_str(&String::from_utf8_lossy(answer?.body()));
//!     }
//!     Ok(out)
//! }
//!
//! tensorlet_sdk::export_async_handler!(handle);
//! ```

use ::http::StatusCode;
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

use crate::body::BodyReader;
use crate::error::Error;
use crate::rt;

/// The most of an outbound response body [`fetch`] reads (the function's memory limit is the
/// other bound): 64 MiB. Read bigger ones as a stream with [`fetch_stream`].
pub const FETCH_BODY_LIMIT: usize = 64 << 20;

/// Sends `request` (an absolute `http://` or `https://` URI) and reads the whole response.
///
/// Fails with 502 and code `fetch_` + the wasi:http error code (`fetch_http_request_denied`,
/// `fetch_connection_refused`, `fetch_connection_timeout`, ...), or 400 `fetch_bad_request` for a
/// request that cannot be sent (no scheme or host). Other futures run while it waits; in a plain
/// handler, call it through [`rt::block_on`].
///
/// ```no_run
/// use tensorlet_sdk::{Error, Request, fetch, http, rt};
///
/// // A plain handler that fetches once.
/// fn handle(_req: Request) -> Result<Vec<u8>, Error> {
///     let request = http::Request::get("http://labels.fn.internal/v1").body(Vec::new()).unwrap();
///     Ok(rt::block_on(fetch(request))?.into_body())
/// }
/// # tensorlet_sdk::export_handler!(handle);
/// ```
pub async fn fetch(request: ::http::Request<Vec<u8>>) -> Result<::http::Response<Vec<u8>>, Error> {
    let response = fetch_stream(request).await?;
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next_chunk().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() > FETCH_BODY_LIMIT {
            return Err(Error::new(
                StatusCode::BAD_GATEWAY,
                "fetch_body_too_large",
                format!("the response is larger than {FETCH_BODY_LIMIT} bytes: use fetch_stream"),
            ));
        }
    }
    Ok(::http::Response::from_parts(parts, bytes))
}

/// Like [`fetch`], but answers as soon as the response's head arrives, its body a
/// [`BodyReader`] to read as it comes.
///
/// ```no_run
/// # use tensorlet_sdk::{Error, fetch_stream, http};
/// # async fn f() -> Result<usize, Error> {
/// let request = http::Request::get("https://data.example.com/big.csv").body(Vec::new()).unwrap();
/// let mut body = fetch_stream(request).await?.into_body();
/// let mut bytes = 0;
/// while let Some(chunk) = body.next_chunk().await {
///     bytes += chunk?.len();
/// }
/// # Ok(bytes) }
/// ```
pub async fn fetch_stream(
    request: ::http::Request<Vec<u8>>,
) -> Result<::http::Response<BodyReader>, Error> {
    let (parts, body) = request.into_parts();
    let bad = |m: String| Error::bad_request("fetch_bad_request", m);
    let scheme = match parts.uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        other => {
            return Err(bad(format!(
                "`{}` needs an http:// or https:// scheme, not {other:?}",
                parts.uri
            )));
        }
    };
    let authority =
        (parts.uri.authority()).ok_or_else(|| bad(format!("`{}` has no host", parts.uri)))?;
    let headers = Fields::new();
    for (name, value) in &parts.headers {
        headers
            .append(name.as_str(), value.as_bytes())
            .map_err(|e| bad(format!("header `{name}` cannot be sent: {e:?}")))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let set = outgoing.set_method(&method(&parts.method)).is_ok()
        && outgoing.set_scheme(Some(&scheme)).is_ok()
        && outgoing.set_authority(Some(authority.as_str())).is_ok()
        && outgoing.set_path_with_query(Some(path)).is_ok();
    if !set {
        return Err(bad(format!(
            "`{} {}` cannot be sent",
            parts.method, parts.uri
        )));
    }
    let outgoing_body = outgoing
        .body()
        .map_err(|()| bad("the request body was already taken".into()))?;
    let pending = outgoing_handler::handle(outgoing, None).map_err(failed)?;
    write_body(&outgoing_body, &body).await?;
    OutgoingBody::finish(outgoing_body, None).map_err(failed)?;
    let response = loop {
        match pending.get() {
            Some(Ok(result)) => break result.map_err(failed)?,
            Some(Err(())) => return Err(failed(ErrorCode::InternalError(None))),
            None => rt::wait(pending.subscribe()).await,
        }
    };
    let status = StatusCode::from_u16(response.status())
        .map_err(|_| failed(ErrorCode::HttpProtocolError))?;
    let mut builder = ::http::Response::builder().status(status);
    for (name, value) in response.headers().entries() {
        builder = builder.header(name, value);
    }
    let reader = BodyReader::of_response(response).map_err(Error::internal)?;
    builder
        .body(reader)
        .map_err(|e| failed(ErrorCode::InternalError(Some(e.to_string()))))
}

/// Writes a request body without blocking other futures (`check-write` grants, then `write`).
async fn write_body(outgoing: &OutgoingBody, mut bytes: &[u8]) -> Result<(), Error> {
    let stream = outgoing
        .write()
        .map_err(|()| Error::internal("the request body stream was already taken"))?;
    let closed = |e: StreamError| match e {
        StreamError::LastOperationFailed(e) => Error::new(
            StatusCode::BAD_GATEWAY,
            "fetch_body_failed",
            format!("sending the request body failed: {}", e.to_debug_string()),
        ),
        StreamError::Closed => Error::new(
            StatusCode::BAD_GATEWAY,
            "fetch_body_failed",
            "the upstream closed the request body",
        ),
    };
    while !bytes.is_empty() {
        let grant = stream.check_write().map_err(closed)?;
        if grant == 0 {
            rt::wait(stream.subscribe()).await;
            continue;
        }
        let n = bytes
            .len()
            .min(usize::try_from(grant).unwrap_or(usize::MAX));
        stream.write(&bytes[..n]).map_err(closed)?;
        bytes = &bytes[n..];
    }
    stream.flush().map_err(closed)?;
    // Flushed once `check-write` answers again.
    while stream.check_write().map_err(closed)? == 0 {
        rt::wait(stream.subscribe()).await;
    }
    Ok(())
}

fn method(m: &::http::Method) -> Method {
    match *m {
        ::http::Method::GET => Method::Get,
        ::http::Method::HEAD => Method::Head,
        ::http::Method::POST => Method::Post,
        ::http::Method::PUT => Method::Put,
        ::http::Method::DELETE => Method::Delete,
        ::http::Method::CONNECT => Method::Connect,
        ::http::Method::OPTIONS => Method::Options,
        ::http::Method::TRACE => Method::Trace,
        ::http::Method::PATCH => Method::Patch,
        _ => Method::Other(m.as_str().to_string()),
    }
}

/// A wasi:http error as a 502 `fetch_<code>` (the code's variant name in snake case).
fn failed(e: ErrorCode) -> Error {
    let name = format!("{e:?}");
    // `ErrorCode::HttpRequestDenied(..)` -> `HttpRequestDenied`.
    let head = name.split(['(', ' ', '{']).next().unwrap_or_default();
    let variant = head.rsplit("::").next().unwrap_or_default();
    let mut code = String::from("fetch");
    for c in variant.chars() {
        if c.is_ascii_uppercase() {
            code.push('_');
        }
        code.push(c.to_ascii_lowercase());
    }
    Error::new(
        StatusCode::BAD_GATEWAY,
        code,
        format!("the outbound request failed: {name}"),
    )
}
