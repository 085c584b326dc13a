//! Blobs in an OCI registry. Each component or model is pushed as a one-layer OCI artifact
//! (layer media types below; config: the OCI empty descriptor) into `{repository}/artifacts`, tagged
//! `sha256-{hex}`, and nodes pull the layer **by digest**: what a node runs is named by content,
//! never by a tag that could move, and a blob it already has needs no network at all.
//!
//! The same client pulls artifacts that are already in a registry (`oci://` references), from
//! `wkg oci push` (layer `application/wasm`) or any tool using the wasm OCI layout.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::runtime::Handle;

use super::RegistryUrl;
use super::status::NodeState;
use crate::desired::{BlobHold, BlobStore};
use crate::store::DataDir;

/// Layer media type of a component (the wasm OCI artifact layout's).
pub const WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Layer media type of a component pushed by `wkg oci push`.
pub const WKG_WASM_LAYER: &str = "application/wasm";
/// Layer media type of an ONNX model.
pub const MODEL_LAYER: &str = "application/vnd.tensorlet.model.v1+onnx";
/// The artifact type of what Tensorlet pushes.
pub const ARTIFACT_TYPE: &str = "application/vnd.tensorlet.blob.v1";
/// The OCI empty config (`{}`), as artifacts without a config use.
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// What an artifact is expected to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WebAssembly component.
    Component,
    /// An ONNX model.
    Model,
}

/// A client of one registry, for one repository prefix.
pub struct OciRegistry {
    client: Client,
    auth: RegistryAuth,
    host: String,
    repository: String,
    /// Largest blob accepted from the registry.
    max_blob: u64,
}

fn client(plain_http: bool) -> Client {
    Client::new(ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(std::time::Duration::from_secs(3)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        ..Default::default()
    })
}

fn auth(credentials: Option<(String, String)>) -> RegistryAuth {
    match credentials {
        Some((user, password)) => RegistryAuth::Basic(user, password),
        None => RegistryAuth::Anonymous,
    }
}

