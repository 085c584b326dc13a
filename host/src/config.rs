//! Node configuration: CLI flags and an optional TOML file, turned once into an immutable
//! [`Config`]. Unknown keys are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Everything the node needs to run, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Where blobs, metadata and compiled code live.
    pub data_dir: PathBuf,
    /// Largest component upload accepted by deploy.
    pub max_component_size: u64,
    /// How long in-flight requests may run after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request's headers (slow-loris defence).
    pub header_read_timeout: Duration,
    /// How long a client may take to send an admin upload's body.
    pub body_read_timeout: Duration,
    /// Size at which the audit log moves to `audit.log.1`.
    pub audit_log_max: u64,
    /// Versions retained per function (older ones are dropped, never the live one).
    pub max_versions: usize,
    /// Open client connections at once; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// ONNX Runtime library to load (`libonnxruntime.so`), if any was found.
    pub onnxruntime: Option<PathBuf>,
    /// Largest model upload accepted.
    pub max_model_size: u64,
    /// ONNX Runtime sessions per model: how many inferences of one model run at once.
    pub model_sessions: usize,
    /// Most CPU memory ONNX Runtime may hold for all models (weights and tensors together).
    pub model_memory: u64,
    /// Largest model a guest may load from bytes with `graph.load`; `None` = such loads are off.
    pub guest_model_load: Option<u64>,
    /// What happens to a GPU model on a node whose ONNX Runtime has no CUDA provider.
    pub gpu_fallback: crate::nn::onnx::GpuFallback,
    /// Host memory the wasi:nn tensors of one request may hold; `None` = the function's memory
    /// limit.
    pub max_tensor_bytes_per_request: Option<u64>,
    /// Limits a deploy gets when it does not name them.
    pub defaults: FunctionLimits,
    /// Upper bounds for any deploy's limits.
    pub ceilings: Ceilings,
    /// Whether functions and models belong to tenants (see [`crate::auth`]).
    pub tenants: bool,
    /// The operator token, when the config sets one (else made at first start with tenants).
    pub operator_token: Option<String>,
    /// Quotas a new tenant gets unless `tenant create` says otherwise.
    pub tenant_defaults: Quotas,
    /// Fleet mode (`[fleet]`): the engine and registry this node shares with others.
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// How anomalies are detected (`[anomalies]`).
    pub anomalies: crate::anomaly::AnomalyConfig,
    /// Where anomalies raised and cleared are POSTed, if anywhere.
    pub alert_webhook: Option<String>,
    /// The OTLP/HTTP collector function requests are traced to (`http://HOST:4318`), if any.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded (a caller's `traceparent` decides for its own).
    pub otlp_sample_ratio: f64,
    /// How the node writes its own log lines (`log_format`).
    pub log_format: crate::node_log::LogFormat,
    /// How much guest output is kept (`[logs]`).
    pub logs: crate::logs::LogsConfig,
    /// Where the inference protocol's gRPC service listens (`grpc_listen`); off when unset.
    pub grpc_listen: Option<SocketAddr>,
    /// How long an inference protocol request may wait for quotas, a session and its
    /// inference together (`model_timeout`).
    pub model_timeout: Duration,
    /// Largest inference protocol request: a REST body or a gRPC message (`max_infer_body`).
    pub max_infer_body: u64,
    /// The bounds on guests' outbound HTTP (`[outbound]`).
    pub outbound: crate::outbound::OutboundConfig,
}

