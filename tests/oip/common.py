"""Shared parts of the protocol checks (tests/oip/client.py): the models' expected metadata,
raw HTTP and gRPC helpers, the clients, and comparisons of answers with onnxruntime's."""

import http.client
import json
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: F401 (for the checks)
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]

MODELS = ROOT / "tests" / "models"
TIMEOUT = 60.0
UNKNOWN_VERSION = "000000000000"

# name -> (inputs, outputs), each a list of (name, datatype, shape) in the model's order.
TINY = {
    "add": ([("a", "FP32", [2, 3]), ("b", "FP32", [2, 3])], [("sum", "FP32", [2, 3])]),
    "mlp": ([("x", "FP32", [-1, 16])], [("y", "FP32", [-1, 4])]),
    "dyn": ([("x", "FP32", [-1, 4])], [("y", "FP32", [-1, 4])]),
    "cast": ([("x", "INT64", [3])], [("y", "FP32", [3])]),
}
IDENTITY = {
    "identity-f16": ("FP16", np.float16),
    "identity-f64": ("FP64", np.float64),
    "identity-bf16": ("BF16", ml_dtypes.bfloat16),
    "identity-u8": ("UINT8", np.uint8),
    "identity-i32": ("INT32", np.int32),
    "identity-i64": ("INT64", np.int64),
}
for _name, (_dt, _) in IDENTITY.items():
    TINY[_name] = ([("x", _dt, [2, 2])], [("y", _dt, [2, 2])])

ADD_A = np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5
ADD_B = np.ones((2, 3), dtype=np.float32)
ADD_SUM = ADD_A + ADD_B


def ok(what):
    print(f"ok: {what}", flush=True)


def check(cond, what):
    assert cond, what
    ok(what)


# --- raw HTTP ----------------------------------------------------------------------------------


