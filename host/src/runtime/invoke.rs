//! The single per-request path: a fresh `Store` and instance for every request, the request body
//! capped at the function's `max_request_body`, the response head handed back through a oneshot,
//! the body streamed while the guest keeps running, and every way a guest can fail turned into
//! one [`InvokeError`]. The runtime names no HTTP status: what a client is told is the service's
//! business.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, SizeHint};
use tracing::Instrument;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::capture::Capture;
use super::{HostState, Prepared, Runtime};
use crate::config::FunctionLimits;
use crate::logs::{FunctionLog, LogLine, Stream};
use crate::nn::{InferenceQuota, NnCtx};
use crate::traces::TraceCtx;

/// A function version as the runtime runs it: fixed at deploy and shared by all its requests.
pub struct Function {
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
    pub logs: Arc<FunctionLog>,
    /// Models the function may load by name.
    pub models: Arc<[crate::key::ModelPin]>,
    /// Destinations its outbound HTTP may reach.
    pub outbound: Arc<crate::outbound::AllowList>,
}

/// One request to a function: the version it runs and what belongs to this request alone.
pub struct Invocation {
    /// The version, shared with the registry's live snapshot: a request keeps the version it
    /// started on even if another goes live meanwhile.
    pub function: Arc<Function>,
    /// Request id, for log lines.
    pub request_id: Arc<str>,
    /// Its tenant's inference permits (`max_inferences`), on a node with tenants.
    pub inferences: Option<InferenceQuota>,
    /// Its tenant, on a node with tenants (CPU-bound guests share by tenant: [`super::fair`]).
    pub tenant: Option<Arc<str>>,
    /// How many function-to-function calls deep it is (0: a client's request).
    pub hops: u8,
}

/// Why an invocation has no response to send. It does not name the function: the caller knows
/// which one it ran, and says so in its own terms.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The guest was still running (or had not answered) at its deadline.
    #[error("did not finish within its timeout of {timeout_ms}ms")]
    Timeout {
        /// The function's timeout.
        timeout_ms: u64,
    },
    /// The guest trapped, or the host trapped it; the detail says why.
    #[error("crashed: {0}")]
    Trap(String),
    /// The guest answered with a wasi:http error code (its debug form) instead of a response.
    #[error("answered with the error {0}")]
    GuestError(String),
    /// The guest returned without setting a response.
    #[error("returned without sending a response")]
    NoResponse,
    /// The request body outgrew `max_request_body` while the guest read it. Whatever the guest
    /// answered is dropped, so a chunked body over the cap is refused like a declared one.
    #[error("the request body exceeds max_request_body ({limit} bytes)")]
    RequestBodyTooLarge {
        /// The function's `max_request_body`.
        limit: u64,
    },
    /// The request cannot be handed to a guest; the message says why.
    #[error("{0}")]
    BadRequest(String),
    /// A failure of the node itself; the message says what failed.
    #[error("{0}")]
    Internal(String),
}

impl Runtime {
    /// Runs one request through a fresh instance of the invocation's function. The request body
    /// may be of any length: the guest reads at most the function's `max_request_body` of it.
    ///
    /// `on_instantiated` receives the instantiation time once the instance exists.
    pub async fn invoke<B>(
        &self,
        inv: Invocation,
        req: http::Request<B>,
        on_instantiated: impl FnOnce(Duration) + Send + 'static,
    ) -> Result<http::Response<GuestBody>, InvokeError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let function = inv.function;
        let limits = function.limits;
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        // A traced request's context, put there by the service ([`crate::traces`]).
        let trace = req.extensions().get::<TraceCtx>().cloned();
        let nn = NnCtx::new(
            Arc::clone(&self.nn),
            Arc::clone(&function.models),
            Arc::clone(&function.name),
            deadline,
            inv.inferences,
            // Tensors live in host memory, outside the guest's: by default they may hold as much
            // as the guest itself.
            self.tensor_budget.unwrap_or(limits.memory),
        )
        .traced(trace.clone());
        let hooks = self.outbound.hooks(
            &function.name,
            inv.tenant.clone(),
            inv.hops,
            Arc::clone(&function.outbound),
            deadline,
        );
        let mut state = HostState::new(&function.env, limits.memory as usize, deadline, nn, hooks);
        let cpu = inv.tenant.map(|t| self.workers.share(req.extensions(), t));
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

