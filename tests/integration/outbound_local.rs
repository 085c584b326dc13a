//! Calls from one function to another of the same node, `http://{name}.fn.internal/...`: through
//! the node's own listener (the callee's limits, keys and metrics apply), allowed like any
//! destination, within the caller's tenant, and stopped after a chain of 8 (`LoopDetected`).

use crate::support::*;

#[test]
fn functions_call_each_other_by_name_through_the_node() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("target", "echo", "");
    node.deploy_ok(
        "caller",
        "fetcher",
        "allow_outbound=http%3A%2F%2F*.fn.internal",
    );
    node.deploy_ok("plain", "fetcher", "");

    let r = node.get(&format!(
        "/fn/caller/fetch?url={}",
        url_encode("http://target.fn.internal/some/path?q=1")
    ));
    assert_eq!(r.status, 200, "{r}");
    assert!(r.text().starts_with("status 200\n"), "{r}");
    // The callee ran as itself: counted as its own request.
    assert_eq!(
        node.metric(
            "tensorlet_requests_total",
            &[("function", "target"), ("status", "200")]
        ),
        Some(1.0)
    );
    // Without the allowance, the name is denied like any host.
    let r = node.get(&format!(
        "/fn/plain/fetch?url={}",
        url_encode("http://target.fn.internal/")
    ));
    assert_eq!(
        (r.status, r.text()),
        (502, "error: HttpRequestDenied".into())
    );
    // An unknown function answers 404 through the node.
    let r = node.get(&format!(
        "/fn/caller/fetch?url={}",
        url_encode("http://nobody.fn.internal/")
    ));
    assert_eq!(r.text().lines().next(), Some("status 404"), "{r}");

    // A chain of calls (caller -> caller -> ... -> target) stops at 8 hops.
    let mut url = "http://target.fn.internal/".to_string();
    for _ in 0..10 {
        url = format!("http://caller.fn.internal/fetch?url={}", url_encode(&url));
    }
    let r = node.get(&format!("/fn/caller/fetch?url={}", url_encode(&url)));
    assert!(r.text().contains("error: LoopDetected"), "{r}");
    assert_eq!(node.get("/fn/target/").status, 200, "the node carries on");
}

#[test]
fn a_tenant_s_functions_call_its_own_private_functions_only() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some("tenants = true"));
    let op = operator_token(&node);
    let (acme, other) = (
        create_tenant(&node, &op, "acme", serde_json::json!({})),
        create_tenant(&node, &op, "other", serde_json::json!({})),
    );
    let deploy = |token: &str, name: &str, fixture_name: &str, query: &str| {
        let bytes = std::fs::read(fixture(fixture_name)).unwrap();
        let path = format!("/admin/v1/functions/{name}/versions?{query}");
        let r = node.send(as_(token, "POST", &path).body(bytes));
        assert_eq!(r.status, 201, "{r}");
    };
    deploy(&acme, "target", "echo", "");
    deploy(
        &acme,
        "caller",
        "fetcher",
        "allow_outbound=http%3A%2F%2F*.fn.internal",
    );
    deploy(&other, "secret", "echo", "");
    let key = new_key(&node, &acme);

    // Private: a client needs acme's key; a forged internal header does not stand in for it.
    assert_eq!(node.get("/fn/acme/target/").status, 401);
    let forged = Request::get("/fn/acme/target/")
        .header("x-tensorlet-internal", "guess")
        .header("x-tensorlet-hops", "1");
    assert_eq!(node.send(forged).status, 401);

    // acme's caller reaches acme's private target without a key of its own...
    let call = |url: &str| {
        node.send(as_(
            &key,
            "GET",
            &format!("/fn/acme/caller/fetch?url={}", url_encode(url)),
        ))
    };
    let r = call("http://target.fn.internal/x");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.text().starts_with("status 200\n"), "{r}");
    // Names are the caller's tenant's: another tenant's function is not there.
    let r = call("http://secret.fn.internal/");
    assert_eq!(r.text().lines().next(), Some("status 404"), "{r}");
    assert_eq!(
        node.metric(
            "tensorlet_requests_total",
            &[("function", "other/secret"), ("status", "200")]
        ),
        None
    );
}
