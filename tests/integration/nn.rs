//! wasi:nn end to end: models added to a node, a guest (`nn-probe`, through tensorlet-sdk's `nn`
//! module) loading them by name and running them on ONNX Runtime; allow-lists, input checks,
//! every tensor type, deadlines, and a node without ONNX Runtime.

use std::thread;
use std::time::Instant;

use crate::support::*;

fn add_models(node: &Node, models: &[(&str, &str)]) {
    for (name, file) in models {
        let r = node.add_model(name, file);
        assert!(r.status == 201 || r.status == 200, "model add {name}: {r}");
    }
}

/// The value of `name{model="MODEL"}` in the `/metrics` text `metrics`.
fn model_metric(metrics: &str, name: &str, model: &str) -> Option<f64> {
    metric_value(metrics, name, &[("model", model)])
}

/// Models of tests/models, as `(name, file)` for [`add_models`].
const ADD: (&str, &str) = ("add", "add_f32.onnx");
const MLP: (&str, &str) = ("mlp", "mlp.onnx");
const SLOW: (&str, &str) = ("slow", "slow.onnx");
const GROW: (&str, &str) = ("grow", "grow.onnx");

/// Starts a node (with `config`) on a directory of its own, adds `models` to it and deploys
/// nn-probe as `nn` with `query`. Returns the directory too: keep it while the node runs.
fn probe_node(config: Option<&str>, models: &[(&str, &str)], query: &str) -> (TestDir, Node) {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), config);
    add_models(&node, models);
    node.deploy_ok("nn", "nn-probe", query);
    (dir, node)
}

/// On a node with `config`, nn-probe grows a `small` x `small` f32 tensor with `grow.onnx`; a
/// `big` x `big` one gets a wasi:nn error (400) whose text starts with `error`, and the node
/// carries on: the small one grows again. Returns the error's text.
fn grow_past_a_limit(config: &str, small: u32, big: u32, error: &str) -> String {
    let (_dir, node) = probe_node(Some(config), &[GROW], "model=grow");
    let grow = |n: u32| node.get(&format!("/fn/nn/grow/{n}/{n}"));
    let grew = format!("grew {small} {small}");
    assert_eq!(grow(small).text(), grew);
    let r = grow(big);
    assert_eq!(r.status, 400, "{r}");
    assert!(r.text().starts_with(error), "{r}");
    assert_eq!(grow(small).text(), grew, "the node carries on");
    r.text()
}