/// A tenant's quotas, fixed by the operator (`tenant create/update`) and stored with the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Functions the tenant may have.
    pub max_functions: u32,
    /// Models the tenant may have.
    pub max_models: u32,
    /// Bytes of retained function and model versions.
    pub max_stored: u64,
    /// Largest `memory` one instance may ask for.
    pub max_memory: u64,
    /// Longest `timeout` a function may ask for, in milliseconds.
    pub max_timeout_ms: u64,
    /// Requests running at once across the tenant's functions (429 beyond).
    pub max_concurrency: u32,
    /// Sustained requests per second across the tenant's functions (token bucket; a burst of
    /// one second's worth; 429 with Retry-After beyond).
    pub requests_per_second: u32,
    /// Inferences running or waiting for a session at once across the tenant's functions.
    pub max_inferences: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_functions: 20,
            max_models: 10,
            max_stored: 2 << 30,
            max_memory: 256 << 20,
            max_timeout_ms: 60_000,
            max_concurrency: 64,
            requests_per_second: 1000,
            max_inferences: 8,
        }
    }
}

/// Per-function limits, fixed at deploy time and stored with the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionLimits {
    /// Linear memory cap in bytes for one instance.
    pub memory: u64,
    /// Wall-clock budget of one request, in milliseconds.
    pub timeout_ms: u64,
    /// Requests running at once; more get 503.
    pub max_concurrency: u32,
    /// Request body cap in bytes (413 above it).
    pub max_request_body: u64,
    /// Response body cap in bytes (the response is cut off above it).
    pub max_response_body: u64,
}

/// Node-wide maxima for per-function limits.
#[derive(Debug, Clone, Copy)]
pub struct Ceilings {
    /// Largest `memory` a function may ask for; also sizes the pooling allocator's slots.
    pub memory: u64,
    /// Longest `timeout` a function may ask for.
    pub timeout: Duration,
    /// Instances that may exist at once on this node (pooling allocator slots).
    pub instances: u32,
}

impl Default for FunctionLimits {
    fn default() -> Self {
        Self {
            memory: 64 << 20,
            timeout_ms: 10_000,
            max_concurrency: 100,
            max_request_body: 10 << 20,
            max_response_body: 64 << 20,
        }
    }
}

