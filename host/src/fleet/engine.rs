//! The fleet's engine: one NATS JetStream KV bucket holding the whole desired state under one
//! key (every commit is a compare-and-set on that key's revision, so changes are totally
//! ordered), plus a second bucket where each node reports what it has applied.
//!
//! The node never waits for the engine to serve: the client connects in the background and
//! reconnects by itself, buckets are opened on first use, and a change made while the engine is
//! unreachable fails at once instead of being queued (a queued publish could land after the
//! caller was told it failed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::runtime::Handle;

use super::FleetConfig;
use super::status::NodeReport;
use crate::config::Config;
use crate::desired::{CommitError, DesiredState, Revision};
use crate::store::Meta;

/// The key of the desired-state document.
pub const KEY: &str = "desired";

/// How long one engine request may take: short, so that an outage fails changes quickly (a
/// known outage fails them at once; this bounds a link that died unnoticed).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a change waits for a connection being made.
const CONNECT_GRACE: Duration = Duration::from_secs(2);

/// Nodes whose report is older than this count as gone (in `--wait`) and not reaching the
/// engine (in `fleet status`). Nodes report every second.
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);

/// The engine cannot be reached, or did not answer in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

fn unavailable(what: &str, e: impl std::fmt::Display) -> Unavailable {
    Unavailable(format!("{what}: {e}"))
}

#[derive(Clone)]
struct Buckets {
    desired: kv::Store,
    nodes: kv::Store,
}

/// A connection to the engine.
pub struct Engine {
    config: Arc<Config>,
    fleet: FleetConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    buckets: tokio::sync::Mutex<Option<Buckets>>,
    audit: tokio::sync::Mutex<Option<jetstream::stream::Stream>>,
    connected: Arc<AtomicBool>,
    /// Counts (re)connections: the syncer reopens its watch on each.
    connections: tokio::sync::watch::Receiver<u64>,
    /// The runtime the client lives on, for the blocking [`DesiredState`] calls.
    rt: Handle,
}