        let cap = RequestCap::new(limits.max_request_body);
        let req = req.map(|body| cap.wrap(body));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (req, out) = {
            let mut http = store.data_mut().http();
            let req = http
                .new_incoming_request(Scheme::Http, req)
                .map_err(|e| InvokeError::BadRequest(format!("unusable request: {e}")))?;
            let out = http
                .new_response_outparam(sender)
                .map_err(|e| InvokeError::Internal(format!("response outparam: {e}")))?;
            (req, out)
        };

        let pre = function.pre.clone();
        let logs = Arc::clone(&function.logs);
        let (version, request_id) = (Arc::clone(&function.version), inv.request_id);
        let name = Arc::clone(&function.name);
        // The guest runs in its own task so it can keep streaming the body after the head is
        // sent. Epochs only interrupt wasm code; the outer deadline also cuts off a guest that
        // waits inside a host call (a sleep, a body read that never completes). Whichever way
        // it ends, the task moves the guest's output into the function's log.
        let guest = async move {
            // When instantiation started and ended, for the trace.
            let (mut started, mut instantiated) = (None, None);
            let run = async {
                let begun = Instant::now();
                started = Some(begun);
                let proxy = pre.instantiate_async(&mut store).await?;
                on_instantiated(begun.elapsed());
                instantiated = Some(Instant::now());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(r) => r.map_err(GuestEnd::Wasm),
                Err(_) => Err(GuestEnd::Deadline),
            };
            if let (Some(trace), Some(started)) = (&trace, started) {
                let names = (&*name, &*version);
                trace_guest(trace, names, started, instantiated, &result);
            }
            drop(store);
            append_logs(&logs, &version, &request_id, &stdout, &stderr);
            result
        };
        // On a node with tenants, all of the guest's work (instantiation, wasm, tearing the
        // instance down) takes turns with the tenant's other guests on this thread.
        // The task is in the request's span, so what the guest's host calls log names the request.
        let task = tokio::spawn(
            async move {
                match cpu {
                    Some(cpu) => cpu.run(guest).await,
                    None => guest.await,
                }
            }
            .in_current_span(),
        );

        let timeout = InvokeError::Timeout {
            timeout_ms: limits.timeout_ms,
        };
        let result = match tokio::time::timeout_at(deadline.into(), receiver).await {
            Ok(Ok(Ok(resp))) => {
                let (parts, body) = resp.into_parts();
                let mut body = GuestBody::new(body, limits.max_response_body);
                body.prefetch(deadline).await;
                Ok(http::Response::from_parts(parts, body))
            }
            Ok(Ok(Err(code))) => Err(InvokeError::GuestError(format!("{code:?}"))),
            Ok(Err(_dropped)) => Err(match task.await {
                Ok(Ok(())) => InvokeError::NoResponse,
                Ok(Err(GuestEnd::Deadline)) => timeout,
                Ok(Err(GuestEnd::Wasm(e))) => classify(&function.name, timeout, e),
                Err(join) => InvokeError::Internal(format!("guest task failed: {join}")),
            }),
            // The task stops at the same deadline on its own.
            Err(_elapsed) => Err(timeout),
        };
        // A chunked body can only be found too large while the guest reads it; whatever the guest
        // made of the cut-off body, the answer is that it was too large.
        if cap.overflowed() {
            return Err(InvokeError::RequestBodyTooLarge {
                limit: limits.max_request_body,
            });
        }
        result
    }
}

