//! Deploy, invoke, update, roll back and delete functions, through the admin API and the CLI.

use std::thread;

use crate::support::*;

#[test]
fn invoke_passes_path_query_method_headers_and_body() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("echo", "echo", "");

    let r = node.get("/fn/echo/a/b?x=1&y=2");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("x-echo-path"), Some("/a/b?x=1&y=2"), "{r}");

    let r = node.get("/fn/echo");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("x-echo-path"), Some("/"), "{r}");

    let r = node.get("/fn/echo?q=1");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("x-echo-path"), Some("/?q=1"), "{r}");

    for method in ["GET", "POST", "PUT", "DELETE"] {
        let r = node.send(Request::new(method, "/fn/echo/m"));
        assert_eq!(r.status, 200, "{method}: {r}");
        assert_eq!(r.header("x-echo-method"), Some(method), "{r}");
        assert_eq!(r.header("x-echo-path"), Some("/m"), "{r}");
    }

    // 1 MiB body round trip (a non-repeating pattern, so reordering would show).
    let body: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let r = node.send(Request::new("POST", "/fn/echo/big").body(body.clone()));
    assert_eq!(r.status, 200, "{}", r.status);
    assert_eq!(r.header("x-echo-body-len"), Some("1048576"));
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs from the request body");

    let r = node.send(Request::get("/fn/echo/h").header("x-custom", "custom value 123"));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("x-echo-custom"), Some("custom value 123"), "{r}");
}

