//! `tensorlet rollout ...`: canaries that promote or roll back by themselves.

use clap::{Args, Subcommand};
use http::Method;

use super::{NameArgs, NodeArgs};
use crate::client::{AdminClient, encode};
use crate::rollout::{RolloutRequest, RolloutView};

#[derive(Debug, Subcommand)]
pub(super) enum RolloutCommand {
    /// Start a canary (or a shadow, then a canary) of VERSION (or an alias) against live.
    Start(Box<StartArgs>),
    /// The running (or last) rollout, with every decision and its numbers.
    Status(NameArgs),
    /// Make the candidate live now.
    Promote(NameArgs),
    /// Stop; the stable version keeps all traffic.
    Abort(NameArgs),
}

/// How a rollout proceeds (`rollout start`, and `deploy --canary`).
#[derive(Debug, Clone, Args)]
pub(super) struct RolloutFlags {
    /// The candidate's first share of traffic, in percent (starts a rollout on deploy).
    #[arg(long)]
    pub canary: Option<u8>,
    /// The shares after it, ascending, e.g. 5,25,50,100.
    #[arg(long, value_delimiter = ',')]
    pub steps: Option<Vec<u8>>,
    /// How long each step lasts, e.g. 1m.
    #[arg(long)]
    pub interval: Option<String>,
    /// A header whose value keeps each client on one side.
    #[arg(long)]
    pub sticky_header: Option<String>,
    /// Roll back when the candidate's error rate exceeds stable's by more (percentage points; 5).
    #[arg(long)]
    pub max_error_increase: Option<f64>,
    /// Roll back when the candidate's p99 exceeds stable's by this factor (2).
    #[arg(long)]
    pub max_latency_ratio: Option<f64>,
    /// Requests the candidate must serve in a step before it is judged (20).
    #[arg(long)]
    pub min_requests: Option<u64>,
    /// First copy this share of requests (percent) to the candidate and compare its answers;
    /// promoted once healthy unless --canary/--steps follow (starts a rollout on deploy).
    #[arg(long)]
    pub shadow: Option<u8>,
    /// Roll back when more shadow answers than this differ from stable's (percent; 1).
    #[arg(long)]
    pub max_mismatch: Option<f64>,
    /// JSON numbers within this (relative; absolute below 1) compare equal (0.0001).
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Requests with larger bodies are not copied (1MiB).
    #[arg(long)]
    pub shadow_max_body: Option<String>,
}

impl RolloutFlags {
    fn request(&self, candidate: String) -> RolloutRequest {
        RolloutRequest {
            candidate,
            canary: self.canary,
            steps: self.steps.clone(),
            interval: self.interval.clone(),
            sticky_header: self.sticky_header.clone(),
            max_error_increase: self.max_error_increase,
            max_latency_ratio: self.max_latency_ratio,
            min_requests: self.min_requests,
            max_mismatch: self.max_mismatch,
            shadow: self.shadow,
            shadow_max_body: self.shadow_max_body.clone(),
            tolerance: self.tolerance,
        }
    }

    /// Whether these flags ask for a rollout.
    pub fn starts(&self) -> bool {
        self.canary.is_some() || self.shadow.is_some()
    }
}

#[derive(Debug, Args)]
pub(super) struct StartArgs {
    /// Function name.
    name: String,
    /// The candidate version (id or prefix) or alias.
    version: String,
    #[command(flatten)]
    flags: RolloutFlags,
    #[command(flatten)]
    node: NodeArgs,
}

/// Starts a rollout of `version` of `name`.
pub(super) async fn start(
    client: &AdminClient,
    name: &str,
    version: String,
    flags: &RolloutFlags,
) -> anyhow::Result<RolloutView> {
    let path = format!("functions/{}/rollout", encode(name));
    client
        .send_json(Method::POST, &path, &flags.request(version))
        .await
}

pub(super) async fn rollout(command: RolloutCommand) -> anyhow::Result<()> {
    let (node, view) = match command {
        RolloutCommand::Start(a) => {
            let v = start(&a.node.client()?, &a.name, a.version.clone(), &a.flags).await?;
            (a.node, v)
        }
        RolloutCommand::Status(a) => {
            let path = format!("functions/{}/rollout", encode(&a.name));
            let v = a.node.client()?.send(Method::GET, &path).await?;
            (a.node, v)
        }
        RolloutCommand::Promote(a) => finish(a, "promote").await?,
        RolloutCommand::Abort(a) => finish(a, "abort").await?,
    };
    node.show(&view, print)
}

async fn finish(a: NameArgs, end: &str) -> anyhow::Result<(NodeArgs, RolloutView)> {
    let path = format!("functions/{}/rollout/{end}", encode(&a.name));
    let v = a.node.client()?.send(Method::POST, &path).await?;
    Ok((a.node, v))
}

/// A rollout as text: where it is, then every decision.
pub(super) fn print(v: &RolloutView) {
    let r = &v.rollout;
    let share = match (r.shadowing(), v.percent) {
        (Some(s), _) => format!("shadowing {}% of requests", s.percent),
        (None, p) => format!("at {p}%"),
    };
    println!(
        "{}: candidate {} against stable {}, {:?} {share} (step {} of {}, every {} ms)",
        v.name,
        r.candidate,
        r.stable,
        r.state,
        r.step + 1,
        r.steps.len(),
        r.interval_ms
    );
    println!("{:<22} {:<9} {:>7}  REASON", "TIME", "DECISION", "PERCENT");
    for d in &r.decisions {
        println!(
            "{:<22} {:<9} {:>6}%  {}",
            d.time, d.decision, d.percent, d.reason
        );
    }
}
