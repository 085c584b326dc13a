//! This node's handle on the fleet: what the admin API asks of it (the fleet view, waiting for
//! every node to apply a change) and what the node reports about itself.

use std::sync::Arc;
use std::time::Duration;

use super::{engine, status};

/// This node's handle on the fleet: the engine connection, its sync state and its data
/// directory. Shared by the syncer, the admin API and `/metrics`.
pub struct Fleet {
    /// The engine.
    pub engine: Arc<engine::Engine>,
    /// This node's sync state.
    pub state: Arc<status::NodeState>,
    /// This node's data directory.
    pub local: Arc<crate::store::DataDir>,
    /// The fleet's registry.
    pub registry: Arc<super::blobs::OciRegistry>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Fleet {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.engine.node_id()
    }

    /// This node's report now.
    pub fn report(&self) -> status::NodeReport {
        self.state.report(self.node_id(), self.local.blob_bytes())
    }

    /// Writes this node's report to the engine.
    pub async fn send_report(&self) -> Result<(), engine::Unavailable> {
        let report = self.report();
        self.engine.report(&report).await
    }

    /// The fleet as this node sees it: from the engine when it can reach it, else only itself.
    pub async fn view(&self) -> status::FleetView {
        let now = now_ms();
        let from_engine = async {
            let revision = self.engine.latest().await?.map_or(0, |(_, r)| r);
            let reports = self.engine.reports().await?;
            Ok::<_, engine::Unavailable>((revision, reports))
        };
        match from_engine.await {
            Ok((revision, reports)) => {
                let mut nodes: Vec<_> = reports
                    .into_iter()
                    .map(|r| status::NodeView::of(r, Some(revision), now))
                    .collect();
                nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
                status::FleetView {
                    node_id: self.node_id().to_string(),
                    engine_connected: true,
                    engine_revision: Some(revision),
                    nodes,
                }
            }
            Err(_) => {
                let mut me = status::NodeView::of(self.report(), None, now);
                me.engine_connected = false;
                status::FleetView {
                    node_id: self.node_id().to_string(),
                    engine_connected: false,
                    engine_revision: None,
                    nodes: vec![me],
                }
            }
        }
    }

    /// The other live nodes' rollout numbers, and whether this node decides: the lowest id among
    /// the nodes that reported in the last few seconds (a lease that passes on by itself when
    /// its holder stops reporting). Cut off from the engine, a node decides on its own numbers;
    /// its decisions cannot be committed until the engine is back anyway.
    pub async fn peers(&self) -> crate::rollout::Peers {
        let Ok(reports) = self.engine.reports().await else {
            return crate::rollout::Peers {
                leader: true,
                totals: Vec::new(),
            };
        };
        let now = now_ms();
        let others: Vec<status::NodeReport> = reports
            .into_iter()
            .filter(|r| r.node_id != self.node_id())
            .filter(|r| {
                now.saturating_sub(r.reported_at_ms) < engine::LIVE_WINDOW.as_millis() as u64
            })
            .collect();
        crate::rollout::Peers {
            leader: others.iter().all(|r| r.node_id.as_str() > self.node_id()),
            totals: others.into_iter().map(|r| r.rollouts).collect(),
        }
    }

    /// Waits until every live node serves `revision` or later; otherwise says which lag.
    pub async fn wait(
        &self,
        revision: crate::desired::Revision,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = now_ms();
            let lagging: Vec<status::NodeView> = match self.engine.reports().await {
                Ok(reports) => reports
                    .into_iter()
                    .map(|r| status::NodeView::of(r, Some(revision), now))
                    .filter(|n| n.engine_connected && n.applied_revision < revision)
                    .collect(),
                Err(e) => {
                    return Err(format!(
                        "cannot read the nodes' reports to wait for them ({e})"
                    ));
                }
            };
            if lagging.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let list: Vec<String> = lagging
                    .iter()
                    .map(|n| {
                        let why = n
                            .lag_reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default();
                        format!("{} (at revision {}{why})", n.node_id, n.applied_revision)
                    })
                    .collect();
                return Err(format!(
                    "the change is committed (revision {revision}), but after {timeout:?} these nodes \
                     do not serve it yet: {}",
                    list.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
