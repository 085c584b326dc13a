//! Glue between the generated wasi:nn traits and the node: resource table bookkeeping, the
//! allow-list check, and turning every expected failure into an `error` resource for the guest.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::bindings::wasi::nn::errors::{self, ErrorCode};
use super::bindings::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use super::bindings::wasi::nn::inference;
use super::bindings::wasi::nn::tensor::{self, TensorType};
use super::tensor::Tensor;
use super::{ExecutionContext, Failure, GraphHandle, NnView};

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
        // error value; a constructor can only trap.
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
        self.table.delete(t)?;
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
    fn load(
        &mut self,
        _builder: Vec<Vec<u8>>,
        _encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> GuestResult<Resource<GraphHandle>> {
        // Compiling arbitrary bytes from a guest on the host is off: models are deployed to the
        // node, checked once, and shared.
        self.fail(Failure::new(
            ErrorCode::Security,
            "loading a model from guest bytes is disabled on this node: add the model with \
             `tensorlet model add NAME FILE.onnx`, deploy the function with `--model NAME`, and use load-by-name",
        ))
    }

    fn load_by_name(&mut self, name: String) -> GuestResult<Resource<GraphHandle>> {
        let ctx = &self.ctx;
        if !ctx.onnx_loaded {
            let f = Failure::new(
                ErrorCode::RuntimeError,
                "ONNX Runtime is not loaded on this node: run scripts/fetch-onnxruntime.sh and start the node with \
                 ORT_DYLIB_PATH (or `onnxruntime` in its config) pointing at libonnxruntime.so",
            );
            return self.fail(f);
        }
        if !ctx.allowed.contains(&name) {
            let f = Failure::new(
                ErrorCode::Security,
                format!(
                    "function `{}` may not use model `{name}`: deploy it with `--model {name}` to allow it",
                    ctx.function
                ),
            );
            return self.fail(f);
        }
        match ctx.models.get(&name) {
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

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        ctx: Resource<ExecutionContext>,
        inputs: Vec<(String, Resource<Tensor>)>,
    ) -> GuestResult<Vec<(String, Resource<Tensor>)>> {
        let model = Arc::clone(&self.table.get(&ctx)?.model);
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            tensors.push((name, self.table.get(&t)?.clone()));
        }
        match model.run(tensors, self.ctx.deadline).await {
            Ok(outputs) => {
                let mut result = Vec::with_capacity(outputs.len());
                for (name, t) in outputs {
                    result.push((name, self.table.push(t)?));
                }
                Ok(Ok(result))
            }
            Err(f) => self.fail(f),
        }
    }

    fn drop(&mut self, ctx: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(ctx)?;
        Ok(())
    }
}
