//! OpenTelemetry traces of function requests, exported over OTLP/HTTP (`otlp_endpoint`).
//!
//! Each request to `/fn/...` gets a SERVER span ([`RequestSpan`]), begun by the dispatch before
//! anything else and ended when its response body is done; the steps of the request are its
//! INTERNAL children: `instantiate` and `guest` (the runtime), and per wasi:nn compute a
//! `wasi-nn compute` span with `wasi-nn queue` (waiting for a free session) and `wasi-nn
//! inference` under it. The request's [`TraceCtx`] travels to the runtime in the request's
//! extensions and from there in the request's wasi:nn state, as the request id does.
//!
//! A `traceparent` (W3C Trace Context) on the request makes the request span a child of the
//! caller's, in the caller's trace, and the caller's `sampled` flag decides whether it is
//! recorded; an invalid one is ignored (a new trace). Either way the guest's request carries a
//! `traceparent` naming the request span, so a guest calling further can continue the trace.
//!
//! Without `otlp_endpoint` there is no [`Tracer`], and tracing costs a request one branch.
//! With one, spans are finished on the request path and handed to [`export`], which never
//! makes a request wait.

mod context;
mod export;
mod otlp;

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

pub use context::{SpanId, TraceId, TraceParent};
use context::{new_span_id, new_trace_id};
use export::Exporter;
pub use otlp::{Attribute, Kind, Span, Value};

/// The threshold of [`Tracer::samples`] for `ratio` (0 to 1).
fn sample_below(ratio: f64) -> Option<u64> {
    (ratio < 1.0).then(|| (ratio.max(0.0) * 18_446_744_073_709_551_616.0) as u64)
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` recorded on spans (the specification's limit for propagating it).
const MAX_TRACESTATE: usize = 512;

/// The node's tracer: where finished spans go. Exists only with `otlp_endpoint`.
pub struct Tracer {
    exporter: Arc<Exporter>,
    /// A new trace is sampled when the low 64 bits of its id are below this (`sample_ratio`
    /// of the range, as OpenTelemetry's trace-id-ratio sampler); `None`: every one is.
    sample_below: Option<u64>,
}

impl Tracer {
    /// Starts exporting to the OTLP/HTTP collector at `endpoint` (`http://HOST:4318`; spans go to
    /// `{endpoint}/v1/traces`), on the current runtime. `instance` names this node
    /// (`service.instance.id`).
    pub fn start(endpoint: &str, instance: &str, sample_ratio: f64) -> anyhow::Result<Self> {
        let resource = vec![
            ("service.name", Value::from("tensorlet")),
            ("service.version", Value::from(env!("CARGO_PKG_VERSION"))),
            ("service.instance.id", Value::from(instance)),
        ];
        let exporter = Exporter::start(traces_url(endpoint), resource)?;
        Ok(Self {
            exporter: Arc::new(exporter),
            sample_below: sample_below(sample_ratio),
        })
    }

    /// Whether a new trace (one without a caller) is recorded.
    fn samples(&self, trace_id: &TraceId) -> bool {
        let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or([0; 8]));
        self.sample_below.is_none_or(|below| low < below)
    }

    /// Begins the span of a function request: continues the trace of its `traceparent` (if valid)
    /// or starts one, and replaces the header with one naming the request span, which is what
    /// the guest sees. A `tracestate` is passed through with a valid `traceparent` and dropped
    /// without one, as the specification asks. `None` when the caller does not sample the trace:
    /// nothing is then recorded, but the guest still gets the trace.
    pub fn begin<B>(&self, req: &mut Request<B>, request_id: &str) -> Option<RequestSpan> {
        let headers = req.headers_mut();
        // Two `traceparent` headers are as invalid as a malformed one.
        let incoming = single(headers, TRACEPARENT).and_then(TraceParent::parse);
        let span_id = new_span_id();
        let ours = match &incoming {
            Some(p) => TraceParent {
                parent_id: span_id,
                ..*p
            },
            None => {
                // A caller's trace is sampled as the caller says; a new one by the ratio.
                let trace_id = new_trace_id();
                TraceParent {
                    trace_id,
                    parent_id: span_id,
                    flags: if self.samples(&trace_id) {
                        context::SAMPLED
                    } else {
                        0
                    },
                }
            }
        };
        let trace_state = match incoming {
            Some(_) => trace_state(headers),
            None => {
                headers.remove(TRACESTATE);
                None
            }
        };
        if let Ok(v) = HeaderValue::from_str(&ours.header()) {
            headers.insert(TRACEPARENT, v);
        }
        if !ours.sampled() {
            return None;
        }
        let method = req.method().as_str().to_string();
        let attributes = vec![
            ("http.request.method", Value::from(method.as_str())),
            ("url.path", Value::from(req.uri().path())),
            ("tensorlet.request_id", Value::from(request_id)),
        ];
        let ctx = TraceCtx(Arc::new(Shared {
            exporter: Arc::clone(&self.exporter),
            trace_id: ours.trace_id,
            span_id,
            flags: ours.flags,
            trace_state,
            anchor: Anchor::now(),
        }));
        req.extensions_mut().insert(ctx.clone());
        Some(RequestSpan {
            start: ctx.0.anchor.instant,
            ctx,
            parent: incoming.map(|p| p.parent_id),
            name: format!("{method} /fn"),
            attributes,
            error: None,
        })
    }

    /// Sends what is queued, waiting at most `limit` (at shutdown).
    pub async fn flush(&self, limit: Duration) {
        self.exporter.flush(limit).await;
    }

    /// The exporter's counters, in Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let counts = self.exporter.counts();
        let series = [
            (
                "tensorlet_trace_spans_exported_total",
                "Spans the OTLP collector accepted.",
                &counts.exported,
            ),
            (
                "tensorlet_trace_spans_dropped_total",
                "Spans dropped because the export queue was full.",
                &counts.dropped,
            ),
            (
                "tensorlet_trace_spans_failed_total",
                "Spans dropped because the OTLP collector did not take them.",
                &counts.failed,
            ),
        ];
        for (name, help, value) in series {
            let value = value.load(Ordering::Relaxed);
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        }
    }
}

