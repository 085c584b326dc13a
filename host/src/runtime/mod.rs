//! The wasmtime side of the node: one [`Engine`] (pooling allocator, epoch interruption), one
//! [`Linker`] with WASI and wasi:http, compilation and validation of uploads, and the
//! per-request [`invoke`](Runtime::invoke) path.
//!
//! Components are compiled once, at deploy (or from the on-disk cache at start-up), into a
//! [`ProxyPre`]; every request instantiates a fresh instance from it.

mod capture;
mod epoch;
mod fair;
mod invoke;
mod state;

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config as EngineConfig, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use fair::Worker;
pub use invoke::{Function, GuestBody, Invocation, InvokeError};
pub use state::HostState;

use crate::config::Config;
use crate::nn::NnNode;

/// A compiled, linked, ready-to-instantiate component.
pub type Prepared = ProxyPre<HostState>;

/// Engine, linker, epoch ticker and the tenants' CPU slots, shared by every request. All of the
/// scheduling state is here, none of it in globals: two runtimes in one process (as in tests)
/// neither tick faster for each other's guests nor share tenant slots.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    engine_hash: String,
    pooling: bool,
    nn: Arc<NnNode>,
    /// `max_tensor_bytes_per_request`, when the node sets it.
    tensor_budget: Option<u64>,
    /// Guests' outbound HTTP.
    outbound: Arc<crate::outbound::Outbound>,
    ticker: epoch::EpochTicker,
    /// Each worker thread's tenant slots ([`fair`]).
    workers: fair::Workers,
}

impl Runtime {
    /// Builds the engine (pooling allocator when the address space allows it) and the linker.
    pub fn new(config: &Config, nn: Arc<NnNode>) -> anyhow::Result<Self> {
        let (engine, pooling) = match Engine::new(&engine_config(config, true)) {
            Ok(engine) => (engine, true),
            Err(e) => {
                // The pool reserves address space for every slot up front; where that is not
                // allowed (a ulimit -v, a small address space) fall back to on-demand allocation.
                tracing::warn!("pooling allocator unavailable ({e:#}); using on-demand allocation");
                (
                    Engine::new(&engine_config(config, false)).map_err(to_anyhow)?,
                    false,
                )
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(to_anyhow)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(to_anyhow)?;
        crate::nn::add_to_linker(&mut linker, HostState::nn).map_err(to_anyhow)?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());
        let ticker = epoch::EpochTicker::spawn(&engine).context("starting the epoch thread")?;
        Ok(Self {
            engine,
            linker,
            engine_hash,
            pooling,
            nn,
            tensor_budget: config.max_tensor_bytes_per_request,
            outbound: Arc::new(
                crate::outbound::Outbound::new(config.outbound.clone())
                    .context("setting up outbound HTTP")?,
            ),
            ticker,
            workers: fair::Workers::default(),
        })
    }

    /// Guests' outbound HTTP: the policy, TLS and the numbers.
    pub fn outbound(&self) -> &Arc<crate::outbound::Outbound> {
        &self.outbound
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Identifies the engine settings; compiled code is only reused under the same hash.
    pub fn engine_hash(&self) -> &str {
        &self.engine_hash
    }

    /// Checks and compiles an upload. The error is a message for the uploader.
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, String> {
        check_header(bytes)?;
        Component::new(&self.engine, bytes)
            .map_err(|e| format!("the component does not compile: {}", root_cause(&e)))
    }

    /// Links a compiled component and checks it is an HTTP handler.
    pub fn prepare(&self, component: &Component) -> Result<Prepared, String> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            format!(
                "the component needs an import this node does not provide: {}. \
                 A function may import wasi:http, wasi:cli, wasi:io, wasi:clocks, wasi:random, \
                 wasi:filesystem, wasi:sockets (0.2.x) and wasi:nn (0.2.0-rc-2024-10-28)",
                root_cause(&e)
            )
        })?;
        ProxyPre::new(pre).map_err(|e| {
            format!(
                "the component does not export `wasi:http/incoming-handler@0.2.x` ({}): \
                 build it as an HTTP handler (for example with tensorlet-sdk's export_handler!)",
                root_cause(&e)
            )
        })
    }

    /// Serializes compiled code for the on-disk cache.
    pub fn serialize(&self, component: &Component) -> anyhow::Result<Vec<u8>> {
        component.serialize().map_err(to_anyhow)
    }

    /// Loads compiled code from the node's own cache.
    pub fn deserialize_file(&self, path: &Path) -> anyhow::Result<Component> {
        // SAFETY: the file was written by `serialize` of an engine with the same settings (the
        // cache directory is keyed by `engine_hash`) into the node's private data directory,
        // through a temp file and an atomic rename, so it is complete and trusted.
        unsafe { Component::deserialize_file(&self.engine, path) }.map_err(to_anyhow)
    }
}

