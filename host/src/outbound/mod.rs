//! Outbound HTTP from guests (`wasi:http/outgoing-handler`), allowed on purpose: a function calls
//! only the destinations it was deployed with (`--allow-outbound`, [`pattern`]), within what the
//! operator's `[outbound]` policy lets any function allow, and only public addresses once names
//! are resolved unless the operator opens a range ([`addr`]). The node resolves names itself and
//! connects to the address it checked ([`send`]), so neither a redirect (the guest's next request
//! is checked again) nor a DNS answer pointing inside reaches the node's own network.
//! Everything else is answered `HTTP-request-denied`, as before.

pub mod addr;
pub mod local;
pub mod pattern;
mod send;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use wasmtime_wasi_http::p2::bindings::http::types::{
    ErrorCode as P2ErrorCode, TlsAlertReceivedPayload,
};
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

pub use addr::Cidr;
pub use pattern::{AllowList, HostPattern};

use crate::config::{parse_duration, parse_size};

/// `[outbound]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutbound {
    allowed_hosts: Option<Vec<String>>,
    allow_ips: Option<Vec<String>>,
    allow_private: Option<bool>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    max_concurrent: Option<usize>,
    max_response_bytes: Option<String>,
    ca_file: Option<PathBuf>,
}

/// The operator's bounds on outbound HTTP.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// The most any function may allow: each of a deploy's patterns must fall within one.
    pub allowed_hosts: AllowList,
    /// Address ranges reachable although not public (e.g. `127.0.0.1/32` for a local service).
    pub allow_ips: Vec<Cidr>,
    /// Whether every address is reachable (no check after resolution).
    pub allow_private: bool,
    /// The longest a name's resolution and the connection (TLS included) may take.
    pub connect_timeout: Duration,
    /// The longest a request may wait for its response's head once connected.
    pub first_byte_timeout: Duration,
    /// Outbound requests one instance may have open at once.
    pub max_concurrent: usize,
    /// The largest response body an outbound request may read.
    pub max_response_bytes: u64,
    /// PEM certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self::from_file(FileOutbound::default()).expect("the defaults are valid")
    }
}

impl OutboundConfig {
    /// Checks `[outbound]`.
    pub fn from_file(f: FileOutbound) -> anyhow::Result<Self> {
        let hosts = f.allowed_hosts.unwrap_or_else(|| vec!["*://*:*".into()]);
        let allowed_hosts =
            AllowList::parse(&hosts).map_err(|e| anyhow::anyhow!("outbound.allowed_hosts: {e}"))?;
        let allow_ips = (f.allow_ips.unwrap_or_default().iter())
            .map(|c| {
                c.parse()
                    .map_err(|e| anyhow::anyhow!("outbound.allow_ips: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let duration = |v: &Option<String>, default: u64, what: &str| match v {
            Some(t) => parse_duration(t).with_context(|| format!("outbound.{what}")),
            None => Ok(Duration::from_secs(default)),
        };
        Ok(Self {
            allowed_hosts,
            allow_ips,
            allow_private: f.allow_private.unwrap_or(false),
            connect_timeout: duration(&f.connect_timeout, 5, "connect_timeout")?,
            first_byte_timeout: duration(&f.first_byte_timeout, 30, "first_byte_timeout")?,
            max_concurrent: f.max_concurrent.unwrap_or(16).max(1),
            max_response_bytes: match &f.max_response_bytes {
                Some(t) => parse_size(t).context("outbound.max_response_bytes")?,
                None => 64 << 20,
            },
            ca_file: f.ca_file,
        })
    }

    /// Whether a resolved address may be reached.
    pub fn reachable(&self, ip: std::net::IpAddr) -> bool {
        self.allow_private || addr::is_public(ip) || self.allow_ips.iter().any(|c| c.contains(ip))
    }
}

/// What every request's outbound HTTP shares: the policy, TLS roots and the numbers.
pub struct Outbound {
    config: OutboundConfig,
    tls: Arc<rustls::ClientConfig>,
    stats: send::StatsMap,
    /// The node's own listener, once it serves: where `{name}.fn.internal` calls go.
    local: std::sync::OnceLock<local::Local>,
}

impl Outbound {
    /// The node's outbound side: TLS with the system's roots (and `ca_file`'s), on ring.
    pub fn new(config: OutboundConfig) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = &config.ca_file {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("outbound.ca_file {}: {e}", path.display()))?;
            let (trusted, _) = roots.add_parsable_certificates(certs);
            if trusted == 0 {
                anyhow::bail!(
                    "outbound.ca_file {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
                    path.display()
                );
            }
        }
        if roots.is_empty() {
            tracing::warn!(
                "no trusted TLS roots found (install ca-certificates, or set outbound.ca_file): https calls from guests will fail"
            );
        } else {
            tracing::debug!(system_roots = added, "outbound TLS roots loaded");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS for outbound HTTP")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config,
            tls: Arc::new(tls),
            stats: Default::default(),
            local: std::sync::OnceLock::new(),
        })
    }

