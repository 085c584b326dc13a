//! `tensorlet fleet status`, and pulling `oci://` artifacts for `deploy` and `model add`.

use clap::Subcommand;
use http::Method;

use super::NodeArgs;
use crate::fleet::blobs::{Kind, pull_artifact};
use crate::fleet::status::FleetView;

#[derive(Debug, Subcommand)]
pub(super) enum FleetCommand {
    /// The engine's revision, and per node: applied revision, lag, last contact, whether it
    /// reaches the engine and the registry, and its blob cache size.
    Status(NodeArgs),
}

pub(super) async fn fleet(command: FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Status(node) => {
            let v: FleetView = node.client()?.send(Method::GET, "fleet").await?;
            node.show(&v, print_status)
        }
    }
}

fn print_status(v: &FleetView) {
    match v.engine_revision {
        Some(r) => println!("engine revision {r} (asked {})", v.node_id),
        None => println!(
            "engine unreachable from {}: showing only that node",
            v.node_id
        ),
    }
    println!(
        "{:<24} {:>8} {:>5} {:>13}  {:<6} {:<8} {:>10}  REASON",
        "NODE", "APPLIED", "LAG", "LAST CONTACT", "ENGINE", "REGISTRY", "BLOBS"
    );
    let yes = |b: bool| if b { "ok" } else { "down" };
    for n in &v.nodes {
        println!(
            "{:<24} {:>8} {:>5} {:>12.1}s  {:<6} {:<8} {:>10}  {}",
            n.node_id,
            n.applied_revision,
            n.lag,
            n.seconds_since_contact,
            yes(n.engine_connected),
            yes(n.registry_reachable),
            crate::config::format_size(n.blob_cache_bytes),
            n.lag_reason.as_deref().unwrap_or("-"),
        );
    }
}

/// Pulls an artifact for the CLI (the bytes are then uploaded to the node as a file would be).
pub(super) async fn pull(reference: &str, kind: Kind) -> anyhow::Result<bytes::Bytes> {
    eprintln!("pulling {reference}");
    // The node checks sizes too; this only keeps the CLI from holding an absurd blob.
    let bytes = pull_artifact(reference, kind, 4 << 30).await?;
    Ok(bytes.into())
}
