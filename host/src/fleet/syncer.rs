//! The syncer: mirrors the engine's desired state into this node (design §3.3). It watches the
//! document (the watch delivers the current one first, then each change), and for each newer
//! revision checks the record, fetches missing blobs by digest, compiles and loads, swaps the
//! node over and saves the state to disk, in that order: a node never serves a version it could
//! not verify, never goes backwards, and a failure leaves it on what it served before, reporting
//! why and retrying with backoff.
//!
//! The watch is reopened on every reconnection and whenever an anti-entropy check finds the
//! engine ahead with nothing arriving (ordered consumers do not always resume by themselves
//! after an engine restart, nats.rs#1596).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::Fleet;
use super::record;
use crate::config::Config;
use crate::desired::Revision;
use crate::registry::Registry;

/// How often a node reports to the engine.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often the node checks that the registry answers.
const PROBE_REGISTRY_EVERY: Duration = Duration::from_secs(5);
/// How often the node checks that it is not silently behind.
const ANTI_ENTROPY_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between retries of a failed apply or watch.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts the syncer and the reporter on the current runtime.
pub fn start(fleet: Arc<Fleet>, registry: Arc<Registry>, config: Arc<Config>) {
    tokio::spawn(report_loop(Arc::clone(&fleet)));
    tokio::spawn(sync_loop(fleet, registry, config));
}

async fn report_loop(fleet: Arc<Fleet>) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut connections = fleet.engine.connections();
    let mut probe = tokio::time::interval(PROBE_REGISTRY_EVERY);
    loop {
        // Every second, and at once on each (re)connection: a node joins the fleet's view (and
        // `--wait`) as soon as it reaches the engine.
        tokio::select! {
            _ = tick.tick() => {}
            _ = connections.changed() => {}
            _ = probe.tick() => {
                // Pushes and pulls tell too, but a node with nothing to fetch would otherwise
                // report an outage long after it ended.
                let up = fleet.registry.reachable().await;
                fleet.state.registry_ok.store(up, Ordering::Relaxed);
                continue;
            }
        }
        let connected = fleet.engine.connected();
        fleet
            .state
            .engine_connected
            .store(connected, Ordering::Relaxed);
        if connected && let Err(e) = fleet.send_report().await {
            tracing::debug!("fleet: cannot report: {e}");
        }
    }
}

/// A revision waiting to be applied (it failed once, or is being applied now).
struct Pending {
    bytes: Bytes,
    revision: Revision,
    attempts: u32,
    retry_at: Instant,
}

fn backoff(attempts: u32) -> Duration {
    (Duration::from_millis(500) * 2u32.saturating_pow(attempts.min(5))).min(MAX_BACKOFF)
}

async fn sync_loop(fleet: Arc<Fleet>, registry: Arc<Registry>, config: Arc<Config>) {
    fleet
        .state
        .applied
        .store(registry.applied().await, Ordering::Relaxed);
    let mut connections = fleet.engine.connections();
    let mut failures = 0;
    loop {
        connections.borrow_and_update();
        let watch = match fleet.engine.watch().await {
            Ok(w) => {
                failures = 0;
                // An empty engine and a node that ran alone: its state becomes the fleet's.
                if let Ok(None) = fleet.engine.latest().await {
                    match registry.seed().await {
                        Ok(_) => {}
                        Err(e) => tracing::warn!("fleet: cannot seed the empty engine: {e}"),
                    }
                }
                w
            }
            Err(e) => {
                tracing::debug!("fleet: cannot watch the engine: {e}");
                failures += 1;
                // A reconnection is worth an immediate try; otherwise back off.
                let _ = tokio::time::timeout(
                    backoff(failures).min(Duration::from_secs(2)),
                    connections.changed(),
                )
                .await;
                continue;
            }
        };
        follow(&fleet, &registry, &config, watch, &mut connections).await;
    }
}

/// Applies what the watch delivers until it ends or must be reopened.
async fn follow(
    fleet: &Fleet,
    registry: &Registry,
    config: &Config,
    mut watch: async_nats::jetstream::kv::Watch,
    connections: &mut tokio::sync::watch::Receiver<u64>,
) {
    let mut pending: Option<Pending> = None;
    let mut anti_entropy = tokio::time::interval(ANTI_ENTROPY_EVERY);
    anti_entropy.tick().await;
    loop {
        let retry_at = pending.as_ref().map(|p| p.retry_at);
        tokio::select! {
            entry = watch.next() => match entry {
                Some(Ok(entry)) => {
                    fleet.state.seen.fetch_max(entry.revision, Ordering::Relaxed);
                    if entry.operation != async_nats::jetstream::kv::Operation::Put {
                        fleet.state.set_reason(Some(format!(
                            "revision {}: the desired state was deleted from the engine; keeping the last one",
                            entry.revision
                        )));
                        continue;
                    }
                    pending = Some(Pending {
                        bytes: entry.value,
                        revision: entry.revision,
                        attempts: 0,
                        retry_at: Instant::now(),
                    });
                    apply(fleet, registry, config, &mut pending).await;
                }
                Some(Err(e)) => {
                    tracing::warn!("fleet: the watch failed ({e}); reopening it");
                    return;
                }
                None => return,
            },
            _ = connections.changed() => return,
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                apply(fleet, registry, config, &mut pending).await;
            }
            _ = anti_entropy.tick() => {
                if let Ok(Some((_, revision))) = fleet.engine.latest().await {
                    fleet.state.seen.fetch_max(revision, Ordering::Relaxed);
                    let applied = fleet.state.applied.load(Ordering::Relaxed);
                    if revision > applied && pending.is_none() {
                        tracing::warn!("fleet: the engine is at revision {revision} but nothing arrived; reopening the watch");
                        return;
                    }
                }
            }
        }
    }
}

/// Tries the pending revision once; on failure schedules the next try.
async fn apply(fleet: &Fleet, registry: &Registry, config: &Config, pending: &mut Option<Pending>) {
    let Some(p) = pending.as_mut() else {
        return;
    };
    let revision = p.revision;
    let outcome = match record::decode(&p.bytes, config) {
        // A bad record never gets better: wait for the next one (or write over it).
        Err(refusal) => {
            registry.refuse(revision);
            Err((format!("revision {revision}: {refusal}"), false))
        }
        Ok(meta) => registry
            .apply(meta, revision)
            .await
            .map_err(|e| (format!("revision {revision}: {e}"), true)),
    };
    match outcome {
        Ok(applied) => {
            if applied {
                tracing::info!(revision, "fleet: applied");
            }
            fleet
                .state
                .applied
                .fetch_max(registry.applied().await, Ordering::Relaxed);
            fleet.state.set_reason(None);
            *pending = None;
        }
        Err((reason, retry)) => {
            fleet.state.set_reason(Some(reason));
            if retry {
                p.attempts += 1;
                p.retry_at = Instant::now() + backoff(p.attempts);
            } else {
                *pending = None;
            }
        }
    }
    if let Err(e) = fleet.send_report().await {
        tracing::debug!("fleet: cannot report: {e}");
    }
}