nn_test! {
    fn a_guest_runs_a_shared_model() {
        let (_dir, node) = probe_node(None, &[ADD, MLP], "model=add&model=mlp");

        assert_eq!(node.get("/fn/nn/add").text(), "2 3 4 5 6 7");
        let huge = node.get("/fn/nn/huge");
        assert_eq!(huge.status, 400, "{huge}");
        assert!(huge.text().starts_with("invalid-argument: "), "{huge}");
        assert!(huge.text().contains("limit"), "{huge}");
        let mlp = node.get("/fn/nn/mlp");
        assert_eq!(mlp.status, 200, "{mlp}");
        let values: Vec<f32> = mlp.text().split(' ').map(|v| v.parse().unwrap()).collect();
        let expected = [
            0.2460677, 0.3244327, 0.2151809, 0.2143187, 0.2055034, 0.4820266, 0.1410425, 0.1714275,
        ];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-5, "mlp output {values:?}");
        }

        let metrics = node.metrics();
        let inferences = model_metric(&metrics, "tensorlet_model_inferences_total", "add");
        assert_eq!(inferences, Some(1.0), "{metrics}");
        assert!(
            metrics.contains("tensorlet_model_inference_duration_seconds_count{model=\"mlp\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("tensorlet_model_session_wait_seconds_count{model=\"add\"} 1"),
            "{metrics}"
        );
        // Many requests at once share the model's sessions; every answer is right.
        let addr = node.addr();
        let workers: Vec<_> = (0..16)
            .map(|_| {
                thread::spawn(move || {
                    (0..5)
                        .map(|_| Request::get("/fn/nn/add").send(addr).text())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            for answer in w.join().unwrap() {
                assert_eq!(answer, "2 3 4 5 6 7");
            }
        }
    }
}

nn_test! {
    fn models_must_be_allowed_and_inputs_must_match() {
        let (_dir, node) = probe_node(None, &[ADD, MLP], "model=add");

        let denied = node.get("/fn/nn/load/mlp");
        assert_eq!(denied.status, 400);
        assert!(denied.text().starts_with("security: "), "{denied}");
        assert!(
            denied.text().contains("--model mlp"),
            "the message says how to allow it: {denied}"
        );

        for (path, code) in [
            ("/fn/nn/bad-shape", "invalid-argument: "),
            ("/fn/nn/bad-type", "invalid-argument: "),
            ("/fn/nn/bad-name", "invalid-argument: "),
            ("/fn/nn/bad-size", "invalid-argument: "),
            ("/fn/nn/raw-load", "security: "),
        ] {
            let r = node.get(path);
            assert_eq!(r.status, 400, "{path}: {r}");
            assert!(r.text().starts_with(code), "{path}: {r}");
        }
        let metrics = node.metrics();
        let errors = model_metric(&metrics, "tensorlet_model_errors_total", "add");
        assert!(errors.unwrap_or(0.0) >= 4.0, "{metrics}");
        // Thousands of tensor resources: bounded by the resource table, never a host crash.
        let many = node.get("/fn/nn/many-tensors");
        assert!(many.status == 200 || many.status == 500, "{many}");
        assert_eq!(
            node.get("/fn/nn/add").text(),
            "2 3 4 5 6 7",
            "the node still serves"
        );

        // A deploy naming a model the node does not have is refused.
        let r = node.deploy("other", &fixture("nn-probe"), "model=nope");
        assert_error(&r, 400, "invalid_request");
    }
}

nn_test! {
    fn every_wasi_nn_tensor_type_round_trips() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), None);
        let types = ["f16", "f64", "bf16", "u8", "i32", "i64"];
        let mut query = vec!["model=identity-dyn".to_string()];
        add_models(&node, &[("identity-dyn", "identity_dyn.onnx")]);
        for t in types {
            add_models(
                &node,
                &[(&format!("identity-{t}"), &format!("identity_{t}.onnx"))],
            );
            query.push(format!("model=identity-{t}"));
        }
        node.deploy_ok("nn", "nn-probe", &query.join("&"));
        for t in types.iter().chain(&["f32"]) {
            let r = node.get(&format!("/fn/nn/identity/{t}"));
            assert_eq!((r.status, r.text()), (200, format!("ok {t}")), "{t}: {r}");
        }
    }
}

nn_test! {
    fn inference_is_bounded_by_the_function_timeout() {
        let (_dir, node) = probe_node(None, &[SLOW, ADD], "model=slow&model=add&timeout=100ms");
        let r = node.get("/fn/nn/slow");
        assert_error(&r, 504, "timeout");
        // The node stays healthy: other inferences and requests are served.
        assert_eq!(node.get("/fn/nn/add").text(), "2 3 4 5 6 7");
    }
}

nn_test! {
    fn onnx_runtime_memory_is_capped() {
        // A guest asks the model for a 1 GiB tensor: ONNX Runtime's arena refuses, the guest gets
        // a wasi:nn error, and the node carries on.
        grow_past_a_limit("model_memory = \"64MiB\"", 100, 16384, "runtime-error");
    }
}

nn_test! {
    /// Outputs count against the request's tensor budget too: past it, `compute` fails with
    /// `too-large` (an error value the guest can handle), and the node carries on.
    fn compute_outputs_past_the_tensor_budget_are_too_large() {
        let config = "max_tensor_bytes_per_request = \"1MiB\"";
        // 1024 x 1024 f32 = 4 MiB of output.
        let error = grow_past_a_limit(config, 256, 1024, "too-large");
        assert!(error.contains("max_tensor_bytes_per_request"), "{error}");
    }
}

nn_test! {
    fn an_abandoned_inference_keeps_its_session_until_it_ends() {
        let config = Some("model_sessions = 1");
        let (_dir, node) = probe_node(config, &[SLOW], "model=slow&timeout=100ms");
        assert_error(&node.get("/fn/nn/slow"), 504, "timeout");
        // The first inference still holds the only session: the next request waits for it (and
        // times out too) instead of being let in to find no session.
        let r = node.get("/fn/nn/slow");
        let text = r.text();
        assert!(
            r.status == 504 || (r.status == 400 && text.starts_with("timeout")),
            "{r}"
        );
        // Once the abandoned inference ends, its session serves again.
        node.wait_for_metric(
            "the abandoned inference to end",
            "tensorlet_model_inference_duration_seconds_count",
            &[("model", "slow")],
            |done| done >= 1.0,
        );
        node.deploy_ok("patient", "nn-probe", "model=slow&timeout=10s");
        assert_eq!(node.get("/fn/patient/slow").text(), "done");
    }
}

