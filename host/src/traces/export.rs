//! Sending finished spans to the collector. The request path only ever offers a span to a
//! bounded queue ([`Exporter::push`]): when the queue is full the span is dropped and counted,
//! so a slow or absent collector costs requests nothing. A task of its own takes the spans in
//! batches, one every [`INTERVAL`] or as soon as [`BATCH`] are waiting, and POSTs each batch as
//! one OTLP/HTTP protobuf request. A batch the collector does not take (after one retry where
//! OTLP allows one) is dropped, counted and logged: traces are a diagnostic, not a record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::otlp::{self, Attribute, Span};

/// Spans waiting for the exporter at most; more are dropped.
const QUEUE: usize = 8192;
/// Spans per export request at most; a full batch leaves at once.
const BATCH: usize = 512;
/// How long a span waits for a batch to fill at most.
const INTERVAL: Duration = Duration::from_secs(1);
/// Time one export request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per batch (a retry only where OTLP calls the failure retryable).
const ATTEMPTS: u32 = 2;
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// The instrumentation scope of every span.
const SCOPE: &str = "tensorlet";

/// Spans by fate, for `/metrics`.
#[derive(Default)]
pub struct Counts {
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Dropped because the collector did not take them.
    pub failed: AtomicU64,
}

/// The request path's side of the exporter: cheap to offer a span to, never waits.
pub struct Exporter {
    spans: mpsc::Sender<Span>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    counts: Arc<Counts>,
}

impl Exporter {
    /// Starts exporting to `url` (the full `/v1/traces` URL) on the current runtime, as the
    /// resource described by `resource`.
    pub fn start(url: String, resource: Vec<Attribute>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
        let (spans, rx) = mpsc::channel(QUEUE);
        let (flushes, flush_rx) = mpsc::channel(1);
        let counts = Arc::new(Counts::default());
        let task = Task {
            client,
            url,
            resource,
            counts: Arc::clone(&counts),
            healthy: true,
        };
        tokio::spawn(task.run(rx, flush_rx));
        Ok(Self {
            spans,
            flushes,
            counts,
        })
    }

    /// An exporter whose spans arrive on the returned receiver instead of going anywhere.
    #[cfg(test)]
    pub fn detached(capacity: usize) -> (Self, mpsc::Receiver<Span>) {
        let (spans, rx) = mpsc::channel(capacity);
        let (flushes, _) = mpsc::channel(1);
        let counts = Arc::default();
        let exporter = Self {
            spans,
            flushes,
            counts,
        };
        (exporter, rx)
    }

    /// Offers a finished span for export; drops (and counts) it when the queue is full.
    pub fn push(&self, span: Span) {
        if self.spans.try_send(span).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What became of the spans so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Sends what is queued now, waiting at most `limit` (at shutdown: best effort).
    pub async fn flush(&self, limit: Duration) {
        let (done, flushed) = oneshot::channel();
        let asked = tokio::time::timeout(limit, self.flushes.send(done)).await;
        if matches!(asked, Ok(Ok(()))) {
            let _ = tokio::time::timeout(limit, flushed).await;
        }
    }
}

/// The exporting task's state.
struct Task {
    client: reqwest::Client,
    url: String,
    resource: Vec<Attribute>,
    counts: Arc<Counts>,
    /// Whether the last export succeeded: a collector that goes down is logged as a warning
    /// once, not at every batch while it stays down.
    healthy: bool,
}

impl Task {
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<Span>,
        mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            self.send(&mut batch).await;
                        }
                    }
                    None => {
                        // Every sender is gone: the node is stopping.
                        self.send(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => self.send(&mut batch).await,
                Some(done) = flushes.recv() => {
                    while let Ok(span) = spans.try_recv() {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            self.send(&mut batch).await;
                        }
                    }
                    self.send(&mut batch).await;
                    let _ = done.send(());
                }
            }
        }
    }

    /// Exports `batch` (emptying it).
    async fn send(&mut self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let version = env!("CARGO_PKG_VERSION");
        let body = Bytes::from(otlp::export_request(&self.resource, SCOPE, version, batch));
        batch.clear();
        let mut why = String::new();
        for attempt in 1..=ATTEMPTS {
            let answer = self
                .client
                .post(&self.url)
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(body.clone())
                .send()
                .await;
            let retryable = match answer {
                Ok(r) if r.status().is_success() => {
                    self.counts.exported.fetch_add(count, Ordering::Relaxed);
                    if !self.healthy {
                        tracing::info!(endpoint = %self.url, "OTLP collector reachable again");
                    }
                    self.healthy = true;
                    return;
                }
                Ok(r) => {
                    why = format!("the collector answered {}", r.status());
                    // OTLP/HTTP: only these may succeed later; anything else is refused for good.
                    matches!(r.status().as_u16(), 429 | 502 | 503 | 504)
                }
                Err(e) => {
                    why = format!("the collector is unreachable: {e}");
                    true
                }
            };
            if !retryable {
                break;
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
        self.counts.failed.fetch_add(count, Ordering::Relaxed);
        if self.healthy {
            tracing::warn!(
                endpoint = %self.url,
                spans = count,
                "cannot export spans ({why}); they are dropped until the collector takes them again"
            );
        } else {
            tracing::debug!(endpoint = %self.url, spans = count, "cannot export spans ({why})");
        }
        self.healthy = false;
    }
}
