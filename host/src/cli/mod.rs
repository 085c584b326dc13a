//! Command-line interface: `tensorlet serve` runs a node; every other command is a client of a
//! node's admin API (`tenants.rs`: tenants, invoke keys and the audit log). Answers are read into
//! the typed bodies of [`crate::api`] and printed as text, or as JSON with `--json`.

mod aliases;
mod background;
mod build;
mod fleet;
mod rollout;
mod scaffold;
mod serve;
mod tenants;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use http::Method;
use serde::Serialize;

use crate::api::{
    Deleted, FunctionList, FunctionSummary, FunctionView, LiveMoved, LogLineView, Logs, ModelList,
    ModelSummary, ModelVersionView, ModelView, RollbackRequest, VersionView,
};
use crate::client::{AdminClient, encode};
use crate::fleet::blobs::Kind;
use crate::manifest::Manifest;

/// Tensorlet: deploy WebAssembly HTTP handlers and run each request in a fresh sandbox.
#[derive(Debug, Parser)]
#[command(name = "tensorlet", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Start a handler crate from a template: Cargo.toml, src/lib.rs, tensorlet.toml, README.
    New(scaffold::NewArgs),
    /// Run the manifest's `build` command, then check that its `component` is there.
    Build(build::BuildArgs),
    /// Deploy a component as a new version of a function and make it live.
    Deploy(Box<DeployArgs>),
    /// List functions.
    List(NodeArgs),
    /// List a function's versions, newest first.
    Versions(NameArgs),
    /// Move a function's live version back (to the previous one, or --to VERSION).
    Rollback(RollbackArgs),
    /// Delete a function and all its versions.
    Delete(NameArgs),
    /// Show a function's stdout/stderr (kept on the node across restarts); --follow streams it.
    Logs(LogsArgs),
    /// Manage ONNX models that functions load through wasi:nn.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Manage tenants (operator token; a node with `tenants = true`).
    #[command(subcommand)]
    Tenant(tenants::TenantCommand),
    /// Manage the invoke keys of your private functions (tenant token).
    #[command(subcommand)]
    Key(tenants::KeyCommand),
    /// Show the audit log of admin changes (operator token).
    Audit(tenants::AuditArgs),
    /// Anomalies the node has raised and not cleared, and the latest changes.
    Anomalies(NodeArgs),
    /// Name versions of a function (`live` is built in): call them at /fn/NAME@ALIAS/...
    #[command(subcommand)]
    Alias(aliases::AliasCommand),
    /// Roll a staged version out: a canary that steps up, or rolls back by itself.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// See the fleet this node is part of (operator token).
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Add an ONNX model (a new version if the name exists) and make it live.
    Add(ModelAddArgs),
    /// List models.
    List(NodeArgs),
    /// List a model's versions, newest first, with its inputs and outputs.
    Versions(NameArgs),
    /// Remove a model (refused while a live function version may use it).
    Rm(NameArgs),
    /// Move a model's live version back (to the previous one, or --to VERSION); functions that
    /// pin a version keep theirs, those deployed with `--model NAME@live` follow.
    Rollback(RollbackArgs),
    /// Name versions of a model (`live` is built in): pin them with --model NAME@ALIAS.
    #[command(subcommand)]
    Alias(aliases::AliasCommand),
}