/// Tells apart random bytes, core modules and components before compiling, for clear errors.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the upload is empty: send the .wasm file as the request body".into());
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary (no \\0asm header): upload a .wasm component".into());
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(
            "this is a core WebAssembly module, not a component: build for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)"
                .into(),
        ),
        _ => {
            Err("unsupported WebAssembly binary version: upload a component (wasm32-wasip2)".into())
        }
    }
}

/// wasmtime has its own error type since v42; the node's start-up code speaks anyhow.
fn to_anyhow(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

fn root_cause(e: &wasmtime::Error) -> String {
    format!("{e:#}")
}

fn engine_config(config: &Config, pooling: bool) -> EngineConfig {
    let mut c = EngineConfig::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    // Guests get a 512 KiB wasm stack; deep recursion traps cleanly instead of growing.
    c.max_wasm_stack(512 * 1024);
    if pooling {
        let slots = config.ceilings.instances;
        let mut p = PoolingAllocationConfig::default();
        p.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots)
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots)
            .max_memory_size(config.ceilings.memory as usize)
            .max_memories_per_component(2)
            // Keeping a few MiB of each slot resident between instances turns the kernel's
            // madvise + page-fault cycle into a memset: about twice the throughput for small
            // handlers, while each request still gets a zeroed, fresh instance.
            .linear_memory_keep_resident(4 << 20)
            // With PAGEMAP_SCAN (Linux 6.7+) only the pages a request dirtied are reset,
            // instead of the whole kept-resident prefix; older kernels fall back to memset.
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(1 << 20)
            .async_stack_keep_resident(1 << 20);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    } else {
        // On-demand instances reserve only what a function may use, so a node under an
        // address-space limit can still run a few of them.
        c.memory_reservation(config.ceilings.memory);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::nn::ModelSet;

    fn runtime() -> Runtime {
        // Small, so that two pools fit in a test process.
        let config = Config::from_toml(
            r#"
                [defaults]
                memory = "16MiB"
                max_concurrency = 2
                [ceilings]
                memory = "16MiB"
                instances = 2
            "#,
        )
        .unwrap();
        let nn = NnNode {
            onnx: None,
            models: ModelSet::default(),
            guest_load_limit: None,
            guest_load_metrics: Metrics::default().model(crate::nn::GUEST_LOADED),
        };
        Runtime::new(&config, Arc::new(nn)).unwrap()
    }

    #[test]
    fn two_runtimes_share_no_scheduling_state() {
        let (a, b) = (runtime(), runtime());
        let busy = a.ticker.cpu_bound().enter();
        assert_eq!(a.ticker.cpu_bound().tick(), epoch::BUSY_TICK);
        assert_eq!(
            b.ticker.cpu_bound().tick(),
            epoch::TICK,
            "a CPU-bound guest of one runtime speeds up only its own ticker"
        );
        drop(busy);
        assert_eq!(a.ticker.cpu_bound().tick(), epoch::TICK);

        // The same tenant on the same worker of each runtime: two slots, not one.
        let request = http::Extensions::new();
        let (here, there) = (
            a.workers.share(&request, "t".into()),
            b.workers.share(&request, "t".into()),
        );
        assert!(!here.same_slot(&there));
        assert!(here.same_slot(&a.workers.share(&request, "t".into())));
    }

    #[test]
    fn headers_are_told_apart() {
        assert!(check_header(b"").unwrap_err().contains("empty"));
        assert!(
            check_header(b"hello world, not wasm")
                .unwrap_err()
                .contains("not a WebAssembly binary")
        );
        assert!(
            check_header(b"\0asm\x01\0\0\0")
                .unwrap_err()
                .contains("core WebAssembly module")
        );
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert!(
            check_header(b"\0asm\x02\0\0\0")
                .unwrap_err()
                .contains("unsupported")
        );
    }
}
