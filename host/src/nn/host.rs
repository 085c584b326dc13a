//! Glue between the generated wasi:nn traits and the node: resource table bookkeeping, the
//! allow-list check, and turning every expected failure into an `error` resource for the guest.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Resource;

use super::bindings::wasi::nn::errors::{self, ErrorCode};
use super::bindings::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use super::bindings::wasi::nn::inference;
use super::bindings::wasi::nn::tensor::{self, TensorType};
use super::checked::Named;
use super::onnx::{LoadError, Model, ModelOptions};
use super::tensor::Tensor;
use super::{ExecutionContext, Failure, GraphHandle, NnView};
use crate::metrics::InferencePath;
use crate::traces::Child;

fn not_loaded() -> Failure {
    Failure::new(
        ErrorCode::RuntimeError,
        "ONNX Runtime is not loaded on this node: run scripts/fetch-onnxruntime.sh and start the node with \
         ORT_DYLIB_PATH (or `onnxruntime` in its config) pointing at libonnxruntime.so",
    )
}

type GuestResult<T> = wasmtime::Result<Result<T, Resource<Failure>>>;

impl NnView<'_> {
    /// Hands a failure to the guest as an `error` resource.
    fn fail<T>(&mut self, failure: Failure) -> GuestResult<T> {
        Ok(Err(self.table.push(failure)?))
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<Tensor>> {
        // Sizes are checked when the tensor is used, where a mismatch can be reported as an
        // error value; a constructor can only trap, as it does past the tensor budget.
        self.ctx.budget.charge(data.len() as u64)?;
        Ok(self.table.push(Tensor {
            dims: dimensions,
            ty,
            data,
        })?)
    }

    fn dimensions(&mut self, t: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&t)?.dims.clone())
    }

    fn ty(&mut self, t: Resource<Tensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&t)?.ty)
    }

    fn data(&mut self, t: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&t)?.data.clone())
    }

    fn drop(&mut self, t: Resource<Tensor>) -> wasmtime::Result<()> {
        let t = self.table.delete(t)?;
        self.ctx.budget.release(t.data.len() as u64);
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, e: Resource<Failure>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&e)?.code)
    }

    fn data(&mut self, e: Resource<Failure>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.message.clone())
    }

    fn drop(&mut self, e: Resource<Failure>) -> wasmtime::Result<()> {
        self.table.delete(e)?;
        Ok(())
    }
}