#[derive(Debug, Args)]
struct ModelAddArgs {
    /// Model name (a-z, 0-9, '-'); functions load it by this name.
    name: String,
    /// The .onnx file, or an OCI artifact (oci://HOST/REPO:TAG or oci://HOST/REPO@sha256:...).
    file: PathBuf,
    /// Where the model runs: cpu or gpu (CUDA).
    #[arg(long, default_value = "cpu")]
    target: String,
    /// Run up to N queued requests as one inference, stacked along the first dimension (every
    /// input and output must have a dynamic first dimension). 1 = no batching.
    #[arg(long, default_value_t = 1)]
    max_batch: u32,
    /// On a node with tenants, let inference protocol clients (/v2, gRPC) call it without an
    /// invoke key.
    #[arg(long)]
    public: bool,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (127.0.0.1:0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's URL.
    #[arg(long, env = "TENSORLET_NODE", default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Operator or tenant token, for nodes that need one.
    #[arg(long, env = "TENSORLET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the node's JSON answer (one document on stdout) instead of text.
    #[arg(long)]
    json: bool,
    /// After a change, also wait until every live node of the fleet serves it (default 30s);
    /// exits non-zero naming the nodes that lag.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true, default_missing_value = "30s")]
    wait: Option<String>,
}

impl NodeArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::new(&self.node, self.token.as_deref())?.waiting(self.wait.clone()))
    }

    /// Prints a node's answer: as JSON with `--json` (for scripts), else as `human` words it.
    fn show<T: Serialize>(&self, answer: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
        if self.json {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let written = serde_json::to_writer_pretty(&mut out, answer)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out));
            match written {
                // A reader that stopped early (`| head`) is not an error of this command.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        } else {
            human(answer);
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// Function name.
    name: String,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
struct LogsArgs {
    /// Function name.
    name: String,
    /// Only lines from this long ago on (30s, 10m, 2h, 7d), or from this RFC 3339 time on.
    #[arg(long, value_name = "DURATION|TIME")]
    since: Option<String>,
    /// Only lines of this version: its id (or a prefix of 4+ hex digits), an alias, or live.
    #[arg(long)]
    version: Option<String>,
    /// Only the lines of this request (the `x-request-id` of its response).
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// At most this many lines, the newest (default 1000; with --follow, of those already kept).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Then keep printing new lines as they are written, until interrupted (with --json, one
    /// JSON object per line).
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    /// Function name.
    name: String,
    /// Version to make live (default: the one deployed before the live one).
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// Function name (a-z, 0-9, '-'); else the manifest's `name`.
    name: Option<String>,
    /// The component (.wasm, built for wasm32-wasip2), or an OCI artifact
    /// (oci://HOST/REPO:TAG or oci://HOST/REPO@sha256:...); else the manifest's `component`.
    file: Option<PathBuf>,
    /// A manifest (TOML) with the component and settings; flags win over it.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Linear memory cap per instance, e.g. 64MiB.
    #[arg(long)]
    memory: Option<String>,
    /// Wall-clock limit per request, e.g. 10s.
    #[arg(long)]
    timeout: Option<String>,
    /// Requests served at once; more get 503.
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Request body cap, e.g. 10MiB.
    #[arg(long)]
    max_request_body: Option<String>,
    /// Response body cap, e.g. 64MiB.
    #[arg(long)]
    max_response_body: Option<String>,
    /// Environment variable for the guest, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A model the function may load with wasi:nn load-by-name (repeatable).
    #[arg(long = "model", value_name = "NAME")]
    models: Vec<String>,
    /// Anyone may invoke it (on a node with tenants, functions otherwise need an invoke key).
    #[arg(long)]
    public: bool,
    /// A destination its outbound HTTP may reach: SCHEME://HOST[:PORT], e.g.
    /// https://api.example.com or https://*.example.com:* (repeatable; else none).
    #[arg(long = "allow-outbound", value_name = "URL_PATTERN")]
    allow_outbound: Vec<String>,
    /// Store the version without making it live (roll it out with `tensorlet rollout start`).
    #[arg(long)]
    stage: bool,
    /// With --canary N or --shadow N: stage it and start a rollout (the rollout flags apply).
    #[command(flatten)]
    rollout: rollout::RolloutFlags,
    #[command(flatten)]
    node: NodeArgs,
}

impl Cli {
    /// Runs the command, logging to stderr (as the config of `serve` says, else as text).
    pub fn run(self) -> anyhow::Result<()> {
        // TLS (the fleet's engine and registry, `oci://` pulls) goes through rustls with ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // `serve` runs requests on the worker threads of `server::run_workers`; this runtime
        // only waits for signals or runs one client command.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        if let Command::Serve(args) = self.command {
            // The config says how the node logs: read it before anything is logged.
            let config = serve::load_config(args)?;
            crate::node_log::init(config.log_format);
            return rt.block_on(serve::serve(config));
        }
        crate::node_log::init(crate::node_log::LogFormat::Text);
        rt.block_on(async move {
            match self.command {
                Command::Serve(_) => unreachable!("served above"),
                // Local work, no node: blocking is fine, the runtime has nothing else to do.
                Command::New(a) => scaffold::new(a),
                Command::Build(a) => build::build(a),
                Command::Deploy(args) => deploy(*args).await,
                Command::List(node) => list(node).await,
                Command::Versions(a) => versions(a).await,
                Command::Rollback(a) => rollback(a).await,
                Command::Delete(a) => delete(a).await,
                Command::Logs(a) => logs(a).await,
                Command::Model(m) => model(m).await,
                Command::Tenant(t) => tenants::tenant(t).await,
                Command::Key(k) => tenants::key(k).await,
                Command::Audit(a) => tenants::audit(a).await,
                Command::Anomalies(node) => background::show_anomalies(node).await,
                Command::Fleet(f) => fleet::fleet(f).await,
                Command::Alias(a) => aliases::alias("functions", a).await,
                Command::Rollout(r) => rollout::rollout(r).await,
            }
        })
    }
}