    /// The node's policy.
    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    /// Sends `{name}.fn.internal` calls to the node's listener at `listen` from now on.
    pub fn serve_locally(&self, listen: std::net::SocketAddr) {
        if let Some(local) = local::Local::new(listen) {
            let _ = self.local.set(local);
        }
    }

    /// How many calls deep a request with `headers` is, if the node sent it itself (a call
    /// from one of its functions to another); `None` for every other request.
    pub fn internal_hops(&self, headers: &http::HeaderMap) -> Option<u8> {
        self.local.get()?.hops(headers)
    }

    /// Hooks for one request of `function` (of `tenant`, `hops` calls deep) that may reach
    /// `allow`, until `deadline`.
    pub fn hooks(
        self: &Arc<Self>,
        function: &str,
        tenant: Option<Arc<str>>,
        hops: u8,
        allow: Arc<AllowList>,
        deadline: Instant,
    ) -> Hooks {
        Hooks {
            node: Some(Arc::clone(self)),
            function: function.into(),
            allow,
            deadline,
            open: Arc::new(tokio::sync::Semaphore::new(self.config.max_concurrent)),
            tenant,
            hops,
        }
    }
}

/// One request's outbound HTTP, as wasmtime-wasi-http asks for it.
pub struct Hooks {
    /// `None`: no outbound at all (a store made without the node's outbound side, in tests).
    node: Option<Arc<Outbound>>,
    function: Arc<str>,
    allow: Arc<AllowList>,
    deadline: Instant,
    /// `max_concurrent` permits of this instance.
    open: Arc<tokio::sync::Semaphore>,
    tenant: Option<Arc<str>>,
    hops: u8,
}

impl Hooks {
    /// Denies every request.
    pub fn none() -> Self {
        Self {
            node: None,
            function: "".into(),
            allow: Arc::default(),
            deadline: Instant::now(),
            open: Arc::new(tokio::sync::Semaphore::new(0)),
            tenant: None,
            hops: 0,
        }
    }
}

pub(crate) type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let Some(node) = self.node.clone() else {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        let call = send::Call {
            node,
            function: Arc::clone(&self.function),
            allow: Arc::clone(&self.allow),
            deadline: self.deadline,
            open: Arc::clone(&self.open),
            tenant: self.tenant.clone(),
            hops: self.hops,
        };
        Box::new(call.send(request))
    }

    // The defaults log every failure at warn level: a guest could fill the node's log. These say
    // at debug level what happened, and tell certificate problems from other TLS failures.
    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> P2ErrorCode {
        tracing::debug!(function = &*self.function, "outbound TLS failed: {err}");
        match err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(_)) => P2ErrorCode::TlsCertificateError,
            Some(rustls::Error::AlertReceived(alert)) => {
                P2ErrorCode::TlsAlertReceived(TlsAlertReceivedPayload {
                    alert_id: Some(u8::from(*alert)),
                    alert_message: Some(format!("{alert:?}")),
                })
            }
            _ => P2ErrorCode::TlsProtocolError,
        }
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> P2ErrorCode {
        tracing::debug!(
            function = &*self.function,
            "outbound connection failed: {err}"
        );
        match err.kind() {
            std::io::ErrorKind::TimedOut => P2ErrorCode::ConnectionTimeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                P2ErrorCode::ConnectionTerminated
            }
            _ => P2ErrorCode::ConnectionRefused,
        }
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> P2ErrorCode {
        tracing::debug!(function = &*self.function, "outbound HTTP failed: {err}");
        if err.is_incomplete_message() {
            P2ErrorCode::HttpResponseIncomplete
        } else {
            P2ErrorCode::HttpProtocolError
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_checked_and_defaults_hold_back_the_inside() {
        let c = OutboundConfig::default();
        assert!(!c.reachable("127.0.0.1".parse().unwrap()));
        assert!(c.reachable("8.8.8.8".parse().unwrap()));
        assert_eq!(c.max_response_bytes, 64 << 20);
        let open: FileOutbound =
            toml::from_str("allow_ips = [\"127.0.0.1/32\"]\nconnect_timeout = \"1s\"").unwrap();
        let c = OutboundConfig::from_file(open).unwrap();
        assert!(
            c.reachable("127.0.0.1".parse().unwrap()) && !c.reachable("127.0.0.2".parse().unwrap())
        );
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        for bad in [
            "allowed_hosts = [\"x\"]",
            "allow_ips = [\"300.0.0.1\"]",
            "max_response_bytes = \"lots\"",
        ] {
            let f: FileOutbound = toml::from_str(bad).unwrap();
            assert!(OutboundConfig::from_file(f).is_err(), "{bad}");
        }
    }
}
