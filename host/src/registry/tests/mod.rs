//! In-process tests of every registry transition: a real [`Registry`] (runtime, metrics, the
//! data directory's [`crate::store::DataDir`]) on a temporary data directory, driven through its
//! public operations. Each test checks the answer (or the [`RegistryError`] variant), what the
//! request path and the admin views show afterwards, and that `DATA/meta.json`'s revision moved
//! by exactly one per committed change and not at all for a refused one.

/// Asserts that `answer` (a `Result<_, RegistryError>`) was refused with an error that matches
/// `pattern` (against `&RegistryError`, guard and all), and shows the error when it does not.
macro_rules! assert_refused {
    ($answer:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {{
        let e = refused($answer);
        assert!(matches!(&e, $pattern $(if $guard)?), "{e:?}");
    }};
}

/// Declares a `#[tokio::test]` that needs ONNX Runtime: `#[ignore]`d, with the reason, when
/// host/build.rs did not find it (`cfg(onnxruntime)`), as tests/integration's `nn_test!` does.
macro_rules! onnx_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[tokio::test]
        #[cfg_attr(
            not(onnxruntime),
            ignore = "needs ONNX Runtime: run scripts/fetch-onnxruntime.sh"
        )]
        async fn $name() $body
    };
}

mod failures;
mod functions;
mod models;
mod tenants;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::{Deploy, DeploySettings, Registry, RegistryError};
use crate::api;
use crate::config::{Config, FunctionLimits};
use crate::key::{FunctionKey, ModelKey};
use crate::nn::onnx::{ModelOptions, Onnx};
use crate::test_support::{TempDir, fixture, guest, node_parts};

/// A registry on its own data directory (removed when dropped; the failure tests may leave
/// `tmp` in it as a file).
struct Node {
    registry: Registry,
    config: Arc<Config>,
    dir: TempDir,
}

/// A node configured by `toml` (plus its data directory), with ONNX Runtime when `onnx`.
fn node_with(toml: &str, onnx: bool) -> Node {
    let parts = node_parts("registry", toml, onnx.then(onnx_runtime));
    Node {
        registry: parts.registry,
        config: parts.config,
        dir: parts.dir,
    }
}

/// A single-user node without ONNX Runtime.
fn node() -> Node {
    node_with("", false)
}

/// A single-user node with ONNX Runtime and the model `m` (tests/models/add_f32.onnx, the
/// default options: CPU, max batch 1) added: revision 1.
async fn node_with_m() -> Node {
    let node = node_with("", true);
    let options = ModelOptions::default();
    created(
        node.registry
            .add_model(&mk("m"), model("add_f32"), options)
            .await,
    );
    assert_eq!(node.revision(), 1);
    node
}

/// ONNX Runtime, loaded once per test process (as `tensorlet serve` loads it) from
/// `ORT_DYLIB_PATH`, else where scripts/fetch-onnxruntime.sh puts it.
fn onnx_runtime() -> Arc<Onnx> {
    static ONNX: OnceLock<Arc<Onnx>> = OnceLock::new();
    Arc::clone(ONNX.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let cache = std::env::var_os("TENSORLET_CACHE_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache"));
                cache.join("onnxruntime/libonnxruntime.so.1.31.1")
            });
        let config = Config::from_toml("").unwrap();
        let onnx = Onnx::load(&path, config.gpu_fallback, config.model_memory)
            .unwrap_or_else(|e| panic!("{e:#}: run scripts/fetch-onnxruntime.sh"));
        Arc::new(onnx)
    }))
}

impl Node {
    /// `revision` of `DATA/meta.json` (0 before the first commit).
    fn revision(&self) -> u64 {
        match std::fs::read(self.dir.join("meta.json")) {
            Ok(bytes) => {
                let meta: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                meta["revision"].as_u64().unwrap_or(0)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => panic!("reading meta.json: {e}"),
        }
    }

    /// Whether the blob of `version` is in the data directory.
    fn blob(&self, version: &api::VersionView) -> bool {
        let hex = version.digest.strip_prefix("sha256:").unwrap();
        self.dir.join("blobs/sha256").join(hex).is_file()
    }

    /// The node's default limits.
    fn limits(&self) -> FunctionLimits {
        self.config.defaults
    }

    /// The default limits, `env` and `models`, not `public`.
    fn settings(&self, env: BTreeMap<String, String>, models: Vec<String>) -> DeploySettings {
        DeploySettings {
            limits: self.limits(),
            env,
            models,
            public: false,
            allow_outbound: Vec::new(),
            stage: false,
        }
    }

    /// Deploys `bytes` as `name` (`NAME` or `TENANT/NAME`) with the default limits and no env,
    /// models or `public`.
    async fn deploy(
        &self,
        name: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<Deploy<api::VersionView>, RegistryError> {
        self.deploy_with(name, bytes, env(&[]), Vec::new()).await
    }

    /// Deploys `bytes` as `name` with the default limits, `env` and `models`.
    async fn deploy_with(
        &self,
        name: &str,
        bytes: impl Into<Bytes>,
        env: BTreeMap<String, String>,
        models: Vec<String>,
    ) -> Result<Deploy<api::VersionView>, RegistryError> {
        let settings = self.settings(env, models);
        (self.registry)
            .deploy(&fk(name), bytes.into(), settings)
            .await
    }

    /// Creates the tenant `name` with the default quotas.
    async fn create_tenant(&self, name: &str) -> api::CreatedTenant {
        let patch = api::QuotaPatch::default();
        self.registry.create_tenant(name, &patch).await.unwrap()
    }

    /// The short id of the version `route(name)` serves, if any.
    fn routed(&self, name: &str) -> Option<String> {
        (self.registry.route(&fk(name))).map(|d| d.function.version.to_string())
    }

    /// The names `list(owner)` shows.
    async fn names(&self, owner: Option<&str>) -> Vec<String> {
        let list = self.registry.list(owner).await;
        list.functions.into_iter().map(|f| f.name).collect()
    }
}

/// The key of the function `NAME` or `TENANT/NAME`.
fn fk(s: &str) -> FunctionKey {
    s.parse().unwrap()
}

/// The key of the model `NAME` or `TENANT/NAME`.
fn mk(s: &str) -> ModelKey {
    s.parse().unwrap()
}

/// An environment from pairs.
fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The bytes of a test model in tests/models.
fn model(name: &str) -> Bytes {
    fixture(
        &format!("../tests/models/{name}.onnx"),
        "a committed test model",
    )
}

/// The view of a deploy or model add that must have created a new version.
fn created<V>(answer: Result<Deploy<V>, RegistryError>) -> V {
    match answer {
        Ok(Deploy::Created(v)) => v,
        Ok(Deploy::Existing(_)) => panic!("expected a new version, got an existing one"),
        Err(e) => panic!("expected a new version, got {e:?}"),
    }
}

/// The view of a deploy or model add that must have found the version existing.
fn existing<V>(answer: Result<Deploy<V>, RegistryError>) -> V {
    match answer {
        Ok(Deploy::Existing(v)) => v,
        Ok(Deploy::Created(_)) => panic!("expected an existing version, got a new one"),
        Err(e) => panic!("expected an existing version, got {e:?}"),
    }
}

/// The error of an operation that must have been refused.
fn refused<T>(answer: Result<T, RegistryError>) -> RegistryError {
    match answer {
        Ok(_) => panic!("expected a refusal, the operation succeeded"),
        Err(e) => e,
    }
}
