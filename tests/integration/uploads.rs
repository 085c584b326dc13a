//! Bad uploads and bad function names are refused with the README's errors, and refusing them
//! leaves the node healthy.

use crate::support::*;

/// Asserts a 400 `invalid_component` and returns the message, lowercased.
#[track_caller]
fn rejected(resp: &Response) -> String {
    assert_error(resp, 400, "invalid_component");
    error_message(resp).to_lowercase()
}

#[test]
fn bad_uploads_are_rejected_with_the_reason() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some("max_component_size = \"1MiB\"\n"));

    // Random bytes.
    let msg = rejected(&node.deploy_bytes("bad", pseudo_random_bytes(4096, 1), ""));
    assert!(!msg.is_empty());

    // A truncated component.
    let hello = fixture_bytes("hello-plain");
    rejected(&node.deploy_bytes("bad", hello[..hello.len() / 2].to_vec(), ""));

    // A core module, not a component.
    let msg = rejected(&node.deploy_bytes("bad", b"\0asm\x01\0\0\0".to_vec(), ""));
    assert!(
        msg.contains("module") || msg.contains("component"),
        "the message should say it is a core module, not a component: {msg}"
    );

    // A component that does not export the handler.
    let msg = rejected(&node.deploy("bad", &fixture("not-handler"), ""));
    assert!(msg.contains("wasi:http/incoming-handler"), "message: {msg}");

    // A component importing something the node does not provide.
    let msg = rejected(&node.deploy("bad", &fixture("unknown-import"), ""));
    assert!(msg.contains("tensorlet-test:unknown"), "message: {msg}");

    // An empty body.
    rejected(&node.deploy_bytes("bad", Vec::new(), ""));

    // Over max_component_size, with Content-Length and chunked.
    let big = pseudo_random_bytes(2 * MIB, 2);
    assert_error(
        &node.deploy_bytes("bad", big.clone(), ""),
        413,
        "payload_too_large",
    );
    let chunks: Vec<Vec<u8>> = big.chunks(64 * KIB).map(|c| c.to_vec()).collect();
    let r = node.send(
        Request::new("POST", "/admin/v1/functions/bad/versions")
            .header("content-type", "application/wasm")
            .chunked(chunks),
    );
    assert_error(&r, 413, "payload_too_large");

    // Nothing was created by the refused uploads.
    assert_error(
        &node.get("/admin/v1/functions/bad"),
        404,
        "function_not_found",
    );
    assert_error(&node.get("/fn/bad"), 404, "function_not_found");

    // The node still works.
    let r = node.deploy("hello", &fixture("hello-plain"), "");
    assert_eq!(r.status, 201, "{r}");
    let r = node.get("/fn/hello");
    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{r}");
}

#[test]
fn bad_settings_are_invalid_requests() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    let hello = fixture("hello-plain");
    for query in [
        "memory=lots",
        "timeout=-1s",
        "max_concurrency=zero",
        "env=NOEQUALS",
        // Over the default [ceilings] (memory 1GiB, timeout 5m).
        "memory=2GiB",
        "timeout=10m",
    ] {
        let r = node.deploy("hello", &hello, query);
        assert_error(&r, 400, "invalid_request");
    }
    assert_error(
        &node.get("/admin/v1/functions/hello"),
        404,
        "function_not_found",
    );
    let r = node.post("/admin/v1/functions/missing/rollback", b"{not json");
    assert!(r.status == 400 || r.status == 404, "bad rollback body: {r}");
    assert!(r.json()["error"]["code"].is_string(), "{r}");
}

#[test]
fn invalid_function_names_are_rejected() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    let hello = fixture("hello-plain");
    let long = "a".repeat(100);
    for name in [
        "Bad_Name",
        "a%2Fb",
        long.as_str(),
        "-leading-hyphen",
        "UPPER",
        "a.b",
        "a%20b",
    ] {
        let r = node.deploy(name, &hello, "");
        assert_error(&r, 400, "invalid_request");
    }
    assert_eq!(
        node.get("/admin/v1/functions").json()["functions"],
        serde_json::json!([])
    );

    // The boundaries of the rule: 63 characters, digits first, hyphens inside.
    let max = format!("a{}", "-".repeat(61) + "z");
    assert_eq!(max.len(), 63);
    for name in [max.as_str(), "0day", "a", "x-1-y"] {
        let r = node.deploy(name, &hello, "");
        assert_eq!(r.status, 201, "{name}: {r}");
        let r = node.get(&format!("/fn/{name}"));
        assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{name}: {r}");
    }
    let too_long = "b".repeat(64);
    assert_error(&node.deploy(&too_long, &hello, ""), 400, "invalid_request");
}
