//! Models on ONNX Runtime. A model's bytes are loaded once per node into [`Sessions`], shared
//! by every name whose live version has the same digest and target and by every instance that
//! may use them; a [`Model`] is one name's view of them (its name for messages, its metrics).
//!
//! `Session::run` needs `&mut Session`, so each session is owned by a thread of its own that
//! takes inference jobs from the model's queue ([`super::queue`]): requests run in parallel up to
//! the number of sessions and queue beyond it (batched, when the model allows it). Inference
//! never runs on an async worker. A request that stops waiting (its deadline passed) leaves its
//! job behind: a job nobody waits for is dropped before it runs, and one already running
//! finishes on its thread.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ort::environment::Environment;
use ort::ep::cuda::ConvAlgorithmSearch;
use ort::ep::{CUDA, ExecutionProvider};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{Session, SessionOutputs};
use ort::value::{DynTensorValueType, ValueType};
use tokio::sync::oneshot::error::RecvError;
use tokio::time::error::Elapsed;

use super::bindings::wasi::nn::errors::ErrorCode;
use super::bindings::wasi::nn::tensor::TensorType;
use super::checked::{self, CheckedInputs, Named};
use super::queue::{self, Done, Job, Queue};
use super::tensor::{self, MAX_TENSOR_BYTES, Tensor};
use super::{Failure, NnResult};
use crate::metrics::{InferencePath, ModelMetrics};
use crate::traces::Child;

/// Where a model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider.
    Gpu,
}

/// How a model version runs and who may call it; part of the version (versions never change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// Execution provider.
    pub target: Target,
    /// Most rows one inference may stack from queued requests (1: no batching).
    pub max_batch: u32,
    /// Whether inference protocol clients need no invoke key for it (on a node with tenants).
    /// Not a property of its sessions: the same sessions serve a public and a private name.
    pub public: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            target: Target::Cpu,
            max_batch: 1,
            public: false,
        }
    }
}

/// The largest `max_batch` a model may ask for.
pub const MAX_BATCH: u32 = 1024;

/// What the node does when a model asks for the GPU and the loaded ONNX Runtime has no CUDA
/// provider. Never silent: either an error, or a logged and counted fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuFallback {
    /// Refuse the model with an error that says why.
    Error,
    /// Run it on the CPU, with a warning in the log and `tensorlet_model_gpu_fallbacks_total`.
    Cpu,
}

/// Why a model could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a model this node can serve: not ONNX, a bomb, not batchable as asked.
    #[error("{0}")]
    Invalid(String),
    /// The model asks for the GPU and this node cannot give it one.
    #[error("{0}")]
    GpuUnavailable(String),
    /// The node itself failed (ONNX Runtime could not set up a session, a thread did not start).
    #[error("{0}")]
    Internal(String),
}

/// ONNX Runtime failed to set up a session: the node's fault, not the model's.
fn internal(e: impl std::fmt::Display) -> LoadError {
    LoadError::Internal(format!("ONNX Runtime: {e}"))
}

/// ONNX Runtime, loaded from a shared library at start-up.
pub struct Onnx {
    env: Environment,
    gpu_fallback: GpuFallback,
}

impl Onnx {
    /// Loads `libonnxruntime` from `path`; an error (not a panic) when it is missing or broken.
    /// Every session allocates its CPU memory from one arena of at most `max_memory` bytes, so
    /// a model that computes a huge tensor from a guest's inputs gets an allocation error
    /// instead of taking the node's memory.
    pub fn load(path: &Path, gpu_fallback: GpuFallback, max_memory: u64) -> anyhow::Result<Onnx> {
        let env = ort::init_from(path)
            .map_err(|e| anyhow::anyhow!("cannot load ONNX Runtime from {}: {e}", path.display()))?
            .with_name("tensorlet")
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start ONNX Runtime: {e}"))?;
        register_arena(&env, max_memory)
            .map_err(|e| anyhow::anyhow!("cannot set up ONNX Runtime's memory arena: {e}"))?;
        Ok(Onnx { env, gpu_fallback })
    }