#[test]
fn deploy_update_rollback_conflict_delete() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    let [(v1_path, id1), (v2_path, id2)] = greet_fixtures();
    let v1_bytes = std::fs::read(&v1_path).unwrap();
    assert_ne!(id1, id2);

    // First deploy: 201 with the version record.
    let r = node.deploy("greet", &v1_path, "");
    assert_eq!(r.status, 201, "{r}");
    let rec = r.json();
    assert_eq!(rec["version"], id1.as_str(), "{rec}");
    assert_eq!(id1.len(), 12);
    assert!(
        id1.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert_eq!(
        rec["digest"],
        format!("sha256:{}", sha256_hex(&v1_bytes)),
        "{rec}"
    );
    assert_eq!(rec["size"], v1_bytes.len() as u64, "{rec}");
    assert_eq!(rec["live"], true, "{rec}");
    for key in VERSION_FIELDS {
        assert!(rec.get(key).is_some(), "version record lacks {key}: {rec}");
    }
    let r = node.get("/fn/greet");
    assert_eq!((r.status, r.text().as_str()), (200, "v1"), "{r}");
    // Every function response says which version answered.
    assert_eq!(r.header("x-tensorlet-version"), Some(id1.as_str()), "{r}");

    // Update.
    let r = node.deploy("greet", &v2_path, "");
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["version"], id2.as_str());
    let r = node.get("/fn/greet/x");
    assert_eq!((r.status, r.text().as_str()), (200, "v2"), "{r}");
    assert_eq!(r.header("x-tensorlet-version"), Some(id2.as_str()), "{r}");

    // Versions: newest first, live flags, top-level live.
    let vs = node.versions("greet");
    assert_eq!(vs["name"], "greet", "{vs}");
    assert_eq!(vs["live"], id2.as_str(), "{vs}");
    assert_eq!(version_ids(&vs), vec![id2.clone(), id1.clone()], "{vs}");
    assert_eq!(vs["versions"][0]["live"], true, "{vs}");
    assert_eq!(vs["versions"][1]["live"], false, "{vs}");
    let f = node.get("/admin/v1/functions/greet");
    assert_eq!(f.status, 200, "{f}");
    assert_eq!(f.json()["live"], id2.as_str());
    assert_eq!(version_ids(&f.json()), vec![id2.clone(), id1.clone()]);

    let list = node.get("/admin/v1/functions");
    assert_eq!(list.status, 200, "{list}");
    let list = list.json();
    let entry = list["functions"]
        .as_array()
        .expect("functions array")
        .iter()
        .find(|f| f["name"] == "greet")
        .unwrap_or_else(|| panic!("greet not listed: {list}"))
        .clone();
    assert_eq!(entry["live"], id2.as_str(), "{list}");
    assert!(
        entry.get("versions").is_some() && entry.get("updated_at").is_some(),
        "{list}"
    );

    // Rollback without a body: to the version deployed before live.
    let r = node.rollback("greet", None);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["live"], id1.as_str(), "{r}");
    assert_eq!(r.json()["name"], "greet", "{r}");
    let r = node.get("/fn/greet");
    assert_eq!(r.text(), "v1");
    assert_eq!(r.header("x-tensorlet-version"), Some(id1.as_str()), "{r}");

    // Rollback to an explicit version, by id and by full digest forms.
    let r = node.rollback("greet", Some(&id2));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["live"], id2.as_str(), "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v2");
    let full1 = sha256_hex(&v1_bytes);
    let r = node.rollback("greet", Some(&format!("sha256:{full1}")));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["live"], id1.as_str(), "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v1");
    let r = node.rollback(
        "greet",
        Some(&sha256_hex(&std::fs::read(&v2_path).unwrap())),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v2");
    let r = node.rollback("greet", Some(&id1));
    assert_eq!(r.status, 200, "{r}");

    // Same component, same settings: a no-op that makes it live (200).
    let r = node.deploy("greet", &v2_path, "");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["version"], id2.as_str(), "{r}");
    assert_eq!(r.json()["live"], true, "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v2");
    assert_eq!(
        version_ids(&node.versions("greet")).len(),
        2,
        "no new version may appear"
    );

    // Same component, other settings: a version of its own (its id covers the settings), live;
    // the identical combination again is that version, not another.
    let r = node.deploy("greet", &v1_path, "timeout=5s");
    assert_eq!(r.status, 201, "{r}");
    let id3 = r.json()["version"].as_str().unwrap().to_string();
    assert!(id3 != id1 && id3 != id2, "{r}");
    assert_eq!(r.json()["digest"], format!("sha256:{full1}"), "{r}");
    assert_eq!(node.deploy("greet", &v1_path, "timeout=5s").status, 200);
    assert_eq!(node.get("/fn/greet").text(), "v1");
    assert_eq!(version_ids(&node.versions("greet")).len(), 3);
    let r = node.rollback("greet", Some(&id2));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v2");

    // Unknown version.
    let r = node.rollback("greet", Some("000000000000"));
    assert_error(&r, 404, "version_not_found");
    assert_eq!(node.get("/fn/greet").text(), "v2");

    // Delete.
    let r = node.delete("/admin/v1/functions/greet");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["name"], "greet", "{r}");
    assert_eq!(r.json()["deleted"], true, "{r}");
    assert_error(&node.get("/fn/greet"), 404, "function_not_found");
    assert_error(
        &node.get("/admin/v1/functions/greet/versions"),
        404,
        "function_not_found",
    );
    assert_error(
        &node.delete("/admin/v1/functions/greet"),
        404,
        "function_not_found",
    );
    let list = node.get("/admin/v1/functions").json();
    assert!(
        !list["functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "greet"),
        "deleted function still listed: {list}"
    );

    // A deleted name can be deployed again from scratch.
    let r = node.deploy("greet", &v1_path, "");
    assert!(r.status == 201 || r.status == 200, "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v1");
}

#[test]
fn unknown_routes_and_functions_are_json_404s() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);

    assert_error(&node.get("/nope"), 404, "not_found");
    let r = node.get("/fn/");
    assert_eq!(r.status, 404, "{r}");
    let v = r.json();
    assert!(
        v["error"]["code"].is_string() && v["request_id"].is_string(),
        "{r}"
    );

    assert_error(&node.get("/fn/missing"), 404, "function_not_found");
    assert_error(&node.get("/fn/missing/a/b?c=d"), 404, "function_not_found");
    assert_error(
        &node.get("/admin/v1/functions/missing"),
        404,
        "function_not_found",
    );
    assert_error(
        &node.get("/admin/v1/functions/missing/versions"),
        404,
        "function_not_found",
    );
    assert_error(
        &node.get("/admin/v1/functions/missing/logs"),
        404,
        "function_not_found",
    );
    assert_error(&node.rollback("missing", None), 404, "function_not_found");
    assert_error(
        &node.delete("/admin/v1/functions/missing"),
        404,
        "function_not_found",
    );

    let r = node.send(Request::new("PUT", "/admin/v1/functions"));
    assert_error(&r, 405, "method_not_allowed");

    let r = node.get("/admin/v1/functions");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["functions"], serde_json::json!([]), "{r}");
}

