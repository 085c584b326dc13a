//! The Open Inference Protocol on a node with tenants (invoke keys, public and operator models,
//! rate limits) and model versions, with the real Python clients (see oip.rs).

use serde_json::json;

use crate::oip::{GRPC, client, oip_node};
use crate::support::*;

/// Adds tests/models/`file` as `name` with the admin API, as the owner of `token`, with `query`.
fn add_model_as(node: &Node, token: &str, name: &str, file: &str, query: &str) {
    let bytes = std::fs::read(repo_root().join("tests/models").join(file)).unwrap();
    let mut path = format!("/admin/v1/models/{name}/versions");
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    let r = node.send(as_(token, "POST", &path).body(bytes));
    assert_eq!(r.status, 201, "model add {name} ({query}): {r}");
}

fn tenants_node(dir: &TestDir) -> (Node, String) {
    let node = Node::start(&dir.data(), Some(&format!("tenants = true\n{GRPC}")));
    let op = operator_token(&node);
    (node, op)
}

nn_test! {
    /// `acme.m` needs one of acme's invoke keys (401/UNAUTHENTICATED without one, with bobco's,
    /// with a bogus one); acme's public model needs none; the operator's `add` answers to any
    /// tenant's key.
    fn oip_tenant_models_need_invoke_keys() {
        let dir = TestDir::new();
        let (node, op) = tenants_node(&dir);
        let acme = create_tenant(&node, &op, "acme", json!({}));
        let bobco = create_tenant(&node, &op, "bobco", json!({}));
        add_model_as(&node, &acme, "m", "add_f32.onnx", "");
        add_model_as(&node, &op, "add", "add_f32.onnx", "");
        // The public one through the CLI's --public.
        let file = repo_root().join("tests/models/add_f32.onnx");
        let args = ["model", "add", "pub", file.to_str().unwrap(), "--public", "--token", &acme];
        cli_ok(&node.cli(&args), "model add pub --public");
        let (acme_key, bobco_key) = (new_key(&node, &acme), new_key(&node, &bobco));
        client(
            &node,
            "tenants",
            &["--acme-key", &acme_key, "--bobco-key", &bobco_key],
        );
    }
}

nn_test! {
    /// A tenant allowed one request a second is refused with 429 over REST and
    /// RESOURCE_EXHAUSTED over gRPC once its calls outrun that.
    fn oip_tenant_rate_limit() {
        let dir = TestDir::new();
        let (node, op) = tenants_node(&dir);
        let slow = create_tenant(&node, &op, "slowpoke", json!({"requests_per_second": 1}));
        add_model_as(&node, &slow, "m", "add_f32.onnx", "");
        let key = new_key(&node, &slow);
        client(&node, "rate-limit", &["--model", "slowpoke.m", "--key", &key]);
        let m = node.metrics();
        let refused = metric_value(
            &m,
            "tensorlet_tenant_rejected_total",
            &[("tenant", "slowpoke"), ("reason", "rate_limited")],
        );
        assert!(refused >= Some(2.0), "{m}");
    }
}

nn_test! {
    /// A model's versions are addressable: metadata and infer of an older, aliased version by
    /// its short id or alias, the live one by id or without one; a retained version that is not
    /// loaded, and an unknown one, are 404/NOT_FOUND.
    fn oip_model_versions() {
        let (_dir, node) = oip_node("", &[]);
        let version = |file: &str| {
            let r = node.add_model("m", file);
            assert_eq!(r.status, 201, "model add m {file}: {r}");
            r.json()["version"].as_str().unwrap().to_string()
        };
        let old = version("add_f32.onnx");
        let unloaded = version("cast_i64_to_f32.onnx");
        let new = version("mlp.onnx");
        assert_eq!(crate::oip::live_version(&node, "m"), new);
        let r = Request::new("PUT", "/admin/v1/models/m/aliases/stable")
            .body(json!({ "version": old }).to_string().into_bytes())
            .send(node.addr());
        assert_eq!(r.status, 200, "{r}");
        client(
            &node,
            "versions",
            &["--old", &old, "--unloaded", &unloaded, "--new", &new],
        );
    }
}