    /// Builds `sessions` sessions of a model from its bytes, reads its inputs and outputs and
    /// starts a thread per session. `name` and `metrics` are those of the model asking: they
    /// record a GPU fallback.
    pub fn sessions(
        &self,
        name: &str,
        bytes: &[u8],
        sessions: usize,
        options: ModelOptions,
        metrics: &ModelMetrics,
    ) -> Result<Sessions, LoadError> {
        let cuda = match options.target {
            Target::Cpu => false,
            Target::Gpu if CUDA::is_available().unwrap_or(false) => true,
            Target::Gpu => match self.gpu_fallback {
                GpuFallback::Error => {
                    return Err(LoadError::GpuUnavailable("it asks for the GPU, but this node's ONNX Runtime has no CUDA execution provider \
                         (use the onnxruntime-gpu library, add it with --target cpu, or set gpu_fallback = \"cpu\")"
                        .into()));
                }
                GpuFallback::Cpu => {
                    tracing::warn!(
                        model = name,
                        "no CUDA execution provider: running the model on the CPU (gpu_fallback = cpu)"
                    );
                    metrics
                        .gpu_fallbacks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    false
                }
            },
        };
        let mut pool = Vec::with_capacity(sessions.max(1));
        for _ in 0..sessions.max(1) {
            let mut builder = Session::builder(&self.env).map_err(internal)?;
            if cuda {
                builder = builder
                    // Heuristic, not cuDNN's default exhaustive search: that one benchmarks every
                    // convolution algorithm at each input shape it has not seen, and batches
                    // (and clients' dynamic dimensions) bring new shapes all the time. Measured on
                    // an H200 with resnet50 and --max-batch 32: 85 requests/s exhaustive (most of
                    // the time spent searching), against 830 unbatched (BENCHMARKS.md, GPU).
                    .with_execution_providers([CUDA::default()
                        .with_conv_algorithm_search(ConvAlgorithmSearch::Heuristic)
                        .build()
                        .error_on_failure()])
                    .map_err(|e| {
                        LoadError::GpuUnavailable(format!(
                            "the CUDA execution provider failed: {e}"
                        ))
                    })?;
            }
            let session = builder
                .with_env_allocators()
                .map_err(internal)?
                // One intra-op thread, no spinning: on a shared node more threads per session
                // made latency worse, and concurrency comes from the session pool instead.
                .with_intra_threads(1)
                .map_err(internal)?
                .with_intra_op_spinning(false)
                .map_err(internal)?
                .commit_from_memory(bytes)
                .map_err(|e| LoadError::Invalid(format!("not a usable ONNX model: {e}")))?;
            pool.push(session);
        }
        let first = &pool[0];
        let slots = |outlets: &[ort::value::Outlet]| -> Vec<Slot> {
            outlets
                .iter()
                .map(|o| match o.dtype() {
                    ValueType::Tensor { ty, shape, .. } => Slot {
                        name: o.name().to_string(),
                        ty: tensor::from_ort(*ty),
                        dims: shape.iter().copied().collect(),
                    },
                    _ => Slot {
                        name: o.name().to_string(),
                        ty: None,
                        dims: Vec::new(),
                    },
                })
                .collect()
        };
        let (inputs, outputs) = (slots(first.inputs()), slots(first.outputs()));
        // A bomb: a fixed shape no tensor could have (wasi:nn tensors are capped).
        if let Some(s) = inputs
            .iter()
            .chain(&outputs)
            .find(|s| declared_too_large(s))
        {
            return Err(LoadError::Invalid(format!(
                "`{}` is declared as {:?} {}, larger than the node's tensor limit of {} MiB",
                s.name,
                s.dims,
                s.ty.map(tensor::type_name).unwrap_or("elements"),
                MAX_TENSOR_BYTES >> 20
            )));
        }
        let unbatchable = inputs
            .iter()
            .chain(&outputs)
            .find(|s| s.dims.first() != Some(&-1));
        if let (true, Some(s)) = (options.max_batch > 1, unbatchable) {
            return Err(LoadError::Invalid(format!(
                "it cannot be batched: `{}` has dimensions {:?}, and batching needs a dynamic first \
                 dimension on every input and output (add it without --max-batch)",
                s.name, s.dims
            )));
        }
        // The threads start after `Sessions` exists: if one fails to start, dropping `Sessions`
        // closes the queue and the threads already started end instead of waiting forever.
        let loaded = Sessions {
            inputs,
            outputs,
            queue: Arc::new(Queue::default()),
        };
        let max_batch = options.max_batch.clamp(1, MAX_BATCH);
        let runners = pool.into_iter().map(|mut session| {
            move |inputs: CheckedInputs| run_session(&mut session, cuda, inputs)
        });
        let batching = queue::Batching {
            max_batch,
            pad: cuda,
        };
        queue::start_threads(&loaded.queue, runners, batching, |name, serve| {
            std::thread::Builder::new()
                .name(name)
                .spawn(serve)
                .map(drop)
        })
        .map_err(|e| LoadError::Internal(format!("cannot start an inference thread: {e}")))?;
        Ok(loaded)
    }
}

