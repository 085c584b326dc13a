//! Shadow copies: during a rollout's shadow phase, a share of the requests to the stable version
//! is also answered by the candidate, and the two answers are compared. The client never waits
//! for it: the request and stable's answer are copied as they stream past ([`Tee`]), and only
//! once stable's answer is complete does a spawned task run the candidate on the copy, if the
//! candidate has a free concurrency slot (otherwise the copy is dropped and counted, never
//! queued). Copies run on a thread of their own ([`spawn`]): the serving threads each run a
//! single-threaded runtime, and a copy there would take turns with the next request of the very
//! connection it copies. The copy runs outside the tenant's quotas; its answer is compared,
//! counted in the candidate's numbers for the analysis, and thrown away.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::body::content_length;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::registry::Deployed;
use crate::rollout::{Shadow, ShadowOutcome, same_answer};
use crate::runtime::{Invocation, Runtime};

/// A copy of a body: `Some` when it ended within the cap, `None` when it was larger. A sender
/// dropped without sending means the body never ended (the client went away, or nobody read it).
type Copied = Option<Bytes>;

/// A body that passes every frame through unchanged and, when asked to, keeps a copy of the data
/// up to a cap, sent once the body has ended.
pub(super) struct Tee<B> {
    inner: B,
    copy: Option<(Vec<u8>, usize, oneshot::Sender<Copied>)>,
}

impl<B: Body<Data = Bytes> + Unpin> Tee<B> {
    /// Passes `inner` through, copying nothing.
    pub(super) fn through(inner: B) -> Self {
        Self { inner, copy: None }
    }

    /// Passes `inner` through and copies up to `cap` bytes of it; the copy arrives on the
    /// receiver.
    pub(super) fn copying(inner: B, cap: u64) -> (Self, oneshot::Receiver<Copied>) {
        let (tx, rx) = oneshot::channel();
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        let mut tee = Self {
            inner,
            copy: Some((Vec::new(), cap, tx)),
        };
        // An empty body may never be polled.
        if tee.inner.is_end_stream() {
            tee.finish();
        }
        (tee, rx)
    }

    fn keep(&mut self, data: &[u8]) {
        if let Some((buf, cap, _)) = &mut self.copy {
            if buf.len() + data.len() > *cap {
                if let Some((_, _, tx)) = self.copy.take() {
                    let _ = tx.send(None);
                }
            } else {
                buf.extend_from_slice(data);
            }
        }
    }

    fn finish(&mut self) {
        if let Some((buf, _, tx)) = self.copy.take() {
            let _ = tx.send(Some(Bytes::from(buf)));
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.keep(data);
                }
                // hyper stops polling a body that says it has ended.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.copy = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request picked for shadowing, whose copy is on its way.
pub(super) struct Pending {
    /// The function's metrics label.
    pub function: String,
    /// The candidate and the shadow's settings.
    pub candidate: Arc<Deployed>,
    /// How it compares.
    pub shadow: Shadow,
    /// The request as the guest saw it, without its body.
    pub request: Request<()>,
    /// The copy of its body.
    pub body: oneshot::Receiver<Copied>,
    /// Its id, for the candidate's log lines.
    pub request_id: String,
}

/// Stable's answer.
pub(super) enum Stable {
    /// An error (its body names the request, so only the status compares).
    Failed(StatusCode),
    /// A response: its status, and its body's copy on the way.
    Answered(StatusCode, oneshot::Receiver<Copied>),
}

/// Whether a request may be copied: not when it declares a body over the cap.
pub(super) fn fits(headers: &http::HeaderMap, shadow: &Shadow) -> bool {
    content_length(headers).is_none_or(|n| n <= shadow.max_body)
}

/// The request's head, for the candidate's copy.
pub(super) fn head<B>(req: &Request<B>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Runs `copy` on the shadow thread (on the current runtime if that thread could not start).
pub(super) fn spawn(copy: impl Future<Output = ()> + Send + 'static) {
    static SHADOWS: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    let handle = SHADOWS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("tensorlet-shadow".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .ok()?;
        Some(handle)
    });
    match handle {
        Some(h) => drop(h.spawn(copy)),
        None => drop(tokio::spawn(copy)),
    }
}

/// Runs the candidate on the copy once stable's answer is complete, compares, and counts.
pub(super) async fn run(p: Pending, stable: Stable, runtime: Arc<Runtime>, metrics: Arc<Metrics>) {
    let function = p.function.clone();
    let outcome = compare(p, stable, runtime).await;
    metrics.rollouts.shadow(&function, outcome);
}

async fn compare(p: Pending, stable: Stable, runtime: Arc<Runtime>) -> ShadowOutcome {
    let body = match p.body.await {
        Ok(Some(body)) => body,
        Ok(None) => return ShadowOutcome::TooLarge,
        Err(_) => return ShadowOutcome::Incomplete,
    };
    let (stable_status, stable_body) = match stable {
        Stable::Failed(status) => (status, None),
        Stable::Answered(status, body) => match body.await {
            Ok(body) => (status, body),
            Err(_) => return ShadowOutcome::Incomplete,
        },
    };
    let candidate = &p.candidate;
    let Ok(_permit) = Arc::clone(&candidate.permits).try_acquire_owned() else {
        return ShadowOutcome::Dropped;
    };
    let (parts, ()) = p.request.into_parts();
    let req = Request::from_parts(parts, Full::new(body));
    let inv = Invocation {
        function: Arc::clone(&candidate.function),
        request_id: Arc::from(format!("{}-shadow", p.request_id)),
        // Outside the tenant's quotas, and off the serving threads' CPU shares.
        inferences: None,
        tenant: None,
        hops: 0,
    };
    let started = Instant::now();
    let answered = runtime.invoke(inv, req, |_| {}).await;
    candidate.stats.observe(started.elapsed());
    let (status, body) = match answered {
        Ok(response) => {
            let status = response.status();
            let limit = usize::try_from(p.shadow.max_body).unwrap_or(usize::MAX);
            // The guest's own deadline ends its body; this bounds the wait regardless.
            let patience = Duration::from_millis(candidate.function.limits.timeout_ms)
                + Duration::from_secs(1);
            let collected = tokio::time::timeout(
                patience,
                Limited::new(response.into_body(), limit).collect(),
            )
            .await;
            match collected {
                Ok(Ok(c)) => (status, Some(c.to_bytes())),
                // Over the cap, or the stream failed: compared on its status.
                _ => (status, None),
            }
        }
        Err(e) => (
            ApiError::from_invoke(&candidate.function.name, e).status,
            None,
        ),
    };
    candidate.stats.record(status.as_u16());
    let same = status == stable_status
        && match (&stable_body, &body) {
            (Some(a), Some(b)) => same_answer(a, b, p.shadow.tolerance),
            (None, None) => true,
            _ => false,
        };
    candidate.stats.compared(same);
    if same {
        ShadowOutcome::Match
    } else {
        ShadowOutcome::Mismatch
    }
}
