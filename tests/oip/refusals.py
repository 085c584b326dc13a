"""The protocol checks that refuse or limit: bad requests, tenants and keys, rate limits,
versions, model_timeout, the body cap and the inference counters (run through client.py)."""

from common import *  # noqa: F401,F403

# --- bad inputs --------------------------------------------------------------------------------


def add_request(**changes):
    inputs = [
        {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": ADD_A.flatten().tolist()},
        {"name": "b", "datatype": "FP32", "shape": [2, 3], "data": ADD_B.flatten().tolist()},
    ]
    req = {"inputs": inputs}
    for key, value in changes.items():
        if key == "a":
            inputs[0].update(value)
        else:
            req[key] = value
    return req


def binary_add(header_length=None, sizes=(24, 24), body_a=None, body_b=None):
    """A binary add request: (body, headers)."""
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": sizes[0]},
                },
                {
                    "name": "b",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": sizes[1]},
                },
            ]
        }
    ).encode()
    a = ADD_A.tobytes() if body_a is None else body_a
    b = ADD_B.tobytes() if body_b is None else body_b
    length = str(len(head)) if header_length is None else header_length
    return head + a + b, {
        "Inference-Header-Content-Length": length,
        "Content-Type": "application/octet-stream",
    }


def cmd_bad(args):
    path = "/v2/models/add/infer"
    good_body, good_headers = binary_add()
    status, hdrs, data = request(args.http, "POST", path, good_body, good_headers)
    assert status == 200, f"the good binary request: {status} {data[:500]!r}"
    head, rest = split_binary(hdrs, data)
    check(
        (
            np.array_equal(np.frombuffer(rest, dtype=np.float32).reshape(2, 3), ADD_SUM)
            if rest
            else np.array_equal(np.array(head["outputs"][0]["data"]).reshape(2, 3), ADD_SUM)
        ),
        "raw binary add request answers",
    )

    a_only = add_request()
    a_only["inputs"] = a_only["inputs"][:1]
    extra = add_request()
    extra["inputs"].append({"name": "c", "datatype": "FP32", "shape": [2, 3], "data": [0] * 6})
    json_cases = [
        ("wrong datatype", add_request(a={"datatype": "INT32", "data": [1, 2, 3, 4, 5, 6]})),
        ("wrong shape [3,2]", add_request(a={"shape": [3, 2]})),
        ("wrong rank [6]", add_request(a={"shape": [6]})),
        ("unknown input name", extra),
        ("missing input", a_only),
        ("5 values for [2,3]", add_request(a={"data": [1, 2, 3, 4, 5]})),
        ("7 values for [2,3]", add_request(a={"data": [1, 2, 3, 4, 5, 6, 7]})),
        ("non-numeric data", add_request(a={"data": ["x"] * 6})),
        ("unknown requested output", add_request(outputs=[{"name": "nope"}])),
        ("malformed JSON", b'{"inputs": ['),
        ("JSON that is not an object", b"[]"),
        # The request's fields as an array, in order: JSON, but not the protocol's object.
        (
            "the request's fields as an array",
            json.dumps([None, {}, add_request()["inputs"], None]).encode(),
        ),
        ("no inputs", b"{}"),
    ]
    for what, req in json_cases:
        status, _, data = post_json(args.http, path, req)
        expect_http_error(f"REST {what}", status, data, 400)

    n = len(binary_add()[0]) - 48
    binary_cases = [
        ("Inference-Header-Content-Length past the body", binary_add(header_length=str(n + 1000))),
        ("negative Inference-Header-Content-Length", binary_add(header_length="-5")),
        ("non-numeric Inference-Header-Content-Length", binary_add(header_length="abc")),
        ("binary_data_size past the body", binary_add(sizes=(24, 48))),
        ("negative binary_data_size", binary_add(sizes=(-24, 24))),
        ("non-numeric binary_data_size", binary_add(sizes=("24", 24))),
        (
            "binary_data_size not the tensor's bytes",
            binary_add(sizes=(20, 24), body_a=ADD_A.tobytes()[:20]),
        ),
        ("binary data left over", binary_add(body_b=ADD_B.tobytes() + b"\0" * 8)),
    ]
    for what, (body, headers) in binary_cases:
        status, _, data = request(args.http, "POST", path, body, headers)
        expect_http_error(f"REST {what}", status, data, 400)

    status, _, data = post_json(args.http, "/v2/models/nope/infer", add_request())
    expect_http_error("REST unknown model", status, data, 404)
    status, _, data = post_json(
        args.http, f"/v2/models/add/versions/{UNKNOWN_VERSION}/infer", add_request()
    )
    expect_http_error("REST unknown version", status, data, 404)

    # The same through tritonclient: the status string and the JSON message.
    h = http_client(args)
    wrong_type = {"a": ("INT32", ADD_A.astype(np.int32)), "b": ("FP32", ADD_B)}
    expect_error(
        "tritonclient.http wrong datatype", lambda: rest_infer(args, "add", wrong_type), "400"
    )
    expect_error(
        "tritonclient.http unknown model", lambda: h.infer("nope", http_inputs(add_inputs())), "404"
    )

    # gRPC through tritonclient.
    g_cases = [
        ("wrong datatype", wrong_type, None),
        ("wrong shape", {"a": ("FP32", ADD_A.reshape(3, 2)), "b": ("FP32", ADD_B)}, None),
        ("unknown input name", dict(add_inputs(), c=("FP32", ADD_B)), None),
        ("missing input", {"a": ("FP32", ADD_A)}, None),
        ("unknown requested output", add_inputs(), [grpcclient.InferRequestedOutput("nope")]),
    ]
    for what, arrays, outputs in g_cases:
        expect_error(
            f"gRPC {what}",
            lambda: grpc_infer(args, "add", arrays, outputs=outputs),
            "StatusCode.INVALID_ARGUMENT",
        )
    expect_error(
        "gRPC unknown model", lambda: grpc_infer(args, "nope", add_inputs()), "StatusCode.NOT_FOUND"
    )
    expect_error(
        "gRPC unknown version",
        lambda: grpc_infer(args, "add", add_inputs(), version=UNKNOWN_VERSION),
        "StatusCode.NOT_FOUND",
    )

    # gRPC with a bare stub: what tritonclient never sends.
    stub = bare_stub(args)

    def raw_request(raw, typed=None):
        req = service_pb2.ModelInferRequest(model_name="add")
        for name in ("a", "b"):
            t = req.inputs.add(name=name, datatype="FP32", shape=[2, 3])
            if typed and name in typed:
                field, values = typed[name]
                getattr(t.contents, field).extend(values)
        req.raw_input_contents.extend(raw)
        return req

    a, b = ADD_A.tobytes(), ADD_B.tobytes()
    stub_cases = [
        ("one raw_input_contents for two inputs", raw_request([a])),
        ("three raw_input_contents for two inputs", raw_request([a, b, b])),
        ("raw_input_contents of the wrong byte size", raw_request([a[:20], b])),
        (
            "5 typed values for [2,3]",
            raw_request([], {"a": ("fp32_contents", [1.0] * 5), "b": ("fp32_contents", [1.0] * 6)}),
        ),
        (
            "typed values of the wrong type",
            raw_request([], {"a": ("int_contents", [1] * 6), "b": ("fp32_contents", [1.0] * 6)}),
        ),
        ("an input without data", raw_request([], {"a": ("fp32_contents", [1.0] * 6)})),
    ]
    for what, req in stub_cases:
        expect_rpc_error(
            f"gRPC {what}",
            lambda: stub.ModelInfer(req, timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT,
        )

    # After all of that the node answers a good request, both ways.
    answers(args, "add after the bad requests", "add", add_inputs(), "sum", ADD_SUM)
    same_bits(
        "bare gRPC add after the bad requests",
        grpc_output(stub.ModelInfer(raw_request([a, b]), timeout=TIMEOUT), "sum"),
        ADD_SUM,
    )



# --- tenants, versions, rate limits ------------------------------------------------------------


def both_refuse(args, model, key, http_status, grpc_status, what):
    expect_error(
        f"REST {what}", lambda: rest_infer(args, model, add_inputs(), key=key), http_status
    )
    expect_error(
        f"gRPC {what}", lambda: grpc_infer(args, model, add_inputs(), key=key), grpc_status
    )


def both_answer(args, model, key, what):
    answers(args, what, model, add_inputs(), "sum", ADD_SUM, BOTH, key=key)


def cmd_tenants(args):
    acme, bobco = args.acme_key, args.bobco_key
    unauth = ("401", "StatusCode.UNAUTHENTICATED")
    both_refuse(args, "acme.m", None, *unauth, "acme.m without a key")
    both_refuse(args, "acme.m", bobco, *unauth, "acme.m with bobco's key")
    bogus = acme[: acme.rindex("_") + 1] + "x" * 20
    both_refuse(args, "acme.m", bogus, *unauth, "acme.m with a bogus key")
    both_answer(args, "acme.m", acme, "acme.m with acme's key")
    meta = http_client(args).get_model_metadata("acme.m", headers=auth(acme))
    check(
        meta["name"] == "acme.m" and [t["name"] for t in meta["inputs"]] == ["a", "b"],
        f"acme.m metadata {meta}",
    )
    check(
        grpc_client(args).is_model_ready("acme.m", headers=grpc_auth(acme)),
        "grpc: acme.m ready with acme's key",
    )

    both_answer(args, "acme.pub", None, "public acme.pub without a key")
    both_answer(args, "acme.pub", bobco, "public acme.pub with bobco's key")
    both_answer(args, "add", acme, "operator model add with acme's key")
    both_answer(args, "add", bobco, "operator model add with bobco's key")
    both_refuse(args, "add", None, *unauth, "operator model add without a key")
    both_refuse(args, "acme.nope", acme, "404", "StatusCode.NOT_FOUND", "unknown acme.nope")
    both_refuse(args, "bobco.m", bobco, "404", "StatusCode.NOT_FOUND", "bobco.m that bobco lacks")


def cmd_rate_limit(args):
    limited = None
    for i in range(30):
        try:
            rest_infer(args, args.model, add_inputs(), key=args.key)
        except InferenceServerException as e:
            limited = e
            break
    assert limited is not None, "30 quick REST calls at 1 request/s were all served"
    assert limited.status() == "429" and (limited.message() or "").strip(), (
        limited.status(),
        limited.message(),
    )
    ok(f"REST refused after {i} calls: 429 ({limited.message()})")
    limited = None
    for i in range(30):
        try:
            grpc_infer(args, args.model, add_inputs(), key=args.key)
        except InferenceServerException as e:
            limited = e
            break
    assert limited is not None, "30 quick gRPC calls at 1 request/s were all served"
    assert limited.status() == "StatusCode.RESOURCE_EXHAUSTED", (
        limited.status(),
        limited.message(),
    )
    ok(f"gRPC refused after {i} calls: RESOURCE_EXHAUSTED ({limited.message()})")


def cmd_versions(args):
    """m: `old` the adder (aliased `stable`, so loaded), `unloaded` the cast (retained only),
    `new` the mlp (live)."""
    old, unloaded, new = args.old, args.unloaded, args.new
    h, g = http_client(args), grpc_client(args)
    meta = h.get_model_metadata("m")
    check({old, unloaded, new} <= set(meta["versions"]), f"m versions {meta['versions']}")
    check([t["name"] for t in meta["inputs"]] == ["x"], "m's live version is the mlp")
    for v in (old, "stable"):
        meta = h.get_model_metadata("m", model_version=v)
        check([t["name"] for t in meta["inputs"]] == ["a", "b"], f"http m@{v} is the adder")
        meta = g.get_model_metadata("m", model_version=v)
        check([t.name for t in meta.inputs] == ["a", "b"], f"grpc m@{v} is the adder")
        check(h.is_model_ready("m", model_version=v), f"http m@{v} ready")
        check(g.is_model_ready("m", model_version=v), f"grpc m@{v} ready")
        r = rest_infer(args, "m", add_inputs(), version=v)
        assert r.get_response()["model_version"] == old, r.get_response()
        same_bits(f"REST m@{v}", r.as_numpy("sum"), ADD_SUM)
        r = grpc_infer(args, "m", add_inputs(), version=v)
        assert r.get_response().model_version == old, r.get_response()
        same_bits(f"gRPC m@{v}", r.as_numpy("sum"), ADD_SUM)

    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    want = reference(MODELS / "mlp.onnx", {"x": x})[0]
    for v in ("", new):
        r = rest_infer(args, "m", {"x": ("FP32", x)}, version=v)
        assert r.get_response()["model_version"] == new, r.get_response()
        close_to(f"REST m@{v or 'live'}", r.as_numpy("y"), want, 1e-6)
        r = grpc_infer(args, "m", {"x": ("FP32", x)}, version=v)
        assert r.get_response().model_version == new, r.get_response()
        close_to(f"gRPC m@{v or 'live'}", r.as_numpy("y"), want, 1e-6)
    expect_error(
        "REST the mlp's input sent to m@old",
        lambda: rest_infer(args, "m", {"x": ("FP32", x)}, version=old),
        "400",
    )

    # A retained version that is neither live, aliased nor pinned is not loaded: not found.
    cast_in = {"x": ("INT64", np.array([1, -2, 3], dtype=np.int64))}
    expect_error(
        f"REST m@{unloaded} (not loaded)",
        lambda: rest_infer(args, "m", cast_in, version=unloaded),
        "404",
    )
    expect_error(
        f"gRPC m@{unloaded} (not loaded)",
        lambda: grpc_infer(args, "m", cast_in, version=unloaded),
        "StatusCode.NOT_FOUND",
    )
    check(not h.is_model_ready("m", model_version=unloaded), f"m@{unloaded} not ready")

    for v in (UNKNOWN_VERSION, "nope"):
        expect_error(f"REST m@{v}", lambda: rest_infer(args, "m", add_inputs(), version=v), "404")
        expect_error(
            f"gRPC m@{v}",
            lambda: grpc_infer(args, "m", add_inputs(), version=v),
            "StatusCode.NOT_FOUND",
        )
        expect_error(
            f"REST metadata m@{v}", lambda: h.get_model_metadata("m", model_version=v), "404"
        )
        expect_error(
            f"gRPC metadata m@{v}",
            lambda: g.get_model_metadata("m", model_version=v),
            "StatusCode.NOT_FOUND",
        )
        check(not h.is_model_ready("m", model_version=v), f"m@{v} not ready")


# --- limits ------------------------------------------------------------------------------------


def cmd_timeout(args):
    x = np.full((1, 256), 0.5, dtype=np.float32)
    slow = {"x": ("FP32", x)}
    expect_error(
        "REST slow model past model_timeout", lambda: rest_infer(args, "slow", slow), "504"
    )
    expect_error(
        "gRPC slow model past model_timeout",
        lambda: grpc_infer(args, "slow", slow),
        "StatusCode.DEADLINE_EXCEEDED",
    )
    both_answer(args, "add", None, "add after the timeouts")
    expect_error("REST slow model again", lambda: rest_infer(args, "slow", slow), "504")


def cmd_body_cap(args):
    cap = args.cap
    under = (cap - 4096) // 16
    x = np.arange(under * 4, dtype=np.float32).reshape(under, 4)
    answers(args, f"{x.nbytes} bytes under the cap", "dyn", {"x": ("FP32", x)}, "y", x, BOTH)
    over = cap // 16 + 1024
    big = np.zeros((over, 4), dtype=np.float32)
    expect_error(
        f"gRPC {big.nbytes} bytes over the cap",
        lambda: grpc_infer(args, "dyn", {"x": ("FP32", big)}),
        "StatusCode.RESOURCE_EXHAUSTED",
    )
    small = np.ones((2, 4), dtype=np.float32)
    same_bits(
        "gRPC after the refusal",
        grpc_infer(args, "dyn", {"x": ("FP32", small)}).as_numpy("y"),
        small,
    )


def cmd_count(args):
    for i in range(args.rest):
        answers(args, f"add #{i + 1}", "add", add_inputs(), "sum", ADD_SUM, ("REST binary",))
    for i in range(args.grpc_calls):
        answers(args, f"add #{i + 1}", "add", add_inputs(), "sum", ADD_SUM, ("gRPC",))
