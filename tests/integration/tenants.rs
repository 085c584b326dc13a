//! Multi-tenant nodes (`tenants = true`): tokens, scoping, invoke keys, quotas, the audit log,
//! shared models, and a node without tokens refusing a public address.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

const TENANTS: &str = "tenants = true";

fn deploy_as(node: &Node, token: &str, name: &str, fixture_name: &str, query: &str) -> Response {
    let bytes = std::fs::read(fixture(fixture_name)).unwrap();
    let mut path = format!("/admin/v1/functions/{name}/versions");
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    node.send(as_(token, "POST", &path).body(bytes))
}

/// A node with tenants on `dir` and one tenant, `name`, allowed one request a second, that has
/// deployed hello-plain as `hello` with `query`. Returns the node and the tenant's token.
fn one_request_a_second(dir: &TestDir, name: &str, query: &str) -> (Node, String) {
    let node = Node::start(&dir.data(), Some(TENANTS));
    let op = operator_token(&node);
    let t = create_tenant(&node, &op, name, json!({"requests_per_second": 1}));
    assert_eq!(
        deploy_as(&node, &t, "hello", "hello-plain", query).status,
        201
    );
    (node, t)
}

#[test]
fn tenants_see_and_change_only_their_own_work() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(TENANTS));
    let op = operator_token(&node);
    assert_error(&node.get("/admin/v1/functions"), 401, "unauthorized");
    let a = create_tenant(&node, &op, "acme", json!({}));
    let b = create_tenant(&node, &op, "bobco", json!({}));

    // acme's private and public functions.
    assert_eq!(deploy_as(&node, &a, "hello", "hello-plain", "").status, 201);
    assert_eq!(
        deploy_as(&node, &a, "open", "hello-plain", "public=true").status,
        201
    );
    assert_error(&node.get("/fn/acme/hello"), 401, "unauthorized");
    assert_error(
        &node.send(as_(&b, "GET", "/fn/acme/hello")),
        401,
        "unauthorized",
    );
    let key_a = new_key(&node, &a);
    let key_b = new_key(&node, &b);
    assert_eq!(
        node.send(as_(&key_a, "GET", "/fn/acme/hello")).text(),
        "hello"
    );
    assert_error(
        &node.send(as_(&key_b, "GET", "/fn/acme/hello")),
        401,
        "unauthorized",
    );
    assert_eq!(node.get("/fn/acme/open").text(), "hello");
    assert_error(&node.get("/fn/bobco/hello"), 404, "function_not_found");
    assert_error(&node.get("/fn/hello"), 404, "not_found");
    let versions_before = node
        .send(as_(&a, "GET", "/admin/v1/functions/hello"))
        .json();

    // bobco tries everything on acme's names, and on the operator API: all refused, nothing
    // about acme in the answers.
    let attempts: [(&str, &str); 15] = [
        ("GET", "/admin/v1/functions/hello"),
        ("GET", "/admin/v1/functions/hello/versions"),
        ("DELETE", "/admin/v1/functions/hello"),
        ("POST", "/admin/v1/functions/hello/rollback"),
        ("GET", "/admin/v1/functions/hello/logs"),
        ("GET", "/admin/v1/functions/open"),
        ("GET", "/admin/v1/models/m"),
        ("DELETE", "/admin/v1/models/m"),
        ("GET", "/admin/v1/tenants"),
        ("POST", "/admin/v1/tenants/evil"),
        ("PATCH", "/admin/v1/tenants/acme"),
        ("DELETE", "/admin/v1/tenants/acme"),
        ("POST", "/admin/v1/tenants/acme/token"),
        ("GET", "/admin/v1/audit"),
        (
            "DELETE",
            &format!("/admin/v1/keys/{}", key_a.split('_').nth(2).unwrap()),
        ),
    ];
    for (method, path) in attempts {
        let r = node.send(as_(&b, method, path));
        assert!(
            r.status == 404 || r.status == 403 || r.status == 400,
            "{method} {path}: {r}"
        );
        assert!(!r.text().contains("acme"), "{method} {path} leaks: {r}");
    }
    // Names that try to reach out of the tenant's namespace are not names.
    for path in [
        "/admin/v1/functions/acme%2Fhello",
        "/admin/v1/functions/..%2Facme%2Fhello",
    ] {
        assert_error(&node.send(as_(&b, "GET", path)), 400, "invalid_request");
    }
    assert_error(
        &node.send(as_(&b, "GET", "/fn/bobco/..%2Facme%2Fhello")),
        404,
        "function_not_found",
    );
    let listed = node.send(as_(&b, "GET", "/admin/v1/functions")).json();
    assert_eq!(listed["functions"], json!([]));
    let listed = node.send(as_(&a, "GET", "/admin/v1/functions")).json();
    assert_eq!(listed["functions"].as_array().unwrap().len(), 2);
    assert_eq!(listed["functions"][0]["name"], "hello");
    // Nothing of acme's changed.
    assert_eq!(
        node.send(as_(&a, "GET", "/admin/v1/functions/hello"))
            .json(),
        versions_before
    );
    assert_eq!(
        node.send(as_(&key_a, "GET", "/fn/acme/hello")).text(),
        "hello"
    );
    // The operator manages tenants, not functions.
    assert_error(
        &node.send(as_(&op, "GET", "/admin/v1/functions")),
        403,
        "forbidden",
    );

    // The audit log says who did what, with the result.
    let records = node.send(as_(&op, "GET", "/admin/v1/audit")).json()["records"].clone();
    let has = |who: &str, action: &str, status: u64| {
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["who"] == who && r["action"] == action && r["status"] == status)
    };
    assert!(
        has(
            "tenant:acme",
            "POST /admin/v1/functions/hello/versions",
            201
        ),
        "{records}"
    );
    assert!(
        has("tenant:bobco", "DELETE /admin/v1/functions/hello", 404),
        "{records}"
    );
    assert!(
        has("operator", "POST /admin/v1/tenants/bobco", 201),
        "{records}"
    );
    // The CLI speaks with --token.
    let out = node.cli(&["list", "--token", &a]);
    assert!(cli_ok(&out, "list --token").contains("open"));
    let out = node.cli(&["tenant", "list", "--token", &op]);
    assert!(cli_ok(&out, "tenant list").contains("bobco"));
    // `tenant create` and `key create` print the secret alone on stdout, for scripts.
    let out = node.cli(&[
        "tenant",
        "create",
        "cli-made",
        "--max-functions",
        "3",
        "--token",
        &op,
    ]);
    let token = cli_ok(&out, "tenant create").trim().to_string();
    assert!(token.starts_with("tlt_cli-made_"), "{token}");
    let out = node.cli(&["key", "create", "--token", &token]);
    let key = cli_ok(&out, "key create").trim().to_string();
    assert!(key.starts_with("tlk_cli-made_"), "{key}");
    let out = node.cli(&["key", "list", "--token", &token]);
    let key_id = key.split('_').nth(2).unwrap();
    assert!(cli_ok(&out, "key list").contains(key_id));
    let out = node.cli(&["key", "rm", key_id, "--token", &token]);
    cli_ok(&out, "key rm");
    let out = node.cli(&["key", "list", "--token", &token]);
    assert!(!cli_ok(&out, "key list").contains(key_id));
    // The rest of the operator's commands, through the CLI.
    let out = node.cli(&["tenant", "token", "rotate", "cli-made", "--token", &op]);
    let rotated = cli_ok(&out, "tenant token rotate").trim().to_string();
    assert!(rotated.starts_with("tlt_cli-made_") && rotated != token);
    assert_eq!(
        node.send(as_(&token, "GET", "/admin/v1/functions")).status,
        401
    );
    assert_eq!(
        node.send(as_(&rotated, "GET", "/admin/v1/functions"))
            .status,
        200
    );
    let out = node.cli(&[
        "tenant",
        "update",
        "cli-made",
        "--max-functions",
        "5",
        "--token",
        &op,
    ]);
    cli_ok(&out, "tenant update");
    let out = node.cli(&["tenant", "rm", "cli-made", "--token", &op]);
    cli_ok(&out, "tenant rm");
    assert_eq!(
        node.send(as_(&rotated, "GET", "/admin/v1/functions"))
            .status,
        401
    );
    let out = node.cli(&["audit", "--token", &op]);
    let audit = cli_ok(&out, "audit");
    assert!(
        audit.contains("DELETE /admin/v1/tenants/cli-made"),
        "{audit}"
    );
}