#[test]
fn in_flight_requests_finish_on_their_version() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("f", "sleepy", "");

    let addr = node.addr();
    let slow = thread::spawn(move || Request::get("/fn/f/1500").send(addr));
    node.wait_in_flight("f", 1);

    let r = node.deploy("f", &fixture("greet-v1"), "");
    assert_eq!(r.status, 201, "{r}");
    let r = node.get("/fn/f");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "v1"),
        "new requests run the new version: {r}"
    );

    let first = slow.join().expect("slow request thread");
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "slept 1500"),
        "the in-flight request finishes on its version: {first}"
    );
}

#[test]
fn cli_commands() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    let [(v1, id1), (v2, component2)] = greet_fixtures();

    // deploy prints exactly the version id (which covers the settings).
    node.cli_deploy("greet", &v1, &[]);
    let out = node.cli_deploy("greet", &v2, &["--timeout", "5s", "--memory", "32MiB"]);
    let id2 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(id2, component2);
    assert_eq!(node.get("/fn/greet").text(), "v2");
    let rec2 = node.versions("greet")["versions"][0].clone();
    assert_eq!(rec2["version"], id2.as_str());
    assert_eq!(rec2["timeout_ms"], 5000, "--timeout 5s: {rec2}");

    // --env
    let probe = fixture("env-probe");
    node.cli_deploy("probe", &probe, &["--env", "FOO=bar", "--env", "X=1"]);
    let rec = node.versions("probe")["versions"][0].clone();
    assert_eq!(
        rec["env"],
        serde_json::json!({"FOO": "bar", "X": "1"}),
        "{rec}"
    );

    let list = cli_ok(&node.cli(&["list"]), "list");
    assert!(
        list.contains("greet") && list.contains("probe"),
        "list output: {list}"
    );

    let versions = cli_ok(&node.cli(&["versions", "greet"]), "versions greet");
    assert!(
        versions.contains(&id1) && versions.contains(&id2),
        "versions output: {versions}"
    );

    let out = cli_ok(&node.cli(&["rollback", "greet"]), "rollback greet");
    assert!(
        out.contains(&id1),
        "rollback output names the new live version: {out}"
    );
    assert_eq!(node.get("/fn/greet").text(), "v1");

    let out = cli_ok(
        &node.cli(&["rollback", "greet", "--to", &id2]),
        "rollback --to",
    );
    assert!(out.contains(&id2), "rollback --to output: {out}");
    assert_eq!(node.get("/fn/greet").text(), "v2");

    cli_ok(&node.cli(&["logs", "greet"]), "logs greet");

    let out = cli_ok(&node.cli(&["delete", "greet"]), "delete greet");
    assert!(out.contains("greet"), "delete output: {out}");
    assert_error(&node.get("/fn/greet"), 404, "function_not_found");

    // TENSORLET_NODE instead of --node.
    let mut cmd = cli_command(&["deploy", "viaenv", v1.to_str().unwrap()]);
    cmd.env("TENSORLET_NODE", node.url());
    assert_eq!(
        cli_ok(&run_cli(cmd), "deploy via TENSORLET_NODE"),
        format!("{id1}\n")
    );
    assert_eq!(node.get("/fn/viaenv").text(), "v1");
    let mut cmd = cli_command(&["list"]);
    cmd.env("TENSORLET_NODE", node.url());
    assert!(cli_ok(&run_cli(cmd), "list via TENSORLET_NODE").contains("viaenv"));

    // A bad file: non-zero exit, the server's message on stderr.
    let bad_bytes = pseudo_random_bytes(4096, 7);
    let bad = dir.write("bad.wasm", &bad_bytes);
    let api = node.deploy_bytes("bad", bad_bytes, "");
    assert_error(&api, 400, "invalid_component");
    let message = error_message(&api);
    let out = node.cli(&["deploy", "bad", bad.to_str().unwrap()]);
    let (stdout, stderr) = out_text(&out);
    assert!(
        !out.status.success(),
        "deploy of a bad file must fail; stdout: {stdout}"
    );
    assert!(
        stderr.contains(&message),
        "stderr must carry the server's message {message:?}; stderr: {stderr}"
    );

    // Errors from the server surface as non-zero exits.
    let out = node.cli(&["rollback", "viaenv", "--to", "000000000000"]);
    assert!(
        !out.status.success(),
        "rollback to an unknown version must fail"
    );
    let out = node.cli(&["versions", "missing"]);
    assert!(
        !out.status.success(),
        "versions of a missing function must fail"
    );

    // No node at the address: non-zero exit.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cmd = cli_command(&["list", "--node", &format!("http://{closed}")]);
    cmd.env("TENSORLET_NODE", node.url());
    let out = run_cli(cmd);
    assert!(
        !out.status.success(),
        "--node must win over TENSORLET_NODE, and a dead node must fail"
    );
}

