//! Write Tensorlet functions as plain Rust functions.
//!
//! A Tensorlet function is a `wasm32-wasip2` component that exports `wasi:http/incoming-handler`.
//! This crate owns the boring part of that contract: it turns the host's `wasi:http`
//! incoming-request into an [`http::Request`] (method, path and query, every header, the whole
//! body), calls your function, and writes whatever it returns back as the response. It does not
//! route or parse JSON; your function does what it likes with the request. To run models the
//! node provides, use [`nn`] (the host's `wasi:nn`).
//!
//! Each request runs in a fresh instance, so a handler can keep no state between requests.
//!
//! # Examples
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! tensorlet-sdk = { path = "../guest-sdk" }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```no_run
//! use tensorlet_sdk::{IntoResponse, Request, StatusCode};
//!
//! fn handle(req: Request) -> impl IntoResponse {
//!     match req.uri().path() {
//!         "/" => (StatusCode::OK, format!("Hello! You sent {} bytes\n", req.body().len())),
//!         _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
//!     }
//! }
//!
//! tensorlet_sdk::export_handler!(handle);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`, then deploy
//! `target/wasm32-wasip2/release/<crate>.wasm` with `tensorlet deploy NAME FILE.wasm`.
//!
//! # What the handler sees
//!
//! - [`Request::uri`] is the path and query the node passes to the guest (for
//!   `/fn/hello/a/b?x=1` that is `/a/b?x=1`); it has no scheme or authority.
//! - Headers keep their order, and repeated headers stay repeated.
//! - The body has been read to its end before the handler runs.
//! - If the request cannot be converted (for example the body could not be read), the handler
//!   is not called and the client gets a `400 Bad Request`.
//!
//! A panic in the handler traps the instance; the node answers the client with an error.
//!
//! # What the handler returns
//!
//! Anything that implements [`IntoResponse`]: a [`Response`], a `String` or `&'static str`
//! (`text/plain`), a `Vec<u8>`, a [`Json`] body, `(StatusCode, body)`, or a `Result` of those.
//! Return `Result<T, `[`Error`]`>` to use `?`: wasi:nn, JSON and I/O errors convert into an
//! [`Error`], answered as `{"error": {"code", "message"}}` with its status, like the node's own
//! errors. The `http` crate is re-exported as [`tensorlet_sdk::http`](crate::http).

#![deny(missing_docs)]

mod body;
mod error;
mod fetch;
mod handler;
pub mod nn;
pub mod rt;

pub use crate::body::{Body, BodyReader, BodyWriter};
pub use crate::error::{Error, Json};
pub use crate::fetch::{FETCH_BODY_LIMIT, fetch, fetch_stream};
pub use crate::handler::{FromRequest, IntoResponse, Request, Response, StreamRequest};
/// The [`http`](https://docs.rs/http) crate the SDK's types come from (`http::Request::get`, ...).
pub use ::http;
pub use ::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};

/// Exports a handler function as the component's `wasi:http/incoming-handler`.
///
/// The argument is the path of a function `fn(Request) -> R` where `R:` [`IntoResponse`].
/// Invoke it once per crate, at the top level of a `cdylib` crate.
///
/// # Examples
///
/// ```no_run
/// fn handle(_req: tensorlet_sdk::Request) -> &'static str {
///     "hello\n"
/// }
///
/// tensorlet_sdk::export_handler!(handle);
/// ```
#[macro_export]
macro_rules! export_handler {
    ($handler:path) => {
        $crate::__export_with!($crate::__private::serve, $handler);
    };
}

/// Exports an `async fn` handler as the component's `wasi:http/incoming-handler`, run on the
/// SDK's executor ([`rt`]): inside it, [`fetch`], [`rt::sleep`], [`BodyReader::next_chunk`] and
/// [`rt::join_all`] wait without blocking each other.
///
/// The argument is the path of an `async fn(Q) -> R` where `Q` is [`Request`] or
/// [`StreamRequest`] and `R:` [`IntoResponse`].
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
///
/// async fn handle(_req: tensorlet_sdk::Request) -> &'static str {
///     tensorlet_sdk::rt::sleep(Duration::from_millis(10)).await;
///     "hello, later\n"
/// }
///
/// tensorlet_sdk::export_async_handler!(handle);
/// ```
#[macro_export]
macro_rules! export_async_handler {
    ($handler:path) => {
        $crate::__export_with!($crate::__private::serve_async, $handler);
    };
}

/// Not public API: the export both handler forms share, with the function that serves a request.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_with {
    ($serve:path, $handler:path) => {
        const _: () = {
            struct __TensorletHandler;

            impl $crate::__private::Guest for __TensorletHandler {
                fn handle(
                    request: $crate::__private::IncomingRequest,
                    response_out: $crate::__private::ResponseOutparam,
                ) {
                    $serve(request, response_out, $handler)
                }
            }

            $crate::__private::wasi::http::proxy::export!(__TensorletHandler);
        };
    };
}

/// Not public API: used by [`export_handler!`] and [`export_async_handler!`].
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::{serve, serve_async};
    pub use wasi;
    pub use wasi::exports::http::incoming_handler::Guest;
    pub use wasi::http::types::{IncomingRequest, ResponseOutparam};
}
