//! The single per-request path: a fresh `Store` and instance for every request, the response
//! head handed back through a oneshot, the body streamed while the guest keeps running, and every
//! way a guest can fail turned into one [`ApiError`].

use std::collections::VecDeque;
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
use crate::nn::NnCtx;

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
    /// Models the function may load by name.
    pub models: Arc<[crate::key::ModelKey]>,
    /// Its tenant's inference permits (`max_inferences`), on a node with tenants.
    pub inferences: Option<crate::nn::InferenceQuota>,
    /// Its tenant, on a node with tenants (CPU-bound guests share by tenant: [`super::fair`]).
    pub tenant: Option<Arc<str>>,
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
        let nn = NnCtx::new(
            Arc::clone(&self.nn),
            Arc::clone(&inv.models),
            Arc::clone(&inv.name),
            deadline,
            inv.inferences.clone(),
            // Tensors live in host memory, outside the guest's: by default they may hold as much
            // as the guest itself.
            self.tensor_budget.unwrap_or(limits.memory),
        );
        let mut state = HostState::new(&inv.env, limits.memory as usize, deadline, nn);
        let cpu = inv
            .tenant
            .clone()
            .map(|t| self.workers.share(req.extensions(), t));
        state.cpu = cpu.clone();
        let (stdout, stderr) = (state.stdout.clone(), state.stderr.clone());
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Check in with the epoch ticker at every tick: yield so a busy guest shares its worker
        // thread, and stop it once it is past its deadline.
        store.set_epoch_deadline(1);
        let cpu_bound = self.ticker.cpu_bound().clone();
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.cpu_bound.get_or_insert_with(|| cpu_bound.enter());
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else if let Some(cpu) = &ctx.data().cpu {
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(cpu.next_turn())))
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
        let guest = async move {
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
        };
        // On a node with tenants, all of the guest's work (instantiation, wasm, tearing the
        // instance down) takes turns with the tenant's other guests on this thread.
        let task = tokio::spawn(async move {
            match cpu {
                Some(cpu) => cpu.run(guest).await,
                None => guest.await,
            }
        });

        match tokio::time::timeout_at(deadline.into(), receiver).await {
            Ok(Ok(Ok(resp))) => {
                let (parts, body) = resp.into_parts();
                let mut body = ResponseBody::new(body, limits.max_response_body);
                body.prefetch(deadline).await;
                Ok(http::Response::from_parts(parts, body))
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
        // The host trapped the guest on purpose: its own message says why (the error may be
        // wrapped in a wasm backtrace).
        None if e.is::<crate::nn::TensorBudgetExceeded>() => {
            let budget = e.downcast_ref::<crate::nn::TensorBudgetExceeded>();
            ApiError::guest_trap(name, budget.map(ToString::to_string).unwrap_or_default())
        }
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
    /// Frames already taken from `inner` by [`ResponseBody::prefetch`].
    ready: VecDeque<Result<Frame<Bytes>, BoxError>>,
    finished: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ResponseBody {
    fn new(inner: HyperOutgoingBody, cap: u64) -> Self {
        Self {
            inner,
            remaining: cap,
            ready: VecDeque::new(),
            finished: false,
        }
    }

    /// Waits (until `deadline`) for the first body frame and takes whatever follows it without
    /// waiting. hyper writes the head as soon as the body has nothing ready; with the first frame
    /// (and, for a small response, the end) already here, head and body leave in one write.
    async fn prefetch(&mut self, deadline: Instant) {
        let first = std::future::poll_fn(|cx| Pin::new(&mut self.inner).poll_frame(cx));
        match tokio::time::timeout_at(deadline.into(), first).await {
            Ok(Some(frame)) => {
                let frame = self.admit(frame);
                self.ready.push_back(frame);
            }
            Ok(None) => self.finished = true,
            Err(_elapsed) => return,
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut self.inner).poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                let frame = self.admit(frame);
                self.ready.push_back(frame);
            }
            Poll::Ready(None) => self.finished = true,
            Poll::Pending => {}
        }
    }

    /// Counts a frame against the cap.
    fn admit(
        &mut self,
        frame: Result<Frame<Bytes>, wasmtime_wasi_http::Error>,
    ) -> Result<Frame<Bytes>, BoxError> {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                self.remaining = 0;
                return Err(Box::new(ResponseTooLarge));
            }
            self.remaining -= len;
        }
        Ok(frame)
    }
}

/// The error a capped body ends with.
#[derive(Debug, thiserror::Error)]
#[error("response body exceeds the function's max_response_body")]
pub struct ResponseTooLarge;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.ready.pop_front() {
            return Poll::Ready(Some(frame));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(self.admit(frame))),
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && (self.finished || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // Prefetched bytes are part of the body: with them the hint stays exact, which lets
        // hyper send a Content-Length instead of chunked framing for a finished small body.
        let ready: u64 = self
            .ready
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = if self.finished {
            Some(0)
        } else {
            self.inner.size_hint().exact()
        };
        match rest {
            Some(n) => SizeHint::with_exact(n + ready),
            None => {
                let mut hint = SizeHint::default();
                hint.set_lower(ready);
                hint
            }
        }
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