impl graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        builder: Vec<Vec<u8>>,
        encoding: GraphEncoding,
        target: ExecutionTarget,
    ) -> GuestResult<Resource<GraphHandle>> {
        let node = Arc::clone(&self.ctx.node);
        let Some(limit) = node.guest_load_limit else {
            // Compiling arbitrary bytes from a guest on the host is off unless the operator
            // turns it on: models are deployed to the node, checked once, and shared.
            return self.fail(Failure::new(
                ErrorCode::Security,
                "loading a model from guest bytes is disabled on this node: add the model with \
                 `tensorlet model add NAME FILE.onnx`, deploy the function with `--model NAME`, and use load-by-name",
            ));
        };
        let Some(onnx) = node.onnx.clone() else {
            return self.fail(not_loaded());
        };
        if !matches!(encoding, GraphEncoding::Onnx | GraphEncoding::Autodetect) {
            return self.fail(Failure::new(
                ErrorCode::InvalidEncoding,
                format!("this node runs ONNX models only, not {encoding:?}"),
            ));
        }
        if !matches!(target, ExecutionTarget::Cpu) {
            return self.fail(Failure::new(
                ErrorCode::UnsupportedOperation,
                format!("models loaded from guest bytes run on the CPU only, not {target:?}"),
            ));
        }
        let bytes = match <[Vec<u8>; 1]>::try_from(builder) {
            Ok([bytes]) if !bytes.is_empty() => bytes,
            _ => {
                return self.fail(Failure::new(
                    ErrorCode::InvalidArgument,
                    "pass exactly one non-empty builder: the .onnx bytes",
                ));
            }
        };
        if bytes.len() as u64 > limit {
            return self.fail(Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "the model is {} bytes; this node accepts at most {limit} from a guest",
                    bytes.len()
                ),
            ));
        }
        let metrics = Arc::clone(&node.guest_load_metrics);
        let built = tokio::task::spawn_blocking(move || {
            let name = super::GUEST_LOADED;
            let sessions = onnx.sessions(name, &bytes, 1, ModelOptions::default(), &metrics)?;
            Ok::<_, LoadError>(Model::new(name, Arc::new(sessions), metrics))
        })
        .await;
        match built {
            Ok(Ok(model)) => Ok(Ok(self.table.push(Arc::new(model))?)),
            Ok(Err(LoadError::Invalid(reason))) => {
                self.fail(Failure::new(ErrorCode::InvalidEncoding, reason))
            }
            Ok(Err(other)) => self.fail(Failure::new(ErrorCode::RuntimeError, other.to_string())),
            Err(e) => self.fail(Failure::new(
                ErrorCode::RuntimeError,
                format!("model load task failed: {e}"),
            )),
        }
    }

    fn load_by_name(&mut self, name: String) -> GuestResult<Resource<GraphHandle>> {
        let ctx = &self.ctx;
        if ctx.node.onnx.is_none() {
            return self.fail(not_loaded());
        }
        let Some(pin) = ctx.allowed.iter().find(|p| p.model.name() == name) else {
            let f = Failure::new(
                ErrorCode::Security,
                format!(
                    "function `{}` may not use model `{name}`: deploy it with `--model {name}` to allow it",
                    ctx.function
                ),
            );
            return self.fail(f);
        };
        match ctx.node.models.get(pin) {
            Some(model) => Ok(Ok(self.table.push(model)?)),
            None => {
                let f = Failure::new(
                    ErrorCode::NotFound,
                    format!(
                        "no model named `{name}` on this node: add it with `tensorlet model add {name} FILE.onnx`"
                    ),
                );
                self.fail(f)
            }
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(
        &mut self,
        g: Resource<GraphHandle>,
    ) -> GuestResult<Resource<ExecutionContext>> {
        let model = Arc::clone(self.table.get(&g)?);
        Ok(Ok(self.table.push(ExecutionContext { model })?))
    }

    fn drop(&mut self, g: Resource<GraphHandle>) -> wasmtime::Result<()> {
        self.table.delete(g)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl NnView<'_> {
    /// Runs `model` once its tenant's inference quota lets it, bounded by the deadline; `span`
    /// is the compute's, when the request is traced.
    async fn infer(
        &mut self,
        model: &Arc<Model>,
        inputs: Named,
        span: Option<&Child>,
    ) -> Result<Named, Failure> {
        // The tenant's inference quota: wait for a permit, bounded by the deadline like the rest.
        let _permit = match &self.ctx.inferences {
            Some(quota) => match quota.acquire(self.ctx.deadline).await {
                Some(permit) => Some(permit),
                None => {
                    return Err(Failure::new(
                        ErrorCode::Timeout,
                        "the tenant's max_inferences quota kept this compute waiting until the deadline",
                    ));
                }
            },
            None => None,
        };
        (model.run(inputs, self.ctx.deadline, span, InferencePath::WasiNn)).await
    }
}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        ctx: Resource<ExecutionContext>,
        inputs: Vec<(String, Resource<Tensor>)>,
    ) -> GuestResult<Vec<(String, Resource<Tensor>)>> {
        let model = Arc::clone(&self.table.get(&ctx)?.model);
        // The guest hands its input tensors over (owned handles): they move out of the table
        // into the inference, without a copy, and keep their charge on the budget until the
        // inference is over.
        let mut tensors = Vec::with_capacity(inputs.len());
        let mut input_bytes = 0u64;
        for (name, t) in inputs {
            let t = self.table.delete(t)?;
            input_bytes += t.data.len() as u64;
            tensors.push((name, t));
        }
        let span = self.ctx.trace.as_ref().map(|trace| {
            trace
                .child("wasi-nn compute", Instant::now())
                .attr("tensorlet.function", &*self.ctx.function)
                .attr("tensorlet.model", model.name())
        });
        let outputs = self.infer(&model, tensors, span.as_ref()).await;
        if let Some(mut span) = span {
            if let Err(f) = &outputs {
                span.fail(f.message.clone());
            }
            span.end(Instant::now());
        }
        self.ctx.budget.release(input_bytes);
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(f) => return self.fail(f),
        };
        let output_bytes: u64 = outputs.iter().map(|(_, t)| t.data.len() as u64).sum();
        if let Err(e) = self.ctx.budget.charge(output_bytes) {
            return self.fail(Failure::new(
                ErrorCode::TooLarge,
                format!("the outputs of model `{}`: {e}", model.name()),
            ));
        }
        let mut result = Vec::with_capacity(outputs.len());
        for (name, t) in outputs {
            result.push((name, self.table.push(t)?));
        }
        Ok(Ok(result))
    }

    fn drop(&mut self, ctx: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(ctx)?;
        Ok(())
    }
}