nn_test! {
    fn queued_computes_run_as_one_batch() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), Some("model_sessions = 1"));
        // `tensorlet model add NAME tests/models/FILE --max-batch MAX_BATCH`
        let add_batched = |name: &str, file: &str, max_batch: &str| {
            let path = repo_root().join("tests/models").join(file);
            node.cli(&[
                "model",
                "add",
                name,
                path.to_str().unwrap(),
                "--max-batch",
                max_batch,
            ])
        };
        let out = add_batched("add", "add_f32.onnx", "4");
        assert!(
            !out.status.success(),
            "a model with a fixed first dimension cannot be batched"
        );
        assert!(out_text(&out).1.contains("cannot be batched"), "{out:?}");
        let out = add_batched("slow-rows", "slow_rows.onnx", "8");
        cli_ok(&out, "model add --max-batch");
        assert_eq!(
            node.get("/admin/v1/models/slow-rows").json()["versions"][0]["max_batch"],
            8
        );
        node.deploy_ok("nn", "nn-probe", "model=slow-rows&timeout=30s");

        // The first compute takes the only session for ~0.5 s; the next ones queue behind it and
        // then run together as one inference, each getting its own rows back.
        let addr = node.addr();
        let first = thread::spawn(move || Request::get("/fn/nn/rows/1").send(addr).text());
        node.wait_in_flight("nn", 1);
        let rest: Vec<_> = (2..=4)
            .map(|k| {
                thread::spawn(move || {
                    (
                        k,
                        Request::get(&format!("/fn/nn/rows/{k}")).send(addr).text(),
                    )
                })
            })
            .collect();
        assert_eq!(first.join().unwrap(), "ok 1");
        for r in rest {
            let (k, text) = r.join().unwrap();
            assert_eq!(text, format!("ok {k}"));
        }
        let batched = node.metric("tensorlet_model_batched_total", &[("model", "slow-rows")]);
        assert!(batched >= Some(2.0), "batched computes: {batched:?}");
    }
}

nn_test! {
    fn protocol_requests_batch_with_wasi_nn_computes() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), Some("model_sessions = 1"));
        let path = repo_root().join("tests/models/slow_rows.onnx");
        let out = node.cli(&["model", "add", "slow-rows", path.to_str().unwrap(), "--max-batch", "8"]);
        cli_ok(&out, "model add --max-batch");
        node.deploy_ok("nn", "nn-probe", "model=slow-rows&timeout=30s");

        // A function's compute takes the only session for ~0.5 s; protocol requests and another
        // compute queue behind it and run as one inference, each getting its own rows (y = 2x).
        let addr = node.addr();
        let first = thread::spawn(move || Request::get("/fn/nn/rows/1").send(addr).text());
        node.wait_in_flight("nn", 1);
        let infer = |k: usize| {
            thread::spawn(move || {
                let x: Vec<f32> = (0..k * 8).map(|i| i as f32).collect();
                let body = serde_json::json!({"inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [k, 8], "data": x}]});
                let r = Request::new("POST", "/v2/models/slow-rows/infer")
                    .body(body.to_string().into_bytes())
                    .send(addr);
                assert_eq!(r.status, 200, "{r}");
                let y = r.json()["outputs"][0]["data"].clone();
                let want: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
                assert_eq!(y, serde_json::json!(want));
            })
        };
        let protocol = [infer(2), infer(3)];
        let compute = thread::spawn(move || Request::get("/fn/nn/rows/2").send(addr).text());
        assert_eq!(first.join().unwrap(), "ok 1");
        for p in protocol {
            p.join().unwrap();
        }
        assert_eq!(compute.join().unwrap(), "ok 2");
        let metrics = node.metrics();
        let count = |name, path| metric_value(&metrics, name, &[("model", "slow-rows"), ("path", path)]);
        assert_eq!(count("tensorlet_model_inferences_total", "oip"), Some(2.0));
        assert_eq!(count("tensorlet_model_inferences_total", "wasi-nn"), Some(2.0));
        let batched = metric_value(&metrics, "tensorlet_model_batched_total", &[("model", "slow-rows")]);
        assert!(batched >= Some(2.0), "batched: {batched:?}\n{metrics}");
    }
}