#[test]
fn only_the_last_max_versions_are_kept() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some("max_versions = 3\n"));
    let order = ["greet-v1", "greet-v2", "hello-plain", "echo", "logger"];
    let ids: Vec<String> = order.iter().map(|f| version_id(&fixture(f))).collect();
    for f in order {
        let r = node.deploy("f", &fixture(f), "");
        assert_eq!(r.status, 201, "{f}: {r}");
    }
    let vs = node.versions("f");
    assert_eq!(
        version_ids(&vs),
        vec![ids[4].clone(), ids[3].clone(), ids[2].clone()],
        "the 3 newest, newest first: {vs:#}"
    );
    assert_eq!(vs["live"], ids[4].as_str());

    // A dropped version is gone.
    assert_error(&node.rollback("f", Some(&ids[0])), 404, "version_not_found");

    // Rolling back and deploying again keeps the count, and the kept versions still work.
    let r = node.rollback("f", Some(&ids[2]));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(node.get("/fn/f").text(), "hello");
    let r = node.deploy("f", &fixture("greet-v1"), "");
    assert_eq!(
        r.status, 201,
        "a pruned component deploys as a new version: {r}"
    );
    let vs = node.versions("f");
    assert_eq!(version_ids(&vs).len(), 3, "{vs:#}");
    assert_eq!(vs["live"], ids[0].as_str(), "{vs:#}");
    assert_eq!(node.get("/fn/f").text(), "v1");
}

#[test]
fn deploy_from_a_manifest() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    let wasm = fixture("env-probe");
    let manifest = dir.write(
        "tensorlet.toml",
        format!(
            "name = \"probe\"\ncomponent = {:?}\nmemory = \"32MiB\"\ntimeout = \"5s\"\n\n[env]\nGREETING = \"hi\"\n",
            wasm.display().to_string()
        )
        .as_bytes(),
    );
    let m = manifest.to_str().unwrap();
    // Flags win over the manifest and add to its environment.
    let out = node.cli(&[
        "deploy",
        "--manifest",
        m,
        "--timeout",
        "3s",
        "--env",
        "EXTRA=1",
    ]);
    cli_ok(&out, "deploy --manifest");
    let v = node.versions("probe");
    let live = &v["versions"][0];
    assert_eq!(live["memory"], 32 << 20, "{v}");
    assert_eq!(live["timeout_ms"], 3000, "{v}");
    assert_eq!(live["env"]["GREETING"], "hi", "{v}");
    assert_eq!(live["env"]["EXTRA"], "1", "{v}");
    assert!(node.get("/fn/probe/").text().contains("env GREETING=hi"));

    let bad = dir.write("bad.toml", b"memroy = \"1MiB\"\n");
    let out = node.cli(&[
        "deploy",
        "x",
        wasm.to_str().unwrap(),
        "--manifest",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(out_text(&out).1.contains("memroy"), "{out:?}");
}

#[test]
fn example_manifests_parse() {
    for example in ["classify-image", "detect-speech", "embed-text"] {
        let path = repo_root()
            .join("examples")
            .join(example)
            .join("tensorlet.toml");
        let m = tensorlet::manifest::Manifest::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(m.name.is_some() && !m.models.is_empty(), "{m:?}");
        let component = m.component.expect("a component");
        assert!(
            component.ends_with(format!("{}.wasm", example.replace('-', "_"))),
            "{}",
            component.display()
        );
    }
}