/// Registers a CPU arena capped at `max_memory` with the environment; sessions built
/// `with_env_allocators` share it.
fn register_arena(env: &Environment, max_memory: u64) -> Result<(), String> {
    use ort::AsPointer;
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    let api = ort::api::ort();
    // Turns a returned status into an error message, releasing it.
    let check = |status: ort::sys::OrtStatusPtr| -> Result<(), String> {
        if status.0.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null status from the API is valid until released, once, here.
        unsafe {
            let message = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            Err(message)
        }
    };
    let keys = [c"max_mem".as_ptr(), c"arena_extend_strategy".as_ptr()];
    // Strategy 1 (kSameAsRequested): grow by what is asked, not by powers of two.
    let values = [usize::try_from(max_memory).unwrap_or(usize::MAX), 1];
    let mut cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: two keys and two values, as `num_keys` says; `cfg` is released below.
    check(unsafe { (api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), keys.len(), &mut cfg) })?;
    let info = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(|e| e.to_string());
    let registered = info.and_then(|info| {
        // SAFETY: the environment, memory info and arena config are live; ONNX Runtime copies
        // what it keeps.
        check(unsafe { (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), cfg) })
    });
    // SAFETY: created above, released once.
    unsafe { (api.ReleaseArenaCfg)(cfg) };
    registered
}

/// An input or output as the model declares it.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Tensor name.
    pub name: String,
    /// Element type, `None` when wasi:nn cannot carry it (strings, maps, sequences, ...).
    pub ty: Option<TensorType>,
    /// Dimensions; -1 for a dynamic one.
    pub dims: Vec<i64>,
}

/// Whether a declared shape's fixed dimensions alone exceed the tensor limit.
fn declared_too_large(s: &Slot) -> bool {
    let elements = s
        .dims
        .iter()
        .filter(|d| **d > 0)
        .try_fold(1u64, |acc, d| acc.checked_mul(*d as u64));
    let size = s.ty.map_or(1, tensor::element_size) as u64;
    elements
        .and_then(|e| e.checked_mul(size))
        .is_none_or(|bytes| bytes > MAX_TENSOR_BYTES as u64)
}

/// A model's bytes loaded into ONNX Runtime: its declared inputs and outputs, and the queue of
/// its session threads. One per distinct digest and options on the node; dropping it ends the
/// threads once they finish what is queued.
pub struct Sessions {
    inputs: Vec<Slot>,
    outputs: Vec<Slot>,
    queue: Arc<Queue>,
}

