//! The guest SDK's error and JSON helpers, from a real handler (tests/fixtures/json-probe) that
//! uses `?` on JSON, wasi:nn and its own errors: each failure is answered in the node's error
//! shape, `{"error": {"code", "message"}}`, with its status.

use serde_json::json;

use crate::support::*;

/// The `(status, error code)` of an SDK error answer.
fn error_of(r: &Response) -> (u16, String) {
    assert_eq!(r.header("content-type"), Some("application/json"), "{r}");
    let code = r.json()["error"]["code"].as_str().unwrap_or("").to_string();
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{r}"
    );
    (r.status, code)
}

nn_test! {
    fn handlers_use_question_marks_and_json_bodies() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), None);
        let r = node.add_model("mlp", "mlp.onnx");
        assert!(r.status == 201 || r.status == 200, "{r}");
        node.deploy_ok("probe", "json-probe", "model=mlp");

        let r = node.post("/fn/probe/sum", br#"{"values": [1.5, 2, 3.5]}"#);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), json!({"sum": 7.0, "count": 3}));
        assert_eq!(error_of(&node.post("/fn/probe/sum", b"{")), (400, "invalid_json".into()));
        let r = node.post("/fn/probe/sum", br#"{"values": "many"}"#);
        assert_eq!(error_of(&r), (400, "invalid_json".into()));
        let r = node.post("/fn/probe/sum", br#"{"values": []}"#);
        assert_eq!(error_of(&r), (400, "empty_input".into()));

        let r = node.get("/fn/probe/mlp");
        assert_eq!(r.status, 200, "{r}");
        let y: Vec<f64> = serde_json::from_value(r.json()).unwrap();
        assert_eq!(y.len(), 4);
        assert!((y.iter().sum::<f64>() - 1.0).abs() < 1e-5, "softmax rows sum to 1: {y:?}");
        let r = node.get("/fn/probe/missing-output");
        assert_eq!(error_of(&r), (400, "nn_conversion".into()));
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("[\"y\"]"), "{r}");
        assert_eq!(error_of(&node.get("/fn/probe/no-model")), (403, "nn_security".into()));
        assert_eq!(error_of(&node.get("/fn/probe/elsewhere")), (404, "no_route".into()));
    }
}
