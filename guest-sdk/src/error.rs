//! Errors a handler returns with `?`, answered in the node's own error shape, and JSON bodies.
//!
//! [`Error`] carries a status, a stable code and a message, and becomes the response
//! `{"error": {"code": "...", "message": "..."}}` (`application/json`), the shape the node uses
//! for its own errors. It converts from [`NnError`](crate::nn::NnError), JSON and I/O errors, so
//! a handler returning `Result<T, Error>` uses `?` on all of them. [`Json`] reads a request body
//! and writes a response body with serde.
//!
//! ```no_run
//! use tensorlet_sdk::{Error, Json, Request, StatusCode};
//!
//! #[derive(serde::Deserialize)]
//! struct Input { texts: Vec<String> }
//!
//! #[derive(serde::Serialize)]
//! struct Output { count: usize }
//!
//! fn handle(req: Request) -> Result<(StatusCode, Json<Output>), Error> {
//!     let Json(input): Json<Input> = Json::from_request(&req)?;
//!     if input.texts.is_empty() {
//!         return Err(Error::bad_request("empty_input", "send at least one text"));
//!     }
//!     Ok((StatusCode::OK, Json(Output { count: input.texts.len() })))
//! }
//!
//! tensorlet_sdk::export_handler!(handle);
//! ```

use std::fmt;

use ::http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::handler::{IntoResponse, Request};
use crate::nn::NnError;

/// A failed request: the status, a stable machine-readable code and a message for people.
///
/// ```
/// use tensorlet_sdk::{Error, IntoResponse, StatusCode};
///
/// let e = Error::bad_request("empty_input", "send at least one text");
/// assert_eq!((e.status(), e.code()), (StatusCode::BAD_REQUEST, "empty_input"));
/// let response = e.into_response();
/// assert_eq!(response.status(), 400);
/// assert_eq!(
///     response.body().as_bytes().unwrap(),
///     br#"{"error":{"code":"empty_input","message":"send at least one text"}}"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    status: StatusCode,
    code: String,
    message: String,
}

impl Error {
    /// An error with any status.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400: the client sent something this handler cannot use.
    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: no such thing.
    pub fn not_found(code: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 500 with code `internal`: the handler failed. The message goes to the client: say what
    /// failed, not secrets.
    pub fn internal(message: impl fmt::Display) -> Error {
        Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            message.to_string(),
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for Error {}

/// `{"error": {"code", "message"}}` with the error's status.
impl IntoResponse for Error {
    fn into_response(self) -> crate::Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
        }
        let body = Body {
            error: Inner {
                code: &self.code,
                message: &self.message,
            },
        };
        // Two strings: serialising cannot fail.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, bytes).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A wasi:nn error: the caller's inputs (invalid-argument, too-large) are 400, a missing or
/// forbidden model 404/403, a timeout 504, anything else 500; the code is `nn_` and the wasi:nn
/// code (`nn_invalid_argument`, ...).
impl From<NnError> for Error {
    fn from(e: NnError) -> Error {
        let status = match &e {
            NnError::InvalidArgument(_) | NnError::TooLarge(_) | NnError::Conversion(_) => {
                StatusCode::BAD_REQUEST
            }
            NnError::NotFound(_) => StatusCode::NOT_FOUND,
            NnError::Security(_) => StatusCode::FORBIDDEN,
            NnError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Error::new(
            status,
            format!("nn_{}", e.code().replace('-', "_")),
            e.message(),
        )
    }
}

/// A body that is not the JSON expected: 400 `invalid_json`, serde's message saying where.
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::bad_request("invalid_json", e.to_string())
    }
}

/// Any other error (with the `anyhow` feature): 500 `internal`, with the error's chain of
/// causes as the message. Use [`Error::new`] for errors the client should see differently.
#[cfg(feature = "anyhow")]
impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::internal(format!("{e:#}"))
    }
}

/// An I/O failure: 500 `io_error`.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, "io_error", e.to_string())
    }
}

/// A JSON body: read from a request with [`Json::from_request`], answered as
/// `application/json` when returned (alone or as `(StatusCode, Json<T>)`).
///
/// ```
/// use tensorlet_sdk::{IntoResponse, Json, http};
///
/// let req = http::Request::new(br#"{"texts": ["a", "b"]}"#.to_vec());
/// let Json(v): Json<serde_json::Value> = Json::from_request(&req).unwrap();
/// assert_eq!(v["texts"][1], "b");
/// let response = Json(vec![1, 2]).into_response();
/// assert_eq!(response.headers()["content-type"], "application/json");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> Json<T> {
    /// The request's body as JSON of type `T`, or a 400 [`Error`] that says what is wrong.
    pub fn from_request(req: &Request) -> Result<Json<T>, Error> {
        Ok(Json(serde_json::from_slice(req.body())?))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> crate::Response {
        match serde_json::to_vec(&self.0) {
            Ok(bytes) => {
                let mut response = bytes.into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => Error::internal(format!("the answer cannot be written as JSON: {e}"))
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_answer_in_the_node_s_shape() {
        let r = Error::bad_request("empty", "say \"something\"").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(r.body().as_bytes().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "empty", "message": "say \"something\""}})
        );
        let nn: Error = NnError::InvalidArgument("bad dims".into()).into();
        assert_eq!(
            (nn.status(), nn.code()),
            (StatusCode::BAD_REQUEST, "nn_invalid_argument")
        );
        let nn: Error = NnError::RuntimeError("boom".into()).into();
        assert_eq!(nn.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let json: Error = serde_json::from_str::<u8>("x").unwrap_err().into();
        assert_eq!(json.code(), "invalid_json");
    }

    #[test]
    fn json_reads_and_writes_bodies() {
        let req = ::http::Request::new(br#"{"a": [1, 2]}"#.to_vec());
        let Json(v): Json<serde_json::Value> = Json::from_request(&req).unwrap();
        assert_eq!(v["a"][1], 2);
        let bad = ::http::Request::new(b"{".to_vec());
        let e = Json::<serde_json::Value>::from_request(&bad).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let r = (StatusCode::CREATED, Json(vec![1, 2])).into_response();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.body().as_bytes(), Some(&b"[1,2]"[..]));
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