async fn deploy(a: DeployArgs) -> anyhow::Result<()> {
    let m = match &a.manifest {
        Some(path) => Manifest::load(path)?,
        None => Manifest::default(),
    };
    let name = a.name.clone().or(m.name.clone()).context(
        "name the function: `tensorlet deploy NAME FILE.wasm`, or `name` in the --manifest",
    )?;
    let file = a.file.clone().or(m.component.clone()).context(
        "name the component: `tensorlet deploy NAME FILE.wasm`, or `component` in the --manifest",
    )?;
    let mut query: Vec<String> = Vec::new();
    let mut add = |k: &str, flag: &Option<String>, manifest: &Option<String>| {
        if let Some(v) = flag.as_ref().or(manifest.as_ref()) {
            query.push(format!("{k}={}", encode(v)));
        }
    };
    add("memory", &a.memory, &m.memory);
    add("timeout", &a.timeout, &m.timeout);
    add(
        "max_concurrency",
        &a.max_concurrency.map(|n| n.to_string()),
        &m.max_concurrency.map(|n| n.to_string()),
    );
    add("max_request_body", &a.max_request_body, &m.max_request_body);
    add(
        "max_response_body",
        &a.max_response_body,
        &m.max_response_body,
    );
    let mut env = m.env.clone();
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .with_context(|| format!("--env `{e}` is not KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    for (k, v) in &env {
        query.push(format!("env={}", encode(&format!("{k}={v}"))));
    }
    for model in m.models.iter().chain(&a.models) {
        query.push(format!("model={}", encode(model)));
    }
    if a.public || m.public {
        query.push("public=true".into());
    }
    for pattern in m.allowed_outbound_hosts.iter().chain(&a.allow_outbound) {
        query.push(format!("allow_outbound={}", encode(pattern)));
    }
    if a.stage || a.rollout.starts() {
        query.push("stage=true".into());
    }
    let client = a.node.client()?;
    let path = format!("functions/{}/versions?{}", encode(&name), query.join("&"));
    let v: VersionView = match oci_reference(&file) {
        Some(reference) => {
            let bytes = fleet::pull(reference, Kind::Component).await?;
            client
                .upload_bytes(&path, bytes, "application/wasm")
                .await?
        }
        None => client.upload(&path, &file, "application/wasm").await?,
    };
    if a.rollout.starts() {
        let view = rollout::start(&client, &name, v.version.clone(), &a.rollout).await?;
        return a.node.show(&view, rollout::print);
    }
    a.node.show(&v, |v| println!("{}", v.version))
}

/// The reference of an `oci://` argument.
fn oci_reference(file: &std::path::Path) -> Option<&str> {
    file.to_str().filter(|f| f.starts_with("oci://"))
}

async fn list(node: NodeArgs) -> anyhow::Result<()> {
    let v: FunctionList = node.client()?.send(Method::GET, "functions").await?;
    node.show(&v, |v| print_records(&v.functions))
}

/// A function's or a model's summary: a row of the table [`print_records`] prints.
trait Record {
    /// Name, live version, how many versions, when the live version last changed.
    fn row(&self) -> (&str, &str, usize, &str);
}

impl Record for FunctionSummary {
    fn row(&self) -> (&str, &str, usize, &str) {
        (&self.name, &self.live, self.versions, &self.updated_at)
    }
}

impl Record for ModelSummary {
    fn row(&self) -> (&str, &str, usize, &str) {
        (&self.name, &self.live, self.versions, &self.updated_at)
    }
}

/// The NAME / LIVE / VERSIONS / UPDATED table of functions or models.
fn print_records(records: &[impl Record]) {
    println!("{:<24} {:<14} {:>8}  UPDATED", "NAME", "LIVE", "VERSIONS");
    for r in records {
        let (name, live, versions, updated_at) = r.row();
        println!("{name:<24} {live:<14} {versions:>8}  {updated_at}");
    }
}

async fn versions(a: NameArgs) -> anyhow::Result<()> {
    let path = format!("functions/{}/versions", encode(&a.name));
    let v: FunctionView = a.node.client()?.send(Method::GET, &path).await?;
    a.node.show(&v, |v| print_versions(&v.versions))
}

/// A function's or a model's version: a row of the table [`print_versions`] prints.
trait Version {
    /// Short id, when it was created, size in bytes, whether it is live.
    fn row(&self) -> (&str, &str, u64, bool);
    /// The models it runs with (`name@version` or `name@live`), for function versions.
    fn models(&self) -> Option<String> {
        None
    }
}

impl Version for VersionView {
    fn row(&self) -> (&str, &str, u64, bool) {
        (&self.version, &self.created_at, self.size, self.live)
    }
    fn models(&self) -> Option<String> {
        Some(self.models.join(","))
    }
}

impl Version for ModelVersionView {
    fn row(&self) -> (&str, &str, u64, bool) {
        (&self.version, &self.created_at, self.size, self.live)
    }
}

/// The VERSION / CREATED / SIZE / LIVE table (functions and models share it), newest first.
fn print_versions(versions: &[impl Version]) {
    let with_models = versions.iter().any(|v| v.models().is_some());
    let models_header = if with_models { "  MODELS" } else { "" };
    println!(
        "{:<14} {:<22} {:>10}  LIVE{models_header}",
        "VERSION", "CREATED", "SIZE"
    );
    for v in versions {
        let (version, created_at, size, live) = v.row();
        let live = if live { "*" } else { "" };
        let models = v.models().map(|m| format!("  {m}")).unwrap_or_default();
        let pad = if with_models {
            format!("{live:<4}")
        } else {
            live.to_string()
        };
        let line = format!("{version:<14} {created_at:<22} {size:>10}  {pad}{models}");
        println!("{}", line.trim_end());
    }
}

async fn rollback(a: RollbackArgs) -> anyhow::Result<()> {
    let body = RollbackRequest { to: a.to.clone() };
    let path = format!("functions/{}/rollback", encode(&a.name));
    let client = a.node.client()?;
    let v: LiveMoved = client.send_json(Method::POST, &path, &body).await?;
    a.node
        .show(&v, |v| println!("{} is live for {}", v.live, a.name))
}

async fn delete(a: NameArgs) -> anyhow::Result<()> {
    let path = format!("functions/{}", encode(&a.name));
    let v: Deleted = a.node.client()?.send(Method::DELETE, &path).await?;
    a.node.show(&v, |_| println!("deleted {}", a.name))
}

async fn logs(a: LogsArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    let params = [
        ("since", &a.since),
        ("version", &a.version),
        ("request_id", &a.request_id),
        ("limit", &a.limit.map(|n| n.to_string())),
    ];
    for (k, v) in params {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(v)));
        }
    }
    if a.follow {
        query.push("follow=true".into());
    }
    let mut path = format!("functions/{}/logs", encode(&a.name));
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let client = a.node.client()?;
    if !a.follow {
        let v: Logs = client.send(Method::GET, &path).await?;
        return a.node.show(&v, |v| {
            for l in &v.lines {
                println!("{}", log_text(l));
            }
        });
    }
    client
        .lines(&path, |json| {
            let line: LogLineView = serde_json::from_slice(json).map_err(|e| {
                anyhow::anyhow!("the node sent a log line this CLI does not understand ({e})")
            })?;
            let shown = if a.node.json {
                serde_json::to_string(&line)?
            } else {
                log_text(&line)
            };
            use std::io::Write;
            match writeln!(std::io::stdout().lock(), "{shown}") {
                // A reader that stopped (`| head`) ends the command, without an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
                other => other.map(|()| true).map_err(Into::into),
            }
        })
        .await
}