nn_test! {
    fn identical_model_bytes_load_once() {
        let dir = TestDir::new();
        let mut node = Node::start(&dir.data(), None);
        add_models(
            &node,
            &[ADD, ("add-copy", "add_f32.onnx"), MLP],
        );
        let loaded = |node: &Node| node.metric("tensorlet_models_loaded", &[]);
        assert_eq!(loaded(&node), Some(2.0), "two names, one copy of add_f32");
        node.deploy_ok("nn", "nn-probe", "model=add&model=add-copy");
        assert_eq!(node.get("/fn/nn/add").text(), "2 3 4 5 6 7");
        assert_eq!(node.get("/fn/nn/load/add-copy").text(), "ok");

        node.terminate();
        assert!(node.wait_exit().success());
        let node = Node::start(&dir.data(), None);
        assert_eq!(loaded(&node), Some(2.0), "shared again after a restart");
        assert_eq!(node.delete("/admin/v1/models/mlp").status, 200);
        assert_eq!(loaded(&node), Some(1.0));
        assert_eq!(node.delete("/admin/v1/functions/nn").status, 200);
        assert_eq!(node.delete("/admin/v1/models/add").status, 200);
        assert_eq!(loaded(&node), Some(1.0), "add-copy still uses the bytes");
        node.deploy_ok("nn", "nn-probe", "model=add-copy");
        assert_eq!(node.get("/fn/nn/load/add-copy").text(), "ok");
        assert_eq!(node.delete("/admin/v1/functions/nn").status, 200);
        assert_eq!(node.delete("/admin/v1/models/add-copy").status, 200);
        assert_eq!(loaded(&node), Some(0.0));
    }
}

nn_test! {
    fn models_are_managed_and_persist() {
        let dir = TestDir::new();
        let mut node = Node::start(&dir.data(), None);
        let bad = node.add_model("broken", "not_onnx.onnx");
        assert_error(&bad, 400, "invalid_model");
        // An ONNX bomb: 168 bytes that declare a 16 GiB output.
        let bomb = node.add_model("bomb", "bomb.onnx");
        assert_error(&bomb, 400, "invalid_model");
        assert!(error_message(&bomb).contains("larger than"), "{bomb}");
        let added = node.add_model("add", "add_f32.onnx");
        assert_eq!(added.status, 201, "{added}");
        assert_eq!(
            added.json()["version"],
            version_id(&repo_root().join("tests/models/add_f32.onnx"))
        );
        assert_eq!(
            node.add_model("add", "add_f32.onnx").status,
            200,
            "the same bytes again are a no-op"
        );

        let info = node.get("/admin/v1/models/add").json();
        assert_eq!(info["inputs"][0]["name"], "a");
        assert_eq!(info["inputs"][0]["type"], "fp32");
        assert_eq!(info["outputs"][0]["name"], "sum");
        let list = node.get("/admin/v1/models").json();
        assert_eq!(list["models"][0]["name"], "add");

        node.deploy_ok("nn", "nn-probe", "model=add");
        let in_use = node.delete("/admin/v1/models/add");
        assert_error(&in_use, 409, "version_conflict");

        // CLI
        let out = node.cli(&["model", "list"]);
        assert!(cli_ok(&out, "model list").contains("add"));
        let out = node.cli(&["model", "versions", "add"]);
        assert!(cli_ok(&out, "model versions").contains("input a fp32 [2,3]"));

        node.terminate();
        assert!(node.wait_exit().success());
        let node = Node::start(&dir.data(), None);
        assert_eq!(
            node.get("/fn/nn/add").text(),
            "2 3 4 5 6 7",
            "models survive a restart"
        );
        assert_eq!(node.delete("/admin/v1/functions/nn").status, 200);
        assert_eq!(node.delete("/admin/v1/models/add").status, 200);
        assert_error(&node.get("/admin/v1/models/add"), 404, "model_not_found");
    }
}

#[test]
fn a_node_without_onnx_runtime_still_serves_other_functions() {
    let dir = TestDir::new();
    let config = format!(
        "onnxruntime = \"{}\"\n",
        dir.path().join("missing/libonnxruntime.so").display()
    );
    let node = Node::start(&dir.data(), Some(&config));
    node.deploy_ok("hello", "hello-plain", "");
    assert_eq!(node.get("/fn/hello").text(), "hello");
    assert_error(
        &node.add_model("add", "add_f32.onnx"),
        503,
        "onnx_unavailable",
    );
    node.deploy_ok("nn", "nn-probe", "");
    let r = node.get("/fn/nn/load/add");
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .starts_with("runtime-error: ONNX Runtime is not loaded"),
        "{r}"
    );
}

