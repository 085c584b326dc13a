//! The web dashboard at `/ui`: static assets embedded in the binary (no build step, no
//! third-party JavaScript), and the one read it is drawn from, `GET /admin/v1/dashboard`
//! ([`Overview`]). The page holds no data of its own: it calls the admin API with the token its
//! user gives it, so it shows what that token may see (a tenant its own functions, the operator
//! everything) and its buttons are ordinary admin calls, audited like any other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::anomaly::Anomaly;
use crate::rollout::{RolloutView, Totals};

/// `GET /admin/v1/dashboard`: everything the page draws, at one moment. Counters are totals
/// since the node started; the page turns consecutive reads into rates and windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    /// When it was read (RFC 3339).
    pub time: String,
    /// Upper bounds of the latency buckets, in milliseconds.
    pub buckets_ms: Vec<f64>,
    /// The caller's functions.
    pub functions: Vec<FunctionOverview>,
    /// The models the caller may use (its own, and the operator's shared ones).
    pub models: Vec<ModelOverview>,
    /// Active anomalies the caller may see.
    pub anomalies: Vec<Anomaly>,
}

/// One function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionOverview {
    /// Its name.
    pub name: String,
    /// The live version's id.
    pub live: String,
    /// Its versions, newest first.
    pub versions: Vec<VersionOverview>,
    /// Aliases (not `live`) to version ids.
    pub aliases: BTreeMap<String, String>,
    /// Its rollout, running or last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
}

/// One version of a function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionOverview {
    /// Its id.
    pub version: String,
    /// When it was deployed.
    pub created_at: String,
    /// Whether it is live.
    pub live: bool,
    /// The models it runs with (`name@VERSION` or `name@live`).
    pub models: Vec<String>,
    /// What it has served on this node (absent: not loaded here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
}

/// One model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelOverview {
    /// Its name (`tenant/name` for a tenant's own, on the operator's view).
    pub name: String,
    /// Successful inferences.
    pub inferences: u64,
    /// Failed computes.
    pub errors: u64,
    /// Inference time, per latency bucket.
    pub inference_buckets: Vec<u64>,
    /// Time waiting for a session (the queue), per latency bucket.
    pub queue_buckets: Vec<u64>,
}

/// An embedded asset of the page: its bytes and content type.
pub fn asset(path: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match path {
        "" | "/" | "/index.html" => (
            include_bytes!("assets/index.html"),
            "text/html; charset=utf-8",
        ),
        "/app.js" => (
            include_bytes!("assets/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "/style.css" => (
            include_bytes!("assets/style.css"),
            "text/css; charset=utf-8",
        ),
        _ => return None,
    })
}
