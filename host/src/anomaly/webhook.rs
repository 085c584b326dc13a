//! `alert_webhook`: one JSON POST per anomaly raised or cleared, in order, from a task of its
//! own. A delivery that fails (a network error or a non-2xx answer) is retried with exponential
//! backoff; events wait in a bounded queue, and when the receiver is down for long the oldest are
//! dropped (and counted) rather than held without limit. Nothing here ever waits on a request or
//! makes one wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Event;

/// Events waiting for delivery at most.
const QUEUE: usize = 1000;
/// Attempts per event before it is given up (about 30 seconds of backoff).
const ATTEMPTS: u32 = 8;
/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The sending side: cheap to call from the detector.
pub struct Webhook {
    tx: mpsc::Sender<Event>,
    /// Events dropped (queue full) or given up (every attempt failed).
    pub lost: Arc<AtomicU64>,
    /// Events delivered.
    pub delivered: Arc<AtomicU64>,
}

impl Webhook {
    /// Starts delivering to `url` (http or https) on the current runtime.
    pub fn start(url: String) -> anyhow::Result<Self> {
        let parsed: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("alert_webhook `{url}` is not a URL: {e}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme_str(), Some("http" | "https")),
            "alert_webhook must be an http:// or https:// URL"
        );
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(AtomicU64::new(0));
        tokio::spawn(deliver(
            client,
            url,
            rx,
            Arc::clone(&lost),
            Arc::clone(&delivered),
        ));
        Ok(Self {
            tx,
            lost,
            delivered,
        })
    }

    /// Queues an event; never waits.
    pub fn send(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    mut rx: mpsc::Receiver<Event>,
    lost: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
) {
    while let Some(event) = rx.recv().await {
        let Ok(body) = serde_json::to_vec(&event) else {
            continue;
        };
        let mut backoff = FIRST_BACKOFF;
        let mut sent = false;
        for attempt in 1..=ATTEMPTS {
            let answer = client
                .post(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => {
                    sent = true;
                    break;
                }
                Ok(r) => {
                    tracing::warn!(status = %r.status(), attempt, "alert webhook refused an event")
                }
                Err(e) => tracing::warn!(attempt, "alert webhook unreachable: {e}"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        let counter = if sent { &delivered } else { &lost };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