def request(addr, method, path, body=None, headers=None):
    """One request on a fresh connection: (status, headers dict lowercased, body bytes)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def get_json(addr, path, headers=None):
    status, _, body = request(addr, "GET", path, headers=headers)
    try:
        return status, json.loads(body)
    except ValueError:
        raise AssertionError(f"GET {path}: {status} with a body that is not JSON: {body!r}")


def post_json(addr, path, obj, headers=None):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    status, hdrs, data = request(addr, "POST", path, body, h)
    return status, hdrs, data


def json_of(what, status, data):
    try:
        return json.loads(data)
    except ValueError:
        raise AssertionError(f"{what}: {status} with a body that is not JSON: {data[:500]!r}")


def expect_http_error(what, status, data, expected):
    """A raw response is `expected` with `{"error": "non-empty message"}`."""
    assert status == expected, f"{what}: expected {expected}, got {status}: {data[:500]!r}"
    body = json_of(what, status, data)
    msg = body.get("error") if isinstance(body, dict) else None
    assert isinstance(msg, str) and msg.strip(), f"{what}: no error message in {body!r}"
    ok(f"{what}: {status} ({msg})")


def split_binary(hdrs, data):
    """The JSON header and the binary part of a response with the binary tensor extension."""
    length = hdrs.get("inference-header-content-length")
    if length is None:
        return json.loads(data), b""
    n = int(length)
    return json.loads(data[:n]), data[n:]


# --- client errors -----------------------------------------------------------------------------


def expect_error(what, fn, status):
    """`fn()` raises InferenceServerException with `status` ("400", "StatusCode.NOT_FOUND")."""
    try:
        fn()
    except InferenceServerException as e:
        msg = e.message() or ""
        assert e.status() == status, f"{what}: expected {status}, got {e.status()}: {msg}"
        assert msg.strip(), f"{what}: empty error message"
        assert "decoding the response" not in msg, f"{what}: the error body is not JSON: {msg}"
        ok(f"{what}: {status} ({msg.strip()})")
        return
    raise AssertionError(f"{what}: expected {status}, but the call succeeded")


def expect_rpc_error(what, fn, code):
    """A bare stub call fails with the gRPC status `code` and a message."""
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"{what}: expected {code}, got {e.code()}: {e.details()}"
        assert (e.details() or "").strip(), f"{what}: empty status message"
        ok(f"{what}: {code} ({e.details()})")
        return
    raise AssertionError(f"{what}: expected {code}, but the call succeeded")


# --- clients -----------------------------------------------------------------------------------


def http_client(args):
    return httpclient.InferenceServerClient(
        args.http, connection_timeout=TIMEOUT, network_timeout=TIMEOUT
    )


def grpc_client(args):
    return grpcclient.InferenceServerClient(args.grpc)


def bare_stub(args):
    channel = grpc.insecure_channel(
        args.grpc,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def auth(key):
    """HTTP headers with the invoke key `key`, if any."""
    return {"Authorization": f"Bearer {key}"} if key else None


def grpc_auth(key):
    """gRPC metadata with the invoke key `key` (gRPC wants lowercase keys)."""
    return {"authorization": f"Bearer {key}"} if key else None


def http_inputs(arrays, binary=True):
    """tritonclient.http inputs from {name: (datatype, array)}."""
    out = []
    for name, (dt, arr) in arrays.items():
        i = httpclient.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr, binary_data=binary)
        out.append(i)
    return out


def grpc_inputs(arrays):
    out = []
    for name, (dt, arr) in arrays.items():
        i = grpcclient.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def add_inputs():
    return {"a": ("FP32", ADD_A), "b": ("FP32", ADD_B)}


def rest_infer(args, model, arrays, binary=True, version="", key=None, **kw):
    return http_client(args).infer(
        model, http_inputs(arrays, binary), model_version=version, headers=auth(key), **kw
    )


def grpc_infer(args, model, arrays, version="", key=None, **kw):
    return grpc_client(args).infer(
        model,
        grpc_inputs(arrays),
        model_version=version,
        headers=grpc_auth(key),
        client_timeout=TIMEOUT,
        **kw,
    )


def same_bits(what, got, want):
    assert got is not None, f"{what}: no output"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    if got.tobytes() != want.tobytes():
        bits = lambda a: a.reshape(-1).view(f"u{a.dtype.itemsize}").tolist()
        raise AssertionError(
            f"{what}: {got.reshape(-1).tolist()} != {want.reshape(-1).tolist()} "
            f"(bits {[hex(b) for b in bits(got)]} != {[hex(b) for b in bits(want)]})"
        )
    ok(f"{what}: {want.dtype}{list(want.shape)} bit for bit")


def close_to(what, got, want, tol):
    assert got is not None, f"{what}: no output"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    assert diff <= tol, f"{what}: max |diff| {diff} > {tol}"
    ok(f"{what}: max |diff| {diff:.2e} <= {tol}")


ALL_WAYS = ("REST binary", "REST JSON", "gRPC")
BOTH = ("REST binary", "gRPC")


def answers(args, what, model, arrays, out, want, ways=ALL_WAYS, tol=None, key=None):
    """`model` answers `arrays` with `want` in its output `out`, over each of `ways` (REST with
    binary or JSON inputs, gRPC with raw contents): bit for bit, or within `tol`."""
    for way in ways:
        if way == "gRPC":
            r = grpc_infer(args, model, arrays, key=key)
        else:
            r = rest_infer(args, model, arrays, binary=way == "REST binary", key=key)
        if tol is None:
            same_bits(f"{what} over {way}", r.as_numpy(out), want)
        else:
            close_to(f"{what} over {way}", r.as_numpy(out), want, tol)


def reference(path, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def parse_pairs(pairs):
    out = {}
    for p in pairs or []:
        name, _, value = p.partition("=")
        out[name] = value
    return out


def grpc_output(resp, name):
    """An output of a bare ModelInferResponse as numpy, raw or typed."""
    from tritonclient.utils import triton_to_np_dtype

    for i, out in enumerate(resp.outputs):
        if out.name != name:
            continue
        np_type = triton_to_np_dtype(out.datatype)
        if i < len(resp.raw_output_contents):
            arr = np.frombuffer(resp.raw_output_contents[i], dtype=np_type)
        else:
            c = out.contents
            values = next(
                (
                    list(getattr(c, f))
                    for f in (
                        "fp32_contents",
                        "fp64_contents",
                        "int_contents",
                        "int64_contents",
                        "uint_contents",
                        "uint64_contents",
                    )
                    if len(getattr(c, f))
                ),
                [],
            )
            arr = np.array(values, dtype=np_type)
        return arr.reshape(list(out.shape))
    return None