#[test]
fn tokens_rotate_and_bogus_ones_are_refused() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(TENANTS));
    let op = operator_token(&node);
    let a = create_tenant(&node, &op, "acme", json!({}));
    assert_eq!(
        deploy_as(&node, &a, "hello", "hello-plain", "public=true").status,
        201
    );

    let secret = a.rsplit('_').next().unwrap();
    for i in 0..10_000u32 {
        let token = match i % 5 {
            0 => format!("tlt_acme_{:064x}", i),
            1 => format!("tlt_acme_{}{:x}", &secret[..secret.len() - 1], i % 16 + 16),
            2 => format!("tlo_{:064x}", i),
            3 => format!("tlk_acme_00000000_{:064x}", i),
            _ => format!("{i}\u{e9}\u{200b}"),
        };
        let r = node.send(as_(&token, "GET", "/admin/v1/functions"));
        assert_eq!(r.status, 401, "token {token:?}: {r}");
    }
    assert_eq!(node.send(as_(&a, "GET", "/admin/v1/functions")).status, 200);
    assert_eq!(node.get("/fn/acme/hello").text(), "hello");

    let r = node.send(as_(&op, "POST", "/admin/v1/tenants/acme/token"));
    assert_eq!(r.status, 200, "{r}");
    let rotated = r.json()["token"].as_str().unwrap().to_string();
    assert_error(
        &node.send(as_(&a, "GET", "/admin/v1/functions")),
        401,
        "unauthorized",
    );
    assert_eq!(
        node.send(as_(&rotated, "GET", "/admin/v1/functions"))
            .status,
        200
    );

    // Removing a tenant removes its functions and its token.
    let r = node.send(as_(&op, "DELETE", "/admin/v1/tenants/acme"));
    assert_eq!(r.json()["functions"], json!(["hello"]), "{r}");
    assert_error(&node.get("/fn/acme/hello"), 404, "function_not_found");
    assert_error(
        &node.send(as_(&rotated, "GET", "/admin/v1/functions")),
        401,
        "unauthorized",
    );
}

