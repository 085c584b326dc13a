//! The only `bindgen!` for wasi:nn: host traits generated from `wit/deps/nn`. Resources map to our
//! own types; `compute` is async (it waits for a session and for the blocking pool) and every
//! other function is synchronous. All are trappable: an expected failure is an `error` resource
//! returned to the guest, only a broken host invariant (a bad resource handle) traps.

wasmtime::component::bindgen!({
    path: "../wit/deps/nn",
    world: "wasi:nn/ml",
    imports: {
        "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
        "wasi:nn/graph.load": async | trappable,
        default: trappable,
    },
    with: {
        "wasi:nn/tensor.tensor": super::tensor::Tensor,
        "wasi:nn/graph.graph": super::GraphHandle,
        "wasi:nn/inference.graph-execution-context": super::ExecutionContext,
        "wasi:nn/errors.error": super::Failure,
    },
});
