//! `--json` on the CLI: each command prints the node's answer as one JSON document on stdout,
//! with the fields the admin API documents, equal to what the API itself answers; errors still go
//! to stderr with a non-zero exit, and text output is what it was.

use serde_json::Value;

use crate::support::*;

/// Runs `tensorlet ARGS --json` and parses its whole stdout as one JSON document.
#[track_caller]
fn json_out(node: &Node, args: &[&str]) -> Value {
    let args = [args, &["--json"]].concat();
    let what = args.join(" ");
    let stdout = cli_ok(&node.cli(&args), &what);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("`tensorlet {what}` printed no single JSON document ({e}): {stdout}")
    })
}

/// The sorted field names of a JSON object.
#[track_caller]
fn fields(v: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names
}

fn sorted<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names
}

#[test]
fn function_commands_print_the_api_answer_with_json() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    let [(v1, id1), (v2, id2)] = greet_fixtures();

    // Without --json, a deploy (streamed, with a bar only on a terminal) prints the id alone and
    // nothing on stderr: no progress bar when stderr is a pipe.
    let out = node.cli_deploy("greet", &v1, &[]);
    assert_eq!(out_text(&out).1, "", "stderr of a deploy into a pipe");

    let deployed = json_out(
        &node,
        &["deploy", "greet", v2.to_str().unwrap(), "--env", "K=V"],
    );
    assert_eq!(fields(&deployed), sorted(VERSION_FIELDS), "{deployed}");
    // The id covers the settings: not the component's alone.
    assert_ne!(deployed["version"], id2.as_str());
    assert_eq!(deployed["version"].as_str().unwrap().len(), 12);
    assert_eq!(deployed["live"], true);
    assert_eq!(deployed["env"]["K"], "V");

    let list = json_out(&node, &["list"]);
    assert_eq!(list, node.get("/admin/v1/functions").json());
    let summary = &list["functions"][0];
    assert_eq!(
        fields(summary),
        ["live", "name", "updated_at", "versions"],
        "{list}"
    );
    assert_eq!(summary["name"], "greet");
    assert_eq!(summary["versions"], 2);

    let versions = json_out(&node, &["versions", "greet"]);
    assert_eq!(versions, node.versions("greet"));
    assert_eq!(fields(&versions), ["live", "name", "versions"]);
    assert_eq!(fields(&versions["versions"][1]), sorted(VERSION_FIELDS));
    assert_eq!(versions["versions"][1]["version"], id1.as_str());

    let moved = json_out(&node, &["rollback", "greet", "--to", &id1]);
    assert_eq!(
        moved,
        serde_json::json!({"name": "greet", "live": id1.as_str()})
    );
    assert_eq!(node.get("/fn/greet").text(), "v1");
    // A version can also be named by its component's digest (when only one version has it).
    let moved = json_out(&node, &["rollback", "greet", "--to", &id2]);
    assert_eq!(moved["live"], deployed["version"]);

    node.deploy_ok("logger", "logger", "");
    assert_eq!(node.get("/fn/logger/abc").status, 200);
    // Output may reach the log a moment after the response.
    let api = wait_for("a log line of /fn/logger/abc", || {
        let v = node.get("/admin/v1/functions/logger/logs").json();
        (!v["lines"].as_array()?.is_empty()).then_some(v)
    });
    let logs = json_out(&node, &["logs", "logger"]);
    assert_eq!(logs, api);
    assert_eq!(
        fields(&logs["lines"][0]),
        ["line", "request_id", "stream", "time", "version"]
    );

    let deleted = json_out(&node, &["delete", "greet"]);
    assert_eq!(
        deleted,
        serde_json::json!({"name": "greet", "deleted": true})
    );

    // An error is still a message on stderr and a non-zero exit, with nothing on stdout.
    let out = node.cli(&["versions", "greet", "--json"]);
    let (stdout, stderr) = out_text(&out);
    assert!(!out.status.success(), "versions of a deleted function");
    assert_eq!(stdout, "");
    assert!(stderr.contains("function_not_found"), "{stderr}");
}