/// Records the `instantiate` span and, once there was an instance, the `guest` span (its run,
/// until the handler returned or the deadline stopped it), both failed if the guest did.
fn trace_guest(
    trace: &TraceCtx,
    (function, version): (&str, &str),
    started: Instant,
    instantiated: Option<Instant>,
    result: &Result<(), GuestEnd>,
) {
    let now = Instant::now();
    let failure = result.as_ref().err().map(|e| match e {
        GuestEnd::Wasm(e) => e.to_string(),
        GuestEnd::Deadline => "did not finish within its timeout".to_string(),
    });
    let mut instantiate = trace
        .child("instantiate", started)
        .attr("tensorlet.function", function)
        .attr("tensorlet.version", version);
    let Some(instantiated) = instantiated else {
        instantiate.fail(failure.unwrap_or_default());
        return instantiate.end(now);
    };
    instantiate.end(instantiated);
    let mut guest = trace
        .child("guest", instantiated)
        .attr("tensorlet.function", function)
        .attr("tensorlet.version", version);
    if let Some(failure) = failure {
        guest.fail(failure);
    }
    guest.end(now);
}

/// How a guest's task ended, when it did not return normally.
enum GuestEnd {
    /// It trapped or failed to instantiate.
    Wasm(wasmtime::Error),
    /// It was still running (or waiting in a host call) at the deadline.
    Deadline,
}

/// What a guest's failure means. `timeout` is the answer for an epoch interrupt.
fn classify(name: &str, timeout: InvokeError, e: wasmtime::Error) -> InvokeError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => timeout,
        Some(trap) => InvokeError::Trap(trap.to_string()),
        // The host trapped the guest on purpose: its own message says why (the error may be
        // wrapped in a wasm backtrace).
        None if e.is::<crate::nn::TensorBudgetExceeded>() => {
            let budget = e.downcast_ref::<crate::nn::TensorBudgetExceeded>();
            InvokeError::Trap(budget.map(ToString::to_string).unwrap_or_default())
        }
        None => {
            let first = format!("{e}");
            tracing::debug!(function = name, "guest failed: {e:?}");
            InvokeError::Trap(first)
        }
    }
}

/// Hands a request's captured output to the function's log.
fn append_logs(
    logs: &FunctionLog,
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
    let lines = [(Stream::Stdout, out), (Stream::Stderr, err)]
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
    logs.append(lines.collect());
}

/// A guest's response body, cut off with an error once it exceeds the function's cap.
pub struct GuestBody {
    inner: HyperOutgoingBody,
    remaining: u64,
    /// Frames already taken from `inner` by [`GuestBody::prefetch`].
    ready: VecDeque<Result<Frame<Bytes>, BoxError>>,
    finished: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl GuestBody {
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

impl Body for GuestBody {
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

/// The request body's cap: the guest reads at most `limit` bytes, and the runtime learns whether
/// the body had more.
struct RequestCap {
    limit: u64,
    overflowed: Arc<AtomicBool>,
}

impl RequestCap {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            overflowed: Arc::default(),
        }
    }

    /// The body as the guest reads it: it fails with wasi:http's body-size error past the cap.
    /// `Limited` turns the body's own errors into boxed ones, which are mapped back here.
    fn wrap<B>(
        &self,
        body: B,
    ) -> impl Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + use<B>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (limit, overflowed) = (self.limit, Arc::clone(&self.overflowed));
        Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                overflowed.store(true, Ordering::Relaxed);
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
            } else {
                match e.downcast::<hyper::Error>() {
                    Ok(h) => wasmtime_wasi_http::Error::Hyper(*h),
                    Err(other) => wasmtime_wasi_http::Error::InternalError(Some(other.to_string())),
                }
            }
        })
    }

    /// Whether the guest tried to read past the cap.
    fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn the_request_cap_fails_the_read_and_remembers_it() {
        let cap = RequestCap::new(4);
        let body = cap.wrap(Full::new(Bytes::from_static(b"four")));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "four");
        assert!(!cap.overflowed(), "a body of exactly the cap fits");

        let body = cap.wrap(Full::new(Bytes::from_static(b"five!")));
        let e = body.collect().await.unwrap_err();
        assert!(
            matches!(e, wasmtime_wasi_http::Error::HttpRequestBodySize(Some(4))),
            "the guest sees wasi:http's body-size error: {e:?}"
        );
        assert!(cap.overflowed());
    }
}
