//! Native `wasi:nn` on ONNX Runtime.
//!
//! Models are deployed to the node (see [`crate::registry`]) and loaded once into a
//! [`ModelSet`], shared by every instance. Per request, an [`NnCtx`] carries the models the
//! function may use; `load-by-name` of anything else is a `security` error that says how to allow
//! it. Tensors are checked against the model's declared inputs before they reach ONNX Runtime,
//! and inference runs on the blocking pool, bounded by the request's deadline.

pub mod bindings;
pub mod checked;
mod host;
pub mod onnx;
mod queue;
pub mod tensor;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use wasmtime::component::{HasData, Linker, ResourceTable};

use bindings::wasi::nn::errors::ErrorCode;
pub use onnx::{Model, Onnx};

use crate::key::{ModelKey, ModelPin};
use crate::metrics::ModelMetrics;
use crate::traces::TraceCtx;

/// The host side of a `wasi:nn/errors.error` resource.
#[derive(Debug, Clone)]
pub struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    /// Whether the caller (the guest) is at fault: bad tensors or a model it may not use,
    /// rather than the model or the node.
    pub fn is_callers(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::InvalidArgument
                | ErrorCode::InvalidEncoding
                | ErrorCode::NotFound
                | ErrorCode::Security
                | ErrorCode::TooLarge
                | ErrorCode::UnsupportedOperation
        )
    }

    /// The wasi:nn error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// What went wrong and what to do.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A failure with a code and a message that says what to do.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Result of wasi:nn host operations.
pub type NnResult<T> = Result<T, Failure>;

/// The host side of a `wasi:nn/graph.graph` resource.
pub type GraphHandle = Arc<Model>;

/// The host side of a `wasi:nn/inference.graph-execution-context` resource.
pub struct ExecutionContext {
    model: Arc<Model>,
}

/// Models loaded on this node: each model's live version (`name@live`) and the versions live
/// functions pin, with what the inference protocol asks about each model. Swapped as a whole
/// when models change.
#[derive(Default)]
pub struct ModelSet {
    models: RwLock<Arc<Loaded>>,
}

#[derive(Default)]
struct Loaded {
    by_pin: HashMap<ModelPin, Arc<Model>>,
    entries: HashMap<ModelKey, Arc<ModelEntry>>,
}

/// A model's versions as its records hold them, read on the inference protocol's path without
/// the registry's lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelEntry {
    /// Full hex digest of the live version.
    pub live: String,
    /// Full hex digests of the retained versions, oldest first.
    pub versions: Vec<String>,
    /// Aliases to full digests.
    pub aliases: BTreeMap<String, String>,
    /// Whether the live version was added `--public`.
    pub public: bool,
}

impl ModelSet {
    /// The model `pin` names, if loaded.
    pub fn get(&self, key: &ModelPin) -> Option<Arc<Model>> {
        self.loaded().by_pin.get(key).cloned()
    }

    /// What is known of model `key`'s versions, if it exists.
    pub fn entry(&self, key: &ModelKey) -> Option<Arc<ModelEntry>> {
        self.loaded().entries.get(key).cloned()
    }

    fn loaded(&self) -> Arc<Loaded> {
        Arc::clone(&self.models.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the whole set.
    pub fn replace(
        &self,
        by_pin: HashMap<ModelPin, Arc<Model>>,
        entries: HashMap<ModelKey, Arc<ModelEntry>>,
    ) {
        *self.models.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Loaded { by_pin, entries });
    }
}

/// The `model` label of models guests load from bytes: not a valid model name, so no model
/// added to the node can share its series.
pub const GUEST_LOADED: &str = "(guest bytes)";

/// What every request's wasi:nn shares: ONNX Runtime (if it loaded), the node's models, and the
/// policy for models loaded from guest bytes.
pub struct NnNode {
    /// ONNX Runtime, `None` when the library was not found or failed to load.
    pub onnx: Option<Arc<Onnx>>,
    /// Models deployed to the node, by name.
    pub models: ModelSet,
    /// Largest model a guest may load from bytes (`graph.load`); `None` keeps such loads off.
    pub guest_load_limit: Option<u64>,
    /// Metrics of models loaded from guest bytes.
    pub guest_load_metrics: Arc<ModelMetrics>,
}

/// Per-request wasi:nn state: which models this function may load (by key: `{tenant}/{name}`
/// or a shared name; guests use the name), its deadline, its tenant's inference permits and its
/// tensor budget.
pub struct NnCtx {
    node: Arc<NnNode>,
    allowed: Arc<[ModelPin]>,
    function: Arc<str>,
    deadline: Instant,
    inferences: Option<InferenceQuota>,
    budget: TensorBudget,
    /// The request's trace, when it is recorded: each compute is a span of it.
    trace: Option<TraceCtx>,
}

/// Host memory the wasi:nn tensors of one request may hold. A tensor's bytes are copied out of
/// the guest into host memory, where the guest's memory limit does not reach: without a budget a
/// guest capped at 64 MiB could keep thousands of large tensors alive on the host. Charged when
/// a tensor is created (by the guest or as a `compute` output), released when it is dropped.
#[derive(Debug)]
pub struct TensorBudget {
    limit: u64,
    held: u64,
}

/// The trap of a tensor constructor past the budget (the WIT gives it no error value).
#[derive(Debug, thiserror::Error)]
#[error(
    "wasi:nn tensors would hold {wanted} bytes on the host, over this request's tensor budget of {limit} bytes \
     (max_tensor_bytes_per_request; by default the function's memory limit): drop tensors you no longer need"
)]
pub struct TensorBudgetExceeded {
    /// What the request's tensors would hold with the new one.
    pub wanted: u64,
    /// The budget.
    pub limit: u64,
}

