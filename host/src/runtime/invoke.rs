//! The single per-request path: a fresh `Store` and instance for every request, the response
//! head handed back through a oneshot, the body streamed while the guest keeps running, and every
//! way a guest can fail turned into one [`ApiError`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::capture::{Capture, LogBuffer, LogLine};
use super::{HostState, Prepared, Runtime};
use crate::config::FunctionLimits;
use crate::error::ApiError;

/// Everything one invocation needs to know about the function version it runs.
pub struct Invocation {
    /// Function name (for messages).
    pub name: Arc<str>,
    /// Version id (for log lines).
    pub version: Arc<str>,
    /// The compiled component.
    pub pre: Prepared,
    /// Limits fixed at deploy.
    pub limits: FunctionLimits,
    /// Environment the guest sees.
    pub env: Arc<[(String, String)]>,
    /// Where the guest's output goes.
    pub logs: Arc<LogBuffer>,
    /// Request id, for log lines.
    pub request_id: Arc<str>,
}

impl Runtime {
    /// Runs one request through a fresh instance of `inv.pre`.
    ///
    /// `on_instantiated` receives the instantiation time once the instance exists.
    pub async fn invoke<B>(
        &self,
        inv: Invocation,
        req: http::Request<B>,
        on_instantiated: impl FnOnce(Duration) + Send + 'static,
    ) -> Result<http::Response<ResponseBody>, ApiError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let limits = inv.limits;
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        let state = HostState::new(&inv.env, limits.memory as usize, deadline);
        let (stdout, stderr) = (state.stdout.clone(), state.stderr.clone());
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Check in with the epoch ticker at every tick: yield so a busy guest shares its worker
        // thread, and stop it once it is past its deadline.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (req, out) = {
            let mut http = store.data_mut().http();
            let req = http
                .new_incoming_request(Scheme::Http, req)
                .map_err(|e| ApiError::invalid_request(format!("unusable request: {e}")))?;
            let out = http
                .new_response_outparam(sender)
                .map_err(|e| ApiError::internal(format!("response outparam: {e}")))?;
            (req, out)
        };

        let pre = inv.pre.clone();
        let logs = Arc::clone(&inv.logs);
        let (version, request_id) = (Arc::clone(&inv.version), Arc::clone(&inv.request_id));
        // The guest runs in its own task so it can keep streaming the body after the head is
        // sent. Epochs only interrupt wasm code; the outer deadline also cuts off a guest that
        // waits inside a host call (a sleep, a body read that never completes). Whichever way
        // it ends, the task moves the guest's output into the function's log.
        let task = tokio::spawn(async move {
            let run = async {
                let started = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await?;
                on_instantiated(started.elapsed());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(r) => r.map_err(Failure::Wasm),
                Err(_) => Err(Failure::Deadline),
            };
            drop(store);
            append_logs(&logs, &version, &request_id, &stdout, &stderr);
            result
        });

        match tokio::time::timeout_at(deadline.into(), receiver).await {
            Ok(Ok(Ok(resp))) => {
                let cap = limits.max_response_body;
                Ok(resp.map(|b| ResponseBody::new(b, cap)))
            }
            Ok(Ok(Err(code))) => Err(ApiError::guest_error(&inv.name, format!("{code:?}"))),
            Ok(Err(_dropped)) => Err(match task.await {
                Ok(Ok(())) => ApiError::no_response(&inv.name),
                Ok(Err(Failure::Deadline)) => ApiError::timeout(&inv.name, limits.timeout_ms),
                Ok(Err(Failure::Wasm(e))) => classify(&inv.name, limits.timeout_ms, e),
                Err(join) => ApiError::internal(format!("guest task failed: {join}")),
            }),
            // The task stops at the same deadline on its own.
            Err(_elapsed) => Err(ApiError::timeout(&inv.name, limits.timeout_ms)),
        }
    }
}

enum Failure {
    Wasm(wasmtime::Error),
    Deadline,
}

fn classify(name: &str, timeout_ms: u64, e: wasmtime::Error) -> ApiError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => ApiError::timeout(name, timeout_ms),
        Some(trap) => ApiError::guest_trap(name, trap),
        None => {
            let first = format!("{e}");
            tracing::debug!(function = name, "guest failed: {e:?}");
            ApiError::guest_trap(name, first)
        }
    }
}

/// Moves a request's captured output into the function's log buffer.
fn append_logs(
    logs: &LogBuffer,
    version: &str,
    request_id: &str,
    stdout: &Capture,
    stderr: &Capture,
) {
    let (out, err) = (stdout.take_lines(), stderr.take_lines());
    if out.is_empty() && err.is_empty() {
        return;
    }
    let time = crate::time::now_rfc3339();
    let lines = [("stdout", out), ("stderr", err)]
        .into_iter()
        .flat_map(|(stream, lines)| {
            let time = time.clone();
            lines.into_iter().map(move |line| LogLine {
                time: time.clone(),
                version: version.to_string(),
                request_id: request_id.to_string(),
                stream,
                line,
            })
        });
    logs.extend(lines.collect::<Vec<_>>());
}

/// A guest's response body, cut off with an error once it exceeds the function's cap.
pub struct ResponseBody {
    inner: HyperOutgoingBody,
    remaining: u64,
}

impl ResponseBody {
    fn new(inner: HyperOutgoingBody, cap: u64) -> Self {
        Self {
            inner,
            remaining: cap,
        }
    }
}

/// The error a capped body ends with.
#[derive(Debug, thiserror::Error)]
#[error("response body exceeds the function's max_response_body")]
pub struct ResponseTooLarge;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                self.remaining = 0;
                return Poll::Ready(Some(Err(Box::new(ResponseTooLarge))));
            }
            self.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Maps a body error from hyper or from the request-size cap into wasi:http's error, and raises
/// `overflowed` when the cap was hit so the caller can answer 413 whatever the guest made of it.
pub fn request_body_error(
    limit: u64,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> wasmtime_wasi_http::Error {
    move |e| {
        if e.is::<http_body_util::LengthLimitError>() {
            overflowed.store(true, std::sync::atomic::Ordering::Relaxed);
            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
        } else {
            match e.downcast::<hyper::Error>() {
                Ok(h) => wasmtime_wasi_http::Error::Hyper(*h),
                Err(other) => wasmtime_wasi_http::Error::InternalError(Some(other.to_string())),
            }
        }
    }
}