/// The TOML file, as written by a user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    max_component_size: Option<String>,
    shutdown_grace: Option<String>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    audit_log_max: Option<String>,
    max_versions: Option<usize>,
    max_connections: Option<usize>,
    onnxruntime: Option<PathBuf>,
    max_model_size: Option<String>,
    model_sessions: Option<usize>,
    model_memory: Option<String>,
    guest_model_load: Option<bool>,
    gpu_fallback: Option<String>,
    max_guest_model_size: Option<String>,
    max_tensor_bytes_per_request: Option<String>,
    #[serde(default)]
    defaults: FileDefaults,
    #[serde(default)]
    ceilings: FileCeilings,
    tenants: Option<bool>,
    operator_token: Option<String>,
    #[serde(default)]
    tenant_defaults: FileQuotas,
    fleet: Option<crate::fleet::FileFleet>,
    #[serde(default)]
    anomalies: crate::anomaly::FileAnomalies,
    alert_webhook: Option<String>,
    otlp_endpoint: Option<String>,
    otlp_sample_ratio: Option<f64>,
    log_format: Option<String>,
    #[serde(default)]
    logs: crate::logs::FileLogs,
    grpc_listen: Option<SocketAddr>,
    model_timeout: Option<String>,
    max_infer_body: Option<String>,
    #[serde(default)]
    outbound: crate::outbound::FileOutbound,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuotas {
    max_functions: Option<u32>,
    max_models: Option<u32>,
    max_stored: Option<String>,
    max_memory: Option<String>,
    max_timeout: Option<String>,
    max_concurrency: Option<u32>,
    requests_per_second: Option<u32>,
    max_inferences: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDefaults {
    memory: Option<String>,
    timeout: Option<String>,
    max_concurrency: Option<u32>,
    max_request_body: Option<String>,
    max_response_body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCeilings {
    memory: Option<String>,
    timeout: Option<String>,
    instances: Option<u32>,
}

impl Config {
    /// Builds the config from an optional TOML file; flags given on the command line win.
    pub fn load(
        file: Option<&Path>,
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
    ) -> anyhow::Result<Config> {
        let parsed: FileConfig = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        Self::from_file(parsed, listen, data_dir)
    }

    /// Parses TOML text (used by tests and `load`).
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Self::from_file(toml::from_str(text)?, None, None)
    }

    fn from_file(
        f: FileConfig,
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
    ) -> anyhow::Result<Config> {
        let base = FunctionLimits::default();
        let d = &f.defaults;
        let defaults = FunctionLimits {
            memory: opt(&d.memory, parse_size, base.memory).context("defaults.memory")?,
            timeout_ms: opt(
                &d.timeout,
                parse_duration,
                Duration::from_millis(base.timeout_ms),
            )
            .context("defaults.timeout")?
            .as_millis() as u64,
            max_concurrency: d.max_concurrency.unwrap_or(base.max_concurrency),
            max_request_body: opt(&d.max_request_body, parse_size, base.max_request_body)
                .context("defaults.max_request_body")?,
            max_response_body: opt(&d.max_response_body, parse_size, base.max_response_body)
                .context("defaults.max_response_body")?,
        };
        let c = &f.ceilings;
        let ceilings = Ceilings {
            memory: opt(&c.memory, parse_size, 1 << 30).context("ceilings.memory")?,
            timeout: opt(&c.timeout, parse_duration, Duration::from_secs(300))
                .context("ceilings.timeout")?,
            instances: c.instances.unwrap_or(1000),
        };
        let data_dir = data_dir
            .or(f.data_dir)
            .unwrap_or_else(|| PathBuf::from("./tensorlet-data"));
        let fleet = f
            .fleet
            .map(|fleet| crate::fleet::FleetConfig::from_file(fleet, &data_dir))
            .transpose()?;
        let config = Config {
            listen: listen
                .or(f.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir,
            max_component_size: opt(&f.max_component_size, parse_size, 64 << 20)
                .context("max_component_size")?,
            shutdown_grace: opt(&f.shutdown_grace, parse_duration, Duration::from_secs(30))
                .context("shutdown_grace")?,
            header_read_timeout: opt(
                &f.header_read_timeout,
                parse_duration,
                Duration::from_secs(30),
            )
            .context("header_read_timeout")?,
            body_read_timeout: opt(
                &f.body_read_timeout,
                parse_duration,
                Duration::from_secs(300),
            )
            .context("body_read_timeout")?,
            audit_log_max: opt(&f.audit_log_max, parse_size, 64 << 20).context("audit_log_max")?,
            max_versions: f.max_versions.unwrap_or(20),
            max_connections: f.max_connections.unwrap_or(10_000),
            onnxruntime: f.onnxruntime.or_else(default_onnxruntime),
            max_model_size: opt(&f.max_model_size, parse_size, 1 << 30)
                .context("max_model_size")?,
            model_sessions: f.model_sessions.unwrap_or(2).max(1),
            model_memory: opt(&f.model_memory, parse_size, 4 << 30).context("model_memory")?,
            gpu_fallback: match f.gpu_fallback.as_deref() {
                None | Some("error") => crate::nn::onnx::GpuFallback::Error,
                Some("cpu") => crate::nn::onnx::GpuFallback::Cpu,
                Some(other) => bail!("gpu_fallback must be \"error\" or \"cpu\", not \"{other}\""),
            },
            guest_model_load: match f.guest_model_load {
                Some(true) => Some(
                    opt(&f.max_guest_model_size, parse_size, 32 << 20)
                        .context("max_guest_model_size")?,
                ),
                _ => None,
            },
            max_tensor_bytes_per_request: f
                .max_tensor_bytes_per_request
                .as_deref()
                .map(parse_size)
                .transpose()
                .context("max_tensor_bytes_per_request")?,
            defaults,
            ceilings,
            tenants: f.tenants.unwrap_or(false),
            operator_token: f.operator_token,
            tenant_defaults: tenant_defaults(&f.tenant_defaults)?,
            fleet,
            anomalies: crate::anomaly::AnomalyConfig::from_file(f.anomalies)?,
            alert_webhook: f.alert_webhook,
            otlp_endpoint: f.otlp_endpoint,
            otlp_sample_ratio: f.otlp_sample_ratio.unwrap_or(1.0),
            grpc_listen: f.grpc_listen,
            outbound: crate::outbound::OutboundConfig::from_file(f.outbound)?,
            model_timeout: opt(&f.model_timeout, parse_duration, Duration::from_secs(10))
                .context("model_timeout")?,
            max_infer_body: opt(&f.max_infer_body, parse_size, 32 << 20)
                .context("max_infer_body")?,
            log_format: match f.log_format.as_deref() {
                Some(text) => crate::node_log::LogFormat::parse(text)?,
                None => crate::node_log::LogFormat::Text,
            },
            logs: crate::logs::LogsConfig::from_file(f.logs)?,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_versions == 0 {
            bail!("max_versions must be at least 1");
        }
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if self.ceilings.instances == 0 {
            bail!("ceilings.instances must be at least 1");
        }
        let weak = |t: &String| !t.starts_with(crate::auth::OPERATOR_PREFIX) || t.len() < 36;
        if self.operator_token.as_ref().is_some_and(weak) {
            bail!(
                "operator_token must start with `tlo_` and hold at least 32 characters after it \
                 (for example `tlo_` followed by `openssl rand -hex 32`)"
            );
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            check_otlp_endpoint(endpoint)?;
        }
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            bail!("otlp_sample_ratio must be from 0 to 1 (the share of new traces recorded)");
        }
        self.check_limits(&self.defaults)
            .map_err(|e| anyhow::anyhow!("[defaults] {e}"))
    }

    /// Checks a function's limits against the node's ceilings; the message says how to fix it.
    pub fn check_limits(&self, l: &FunctionLimits) -> Result<(), String> {
        if l.memory < 1 << 20 || l.memory > self.ceilings.memory {
            return Err(format!(
                "memory must be between 1MiB and {} (this node's ceiling)",
                format_size(self.ceilings.memory)
            ));
        }
        if l.timeout_ms == 0 || u128::from(l.timeout_ms) > self.ceilings.timeout.as_millis() {
            return Err(format!(
                "timeout must be between 1ms and {}s (this node's ceiling)",
                self.ceilings.timeout.as_secs()
            ));
        }
        if l.max_concurrency == 0 || l.max_concurrency > self.ceilings.instances {
            return Err(format!(
                "max_concurrency must be between 1 and {} (this node's instance slots)",
                self.ceilings.instances
            ));
        }
        Ok(())
    }
}

/// An OTLP endpoint is the collector's base URL: spans go to `{endpoint}/v1/traces`.
fn check_otlp_endpoint(endpoint: &str) -> anyhow::Result<()> {
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        anyhow::anyhow!(
            "otlp_endpoint `{endpoint}` is not a URL ({e}): write e.g. \"http://127.0.0.1:4318\""
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        bail!(
            "otlp_endpoint must be an http:// or https:// URL of an OTLP/HTTP collector, e.g. \"http://127.0.0.1:4318\""
        );
    }
    Ok(())
}

fn tenant_defaults(q: &FileQuotas) -> anyhow::Result<Quotas> {
    let base = Quotas::default();
    Ok(Quotas {
        max_functions: q.max_functions.unwrap_or(base.max_functions),
        max_models: q.max_models.unwrap_or(base.max_models),
        max_stored: opt(&q.max_stored, parse_size, base.max_stored)
            .context("tenant_defaults.max_stored")?,
        max_memory: opt(&q.max_memory, parse_size, base.max_memory)
            .context("tenant_defaults.max_memory")?,
        max_timeout_ms: opt(
            &q.max_timeout,
            parse_duration,
            Duration::from_millis(base.max_timeout_ms),
        )
        .context("tenant_defaults.max_timeout")?
        .as_millis() as u64,
        max_concurrency: q.max_concurrency.unwrap_or(base.max_concurrency),
        requests_per_second: q.requests_per_second.unwrap_or(base.requests_per_second),
        max_inferences: q.max_inferences.unwrap_or(base.max_inferences),
    })
}

/// Where to find ONNX Runtime when the config does not say: `ORT_DYLIB_PATH`, else where
/// `scripts/fetch-onnxruntime.sh` puts it.
fn default_onnxruntime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(path));
    }
    let fetched = PathBuf::from(".cache/onnxruntime/libonnxruntime.so.1.31.1");
    fetched.exists().then_some(fetched)
}