#[test]
fn tenant_quotas_give_clear_errors() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(TENANTS));
    let op = operator_token(&node);
    let t = create_tenant(
        &node,
        &op,
        "small",
        json!({"max_functions": 2, "max_memory": 32 << 20, "requests_per_second": 5, "max_concurrency": 1}),
    );
    assert_eq!(
        deploy_as(&node, &t, "sleepy", "sleepy", "public=true&memory=16MiB").status,
        201
    );
    assert_eq!(
        deploy_as(
            &node,
            &t,
            "hello",
            "hello-plain",
            "public=true&memory=16MiB"
        )
        .status,
        201
    );
    let r = deploy_as(&node, &t, "third", "echo", "memory=16MiB");
    assert_error(&r, 403, "quota_exceeded");
    let r = deploy_as(&node, &t, "hello", "echo", "memory=64MiB");
    assert_error(&r, 400, "invalid_request");
    assert!(error_message(&r).contains("max_memory"), "{r}");
    let tiny = create_tenant(&node, &op, "tiny", json!({"max_stored": 1000}));
    let r = deploy_as(&node, &tiny, "hello", "hello-plain", "");
    assert_error(&r, 403, "quota_exceeded");
    assert!(error_message(&r).contains("max_stored"), "{r}");

    // One request at a time: a second one while the first sleeps is 429.
    let addr = node.addr();
    let slow = thread::spawn(move || Request::get("/fn/small/sleepy/1500").send(addr));
    node.wait_in_flight("small/sleepy", 1);
    let busy = node.get("/fn/small/hello");
    assert_error(&busy, 429, "tenant_busy");
    assert_eq!(slow.join().unwrap().text(), "slept 1500");

    // Five requests a second: a quick burst runs into 429 with Retry-After.
    let mut limited = None;
    for _ in 0..30 {
        let r = node.get("/fn/small/hello");
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{r}");
    }
    let limited = limited.expect("a burst past requests_per_second is refused");
    assert_error(&limited, 429, "rate_limited");
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(wait >= 1, "{limited}");
    let m = node.metrics();
    for reason in ["rate_limited", "busy"] {
        let n = metric_value(
            &m,
            "tensorlet_tenant_rejected_total",
            &[("tenant", "small"), ("reason", reason)],
        );
        assert!(n >= Some(1.0), "{reason}: {m}");
    }

    // The operator raises the quota; the tenant's next deploy fits.
    let r = node.send(
        as_(&op, "PATCH", "/admin/v1/tenants/small")
            .body(json!({"max_functions": 3}).to_string().into_bytes()),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        deploy_as(&node, &t, "third", "echo", "memory=16MiB").status,
        201
    );
    let listed = node.send(as_(&op, "GET", "/admin/v1/tenants")).json();
    assert_eq!(listed["tenants"][0]["usage"]["functions"], 3, "{listed}");
}