impl Engine {
    /// Starts connecting (in the background; this returns at once). Must run on `rt`.
    pub async fn start(config: Arc<Config>, fleet: FleetConfig) -> anyhow::Result<Arc<Engine>> {
        let connected = Arc::new(AtomicBool::new(false));
        let (count, connections) = tokio::sync::watch::channel(0u64);
        let flag = Arc::clone(&connected);
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("tensorlet {}", fleet.node_id))
            .retry_on_initial_connect()
            .ping_interval(fleet.ping_interval)
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None)
            // Capped and short: a node cut off for a while must catch up soon after the heal.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 250).min(2_000))
            })
            .event_callback(move |event| {
                let (flag, count) = (Arc::clone(&flag), count.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            flag.store(true, Ordering::SeqCst);
                            count.send_modify(|n| *n += 1);
                            tracing::info!("fleet: connected to the engine");
                        }
                        async_nats::Event::Disconnected => {
                            flag.store(false, Ordering::SeqCst);
                            tracing::warn!("fleet: lost the engine; serving what was applied last");
                        }
                        other => tracing::debug!("fleet: engine event: {other}"),
                    }
                }
            });
        if let Some(token) = &fleet.nats_token {
            options = options.token(token.clone());
        }
        if let Some(path) = &fleet.nats_creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| anyhow::anyhow!("[fleet] nats_creds {}: {e}", path.display()))?;
        }
        let client = options.connect(fleet.nats.clone()).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        Ok(Arc::new(Engine {
            config,
            fleet,
            client,
            js,
            buckets: tokio::sync::Mutex::new(None),
            audit: tokio::sync::Mutex::new(None),
            connected,
            connections,
            rt: Handle::current(),
        }))
    }

    /// Whether the client is connected right now (pings tell within a few intervals).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Changes with each (re)connection.
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connections.clone()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.fleet.node_id
    }

    /// What a node's data directory records as the engine its revision counts in.
    pub fn id(&self) -> String {
        format!("nats:{}", self.fleet.bucket)
    }

    /// Fails at once if the engine is known to be gone; a connection being (re)made right now
    /// (a node just started) gets a moment.
    async fn check_connected(&self) -> Result<(), Unavailable> {
        let mut connections = self.connections.clone();
        let connected = tokio::time::timeout(CONNECT_GRACE, async {
            while !self.connected() {
                if connections.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if connected.is_ok() && self.connected() {
            Ok(())
        } else {
            Err(Unavailable(format!(
                "not connected to the NATS engine at {}",
                self.fleet.nats.join(", ")
            )))
        }
    }

    /// Opens the buckets, creating them the first time a fleet starts.
    async fn buckets(&self) -> Result<Buckets, Unavailable> {
        self.check_connected().await?;
        let mut slot = self.buckets.lock().await;
        if let Some(b) = &*slot {
            return Ok(b.clone());
        }
        check_server_version(&self.client.server_info().version)?;
        let replicas = self.replicas();
        let open = |name: String, history: i64, max_age: Duration| async move {
            match self.js.get_key_value(name.clone()).await {
                Ok(store) => Ok(store),
                Err(_) => self
                    .js
                    .create_key_value(kv::Config {
                        bucket: name.clone(),
                        history,
                        max_age,
                        num_replicas: replicas,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        Unavailable(format!(
                            "cannot open or create the JetStream KV bucket `{name}`: {e}"
                        ))
                    }),
            }
        };
        let desired = open(self.fleet.bucket.clone(), 16, Duration::ZERO).await?;
        let nodes = open(
            format!("{}_nodes", self.fleet.bucket),
            1,
            Duration::from_secs(600),
        )
        .await?;
        let b = Buckets { desired, nodes };
        *slot = Some(b.clone());
        Ok(b)
    }

    /// The engine's current document and its revision; `None` before the first commit.
    pub async fn latest(&self) -> Result<Option<(Bytes, Revision)>, Unavailable> {
        let b = self.buckets().await?;
        let entry = b
            .desired
            .entry(KEY)
            .await
            .map_err(|e| unavailable("reading the desired state", e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (e.value, e.revision)))
    }

    /// A watch that yields the current document, then every later one.
    pub async fn watch(&self) -> Result<kv::Watch, Unavailable> {
        let b = self.buckets().await?;
        b.desired
            .watch_with_history(KEY)
            .await
            .map_err(|e| unavailable("watching the desired state", e))
    }

    /// Compare-and-set of the document; see [`DesiredState::commit`].
    pub async fn commit(&self, expected: Revision, next: &Meta) -> Result<Revision, CommitError> {
        let b = self.buckets().await.map_err(to_commit_error)?;
        let mut doc = next.clone();
        doc.revision = 0;
        doc.engine = None;
        let bytes = Bytes::from(serde_json::to_vec(&doc).map_err(std::io::Error::other)?);
        let max = self.client.server_info().max_payload;
        if max > 0 && bytes.len() > max.saturating_sub(1024) {
            return Err(CommitError::Unavailable(format!(
                "the desired state ({} bytes) is over the engine's max_payload ({max} bytes): \
                 raise max_payload in the nats-server config, or retain fewer versions",
                bytes.len()
            )));
        }
        let written = if expected == 0 {
            b.desired
                .create(KEY, bytes)
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(e.to_string()),
                })
        } else {
            b.desired
                .update(KEY, bytes, expected)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(e.to_string()),
                })
        };
        match written {
            Ok(revision) => Ok(revision),
            Err(Some(e)) => Err(CommitError::Unavailable(format!(
                "the engine did not confirm the change ({e}); it may or may not be committed: \
                 check before retrying"
            ))),
            Err(None) => {
                let current = self
                    .latest()
                    .await
                    .ok()
                    .flatten()
                    .map(|(_, r)| r)
                    .unwrap_or(0);
                Err(CommitError::Conflict { expected, current })
            }
        }
    }

    /// Writes this node's report.
    pub async fn report(&self, report: &NodeReport) -> Result<(), Unavailable> {
        let b = self.buckets().await?;
        let bytes = serde_json::to_vec(report).map_err(|e| unavailable("report", e))?;
        b.nodes
            .put(&self.fleet.node_id, bytes.into())
            .await
            .map_err(|e| unavailable("writing this node's report", e))?;
        Ok(())
    }

    /// Every node's last report (malformed ones are skipped).
    pub async fn reports(&self) -> Result<Vec<NodeReport>, Unavailable> {
        use futures_util::StreamExt;
        let b = self.buckets().await?;
        let keys = b
            .nodes
            .keys()
            .await
            .map_err(|e| unavailable("listing node reports", e))?;
        let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
        let mut reports = Vec::new();
        for key in keys.into_iter().take(10_000) {
            let value = b
                .nodes
                .get(key)
                .await
                .map_err(|e| unavailable("reading a node report", e))?;
            if let Some(r) = value.and_then(|v| serde_json::from_slice::<NodeReport>(&v).ok()) {
                reports.push(r);
            }
        }
        Ok(reports)
    }
}

