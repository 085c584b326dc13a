//! Fleet mode: many nodes behind a load balancer, sharing one desired state in a NATS JetStream
//! KV bucket ([`engine`]) and their blobs in an OCI registry ([`blobs`]). Every node serves from
//! its own data directory, exactly as a single node does; the [`syncer`] mirrors the engine into
//! it. A change made through any node is committed in the engine first (the registry's commit
//! seam, [`crate::desired`]), and every node, the one that took it included, applies it from
//! there. Design and measurements: ../shared/notes/distributed.md §3-§5.

pub mod blobs;
pub mod engine;
mod node;
mod record;
pub mod status;
pub mod syncer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

pub use node::Fleet;
pub use record::check_meta;

/// The `[fleet]` section of node.toml, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileFleet {
    nats: Vec<String>,
    registry: String,
    repository: Option<String>,
    node_id: Option<String>,
    bucket: Option<String>,
    replicas: Option<usize>,
    nats_token: Option<String>,
    nats_creds: Option<PathBuf>,
    registry_username: Option<String>,
    registry_password: Option<String>,
    ping_interval: Option<String>,
}

/// Where the fleet's engine and registry are, and who this node is in it.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// NATS server URLs (any of them will do; the client learns the rest of a cluster).
    pub nats: Vec<String>,
    /// The OCI registry.
    pub registry: RegistryUrl,
    /// Repository prefix in the registry.
    pub repository: String,
    /// This node's id: `[A-Za-z0-9_-]`, unique in the fleet.
    pub node_id: String,
    /// The JetStream KV bucket of the desired state (node reports go to `{bucket}_nodes`).
    pub bucket: String,
    /// Replicas of the bucket, when this node creates it; `None` = 1 with one server, else 3.
    pub replicas: Option<usize>,
    /// NATS token (`nats_token`, or `TENSORLET_NATS_TOKEN`).
    pub nats_token: Option<String>,
    /// NATS credentials file (`nats_creds`, or `TENSORLET_NATS_CREDS`).
    pub nats_creds: Option<PathBuf>,
    /// Registry basic-auth credentials (`registry_username` and `registry_password`, or
    /// `TENSORLET_REGISTRY_USERNAME` and `TENSORLET_REGISTRY_PASSWORD`).
    pub registry_auth: Option<(String, String)>,
    /// How often the node pings NATS: a dead link is noticed after about three of these.
    pub ping_interval: Duration,
}

/// An OCI registry's address and whether it speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryUrl {
    /// `host[:port]`.
    pub host: String,
    /// `http://` (a registry on a trusted network or loopback) rather than `https://`.
    pub plain_http: bool,
}

impl RegistryUrl {
    /// `http://host:port`, `https://host` or a bare `host:port` (HTTPS).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (plain_http, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (false, rest)
        } else {
            (false, text)
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            bail!(
                "registry must be `http://HOST:PORT` or `https://HOST[:PORT]` (no path; the \
                 repository prefix is `repository`), not `{text}`"
            );
        }
        Ok(Self {
            host: host.to_string(),
            plain_http,
        })
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether `s` may be a NATS subject token and a bucket or node name: `[A-Za-z0-9_-]+`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FleetConfig {
    pub(crate) fn from_file(f: FileFleet, data_dir: &Path) -> anyhow::Result<Self> {
        if f.nats.is_empty() {
            bail!("[fleet] nats must list at least one server, e.g. [\"nats://127.0.0.1:4222\"]");
        }
        let node_id = match f.node_id {
            Some(id) => id,
            None => default_node_id(data_dir),
        };
        if !is_token(&node_id) {
            bail!("[fleet] node_id `{node_id}` must be 1-64 characters of A-Z, a-z, 0-9, _ and -");
        }
        let bucket = f.bucket.unwrap_or_else(|| "tensorlet".into());
        if !is_token(&bucket) {
            bail!("[fleet] bucket `{bucket}` must be 1-64 characters of A-Z, a-z, 0-9, _ and -");
        }
        let repository = f.repository.unwrap_or_else(|| "tensorlet".into());
        let repo_ok = repository.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
        if !repo_ok {
            bail!(
                "[fleet] repository `{repository}` must be lowercase path components \
                 (a-z, 0-9, '.', '_', '-') separated by '/'"
            );
        }
        if f.replicas.is_some_and(|r| !(1..=5).contains(&r)) {
            bail!("[fleet] replicas must be 1 to 5 (JetStream's limit)");
        }
        let user = env("TENSORLET_REGISTRY_USERNAME").or(f.registry_username);
        let password = env("TENSORLET_REGISTRY_PASSWORD").or(f.registry_password);
        let registry_auth = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => bail!("[fleet] registry_username and registry_password go together"),
        };
        Ok(Self {
            nats: f.nats,
            registry: RegistryUrl::parse(&f.registry).context("[fleet] registry")?,
            repository,
            node_id,
            bucket,
            replicas: f.replicas,
            nats_token: env("TENSORLET_NATS_TOKEN").or(f.nats_token),
            nats_creds: env("TENSORLET_NATS_CREDS")
                .map(PathBuf::from)
                .or(f.nats_creds),
            registry_auth,
            ping_interval: match f.ping_interval {
                Some(text) => {
                    crate::config::parse_duration(&text).context("[fleet] ping_interval")?
                }
                None => Duration::from_secs(2),
            },
        })
    }
}

/// The host name plus a hash of the data directory: stable across restarts, and distinct for
/// two nodes on one machine.
fn default_node_id(data_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_else(|| "node".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = crate::store::digest(dir.to_string_lossy().as_bytes());
    format!(
        "{}-{}",
        if host.is_empty() { "node" } else { &host },
        &hash[..8]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<FleetConfig> {
        FleetConfig::from_file(toml::from_str(text)?, Path::new("/tmp/x"))
    }

    #[test]
    fn fleet_section() {
        let c = parse("nats = [\"nats://127.0.0.1:4222\"]\nregistry = \"http://127.0.0.1:5000\"\nnode_id = \"edge-1\"").unwrap();
        assert_eq!(c.node_id, "edge-1");
        assert_eq!(
            (c.bucket.as_str(), c.repository.as_str()),
            ("tensorlet", "tensorlet")
        );
        assert_eq!(
            c.registry,
            RegistryUrl {
                host: "127.0.0.1:5000".into(),
                plain_http: true
            }
        );
        let derived = parse("nats = [\"n\"]\nregistry = \"r.example\"").unwrap();
        assert!(is_token(&derived.node_id), "{}", derived.node_id);
        assert!(!derived.registry.plain_http);
        for bad in [
            "nats = []\nregistry = \"r\"",
            "nats = [\"n\"]\nregistry = \"r\"\nnode_id = \"a.b\"",
            "nats = [\"n\"]\nregistry = \"http://r/x\"",
            "nats = [\"n\"]\nregistry = \"r\"\nrepository = \"Up\"",
            "nats = [\"n\"]\nregistry = \"r\"\nreplicas = 7",
            "nats = [\"n\"]\nregistry = \"r\"\nbukket = \"b\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