impl TensorBudget {
    /// A budget of `limit` bytes, nothing held.
    pub fn new(limit: u64) -> Self {
        Self { limit, held: 0 }
    }

    /// Takes `bytes` from the budget, or says by how much it would be exceeded.
    pub fn charge(&mut self, bytes: u64) -> Result<(), TensorBudgetExceeded> {
        let wanted = self.held.saturating_add(bytes);
        if wanted > self.limit {
            return Err(TensorBudgetExceeded {
                wanted,
                limit: self.limit,
            });
        }
        self.held = wanted;
        Ok(())
    }

    /// Gives `bytes` back.
    pub fn release(&mut self, bytes: u64) {
        self.held = self.held.saturating_sub(bytes);
    }
}

/// A tenant's share of inference: its `max_inferences` permits, and its metrics (computes
/// waiting for a permit).
#[derive(Clone)]
pub struct InferenceQuota {
    /// `max_inferences` permits.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// The tenant's series.
    pub metrics: Arc<crate::metrics::TenantMetrics>,
}

impl InferenceQuota {
    /// One of the tenant's permits, waited for (and counted as waiting) until `deadline`;
    /// `None` once the deadline passed.
    pub async fn acquire(&self, deadline: Instant) -> Option<tokio::sync::OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering::Relaxed;
        let waiting = &self.metrics.inferences_waiting;
        waiting.fetch_add(1, Relaxed);
        let permits = Arc::clone(&self.permits);
        let acquired = tokio::time::timeout_at(deadline.into(), permits.acquire_owned()).await;
        waiting.fetch_sub(1, Relaxed);
        acquired.ok()?.ok()
    }
}

impl NnCtx {
    /// State for one request of `function`.
    pub fn new(
        node: Arc<NnNode>,
        allowed: Arc<[ModelPin]>,
        function: Arc<str>,
        deadline: Instant,
        inferences: Option<InferenceQuota>,
        tensor_budget: u64,
    ) -> Self {
        Self {
            node,
            allowed,
            function,
            deadline,
            inferences,
            budget: TensorBudget::new(tensor_budget),
            trace: None,
        }
    }

    /// Records this request's computes in `trace`.
    pub fn traced(mut self, trace: Option<TraceCtx>) -> Self {
        self.trace = trace;
        self
    }
}

/// What the generated `Host` traits are implemented for: the context plus the resource table.
pub struct NnView<'a> {
    ctx: &'a mut NnCtx,
    table: &'a mut ResourceTable,
}

impl<'a> NnView<'a> {
    /// Borrows the two parts of a store's data.
    pub fn new(ctx: &'a mut NnCtx, table: &'a mut ResourceTable) -> Self {
        Self { ctx, table }
    }
}

/// Marker for `add_to_linker`.
pub struct WasiNn;

impl HasData for WasiNn {
    type Data<'a> = NnView<'a>;
}

/// Adds the wasi:nn interfaces to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    bindings::Ml::add_to_linker::<T, WasiNn>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tensor_budget_is_charged_and_released() {
        let mut b = TensorBudget::new(100);
        b.charge(60).unwrap();
        let e = b.charge(41).unwrap_err();
        assert_eq!((e.wanted, e.limit), (101, 100));
        assert!(e.to_string().contains("max_tensor_bytes_per_request"));
        b.charge(40).unwrap();
        b.release(60);
        b.charge(60).unwrap();
        assert!(b.charge(u64::MAX).is_err());
    }
}