#[cfg(test)]
impl Sessions {
    /// Declared inputs and no session threads: enough to check inputs against.
    pub(crate) fn declared(inputs: Vec<Slot>) -> Self {
        Self {
            inputs,
            outputs: Vec::new(),
            queue: Arc::default(),
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Sessions {
    /// Declared inputs.
    pub fn inputs(&self) -> &[Slot] {
        &self.inputs
    }

    /// Declared outputs.
    pub fn outputs(&self) -> &[Slot] {
        &self.outputs
    }
}

/// A named model as functions load it: the shared sessions plus this name's metrics.
pub struct Model {
    name: String,
    sessions: Arc<Sessions>,
    metrics: Arc<ModelMetrics>,
    /// Where its outputs are sampled for drift (models deployed to the node, not guest-loaded).
    outputs: Option<Arc<crate::anomaly::OutputProfile>>,
}

impl Model {
    /// `name`'s view of loaded sessions.
    pub fn new(name: &str, sessions: Arc<Sessions>, metrics: Arc<ModelMetrics>) -> Self {
        Self {
            name: name.to_string(),
            sessions,
            metrics,
            outputs: None,
        }
    }

    /// Samples every inference's outputs into `profile`.
    pub fn with_outputs(mut self, profile: Arc<crate::anomaly::OutputProfile>) -> Self {
        self.outputs = Some(profile);
        self
    }

    /// The model's name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declared inputs.
    pub fn inputs(&self) -> &[Slot] {
        &self.sessions.inputs
    }

    /// Declared outputs.
    pub fn outputs(&self) -> &[Slot] {
        &self.sessions.outputs
    }

    /// Checks named inputs against the model's declared inputs (see [`checked::check`]).
    pub fn check_inputs(&self, inputs: Named) -> NnResult<CheckedInputs> {
        checked::check(&self.name, self.inputs(), inputs)
    }

    /// Runs the model on checked inputs, waiting for a free session at most until `deadline`.
    /// With `span` (a traced compute), the wait for a session and the inference are its
    /// `wasi-nn queue` and `wasi-nn inference` spans.
    pub async fn run(
        self: &Arc<Self>,
        inputs: Vec<(String, Tensor)>,
        deadline: Instant,
        span: Option<&Child>,
        path: InferencePath,
    ) -> NnResult<Vec<(String, Tensor)>> {
        let started = Instant::now();
        let result = self.run_checked(inputs, deadline, span).await;
        if let Some(profile) = &self.outputs {
            // The model's failures count against it; a guest's bad tensors do not.
            let status = match &result {
                Ok(outputs) => {
                    profile.observe(outputs);
                    200
                }
                Err(f) if f.is_callers() => 400,
                Err(_) => 500,
            };
            profile.inferences.record(status);
            profile.inferences.observe(started.elapsed());
        }
        let counter = if result.is_ok() {
            &self.metrics.inferences
        } else {
            &self.metrics.errors
        };
        counter.add(path);
        result
    }

    async fn run_checked(
        self: &Arc<Self>,
        inputs: Vec<(String, Tensor)>,
        deadline: Instant,
        span: Option<&Child>,
    ) -> NnResult<Vec<(String, Tensor)>> {
        let inputs = self.check_inputs(inputs)?;
        let (reply, result) = tokio::sync::oneshot::channel();
        let queued = Instant::now();
        self.sessions.queue.push(Job {
            inputs,
            queued,
            metrics: Arc::clone(&self.metrics),
            reply,
        })?;
        // An inference cannot be interrupted, but the request does not wait past its deadline.
        let done = tokio::time::timeout_at(deadline.into(), result).await;
        if let Some(span) = span {
            self.trace(span, queued, &done);
        }
        done.map_err(|_| {
            Failure::new(
                ErrorCode::Timeout,
                "inference did not finish before the request's deadline (the function's timeout, or \
                 model_timeout for the inference protocol; a request waits for a \
                 free session of the model, then for the inference)",
            )
        })?
        .map_err(|_| Failure::new(ErrorCode::RuntimeError, "the inference thread failed"))?
        .result
    }

    /// Records a compute's wait for a session (from `queued`) and its inference under `span`.
    /// A request that stopped waiting only knows it waited until then.
    fn trace(
        &self,
        span: &Child,
        queued: Instant,
        done: &Result<Result<Done, RecvError>, Elapsed>,
    ) {
        let now = Instant::now();
        let child = |name, start| span.child(name, start).attr("tensorlet.model", self.name());
        let mut queue = child("wasi-nn queue", queued);
        let Ok(Ok(done)) = done else {
            queue.fail("the function's deadline passed before the inference came back");
            return queue.end(now);
        };
        queue.end(done.started);
        let mut inference = child("wasi-nn inference", done.started);
        if let Err(f) = &done.result {
            inference.fail(f.message.clone());
        }
        inference.end(done.finished);
    }
}

/// Runs one inference on a session's thread. A GPU session's outputs are bound to CPU memory
/// (by default ONNX Runtime leaves them on the device), so they can be copied out below.
fn run_session(session: &mut Session, gpu: bool, inputs: CheckedInputs) -> NnResult<Named> {
    let runtime = |m: String| Failure::new(ErrorCode::RuntimeError, m);
    let values = inputs.into_values()?;
    if !gpu {
        let outputs = session
            .run(values)
            .map_err(|e| runtime(format!("inference failed: {e}")))?;
        return read_outputs(outputs);
    }
    let cpu = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Device,
        MemoryType::CPUOutput,
    )
    .map_err(|e| runtime(format!("cannot describe CPU memory: {e}")))?;
    let names: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let mut binding = session
        .create_binding()
        .map_err(|e| runtime(format!("cannot bind the model's inputs and outputs: {e}")))?;
    for (name, value) in &values {
        binding
            .bind_input(name.as_str(), value)
            .map_err(|e| runtime(format!("cannot bind input `{name}`: {e}")))?;
    }
    for name in &names {
        binding
            .bind_output_to_device(name.as_str(), &cpu)
            .map_err(|e| runtime(format!("cannot bind output `{name}` to CPU memory: {e}")))?;
    }
    let outputs = session
        .run_binding(&binding)
        .map_err(|e| runtime(format!("inference failed: {e}")))?;
    read_outputs(outputs)
}

/// Copies a run's outputs into wasi:nn tensors.
fn read_outputs(outputs: SessionOutputs<'_>) -> NnResult<Named> {
    let runtime = |m: String| Failure::new(ErrorCode::RuntimeError, m);
    let mut result = Vec::new();
    for (name, value) in outputs {
        let (ty, dims) = match value.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                (*ty, shape.iter().copied().collect::<Vec<i64>>())
            }
            other => {
                return Err(Failure::new(
                    ErrorCode::UnsupportedOperation,
                    format!("output `{name}` is a {other:?}, which wasi:nn cannot return"),
                ));
            }
        };
        let ty = tensor::from_ort(ty).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnsupportedOperation,
                format!("output `{name}` has element type {ty:?}, which wasi:nn cannot return"),
            )
        })?;
        let dims: Vec<u32> = dims
            .iter()
            .map(|d| u32::try_from(*d))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                runtime(format!(
                    "output `{name}` has a dimension out of range: {dims:?}"
                ))
            })?;
        let len = tensor::byte_len(&dims, ty)
            .filter(|l| *l <= MAX_TENSOR_BYTES)
            .ok_or_else(|| {
                Failure::new(
                    ErrorCode::TooLarge,
                    format!("output `{name}` with dimensions {dims:?} is too large"),
                )
            })?;
        let tensor = value
            .downcast::<DynTensorValueType>()
            .map_err(|e| runtime(format!("output `{name}`: {e}")))?;
        let mut data = vec![0u8; len];
        if len == 0 {
            result.push((name.to_string(), Tensor { dims, ty, data }));
            continue;
        }
        if !tensor.memory_info().is_cpu_accessible() {
            return Err(runtime(format!(
                "output `{name}` was left in device memory: the node cannot read it"
            )));
        }
        // SAFETY: ONNX Runtime reports this tensor's element type and shape; its buffer holds
        // exactly `prod(shape) * size_of(type)` = `len` bytes, in memory the CPU can read (checked
        // just above; GPU sessions bind their outputs to CPU memory).
        unsafe {
            std::ptr::copy_nonoverlapping(tensor.data_ptr().cast::<u8>(), data.as_mut_ptr(), len);
        }
        result.push((name.to_string(), Tensor { dims, ty, data }));
    }
    Ok(result)
}