/// Collects a pulled blob, refusing more than `max` bytes: a registry is not trusted to send
/// what the manifest said.
struct Capped {
    buf: Vec<u8>,
    max: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if (self.buf.len() + data.len()) as u64 > self.max {
            let max = self.max;
            return Poll::Ready(Err(io::Error::other(format!(
                "the blob is larger than this node accepts ({max} bytes)"
            ))));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl OciRegistry {
    /// A client for `{url}/{repository}/artifacts`.
    pub fn new(
        url: &RegistryUrl,
        repository: &str,
        credentials: Option<(String, String)>,
        max_blob: u64,
    ) -> Self {
        Self {
            client: client(url.plain_http),
            auth: auth(credentials),
            host: url.host.clone(),
            repository: format!("{repository}/artifacts"),
            max_blob,
        }
    }

    fn by_digest(&self, hex: &str) -> Reference {
        Reference::with_digest(
            self.host.clone(),
            self.repository.clone(),
            format!("sha256:{hex}"),
        )
    }

    /// Pushes `bytes` (whose sha256 is `hex`) as an artifact, unless the registry has it.
    pub async fn push(&self, hex: &str, bytes: Bytes) -> anyhow::Result<()> {
        let reference = self.by_digest(hex);
        self.client
            .store_auth_if_needed(&self.host, &self.auth)
            .await;
        let digest = format!("sha256:{hex}");
        if self.client.blob_exists(&reference, &digest).await? {
            return Ok(());
        }
        let media_type = if bytes.starts_with(b"\0asm") {
            WASM_LAYER
        } else {
            MODEL_LAYER
        };
        let size = bytes.len() as i64;
        self.client.push_blob(&reference, bytes, &digest).await?;
        let config = Bytes::from_static(b"{}");
        let config_digest = format!("sha256:{}", crate::store::digest(&config));
        self.client
            .push_blob(&reference, config.clone(), &config_digest)
            .await?;
        let manifest = OciImageManifest {
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            config: OciDescriptor {
                media_type: EMPTY_CONFIG.to_string(),
                digest: config_digest,
                size: config.len() as i64,
                ..Default::default()
            },
            layers: vec![OciDescriptor {
                media_type: media_type.to_string(),
                digest,
                size,
                ..Default::default()
            }],
            ..Default::default()
        };
        let tagged = Reference::with_tag(
            self.host.clone(),
            self.repository.clone(),
            format!("sha256-{hex}"),
        );
        self.client
            .push_manifest(&tagged, &OciManifest::Image(manifest))
            .await?;
        Ok(())
    }

    /// Whether the registry answers at all (a blob lookup that may well find nothing).
    pub async fn reachable(&self) -> bool {
        let probe = self.by_digest(&"0".repeat(64));
        self.client
            .store_auth_if_needed(&self.host, &self.auth)
            .await;
        !matches!(
            self.client
                .blob_exists(&probe, &format!("sha256:{}", "0".repeat(64)))
                .await,
            Err(oci_client::errors::OciDistributionError::RequestError(_))
        )
    }

    /// Pulls the blob `hex`, checked against its digest.
    pub async fn pull(&self, hex: &str) -> anyhow::Result<Vec<u8>> {
        let reference = self.by_digest(hex);
        self.client
            .store_auth_if_needed(&self.host, &self.auth)
            .await;
        pull_layer(
            &self.client,
            &reference,
            &format!("sha256:{hex}"),
            self.max_blob,
        )
        .await
    }
}

async fn pull_layer(
    client: &Client,
    reference: &Reference,
    digest: &str,
    max: u64,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Capped {
        buf: Vec::new(),
        max,
    };
    // The client checks the bytes against `digest` (and the registry's digest header).
    client.pull_blob(reference, digest, &mut out).await?;
    let hex = digest.trim_start_matches("sha256:");
    // Checked again here: only verified bytes ever reach the data directory.
    if crate::store::digest(&out.buf) != hex {
        bail!("the registry sent bytes that do not match {digest}");
    }
    Ok(out.buf)
}

/// Pulls the component or model of `oci://HOST/REPO:TAG` or `oci://HOST/REPO@sha256:...`.
/// Loopback registries are spoken to over plain HTTP, others over HTTPS; credentials come from
/// `TENSORLET_REGISTRY_USERNAME` and `TENSORLET_REGISTRY_PASSWORD` when set.
pub async fn pull_artifact(reference: &str, kind: Kind, max: u64) -> anyhow::Result<Vec<u8>> {
    let text = reference.strip_prefix("oci://").unwrap_or(reference);
    let parsed: Reference = text
        .parse()
        .with_context(|| format!("`{reference}` is not an OCI reference (oci://HOST/REPO:TAG)"))?;
    let host = parsed.registry().split(':').next().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let client = client(loopback);
    let credentials = match (
        std::env::var("TENSORLET_REGISTRY_USERNAME"),
        std::env::var("TENSORLET_REGISTRY_PASSWORD"),
    ) {
        (Ok(u), Ok(p)) => Some((u, p)),
        _ => None,
    };
    let (manifest, _) = client
        .pull_manifest(&parsed, &auth(credentials))
        .await
        .with_context(|| format!("fetching the manifest of {reference}"))?;
    let OciManifest::Image(manifest) = manifest else {
        bail!("{reference} is an image index, not a single artifact");
    };
    let layer = choose_layer(&manifest.layers, kind).with_context(|| {
        let found: Vec<&str> = manifest
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        format!("{reference} has no {kind:?} layer (layers: {found:?})")
    })?;
    if layer.size < 0 || layer.size as u64 > max {
        bail!(
            "the layer of {reference} is {} bytes: over this node's limit of {max}",
            layer.size
        );
    }
    pull_layer(&client, &parsed, &layer.digest, max).await
}

/// The layer that holds a component or a model: by media type, else the only layer there is.
fn choose_layer(layers: &[OciDescriptor], kind: Kind) -> Option<&OciDescriptor> {
    let wanted: &[&str] = match kind {
        Kind::Component => &[WASM_LAYER, WKG_WASM_LAYER],
        Kind::Model => &[
            MODEL_LAYER,
            "application/vnd.onnx",
            "application/octet-stream",
        ],
    };
    layers
        .iter()
        .find(|l| wanted.contains(&l.media_type.as_str()))
        .or(match layers {
            [only] => Some(only),
            _ => None,
        })
}

/// The node's blob store in a fleet: the data directory first, the registry behind it.
pub struct FleetBlobs {
    /// The node's own copy (and the only one it serves from).
    pub local: Arc<DataDir>,
    /// The registry.
    pub registry: Arc<OciRegistry>,
    /// This node's sync state (blob fetch metrics, registry reachability).
    pub state: Arc<NodeState>,
    /// The runtime the registry client runs on.
    pub rt: Handle,
}

impl BlobStore for FleetBlobs {
    fn put(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        self.local.put_blob(digest, bytes)?;
        // Pushed before the commit that names it: a pointer never names a missing blob.
        self.rt
            .block_on(self.registry.push(digest, Bytes::copy_from_slice(bytes)))
            .map_err(|e| {
                self.state.registry_ok.store(false, Ordering::Relaxed);
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("cannot push to the OCI registry: {e:#}"),
                )
            })?;
        self.state.registry_ok.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn get(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        if let Ok(bytes) = self.local.read_blob(digest) {
            return Ok(bytes);
        }
        let pulled = self.rt.block_on(self.registry.pull(digest));
        let m = &self.state;
        match pulled {
            Ok(bytes) => {
                m.blob_fetches.fetch_add(1, Ordering::Relaxed);
                m.blob_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                m.registry_ok.store(true, Ordering::Relaxed);
                self.local.put_blob(digest, &bytes)?;
                Ok(bytes)
            }
            Err(e) => {
                m.blob_failures.fetch_add(1, Ordering::Relaxed);
                if e.downcast_ref::<oci_client::errors::OciDistributionError>()
                    .is_some_and(|e| {
                        matches!(e, oci_client::errors::OciDistributionError::RequestError(_))
                    })
                {
                    m.registry_ok.store(false, Ordering::Relaxed);
                }
                Err(e.context(format!("fetching blob sha256:{digest} from the registry")))
            }
        }
    }

    fn hold(&self, digest: &str) -> BlobHold {
        self.local.hold(digest)
    }

    fn retain(&self, referenced: &HashSet<&str>) {
        self.local.retain(referenced)
    }
}