/// A guest output line as `logs` prints it.
fn log_text(l: &LogLineView) -> String {
    format!("{} {} {} {}", l.time, l.version, l.stream, l.line)
}

async fn model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Add(a) => {
            let path = format!(
                "models/{}/versions?target={}&max_batch={}{}",
                encode(&a.name),
                encode(&a.target),
                a.max_batch,
                if a.public { "&public=true" } else { "" }
            );
            let client = a.node.client()?;
            let kind = "application/octet-stream";
            let v: ModelVersionView = match oci_reference(&a.file) {
                Some(reference) => {
                    let bytes = fleet::pull(reference, Kind::Model).await?;
                    client.upload_bytes(&path, bytes, kind).await?
                }
                None => client.upload(&path, &a.file, kind).await?,
            };
            a.node.show(&v, |v| println!("{}", v.version))
        }
        ModelCommand::List(node) => {
            let v: ModelList = node.client()?.send(Method::GET, "models").await?;
            node.show(&v, |v| print_records(&v.models))
        }
        ModelCommand::Versions(a) => {
            let path = format!("models/{}/versions", encode(&a.name));
            let v: ModelView = a.node.client()?.send(Method::GET, &path).await?;
            a.node.show(&v, |v| {
                print_versions(&v.versions);
                for (kind, slots) in [("input", &v.inputs), ("output", &v.outputs)] {
                    for io in slots {
                        // Dimensions as JSON (`[1,3,224,224]`), as `model versions` always showed them.
                        let dims: Vec<String> = io.dims.iter().map(i64::to_string).collect();
                        println!("{kind} {} {} [{}]", io.name, io.ty, dims.join(","));
                    }
                }
            })
        }
        ModelCommand::Alias(a) => aliases::alias("models", a).await,
        ModelCommand::Rollback(a) => {
            let body = RollbackRequest { to: a.to.clone() };
            let path = format!("models/{}/rollback", encode(&a.name));
            let client = a.node.client()?;
            let v: LiveMoved = client.send_json(Method::POST, &path, &body).await?;
            a.node
                .show(&v, |v| println!("{} is live for model {}", v.live, a.name))
        }
        ModelCommand::Rm(a) => {
            let path = format!("models/{}", encode(&a.name));
            let v: Deleted = a.node.client()?.send(Method::DELETE, &path).await?;
            a.node.show(&v, |_| println!("removed model {}", a.name))
        }
    }
}
