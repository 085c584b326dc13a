//! `tensorlet tenant ...`, `tensorlet key ...` and `tensorlet audit`: clients of the tenant,
//! key and audit routes of the admin API.

use clap::{Args, Subcommand};
use http::Method;

use super::NodeArgs;
use crate::api::{
    AuditLog, CreatedKey, CreatedTenant, KeyList, QuotaPatch, RemovedKey, RemovedTenant,
    TenantList, TenantView, Token,
};
use crate::client::encode;
use crate::config::{parse_duration, parse_size};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its token (shown only once).
    Create(TenantQuotaArgs),
    /// List tenants with their quotas and usage.
    List(NodeArgs),
    /// Change a tenant's quotas.
    Update(TenantQuotaArgs),
    /// Remove a tenant with all its functions, models and keys.
    Rm(TenantNameArgs),
    /// Tenant tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Give a tenant a new token (printed once); the old one stops working.
    Rotate(TenantNameArgs),
}

#[derive(Debug, Args)]
pub struct TenantNameArgs {
    /// Tenant name (a-z, 0-9, '-').
    name: String,
    #[command(flatten)]
    node: NodeArgs,
}

/// Quota flags; those not given keep their value (the node's `[tenant_defaults]` on create).
#[derive(Debug, Args)]
pub struct TenantQuotaArgs {
    /// Tenant name (a-z, 0-9, '-').
    name: String,
    /// Functions the tenant may have.
    #[arg(long)]
    max_functions: Option<u32>,
    /// Models the tenant may have.
    #[arg(long)]
    max_models: Option<u32>,
    /// Bytes of function and model versions it may store, e.g. 2GiB.
    #[arg(long)]
    max_stored: Option<String>,
    /// Largest memory one of its instances may ask for, e.g. 256MiB.
    #[arg(long)]
    max_memory: Option<String>,
    /// Longest timeout its functions may ask for, e.g. 60s.
    #[arg(long)]
    max_timeout: Option<String>,
    /// Requests running at once across its functions (429 beyond).
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Sustained requests per second across its functions (429 with Retry-After beyond).
    #[arg(long)]
    requests_per_second: Option<u32>,
    /// wasi:nn inferences running or queued at once across its functions.
    #[arg(long)]
    max_inferences: Option<u32>,
    #[command(flatten)]
    node: NodeArgs,
}

impl TenantQuotaArgs {
    /// The quota body the admin API takes (bytes and milliseconds).
    fn patch(&self) -> anyhow::Result<QuotaPatch> {
        Ok(QuotaPatch {
            max_functions: self.max_functions,
            max_models: self.max_models,
            max_stored: self.max_stored.as_deref().map(parse_size).transpose()?,
            max_memory: self.max_memory.as_deref().map(parse_size).transpose()?,
            max_timeout_ms: (self.max_timeout.as_deref().map(parse_duration))
                .transpose()?
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            max_concurrency: self.max_concurrency,
            requests_per_second: self.requests_per_second,
            max_inferences: self.max_inferences,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issue an invoke key for your private functions (printed once).
    Create(NodeArgs),
    /// List your invoke keys (ids and dates).
    List(NodeArgs),
    /// Revoke an invoke key.
    Rm(KeyIdArgs),
}

#[derive(Debug, Args)]
pub struct KeyIdArgs {
    /// Key id (as `key list` shows it).
    id: String,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many of the latest records to show.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    node: NodeArgs,
}

fn print_tenant(t: &TenantView) {
    let (q, u) = (&t.quotas, &t.usage);
    println!(
        "{:<20} functions {}/{}  models {}/{}  stored {}/{}  memory<={}  timeout<={}ms  concurrency {}  rps {}  inferences {}",
        t.name,
        u.functions,
        q.max_functions,
        u.models,
        q.max_models,
        u.stored,
        q.max_stored,
        q.max_memory,
        q.max_timeout_ms,
        q.max_concurrency,
        q.requests_per_second,
        q.max_inferences,
    );
}

pub async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create(a) => {
            let path = format!("tenants/{}", encode(&a.name));
            let client = a.node.client()?;
            let v: CreatedTenant = client.send_json(Method::POST, &path, &a.patch()?).await?;
            a.node.show(&v, |v| {
                eprintln!(
                    "created tenant {}; its token is printed below, only this once",
                    a.name
                );
                println!("{}", v.token);
            })
        }
        TenantCommand::List(node) => {
            let v: TenantList = node.client()?.send(Method::GET, "tenants").await?;
            node.show(&v, |v| v.tenants.iter().for_each(print_tenant))
        }
        TenantCommand::Update(a) => {
            let path = format!("tenants/{}", encode(&a.name));
            let client = a.node.client()?;
            let v: TenantView = client.send_json(Method::PATCH, &path, &a.patch()?).await?;
            a.node.show(&v, print_tenant)
        }
        TenantCommand::Rm(a) => {
            let path = format!("tenants/{}", encode(&a.name));
            let v: RemovedTenant = a.node.client()?.send(Method::DELETE, &path).await?;
            a.node.show(&v, |v| {
                // The lists as JSON arrays, as this line always showed them.
                let list = |names: &Vec<String>| serde_json::to_string(names).unwrap_or_default();
                println!(
                    "removed tenant {} (functions {}, models {})",
                    a.name,
                    list(&v.functions),
                    list(&v.models)
                );
            })
        }
        TenantCommand::Token(TokenCommand::Rotate(a)) => {
            let path = format!("tenants/{}/token", encode(&a.name));
            let v: Token = a.node.client()?.send(Method::POST, &path).await?;
            a.node.show(&v, |v| {
                eprintln!(
                    "new token for tenant {} (the old one no longer works), printed only this once:",
                    a.name
                );
                println!("{}", v.token);
            })
        }
    }
}

pub async fn key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create(node) => {
            let v: CreatedKey = node.client()?.send(Method::POST, "keys").await?;
            node.show(&v, |v| {
                eprintln!(
                    "invoke key {} (send it as `Authorization: Bearer KEY`), printed only this once:",
                    v.id
                );
                println!("{}", v.key);
            })
        }
        KeyCommand::List(node) => {
            let v: KeyList = node.client()?.send(Method::GET, "keys").await?;
            node.show(&v, |v| {
                for k in &v.keys {
                    println!("{}  {}", k.id, k.created_at);
                }
            })
        }
        KeyCommand::Rm(a) => {
            let path = format!("keys/{}", encode(&a.id));
            let v: RemovedKey = a.node.client()?.send(Method::DELETE, &path).await?;
            a.node.show(&v, |_| println!("revoked key {}", a.id))
        }
    }
}

pub async fn audit(a: AuditArgs) -> anyhow::Result<()> {
    let path = format!("audit?limit={}", a.limit);
    let v: AuditLog = a.node.client()?.send(Method::GET, &path).await?;
    a.node.show(&v, |v| {
        for r in &v.records {
            println!("{}  {:<24} {:<60} {}", r.time, r.who, r.action, r.status);
        }
    })
}