/// nats-server before 2.10.23 could lose whole streams on a crash (Jepsen): a fleet refuses it.
fn check_server_version(version: &str) -> Result<(), Unavailable> {
    let parts: Vec<u64> = version
        .split(['.', '-'])
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    if parts.as_slice() >= [2, 10, 23].as_slice() {
        Ok(())
    } else {
        Err(Unavailable(format!(
            "nats-server {version} can lose acknowledged writes on a crash: the fleet needs \
             2.10.23 or later (with `jetstream {{ sync_interval: always }}`)"
        )))
    }
}

fn to_commit_error(e: Unavailable) -> CommitError {
    CommitError::Unavailable(e.0)
}

impl Engine {
    /// The fleet's audit log: a stream of JSON records, the newest 100,000 kept.
    async fn audit_stream(&self) -> Result<jetstream::stream::Stream, Unavailable> {
        self.check_connected().await?;
        let mut slot = self.audit.lock().await;
        if let Some(stream) = &*slot {
            return Ok(stream.clone());
        }
        let name = format!("{}_audit", self.fleet.bucket);
        let stream = self
            .js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.audit", self.fleet.bucket)],
                max_messages: 100_000,
                num_replicas: self.replicas(),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&format!("opening the stream `{name}`"), e))?;
        *slot = Some(stream.clone());
        Ok(stream)
    }

    /// Appends one record to the fleet's audit log.
    pub async fn audit_append(&self, record: &crate::api::AuditRecord) -> Result<(), Unavailable> {
        self.audit_stream().await?;
        let bytes = serde_json::to_vec(record).map_err(|e| unavailable("audit record", e))?;
        self.js
            .publish(format!("{}.audit", self.fleet.bucket), bytes.into())
            .await
            .map_err(|e| unavailable("adding to the audit log", e))?
            .await
            .map_err(|e| unavailable("adding to the audit log", e))?;
        Ok(())
    }

    /// The last `n` records of the fleet's audit log, oldest first.
    pub async fn audit_tail(&self, n: usize) -> Result<Vec<crate::api::AuditRecord>, Unavailable> {
        use futures_util::StreamExt;
        let mut stream = self.audit_stream().await?;
        let state = stream
            .info()
            .await
            .map_err(|e| unavailable("reading the audit log", e))?
            .state
            .clone();
        if state.messages == 0 || n == 0 {
            return Ok(Vec::new());
        }
        let start = state
            .last_sequence
            .saturating_sub(n as u64 - 1)
            .max(state.first_sequence);
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("reading the audit log", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("reading the audit log", e))?;
        let mut records = Vec::new();
        let want = (state.last_sequence - start + 1) as usize;
        for _ in 0..want {
            let next = tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await;
            let Ok(Some(Ok(message))) = next else { break };
            if let Ok(r) = serde_json::from_slice(&message.payload) {
                records.push(r);
            }
        }
        Ok(records)
    }

    fn replicas(&self) -> usize {
        let cluster =
            self.fleet.nats.len() > 1 || !self.client.server_info().connect_urls.is_empty();
        self.fleet.replicas.unwrap_or(if cluster { 3 } else { 1 })
    }
}

/// The engine as the registry's blocking commit seam.
pub struct EngineState(pub Arc<Engine>);

impl DesiredState for EngineState {
    fn load(&self) -> anyhow::Result<(Meta, Revision)> {
        let engine = &self.0;
        match engine.rt.block_on(engine.latest())? {
            None => Ok((
                Meta {
                    format: 1,
                    ..Meta::default()
                },
                0,
            )),
            Some((bytes, revision)) => {
                let mut meta = super::record::decode(&bytes, &engine.config).map_err(|e| {
                    anyhow::anyhow!("the engine's record at revision {revision}: {e}")
                })?;
                meta.revision = revision;
                Ok((meta, revision))
            }
        }
    }

    fn commit(&self, expected: Revision, next: &Meta) -> Result<Revision, CommitError> {
        self.0.rt.block_on(self.0.commit(expected, next))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn old_servers_are_refused() {
        for ok in ["2.10.23", "2.11.0", "2.15.1", "3.0.0-beta"] {
            assert!(super::check_server_version(ok).is_ok(), "{ok}");
        }
        for old in ["2.10.22", "2.9.10", "1.0", "", "x"] {
            assert!(super::check_server_version(old).is_err(), "{old}");
        }
    }
}