/// `{endpoint}/v1/traces`, unless the endpoint already names that path.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The value of a header that appears exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v.as_bytes()),
        _ => None,
    }
}

/// The `tracestate` to record: its headers joined, if they are text and not too long.
fn trace_state(headers: &HeaderMap) -> Option<Arc<str>> {
    let parts: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    let joined = parts.join(",");
    (!joined.is_empty() && joined.len() <= MAX_TRACESTATE).then(|| Arc::from(joined))
}

/// Wall-clock time of an `Instant`: spans are timed with the monotonic clock and placed on the
/// wall clock once per request, so a clock step never gives a span a negative duration.
struct Anchor {
    instant: Instant,
    unix_nanos: u64,
}

impl Anchor {
    fn now() -> Self {
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            instant: Instant::now(),
            unix_nanos,
        }
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.unix_nanos.saturating_add(after.as_nanos() as u64),
            None => {
                let before = self.instant.duration_since(at).as_nanos() as u64;
                self.unix_nanos.saturating_sub(before)
            }
        }
    }
}

/// What one traced request shares with its steps.
struct Shared {
    exporter: Arc<Exporter>,
    trace_id: TraceId,
    /// The request span: the parent of the steps.
    span_id: SpanId,
    flags: u8,
    trace_state: Option<Arc<str>>,
    anchor: Anchor,
}

/// A traced request's context: the trace, the request span, and where spans go. Cheap to clone;
/// present only while the request is recorded.
#[derive(Clone)]
pub struct TraceCtx(Arc<Shared>);

impl TraceCtx {
    /// A step of the request, begun at `start`: an INTERNAL child of the request span.
    pub fn child(&self, name: &'static str, start: Instant) -> Child {
        Child {
            ctx: self.clone(),
            id: new_span_id(),
            parent: self.0.span_id,
            name,
            start,
            attributes: Vec::new(),
            error: None,
        }
    }

    /// The request span's id.
    pub fn span_id(&self) -> SpanId {
        self.0.span_id
    }

