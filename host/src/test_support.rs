//! What the in-process tests share: a node's parts (config, runtime, metrics, registry) on a
//! temporary data directory of their own, and the guests scripts/build-guests.sh builds.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::nn::onnx::Onnx;
use crate::nn::{GUEST_LOADED, ModelSet, NnNode};
use crate::registry::Registry;
use crate::runtime::Runtime;

/// A fresh, empty directory under the system's temporary directory, removed (whatever is in
/// it, even if a test left a file where a directory was) when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// `tensorlet-{kind}-{pid}-{n}`, new for each call in this process.
    pub(crate) fn new(kind: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tensorlet-{kind}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The parts of a node as `tensorlet serve` builds them, without a socket. `dir` is the last
/// field, so the rest is dropped before the data directory goes.
pub(crate) struct NodeParts {
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) registry: Registry,
    pub(crate) dir: TempDir,
}

/// A node configured by `toml` plus `data_dir` (a new [`TempDir`] named for `kind`), with
/// ONNX Runtime when `onnx` is given.
pub(crate) fn node_parts(kind: &str, toml: &str, onnx: Option<Arc<Onnx>>) -> NodeParts {
    let dir = TempDir::new(kind);
    let config = Config::from_toml(&format!(
        "data_dir = {:?}\n{toml}",
        dir.display().to_string()
    ))
    .unwrap();
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let nn = Arc::new(NnNode {
        onnx,
        models: ModelSet::default(),
        guest_load_limit: config.guest_model_load,
        guest_load_metrics: metrics.model(GUEST_LOADED),
    });
    let runtime = Arc::new(Runtime::new(&config, Arc::clone(&nn)).unwrap());
    let registry = Registry::open(
        Arc::clone(&config),
        Arc::clone(&runtime),
        Arc::clone(&metrics),
        nn,
    )
    .unwrap();
    NodeParts {
        config,
        metrics,
        runtime,
        registry,
        dir,
    }
}

/// The bytes of a guest built by scripts/build-guests.sh (or by the integration tests).
pub(crate) fn guest(name: &str) -> Bytes {
    fixture(
        &format!("../target/wasm/wasm32-wasip2/release/{name}.wasm"),
        "build the guests with scripts/build-guests.sh",
    )
}

/// The bytes of the file at `relative` to the host crate; `hint` says where it comes from.
pub(crate) fn fixture(relative: &str, hint: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{} ({e}): {hint}", path.display()));
    Bytes::from(bytes)
}

static SUBSCRIBERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Taken by a test before it installs a tracing subscriber of its own (`set_default`), held while
/// that subscriber is in place.
///
/// tracing-core caches each callsite's interest. While a single dispatcher is registered it asks
/// only the *calling thread's* default: another test's thread, which has none, then caches
/// "never" for a callsite it hits first (the request span), and this test's subscriber misses
/// it. A global no-op subscriber makes two registered dispatchers, so every cached interest is
/// asked of all of them. The lock keeps two such tests from rebuilding under each other.
pub fn one_subscriber_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        // Fails only if a global subscriber is already set, which serves as well.
        let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::new());
    });
    SUBSCRIBERS.lock().unwrap_or_else(|e| e.into_inner())
}