nn_test! {
    fn guest_model_loads_follow_the_node_policy() {
        let dir = TestDir::new();
        let node = Node::start(
            &dir.data(),
            Some("guest_model_load = true\nmax_guest_model_size = \"1KiB\"\n"),
        );
        node.deploy_ok("nn", "nn-probe", "");
        // Turned on, the bytes are checked like any model: these 64 bytes are not one.
        let r = node.get("/fn/nn/raw-load");
        assert_eq!(r.status, 400, "{r}");
        assert!(r.text().starts_with("invalid-encoding: "), "{r}");
    }
}

nn_test! {
    fn gpu_models_follow_the_node_fallback_policy() {
        let bytes = std::fs::read(repo_root().join("tests/models/add_f32.onnx")).unwrap();
        let add_gpu = |node: &Node| {
            Request::new("POST", "/admin/v1/models/add/versions?target=gpu")
                .header("content-type", "application/octet-stream")
                .body(bytes.clone())
                .send(node.addr())
        };
        // The CPU build of ONNX Runtime has no CUDA provider. By default that is an error that
        // says so: the model is fine, this node cannot run it (503, as for a node without ONNX
        // Runtime).
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), None);
        let refused = assert_error(&add_gpu(&node), 503, "gpu_unavailable");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("CUDA"),
            "{refused}"
        );

        // With `gpu_fallback = "cpu"` the model runs on the CPU, logged and counted, never
        // silently.
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), Some("gpu_fallback = \"cpu\"\n"));
        let added = add_gpu(&node);
        assert_eq!(added.status, 201, "{added}");
        assert_eq!(added.json()["target"], "gpu");
        node.deploy_ok("nn", "nn-probe", "model=add");
        assert_eq!(node.get("/fn/nn/add").text(), "2 3 4 5 6 7");
        let metrics = node.metrics();
        let fallbacks = model_metric(&metrics, "tensorlet_model_gpu_fallbacks_total", "add");
        assert_eq!(
            fallbacks,
            Some(1.0),
            "one fallback per model load:\n{metrics}"
        );
        wait_for("the fallback to be logged", || {
            node.stderr_text()
                .contains("running the model on the CPU")
                .then_some(())
        });
    }
}

nn_test! {
    example_models:
    /// Making a model version live again builds its sessions anew (they were dropped when another
    /// version went live). That work runs off the serving threads and outside the admin lock: a
    /// function keeps answering all the while.
    fn functions_keep_answering_while_a_model_is_made_live() {
        let dir = TestDir::new();
        // Many sessions per model: building them takes a while.
        let config = Some("model_sessions = 12");
        let node = start_with_real_model(&dir, config, "big", "minilm-int8.onnx");
        node.deploy_ok("hello", "hello-plain", "");
        add_models(&node, &[("big", "add_f32.onnx")]);
        let big = real_model("minilm-int8.onnx");
        let addr = node.addr();
        let started = Instant::now();
        let op = thread::spawn(move || {
            let bytes = std::fs::read(big).unwrap();
            let r = Request::new("POST", "/admin/v1/models/big/versions")
                .header("content-type", "application/octet-stream")
                .body(bytes)
                .send(addr);
            (r, Instant::now())
        });
        let mut answers = vec![started];
        while !op.is_finished() {
            let r = node.get("/fn/hello");
            assert_eq!(r.status, 200, "{r}");
            answers.push(Instant::now());
        }
        let (r, finished) = op.join().unwrap();
        assert_eq!(r.status, 200, "the version existed: {r}");
        assert_eq!(r.json()["live"], true, "{r}");
        let took = finished - started;
        // On a serving thread the build held back every request that reached that thread until it
        // was done; now no gap between answers comes near the operation's length.
        let longest = answers
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        eprintln!(
            "{} answers during a {took:?} model operation, longest gap {longest:?}",
            answers.len() - 1
        );
        assert!(
            answers.len() > 10 && longest < took / 2,
            "{} answers during a {took:?} model operation, longest gap {longest:?}",
            answers.len() - 1
        );
    }
}