/// A tenant's limiters survive changes to its record: creating keys between calls does not
/// refill its rate bucket (it used to rebuild the limiters with every record change).
#[test]
fn record_changes_do_not_reset_a_tenants_limits() {
    let dir = TestDir::new();
    let (node, t) = one_request_a_second(&dir, "eager", "");
    let started = Instant::now();
    let mut served = 0;
    for _ in 0..8 {
        let key = new_key(&node, &t);
        let r = node.send(as_(&key, "GET", "/fn/eager/hello"));
        match r.status {
            200 => served += 1,
            _ => {
                assert_error(&r, 429, "rate_limited");
            }
        }
    }
    // One token at the start plus one a second since.
    let allowed = 1 + started.elapsed().as_secs() as usize + 1;
    assert!(
        served <= allowed,
        "{served} calls got through in {:?} at 1 request/s",
        started.elapsed()
    );
}

/// A client that keeps sending past its refusals (ignoring `Retry-After`) gets its first hundred
/// refusals at once; past that the node reads nothing more from its connection until the
/// `Retry-After` it was told, so a flood of refusals cannot take the node's CPU.
#[test]
fn refused_floods_are_paused_until_retry_after() {
    let dir = TestDir::new();
    let (node, _) = one_request_a_second(&dir, "flood", "public=true");
    assert_eq!(
        node.get("/fn/flood/hello").status,
        200,
        "uses the one token"
    );

    let mut conn = KeepAlive::connect(node.addr());
    let mut immediate = 0;
    let paused = loop {
        assert!(immediate < 10_000, "the node never paused the connection");
        let sent = Instant::now();
        let r = conn.send("GET", "/fn/flood/hello");
        let waited = sent.elapsed();
        if r.status == 200 {
            // Only a pause of at least Retry-After lets a token (one a second) come back.
            assert!(waited >= Duration::from_secs(1), "{waited:?}: {r}");
            break waited;
        }
        assert_error(&r, 429, "rate_limited");
        assert_eq!(r.header("retry-after"), Some("1"), "{r}");
        immediate += 1;
    };
    assert!(
        immediate >= 100,
        "only {immediate} refusals before the pause"
    );
    // Other clients are served meanwhile; the paused connection itself works again afterwards.
    assert_eq!(node.get("/healthz").status, 200);
    let r = conn.send("GET", "/fn/flood/hello");
    assert_error(&r, 429, "rate_limited");
    eprintln!("{immediate} refusals, then paused for {paused:?}");
}

nn_test! {
    fn shared_models_are_loaded_once_for_every_tenant() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), Some(TENANTS));
        let op = operator_token(&node);
        let a = create_tenant(&node, &op, "acme", json!({}));
        let b = create_tenant(&node, &op, "bobco", json!({}));
        let model = std::fs::read(repo_root().join("tests/models/add_f32.onnx")).unwrap();
        let r = node.send(as_(&op, "POST", "/admin/v1/models/add/versions").body(model.clone()));
        assert_eq!(r.status, 201, "{r}");
        // bobco's own copy under another name: the same bytes, still one copy in memory.
        let r = node.send(as_(&b, "POST", "/admin/v1/models/mine/versions").body(model));
        assert_eq!(r.status, 201, "{r}");
        let listed = node.send(as_(&a, "GET", "/admin/v1/models")).json();
        assert_eq!(listed["models"][0]["name"], "add", "{listed}");
        assert_eq!(listed["models"][0]["shared"], true, "{listed}");
        assert_eq!(
            listed["models"].as_array().unwrap().len(),
            1,
            "acme does not see bobco's model"
        );
        assert_eq!(
            deploy_as(&node, &a, "nn", "nn-probe", "model=add&public=true").status,
            201
        );
        assert_eq!(
            deploy_as(&node, &b, "nn", "nn-probe", "model=add&public=true").status,
            201
        );
        assert_eq!(node.get("/fn/acme/nn/add").text(), "2 3 4 5 6 7");
        assert_eq!(node.get("/fn/bobco/nn/add").text(), "2 3 4 5 6 7");
        let loaded = metric_value(&node.metrics(), "tensorlet_models_loaded", &[]);
        assert_eq!(loaded, Some(1.0));
        // A tenant cannot remove or replace the shared model, only its own.
        assert_error(
            &node.send(as_(&b, "DELETE", "/admin/v1/models/add")),
            404,
            "model_not_found",
        );
        assert_eq!(
            node.send(as_(&b, "DELETE", "/admin/v1/models/mine")).status,
            200
        );
        assert_eq!(node.get("/fn/bobco/nn/add").text(), "2 3 4 5 6 7");
    }
}

