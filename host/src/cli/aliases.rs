//! `tensorlet alias ...` and `tensorlet model alias ...`: named pointers to versions.

use clap::{Args, Subcommand};
use http::Method;

use super::{NameArgs, NodeArgs};
use crate::api::{AliasRequest, Aliases};
use crate::client::encode;

#[derive(Debug, Subcommand)]
pub(super) enum AliasCommand {
    /// Point ALIAS at VERSION (an id, digest or prefix, another alias, or `live`).
    Set(AliasSetArgs),
    /// Remove an alias.
    Rm(AliasRmArgs),
    /// List the aliases, `live` included.
    List(NameArgs),
}

#[derive(Debug, Args)]
pub(super) struct AliasSetArgs {
    /// Function (or model) name.
    name: String,
    /// Alias name (a-z, 0-9, '-', starting with a letter; not `live`).
    alias: String,
    /// The version it names.
    version: String,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub(super) struct AliasRmArgs {
    /// Function (or model) name.
    name: String,
    /// Alias name.
    alias: String,
    #[command(flatten)]
    node: NodeArgs,
}

/// Runs an alias command on `functions` or `models`.
pub(super) async fn alias(kind: &str, command: AliasCommand) -> anyhow::Result<()> {
    let (node, answer) = match command {
        AliasCommand::Set(a) => {
            let path = format!("{kind}/{}/aliases/{}", encode(&a.name), encode(&a.alias));
            let body = AliasRequest { version: a.version };
            let v: Aliases = a
                .node
                .client()?
                .send_json(Method::PUT, &path, &body)
                .await?;
            (a.node, v)
        }
        AliasCommand::Rm(a) => {
            let path = format!("{kind}/{}/aliases/{}", encode(&a.name), encode(&a.alias));
            let v: Aliases = a.node.client()?.send(Method::DELETE, &path).await?;
            (a.node, v)
        }
        AliasCommand::List(a) => {
            let path = format!("{kind}/{}/aliases", encode(&a.name));
            let v: Aliases = a.node.client()?.send(Method::GET, &path).await?;
            (a.node, v)
        }
    };
    node.show(&answer, |v| {
        println!("{:<24} VERSION", "ALIAS");
        for (alias, version) in &v.aliases {
            println!("{alias:<24} {version}");
        }
    })
}
