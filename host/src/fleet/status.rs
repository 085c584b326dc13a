//! What nodes tell each other and the operator: each node's report (written to the engine's
//! node bucket every second and after every change it applies), the fleet view of
//! `GET /admin/v1/fleet` and `tensorlet fleet status`, and this node's `/metrics` series.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::desired::Revision;

/// One node's report, as stored in the engine's node bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's id.
    pub node_id: String,
    /// The desired-state revision it serves.
    pub applied_revision: Revision,
    /// Whether its last blob push or pull reached the registry.
    pub registry_reachable: bool,
    /// Why it is behind, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_reason: Option<String>,
    /// Bytes of blobs in its data directory.
    pub blob_cache_bytes: u64,
    /// What it served of the versions in running rollouts (the analysis adds every node's up).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rollouts: crate::rollout::RolloutTotals,
    /// When it wrote this (RFC 3339).
    pub reported_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub reported_at_ms: u64,
}

/// `GET /admin/v1/fleet`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// The node that answered.
    pub node_id: String,
    /// Whether that node reaches the engine now.
    pub engine_connected: bool,
    /// The engine's revision; `null` when the answering node cannot reach it.
    pub engine_revision: Option<Revision>,
    /// Every node that reported in the last ten minutes (only this node when the engine is
    /// unreachable), by id.
    pub nodes: Vec<NodeView>,
}

/// One node in [`FleetView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's id.
    pub node_id: String,
    /// The revision it serves.
    pub applied_revision: Revision,
    /// Revisions it is behind the engine.
    pub lag: u64,
    /// When it last reported (RFC 3339).
    pub last_contact: String,
    /// Seconds since then.
    pub seconds_since_contact: f64,
    /// Whether it reported within the last few seconds (it reaches the engine).
    pub engine_connected: bool,
    /// Whether its last registry access worked.
    pub registry_reachable: bool,
    /// Bytes of blobs it keeps.
    pub blob_cache_bytes: u64,
    /// Why it is behind, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_reason: Option<String>,
}

impl NodeView {
    /// The view of `report` at `now_ms`, against the engine at `engine`.
    pub fn of(report: NodeReport, engine: Option<Revision>, now_ms: u64) -> Self {
        let age_ms = now_ms.saturating_sub(report.reported_at_ms);
        let live = age_ms < super::engine::LIVE_WINDOW.as_millis() as u64;
        Self {
            lag: engine.map_or(0, |e| e.saturating_sub(report.applied_revision)),
            node_id: report.node_id,
            applied_revision: report.applied_revision,
            last_contact: report.reported_at,
            seconds_since_contact: age_ms as f64 / 1000.0,
            engine_connected: live,
            registry_reachable: report.registry_reachable,
            blob_cache_bytes: report.blob_cache_bytes,
            lag_reason: report.lag_reason,
        }
    }
}

/// This node's sync state: written by the syncer and the blob store, read by reports, the
/// service and `/metrics`.
pub struct NodeState {
    /// The revision this node serves.
    pub applied: AtomicU64,
    /// The newest revision it has seen in the engine.
    pub seen: AtomicU64,
    /// Whether its last registry access worked.
    pub registry_ok: AtomicBool,
    /// Whether it reaches the engine.
    pub engine_connected: AtomicBool,
    /// Why it is behind, when it is.
    pub lag_reason: Mutex<Option<String>>,
    /// Blobs pulled from the registry.
    pub blob_fetches: AtomicU64,
    /// Bytes pulled from the registry.
    pub blob_bytes: AtomicU64,
    /// Failed pulls (unreachable, missing, corrupt, too large).
    pub blob_failures: AtomicU64,
    /// What this node served of the versions in running rollouts, as of the last analysis.
    pub rollouts: Mutex<crate::rollout::RolloutTotals>,
}

impl Default for NodeState {
    fn default() -> Self {
        Self {
            applied: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            registry_ok: AtomicBool::new(true),
            engine_connected: AtomicBool::new(false),
            lag_reason: Mutex::new(None),
            blob_fetches: AtomicU64::new(0),
            blob_bytes: AtomicU64::new(0),
            blob_failures: AtomicU64::new(0),
            rollouts: Mutex::default(),
        }
    }
}

impl NodeState {
    /// Sets (or clears) the reason this node is behind.
    pub fn set_reason(&self, reason: Option<String>) {
        if let Some(r) = &reason {
            let mut last = self.lag_reason.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref() != Some(r) {
                tracing::warn!("fleet: behind the engine: {r}");
            }
            *last = reason;
        } else {
            *self.lag_reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Revisions behind the newest one seen.
    pub fn lag(&self) -> u64 {
        self.seen
            .load(Ordering::Relaxed)
            .saturating_sub(self.applied.load(Ordering::Relaxed))
    }

    /// This node's report now.
    pub fn report(&self, node_id: &str, blob_cache_bytes: u64) -> NodeReport {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        NodeReport {
            node_id: node_id.to_string(),
            applied_revision: self.applied.load(Ordering::Relaxed),
            registry_reachable: self.registry_ok.load(Ordering::Relaxed),
            lag_reason: self
                .lag_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            blob_cache_bytes,
            rollouts: self
                .rollouts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            reported_at: crate::time::now_rfc3339(),
            reported_at_ms: now,
        }
    }

    /// The fleet series of `/metrics`.
    pub fn render(&self, out: &mut String) {
        let series: [(&str, &str, &str, u64); 6] = [
            (
                "tensorlet_fleet_applied_revision",
                "gauge",
                "The desired-state revision this node serves.",
                self.applied.load(Ordering::Relaxed),
            ),
            (
                "tensorlet_fleet_lag",
                "gauge",
                "Revisions this node is behind the newest it has seen in the engine.",
                self.lag(),
            ),
            (
                "tensorlet_fleet_engine_connected",
                "gauge",
                "1 when this node reaches the NATS engine.",
                self.engine_connected.load(Ordering::Relaxed) as u64,
            ),
            (
                "tensorlet_fleet_blob_fetches_total",
                "counter",
                "Blobs pulled from the OCI registry.",
                self.blob_fetches.load(Ordering::Relaxed),
            ),
            (
                "tensorlet_fleet_blob_fetch_bytes_total",
                "counter",
                "Bytes pulled from the OCI registry.",
                self.blob_bytes.load(Ordering::Relaxed),
            ),
            (
                "tensorlet_fleet_blob_fetch_failures_total",
                "counter",
                "Blob pulls that failed (registry unreachable, blob missing, corrupt or too large).",
                self.blob_failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}
