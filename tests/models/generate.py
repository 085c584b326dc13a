#!/usr/bin/env python3
"""Regenerates the tiny test models in this folder, byte-identically.

    pip install --user onnx==1.23.2 numpy        # only for regenerating; the models are committed
    python3 tests/models/generate.py [OUTDIR]    # default OUTDIR: this script's folder
    python3 tests/models/generate.py --verify    # also needs onnxruntime==1.31.1: runs every model

All models: opset 17, IR version 8, weights from numpy.random.default_rng(42) or constants.
See README.md in this folder for each model's inputs and outputs.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
NOT_ONNX = b"Tensorlet test file: plain text, not an ONNX model (bad upload)\n"  # exactly 64 bytes

# slow.onnx: x[1,256] -> Expand to [ROWS,256] -> MatMul by a [256,DIM] constant -> SLOW_STEPS MatMuls by one
# [DIM,DIM] constant -> MatMul by a [DIM,256] constant -> ReduceMean over rows -> y[1,256].
# Every constant is 1/k (ConstantOfShape), so the file stays tiny and y[0, j] = mean(x) for every j.
SLOW_ROWS, SLOW_DIM, SLOW_STEPS = 1024, 1024, 16


def model(name, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="tensorlet-tests",
        producer_version="1",
    )
    onnx.checker.check_model(m, full_check=True)
    return m


def vi(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def const_of_shape(out, shape, value):
    """Two nodes: a 1-D int64 shape constant, then ConstantOfShape filled with `value` (f32)."""
    return [
        helper.make_node("Constant", [], [out + "_shape"],
                         value=numpy_helper.from_array(np.array(shape, np.int64), out + "_shape")),
        helper.make_node("ConstantOfShape", [out + "_shape"], [out],
                         value=numpy_helper.from_array(np.array([value], np.float32), out + "_value")),
    ]


def build():
    f32 = TensorProto.FLOAT
    models = {}

    models["add_f32"] = model(
        "add_f32", [helper.make_node("Add", ["a", "b"], ["sum"])],
        [vi("a", f32, [2, 3]), vi("b", f32, [2, 3])], [vi("sum", f32, [2, 3])])

    models["identity_dyn"] = model(
        "identity_dyn", [helper.make_node("Identity", ["x"], ["y"])],
        [vi("x", f32, ["batch", 4])], [vi("y", f32, ["batch", 4])])

    rng = np.random.default_rng(42)
    w1 = (rng.standard_normal((16, 32)) * 0.25).astype(np.float32)
    b1 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((32, 4)) * 0.25).astype(np.float32)
    b2 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    models["mlp"] = model(
        "mlp",
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
        ],
        [vi("x", f32, ["N", 16])], [vi("y", f32, ["N", 4])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])

    for suffix, elem in (("f16", TensorProto.FLOAT16), ("f64", TensorProto.DOUBLE), ("bf16", TensorProto.BFLOAT16),
                         ("u8", TensorProto.UINT8), ("i32", TensorProto.INT32), ("i64", TensorProto.INT64)):
        models["identity_" + suffix] = model(
            "identity_" + suffix, [helper.make_node("Identity", ["x"], ["y"])],
            [vi("x", elem, [2, 2])], [vi("y", elem, [2, 2])])

    models["cast_i64_to_f32"] = model(
        "cast_i64_to_f32", [helper.make_node("Cast", ["x"], ["y"], to=f32)],
        [vi("x", TensorProto.INT64, [3])], [vi("y", f32, [3])])

    rows, dim, steps = SLOW_ROWS, SLOW_DIM, SLOW_STEPS
    nodes = const_of_shape("w_in", [256, dim], 1.0 / 256)
    nodes += const_of_shape("w", [dim, dim], 1.0 / dim)
    nodes += const_of_shape("w_out", [dim, 256], 1.0 / dim)
    nodes.append(helper.make_node("Constant", [], ["rows_shape"],
                                  value=numpy_helper.from_array(np.array([rows, 256], np.int64), "rows_shape")))
    nodes.append(helper.make_node("Expand", ["x", "rows_shape"], ["h_x"]))
    nodes.append(helper.make_node("MatMul", ["h_x", "w_in"], ["h0"]))
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{steps}", "w_out"], ["h_out"]))
    nodes.append(helper.make_node("ReduceMean", ["h_out"], ["y"], axes=[0], keepdims=1))
    models["slow"] = model("slow", nodes, [vi("x", f32, [1, 256])], [vi("y", f32, [1, 256])])

    # slow_rows: y = 2x row by row, for any number of rows (batchable), after the same slow chain
    # as slow.onnx run on mean(x) (its result is multiplied by 0 and added, so it cannot be skipped).
    nodes = const_of_shape("w_in", [256, dim], 1.0 / 256)
    nodes += const_of_shape("w", [dim, dim], 1.0 / dim)
    nodes.append(helper.make_node("Constant", [], ["rows_shape"],
                                  value=numpy_helper.from_array(np.array([rows, 256], np.int64), "rows_shape")))
    nodes.append(helper.make_node("ReduceMean", ["x"], ["m"], keepdims=1))
    nodes.append(helper.make_node("Expand", ["m", "rows_shape"], ["h_x"]))
    nodes.append(helper.make_node("MatMul", ["h_x", "w_in"], ["h0"]))
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{steps}"], ["z"], keepdims=1))
    for const, value in (("zero", 0.0), ("two", 2.0)):
        nodes.append(helper.make_node("Constant", [], [const],
                                      value=numpy_helper.from_array(np.array([[value]], np.float32), const)))
    nodes.append(helper.make_node("Mul", ["z", "zero"], ["z0"]))
    nodes.append(helper.make_node("Mul", ["x", "two"], ["x2"]))
    nodes.append(helper.make_node("Add", ["x2", "z0"], ["y"]))
    models["slow_rows"] = model("slow_rows", nodes, [vi("x", f32, ["N", 8])], [vi("y", f32, ["N", 8])])

    # bomb: declares a 16 GiB output (a fixed [65536, 65536] f32) from a tiny graph.
    nodes = [helper.make_node("Constant", [], ["shape"],
                              value=numpy_helper.from_array(np.array([65536, 65536], np.int64), "shape")),
             helper.make_node("Expand", ["x", "shape"], ["y"])]
    models["bomb"] = model("bomb", nodes, [vi("x", f32, [1, 1])], [vi("y", f32, [65536, 65536])])

    # grow: y = x expanded to the shape the caller asks for (a bomb whose size the guest picks).
    models["grow"] = model("grow", [helper.make_node("Expand", ["x", "shape"], ["y"])],
                           [vi("x", f32, [1, 1]), vi("shape", TensorProto.INT64, [2])],
                           [vi("y", f32, ["rows", "cols"])])
    return models


def write(outdir):
    os.makedirs(outdir, exist_ok=True)
    for name, m in build().items():
        path = os.path.join(outdir, name + ".onnx")
        data = m.SerializeToString()
        with open(path, "wb") as f:
            f.write(data)
        print(f"{path}: {len(data)} bytes")
    assert len(NOT_ONNX) == 64
    with open(os.path.join(outdir, "not_onnx.onnx"), "wb") as f:
        f.write(NOT_ONNX)
    print(f"{os.path.join(outdir, 'not_onnx.onnx')}: {len(NOT_ONNX)} bytes")


def verify(outdir):
    """Loads and runs every model in onnxruntime (1 intra-op thread) and prints the outputs."""
    import ctypes
    import time

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def session(name):
        return ort.InferenceSession(os.path.join(outdir, name + ".onnx"), opts, providers=["CPUExecutionProvider"])

    def show(name, feeds):
        s = session(name)
        ins = [(i.name, i.type, i.shape) for i in s.get_inputs()]
        outs = [(o.name, o.type, o.shape) for o in s.get_outputs()]
        res = s.run(None, feeds)
        print(f"{name}: inputs {ins} outputs {outs}")
        for o, r in zip(s.get_outputs(), res):
            print(f"  {o.name} = {np.array2string(r, precision=7, separator=', ')} ({r.dtype}, {list(r.shape)})")
        return s

    np.set_printoptions(floatmode="maxprec")
    show("add_f32", {"a": np.array([[1, 2, 3], [4, 5, 6]], np.float32), "b": np.ones((2, 3), np.float32)})
    show("identity_dyn", {"x": np.arange(12, dtype=np.float32).reshape(3, 4)})
    show("mlp", {"x": (np.arange(32, dtype=np.float32).reshape(2, 16) / 32)})
    for t, dt in (("f16", np.float16), ("f64", np.float64), ("u8", np.uint8), ("i32", np.int32), ("i64", np.int64)):
        show("identity_" + t, {"x": np.array([[1, 2], [3, 4]], dt)})
    # bfloat16: numpy has no such type; pass the raw 16-bit patterns (1.0, 2.0, 3.0, 4.0).
    s = session("identity_bf16")
    bits = np.array([[0x3F80, 0x4000], [0x4040, 0x4080]], np.uint16)
    x = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, TensorProto.BFLOAT16)
    y = s.run_with_ort_values(["y"], {"x": x})[0]
    out_bits = np.frombuffer(ctypes.string_at(y.data_ptr(), y.tensor_size_in_bytes()), np.uint16).reshape(2, 2)
    print(f"identity_bf16: inputs [('x', {s.get_inputs()[0].type!r}, {s.get_inputs()[0].shape})] -> "
          f"y {y.data_type()} {y.shape()}; bits in {bits.tolist()} out {out_bits.tolist()}")
    show("cast_i64_to_f32", {"x": np.array([1, -2, 3], np.int64)})
    try:
        session("not_onnx")
        print("not_onnx: LOADED (unexpected)")
    except Exception as e:  # noqa: BLE001
        print(f"not_onnx: load fails as intended: {type(e).__name__}: {str(e).splitlines()[0]}")
    t0 = time.perf_counter()
    s = session("slow")
    print(f"slow: session created in {(time.perf_counter() - t0) * 1000:.0f} ms")
    x = np.full((1, 256), 0.5, np.float32)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        y = s.run(None, {"x": x})[0]
        times.append((time.perf_counter() - t0) * 1000)
    print(f"slow: y[0,:3] = {y[0, :3]}, run ms (1 thread): first {times[0]:.0f}, "
          f"median of the rest {sorted(times[1:])[2]:.0f}, min {min(times):.0f}, max {max(times):.0f}")
    s = session("slow_rows")
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    t0 = time.perf_counter()
    y = s.run(None, {"x": x})[0]
    print(f"slow_rows: y = 2x: {np.array_equal(y, 2 * x)}, run ms {(time.perf_counter() - t0) * 1000:.0f}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--verify"]
    out = args[0] if args else os.path.dirname(os.path.abspath(__file__))
    write(out)
    if "--verify" in sys.argv[1:]:
        verify(out)