nn_test! {
    fn model_commands_print_the_api_answer_with_json() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), None);
        let file = repo_root().join("tests/models/add_f32.onnx");
        let added = json_out(&node, &["model", "add", "add", file.to_str().unwrap()]);
        assert_eq!(
            fields(&added),
            [
                "created_at",
                "digest",
                "live",
                "max_batch",
                "size",
                "target",
                "version"
            ]
        );
        assert_eq!(added["version"], version_id(&file).as_str());
        assert_eq!(added["target"], "cpu");
        assert_eq!(added["max_batch"], 1);

        let list = json_out(&node, &["model", "list"]);
        assert_eq!(list, node.get("/admin/v1/models").json());
        assert_eq!(
            fields(&list["models"][0]),
            ["live", "loaded", "name", "shared", "updated_at", "versions"]
        );

        let model = json_out(&node, &["model", "versions", "add"]);
        assert_eq!(model, node.get("/admin/v1/models/add").json());
        assert_eq!(
            fields(&model),
            ["inputs", "live", "name", "outputs", "versions"]
        );
        assert_eq!(
            model["inputs"][0],
            serde_json::json!({"name": "a", "type": "fp32", "dims": [2, 3]})
        );

        let removed = json_out(&node, &["model", "rm", "add"]);
        assert_eq!(removed, serde_json::json!({"name": "add", "deleted": true}));
    }
}

#[test]
fn tenant_and_key_commands_print_the_api_answer_with_json() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some("tenants = true"));
    let op = std::fs::read_to_string(node.data_dir().join("operator-token")).unwrap();
    let op = op.trim();
    let as_op = |args: &[&str]| json_out(&node, &[args, &["--token", op]].concat());

    let created = as_op(&["tenant", "create", "acme", "--max-functions", "3"]);
    assert_eq!(
        fields(&created),
        ["created_at", "keys", "name", "quotas", "token", "usage"]
    );
    assert_eq!(created["quotas"]["max_functions"], 3);
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("tlt_acme_"), "{created}");

    let list = as_op(&["tenant", "list"]);
    let api = node.send(
        Request::new("GET", "/admin/v1/tenants").header("authorization", &format!("Bearer {op}")),
    );
    assert_eq!(list, api.json());
    let tenant = &list["tenants"][0];
    assert_eq!(
        fields(tenant),
        ["created_at", "keys", "name", "quotas", "usage"]
    );
    assert_eq!(fields(&tenant["usage"]), ["functions", "models", "stored"]);

    let updated = as_op(&["tenant", "update", "acme", "--max-timeout", "5s"]);
    assert_eq!(updated["quotas"]["max_timeout_ms"], 5000);
    assert_eq!(updated["quotas"]["max_functions"], 3);

    let as_acme = |args: &[&str]| json_out(&node, &[args, &["--token", &token]].concat());
    let key = as_acme(&["key", "create"]);
    assert_eq!(fields(&key), ["created_at", "id", "key"]);
    let id = key["id"].as_str().unwrap();
    let keys = as_acme(&["key", "list"]);
    assert_eq!(
        keys,
        serde_json::json!({"keys": [{"id": id, "created_at": key["created_at"]}]})
    );
    let revoked = as_acme(&["key", "rm", id]);
    assert_eq!(revoked, serde_json::json!({"id": id, "deleted": true}));

    let rotated = as_op(&["tenant", "token", "rotate", "acme"]);
    assert_eq!(fields(&rotated), ["name", "token"]);
    assert_ne!(rotated["token"], token.as_str());

    let removed = as_op(&["tenant", "rm", "acme"]);
    assert_eq!(
        removed,
        serde_json::json!({"name": "acme", "deleted": true, "functions": [], "models": []})
    );
    let audit = as_op(&["audit", "--limit", "3"]);
    let records = audit["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{audit}");
    assert_eq!(fields(&records[2]), ["action", "status", "time", "who"]);
    assert_eq!(records[2]["action"], "DELETE /admin/v1/tenants/acme");
}