fn opt<T>(
    value: &Option<String>,
    parse: fn(&str) -> anyhow::Result<T>,
    default: T,
) -> anyhow::Result<T> {
    value
        .as_deref()
        .map(parse)
        .transpose()
        .map(|v| v.unwrap_or(default))
}

/// Parses sizes such as `64MiB`, `10MB`, `512KiB`, `1GiB` or plain bytes.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{text}` is not a size: write e.g. 64MiB, 512KiB or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            bail!("unknown size unit `{other}` in `{text}`: use B, KiB, MiB, GiB, KB, MB or GB")
        }
    };
    n.checked_mul(mult)
        .with_context(|| format!("size `{text}` is too large"))
}

/// Parses durations such as `10s`, `500ms`, `2m`, `1h` or `7d`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{text}` is not a duration: write e.g. 10s, 500ms or 2m"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" | "" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => bail!("unknown duration unit `{other}` in `{text}`: use ms, s, m, h or d"),
    };
    ms.map(Duration::from_millis)
        .with_context(|| format!("duration `{text}` is too large"))
}

/// Formats a byte count the way users write it.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("fast").is_err());
        assert_eq!(format_size(64 << 20), "64MiB");
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("listn = \"127.0.0.1:1\"").is_err());
        assert!(Config::from_toml("[defaults]\nmemroy = \"1MiB\"").is_err());
        let c = Config::from_toml("max_component_size = \"1MiB\"\n[defaults]\ntimeout = \"2s\"")
            .unwrap();
        assert_eq!(c.max_component_size, 1 << 20);
        assert_eq!(c.defaults.timeout_ms, 2000);
    }

    #[test]
    fn otlp_endpoints_are_collector_urls() {
        let c = Config::from_toml("otlp_endpoint = \"http://127.0.0.1:4318\"").unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(Config::from_toml("").unwrap().otlp_endpoint, None);
        for bad in [
            "127.0.0.1:4318",
            "grpc://collector:4317",
            "http://",
            "not a url",
        ] {
            let toml = format!("otlp_endpoint = \"{bad}\"");
            assert!(Config::from_toml(&toml).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_settings() {
        let c = Config::from_toml(
            "log_format = \"json\"\n[logs]\nmax_bytes_per_function = \"1MiB\"\nmax_age = \"2h\"",
        )
        .unwrap();
        assert_eq!(c.log_format, crate::node_log::LogFormat::Json);
        assert_eq!(c.logs.max_bytes_per_function, 1 << 20);
        assert_eq!(c.logs.max_age, Duration::from_secs(7200));
        assert_eq!(c.logs.max_bytes_per_tenant, 256 << 20);
        let d = Config::from_toml("").unwrap();
        assert_eq!(d.log_format, crate::node_log::LogFormat::Text);
        assert_eq!(d.logs, crate::logs::LogsConfig::default());
        for bad in [
            "log_format = \"xml\"",
            "[logs]\nmax_bytes_per_function = \"1KiB\"",
            "[logs]\nmax_age = \"0s\"",
            "[logs]\nmax_lines = 5",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_over_ceilings_are_refused() {
        assert!(Config::from_toml("[defaults]\nmemory = \"2GiB\"").is_err());
    }
}
