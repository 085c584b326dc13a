//! `tensorlet tenant ...`, `tensorlet key ...` and `tensorlet audit`: clients of the tenant,
//! key and audit routes of the admin API.

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Map, Value, json};

use super::NodeArgs;
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
    /// The quota JSON the admin API takes (bytes and milliseconds).
    fn patch(&self) -> anyhow::Result<Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                m.insert(k.to_string(), json!(v));
            }
        };
        put("max_functions", self.max_functions.map(u64::from));
        put("max_models", self.max_models.map(u64::from));
        put("max_concurrency", self.max_concurrency.map(u64::from));
        put(
            "requests_per_second",
            self.requests_per_second.map(u64::from),
        );
        put("max_inferences", self.max_inferences.map(u64::from));
        put(
            "max_stored",
            self.max_stored.as_deref().map(parse_size).transpose()?,
        );
        put(
            "max_memory",
            self.max_memory.as_deref().map(parse_size).transpose()?,
        );
        put(
            "max_timeout_ms",
            self.max_timeout
                .as_deref()
                .map(parse_duration)
                .transpose()?
                .map(|d| d.as_millis() as u64),
        );
        Ok(Value::Object(m))
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

fn json_body(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn print_tenant(t: &Value) {
    let q = &t["quotas"];
    let u = &t["usage"];
    println!(
        "{:<20} functions {}/{}  models {}/{}  stored {}/{}  memory<={}  timeout<={}ms  concurrency {}  rps {}  inferences {}",
        t["name"].as_str().unwrap_or("?"),
        u["functions"],
        q["max_functions"],
        u["models"],
        q["max_models"],
        u["stored"],
        q["max_stored"],
        q["max_memory"],
        q["max_timeout_ms"],
        q["max_concurrency"],
        q["requests_per_second"],
        q["max_inferences"],
    );
}

pub async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create(a) => {
            let v = a
                .node
                .client()?
                .call(
                    Method::POST,
                    &format!("tenants/{}", encode(&a.name)),
                    json_body(&a.patch()?),
                    "application/json",
                )
                .await?;
            eprintln!(
                "created tenant {}; its token is printed below, only this once",
                a.name
            );
            println!("{}", v["token"].as_str().unwrap_or(""));
        }
        TenantCommand::List(node) => {
            let v = node.client()?.send(Method::GET, "tenants").await?;
            for t in v["tenants"].as_array().into_iter().flatten() {
                print_tenant(t);
            }
        }
        TenantCommand::Update(a) => {
            let v = a
                .node
                .client()?
                .call(
                    Method::PATCH,
                    &format!("tenants/{}", encode(&a.name)),
                    json_body(&a.patch()?),
                    "application/json",
                )
                .await?;
            print_tenant(&v);
        }
        TenantCommand::Rm(a) => {
            let v = a
                .node
                .client()?
                .send(Method::DELETE, &format!("tenants/{}", encode(&a.name)))
                .await?;
            println!(
                "removed tenant {} (functions {}, models {})",
                a.name, v["functions"], v["models"]
            );
        }
        TenantCommand::Token(TokenCommand::Rotate(a)) => {
            let v = a
                .node
                .client()?
                .send(Method::POST, &format!("tenants/{}/token", encode(&a.name)))
                .await?;
            eprintln!(
                "new token for tenant {} (the old one no longer works), printed only this once:",
                a.name
            );
            println!("{}", v["token"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}

pub async fn key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create(node) => {
            let v = node.client()?.send(Method::POST, "keys").await?;
            eprintln!(
                "invoke key {} (send it as `Authorization: Bearer KEY`), printed only this once:",
                v["id"].as_str().unwrap_or("")
            );
            println!("{}", v["key"].as_str().unwrap_or(""));
        }
        KeyCommand::List(node) => {
            let v = node.client()?.send(Method::GET, "keys").await?;
            for k in v["keys"].as_array().into_iter().flatten() {
                println!(
                    "{}  {}",
                    k["id"].as_str().unwrap_or("?"),
                    k["created_at"].as_str().unwrap_or("")
                );
            }
        }
        KeyCommand::Rm(a) => {
            a.node
                .client()?
                .send(Method::DELETE, &format!("keys/{}", encode(&a.id)))
                .await?;
            println!("revoked key {}", a.id);
        }
    }
    Ok(())
}

pub async fn audit(a: AuditArgs) -> anyhow::Result<()> {
    let v = a
        .node
        .client()?
        .send(Method::GET, &format!("audit?limit={}", a.limit))
        .await?;
    for r in v["records"].as_array().into_iter().flatten() {
        println!(
            "{}  {:<24} {:<60} {}",
            r["time"].as_str().unwrap_or(""),
            r["who"].as_str().unwrap_or(""),
            r["action"].as_str().unwrap_or(""),
            r["status"]
        );
    }
    Ok(())
}