nn_test! {
    fn a_tenant_runs_at_most_max_inferences_at_once() {
        let dir = TestDir::new();
        let node = Node::start(&dir.data(), Some(TENANTS));
        let op = operator_token(&node);
        let t = create_tenant(&node, &op, "one", json!({"max_inferences": 1}));
        let model = std::fs::read(repo_root().join("tests/models/slow.onnx")).unwrap();
        assert_eq!(
            node.send(as_(&t, "POST", "/admin/v1/models/slow/versions").body(model))
                .status,
            201
        );
        assert_eq!(
            deploy_as(
                &node,
                &t,
                "nn",
                "nn-probe",
                "model=slow&public=true&timeout=30s"
            )
            .status,
            201
        );
        // Two computes at once (the model has two sessions): one runs, the other waits for the
        // tenant's only inference permit.
        let addr = node.addr();
        let calls: Vec<_> = (0..2)
            .map(|_| thread::spawn(move || Request::get("/fn/one/nn/slow").send(addr).text()))
            .collect();
        node.wait_for_metric(
            "a compute to wait for the tenant's max_inferences",
            "tensorlet_tenant_inferences_waiting",
            &[("tenant", "one")],
            |waiting| waiting == 1.0,
        );
        for c in calls {
            assert_eq!(c.join().unwrap(), "done");
        }
        assert_eq!(
            node.metric("tensorlet_tenant_inferences_waiting", &[("tenant", "one")]),
            Some(0.0)
        );
    }
}

#[test]
fn the_audit_log_is_bounded() {
    let dir = TestDir::new();
    let node = Node::start(
        &dir.data(),
        Some("tenants = true\naudit_log_max = \"4KiB\""),
    );
    for i in 0..100 {
        let r = node.send(as_(&format!("tlt_x_{i}"), "POST", "/admin/v1/tenants/x"));
        assert_error(&r, 401, "unauthorized");
    }
    let log = std::fs::metadata(dir.data().join("audit.log"))
        .unwrap()
        .len();
    let old = std::fs::metadata(dir.data().join("audit.log.1"))
        .unwrap()
        .len();
    assert!(
        log <= 4096 + 512 && old <= 4096 + 512,
        "audit.log {log} bytes, audit.log.1 {old}"
    );
    let op = operator_token(&node);
    let records = node.send(as_(&op, "GET", "/admin/v1/audit")).json()["records"].clone();
    assert_eq!(
        records.as_array().unwrap().last().unwrap()["who"],
        "unauthenticated"
    );
}

#[test]
fn a_node_without_tokens_refuses_a_public_address() {
    let dir = TestDir::new();
    let mut cmd = cli_command(&["serve", "--listen", "0.0.0.0:0", "--data-dir"]);
    cmd.arg(dir.data());
    let out = run_cli(cmd);
    assert!(!out.status.success());
    assert!(out_text(&out).1.contains("refusing to listen"), "{out:?}");
}

#[test]
fn direct_calls_to_a_tenants_versions_need_its_invoke_keys() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(TENANTS));
    let op = operator_token(&node);
    let acme = create_tenant(&node, &op, "acme", json!({}));
    let other = create_tenant(&node, &op, "other", json!({}));
    let v1 = deploy_as(&node, &acme, "greet", "greet-v1", "").json()["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(deploy_as(&node, &acme, "greet", "greet-v2", "").status, 201);
    let key = new_key(&node, &acme);
    let strangers_key = new_key(&node, &other);
    let path = format!("/fn/acme/greet@{v1}/");
    // Private: no key, or another tenant's key, is refused as for the function itself.
    assert_error(&node.get(&path), 401, "unauthorized");
    let r = node.send(as_(&strangers_key, "GET", &path));
    assert_error(&r, 401, "unauthorized");
    let r = node.send(as_(&key, "GET", &path));
    assert_eq!((r.status, r.text().as_str()), (200, "v1"), "{r}");
    assert_eq!(r.header("x-tensorlet-version"), Some(v1.as_str()));
    // Another tenant's namespace does not reach acme's versions.
    assert_eq!(
        node.send(as_(
            &strangers_key,
            "GET",
            &format!("/fn/other/greet@{v1}/")
        ))
        .status,
        404
    );
}
