//! The node's background passes: the rollout analysis (every 250 ms) and the anomaly detector
//! (every `[anomalies] interval`). Both only read what the request path counts; what they decide
//! goes to the audit log (as `rollout` and `anomaly`), and anomalies also to the alert webhook.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeArgs;
use crate::anomaly::AnomalyList;
use crate::anomaly::webhook::Webhook;
use crate::audit::Audit;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::rollout::Peers;

/// Judges rollouts every 250 ms: a crossed threshold rolls back at once. In a fleet, each node
/// publishes its numbers in its report and one node decides.
pub(super) fn rollouts(registry: Arc<Registry>, fleet: Option<Arc<Fleet>>, audit: Audit) {
    tokio::spawn(async move {
        let mut baselines = crate::registry::Baselines::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let mut peers = Peers {
                leader: true,
                totals: Vec::new(),
            };
            if let Some(f) = &fleet {
                let mine = registry.rollout_totals().await;
                let running = !mine.is_empty();
                *f.state.rollouts.lock().unwrap_or_else(|e| e.into_inner()) = mine;
                if running {
                    peers = f.peers().await;
                }
            }
            for (function, decision, reason) in
                registry.analyze_rollouts(&mut baselines, &peers).await
            {
                let what = format!("{decision} {function}: {reason}");
                audit.record("rollout", "rollout", &what, 200).await;
            }
        }
    });
}

/// Runs the anomaly detector every interval; each anomaly raised or cleared is logged, audited
/// and sent to the webhook, if there is one.
pub(super) fn anomalies(
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    audit: Audit,
    webhook: Option<&str>,
) -> anyhow::Result<()> {
    if !metrics.anomalies.config().enabled {
        return Ok(());
    }
    let webhook = webhook
        .map(|url| Webhook::start(url.to_string()))
        .transpose()?;
    let interval = metrics.anomalies.config().interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let observed = registry.observed();
            let events = (metrics.anomalies).evaluate(Instant::now(), observed, &metrics.outputs);
            for e in events {
                let a = &e.anomaly;
                let subject = a.function.as_deref().or(a.model.as_deref()).unwrap_or("");
                tracing::warn!(
                    event = %e.event,
                    kind = a.kind.label(),
                    subject,
                    version = %a.version,
                    score = a.score,
                    "anomaly {}: {}",
                    e.event,
                    a.message
                );
                let what = format!(
                    "{} {} {subject}@{}: {}",
                    e.event,
                    a.kind.label(),
                    a.version,
                    a.message
                );
                audit.record("anomaly", "anomaly", &what, 200).await;
                if let Some(w) = &webhook {
                    w.send(e);
                }
            }
        }
    });
    Ok(())
}

/// `tensorlet anomalies`: what is raised now, then the latest changes.
pub(super) async fn show_anomalies(node: NodeArgs) -> anyhow::Result<()> {
    let list: AnomalyList = node.client()?.send(http::Method::GET, "anomalies").await?;
    node.show(&list, |list| {
        let subject = |a: &crate::anomaly::Anomaly| match (&a.function, &a.model) {
            (Some(f), _) => format!("function {f}@{}", a.version),
            (None, Some(m)) => format!("model {m}@{}", a.version),
            (None, None) => a.version.clone(),
        };
        if list.active.is_empty() {
            println!("no anomalies");
        } else {
            println!(
                "{:<14} {:<36} {:>9}  {:<22} MESSAGE",
                "KIND", "SUBJECT", "SCORE", "SINCE"
            );
        }
        for a in &list.active {
            println!(
                "{:<14} {:<36} {:>9.3}  {:<22} {}",
                a.kind.label(),
                subject(a),
                a.score,
                a.since,
                a.message
            );
        }
        if !list.events.is_empty() {
            println!("\nlatest changes:");
        }
        for e in &list.events {
            let a = &e.anomaly;
            println!(
                "{}  {:<8} {:<14} {}",
                e.time,
                e.event,
                a.kind.label(),
                subject(a)
            );
        }
    })
}
