//! `HostState`, the `T` of every per-request `Store<T>`: WASI and wasi:http contexts, the
//! resource table, the memory limiter, the deadline and the output captures. Built fresh for each
//! request from the function's immutable settings; nothing in it outlives the request.

use std::time::Instant;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::capture::Capture;
use crate::nn::{NnCtx, NnView};

/// Resources one request may hold in its table (fields, streams, pollables, ...).
const MAX_RESOURCES: usize = 10_000;

/// Per-request store data.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: crate::outbound::Hooks,
    nn: NnCtx,
    pub(super) limits: StoreLimits,
    pub(super) deadline: Instant,
    pub(super) stdout: Capture,
    pub(super) stderr: Capture,
    /// The tenant's CPU slot, on a node with tenants.
    pub(super) cpu: Option<super::fair::CpuShare>,
    /// Set at the guest's first epoch tick: it is CPU-bound, and its runtime's epoch ticks faster.
    pub(super) cpu_bound: Option<super::epoch::CpuBound>,
}

impl HostState {
    /// Fresh state: only the configured environment, no files, no sockets; outbound HTTP only
    /// as `hooks` allow it.
    pub fn new(
        env: &[(String, String)],
        memory: usize,
        deadline: Instant,
        nn: NnCtx,
        hooks: crate::outbound::Hooks,
    ) -> Self {
        let stdout = Capture::default();
        let stderr = Capture::default();
        let wasi = WasiCtx::builder()
            .envs(env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(memory)
            .instances(100)
            .tables(100)
            .memories(10)
            .table_elements(1_000_000)
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table,
            hooks,
            nn,
            limits,
            deadline,
            stdout,
            stderr,
            cpu: None,
            cpu_bound: None,
        }
    }
}

impl HostState {
    /// The wasi:nn view of this request's state.
    pub fn nn(&mut self) -> NnView<'_> {
        NnView::new(&mut self.nn, &mut self.table)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
