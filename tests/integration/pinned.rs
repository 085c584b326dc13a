//! Versions that mean what they say (README "Versions pin their models"): a function version
//! runs with the exact model versions it was deployed with, unless it asked to follow `@live`;
//! adding a model version changes nothing pinned; rolling a function back brings its models
//! back; models roll back too.

use crate::support::*;

/// `add_f32.onnx` with its `Add` node turned into `Mul`: the same inputs and outputs, other
/// numbers (`a * 1` instead of `a + 1`).
fn mul_model() -> Vec<u8> {
    let bytes = std::fs::read(repo_root().join("tests/models/add_f32.onnx")).unwrap();
    let at = bytes
        .windows(3)
        .position(|w| w == b"Add")
        .expect("the Add op");
    let mut out = bytes.clone();
    out[at..at + 3].copy_from_slice(b"Mul");
    out
}

fn add_model(node: &Node, bytes: Vec<u8>) -> String {
    let r = Request::new("POST", "/admin/v1/models/add/versions")
        .body(bytes)
        .send(node.addr());
    assert_eq!(r.status, 201, "{r}");
    r.json()["version"].as_str().unwrap().to_string()
}

const ADDED: &str = "2 3 4 5 6 7";
const MULTIPLIED: &str = "1 2 3 4 5 6";

nn_test! {
    fn function_versions_keep_the_models_they_were_deployed_with() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), None);
        let adds = add_model(&node, std::fs::read(repo_root().join("tests/models/add_f32.onnx")).unwrap());
        let pinned = node.deploy_ok("pinned", "nn-probe", "model=add");
        assert_eq!(pinned["models"], serde_json::json!([format!("add@{adds}")]), "{pinned}");
        let follows = node.deploy_ok("follows", "nn-probe", "model=add@live");
        assert_eq!(follows["models"], serde_json::json!(["add@live"]), "{follows}");
        assert_eq!(node.get("/fn/pinned/add").text(), ADDED);

        // A new model version: what pinned the old one still runs it; `@live` follows.
        let muls = add_model(&node, mul_model());
        assert_eq!(node.get("/fn/pinned/add").text(), ADDED);
        assert_eq!(node.get("/fn/follows/add").text(), MULTIPLIED);

        // The same component deployed again pins the new live model: a new version, not a 409.
        let again = node.deploy_ok("pinned", "nn-probe", "model=add");
        assert_ne!(again["version"], pinned["version"]);
        assert_eq!(again["models"], serde_json::json!([format!("add@{muls}")]));
        assert_eq!(node.get("/fn/pinned/add").text(), MULTIPLIED);
        let text = cli_ok(&node.cli(&["versions", "pinned"]), "versions");
        assert!(text.contains("MODELS") && text.contains(&format!("add@{adds}")), "{text}");

        // Rolling the function back brings back the model it ran with.
        let r = node.rollback("pinned", None);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(node.get("/fn/pinned/add").text(), ADDED);

        // An explicit pin, and one that does not exist.
        let explicit = node.deploy_ok("explicit", "nn-probe", &format!("model=add%40{muls}"));
        assert_eq!(explicit["models"], serde_json::json!([format!("add@{muls}")]));
        assert_eq!(node.get("/fn/explicit/add").text(), MULTIPLIED);
        let r = node.deploy("explicit", &fixture("nn-probe"), "model=add%40000000000000");
        assert_error(&r, 404, "version_not_found");

        // A model alias pins the version it names.
        let r = Request::new("PUT", "/admin/v1/models/add/aliases/stable")
            .body(format!("{{\"version\":\"{adds}\"}}").into_bytes())
            .send(node.addr());
        assert_eq!(r.status, 200, "{r}");
        let by_alias = node.deploy_ok("by-alias", "nn-probe", "model=add%40stable");
        assert_eq!(by_alias["models"], serde_json::json!([format!("add@{adds}")]));
        assert_eq!(node.get("/fn/by-alias/add").text(), ADDED);
        let text = cli_ok(&node.cli(&["model", "alias", "list", "add"]), "model alias list");
        assert!(text.contains("stable") && text.contains(&adds), "{text}");

        // Models roll back: pinned versions stay, `@live` follows.
        let out = cli_ok(&node.cli(&["model", "rollback", "add"]), "model rollback");
        assert_eq!(out.trim(), format!("{adds} is live for model add"));
        assert_eq!(node.get("/fn/follows/add").text(), ADDED);
        assert_eq!(node.get("/fn/explicit/add").text(), MULTIPLIED);
        let r = node.post("/admin/v1/models/add/rollback", format!("{{\"to\":\"{muls}\"}}").as_bytes());
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.json()["live"], muls.as_str());
        assert_eq!(node.get("/fn/follows/add").text(), MULTIPLIED);
        let r = node.post("/admin/v1/models/add/rollback", b"{\"to\":\"0000\"}");
        assert_error(&r, 404, "version_not_found");

        // After a restart, every version still runs with its own models.
        drop(node);
        let node = Node::start(&dir.data(), None);
        assert_eq!(node.get("/fn/pinned/add").text(), ADDED);
        assert_eq!(node.get("/fn/explicit/add").text(), MULTIPLIED);
        assert_eq!(node.get("/fn/follows/add").text(), MULTIPLIED);
    }
}