    fn record(&self, span: Span) {
        self.0.exporter.push(span);
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        id: SpanId,
        parent: Option<SpanId>,
        remote_parent: bool,
        name: Cow<'static, str>,
        kind: Kind,
        start: Instant,
        end: Instant,
        attributes: Vec<Attribute>,
        error: Option<String>,
    ) -> Span {
        let shared = &self.0;
        let start = shared.anchor.unix_nanos(start);
        Span {
            trace_id: shared.trace_id,
            span_id: id,
            parent_id: parent,
            remote_parent,
            trace_state: shared.trace_state.clone(),
            flags: shared.flags,
            name,
            kind,
            start,
            end: shared.anchor.unix_nanos(end).max(start),
            attributes,
            error,
        }
    }
}

/// An INTERNAL span being timed; recorded by [`Child::end`].
pub struct Child {
    ctx: TraceCtx,
    id: SpanId,
    parent: SpanId,
    name: &'static str,
    start: Instant,
    attributes: Vec<Attribute>,
    error: Option<String>,
}

impl Child {
    /// Adds an attribute.
    pub fn attr(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }

    /// Marks the span failed (status ERROR) with `message`.
    pub fn fail(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
    }

    /// A step of this step, begun at `start`.
    pub fn child(&self, name: &'static str, start: Instant) -> Child {
        Child {
            parent: self.id,
            ..self.ctx.child(name, start)
        }
    }

    /// Ends the span at `at` and hands it to the exporter.
    pub fn end(self, at: Instant) {
        let span = self.ctx.span(
            self.id,
            Some(self.parent),
            false,
            Cow::Borrowed(self.name),
            Kind::Internal,
            self.start,
            at,
            self.attributes,
            self.error,
        );
        self.ctx.record(span);
    }
}

/// The SERVER span of a function request. Recorded when dropped, which [`RequestSpan::attach`]
/// puts off until the response body is done.
pub struct RequestSpan {
    ctx: TraceCtx,
    /// The caller's span, from its `traceparent`.
    parent: Option<SpanId>,
    start: Instant,
    name: String,
    attributes: Vec<Attribute>,
    error: Option<String>,
}

impl RequestSpan {
    /// The function the request reached: names the span `{METHOD} /fn/{name}` (with the tenant
    /// first on a node with tenants).
    pub fn function(&mut self, name: &str, version: &str, tenant: Option<&str>) {
        let method = self.name.split(' ').next().unwrap_or_default();
        self.name = match tenant {
            Some(t) => format!("{method} /fn/{t}/{name}"),
            None => format!("{method} /fn/{name}"),
        };
        self.attributes
            .push(("tensorlet.function", Value::from(name)));
        self.attributes
            .push(("tensorlet.version", Value::from(version)));
        if let Some(t) = tenant {
            self.attributes.push(("tensorlet.tenant", Value::from(t)));
        }
    }

    /// The answer's status; a 5xx fails the span, with `error` as its message if there is one
    /// (a 4xx is the client's and leaves the span's status unset, as HTTP server spans do).
    pub fn status(&mut self, status: StatusCode, error: Option<&str>) {
        self.attributes.push((
            "http.response.status_code",
            Value::Int(i64::from(status.as_u16())),
        ));
        if status.is_server_error() {
            let message = error.map_or_else(|| status.to_string(), str::to_string);
            self.error = Some(message);
        }
    }

    /// Keeps the span open until `body` has been sent (or dropped).
    pub fn attach<B>(self, body: B) -> Spanned<B> {
        Spanned { body, _span: self }
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        let span = self.ctx.span(
            self.ctx.0.span_id,
            self.parent,
            self.parent.is_some(),
            Cow::Owned(std::mem::take(&mut self.name)),
            Kind::Server,
            self.start,
            Instant::now(),
            std::mem::take(&mut self.attributes),
            self.error.take(),
        );
        self.ctx.record(span);
    }
}

/// A response body that ends its request span when it is dropped: once sent, or when the client
/// went away.
pub struct Spanned<B> {
    body: B,
    _span: RequestSpan,
}

impl<B: Body + Unpin> Body for Spanned<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
