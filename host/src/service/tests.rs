//! In-process tests of the whole HTTP edge: a real registry, runtime and metrics on a temporary
//! data directory, driven through [`HttpService::handle`] with `Full` bodies and no socket. They
//! pin down what the dispatch promises for every response (JSON errors with the request id, one
//! count per answer, one log line per 5xx) and the admission order; tests/integration checks the
//! same contract through the binary.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::HttpService;
use crate::audit::Audit;
use crate::auth;
use crate::metrics::Metrics;
use crate::test_support::{TempDir, guest, node_parts};

/// The operator token of the nodes with tenants below.
const OPERATOR: &str = "tlo_service-tests";

/// A node without a socket, on its own data directory (removed when the node is dropped).
struct TestNode {
    service: HttpService,
    metrics: Arc<Metrics>,
    _dir: TempDir,
}

/// A node configured by `toml` (plus its data directory); with tenants it takes [`OPERATOR`].
/// No ONNX Runtime: the functions here do not use wasi:nn, and model uploads then fail with a
/// 503 the tests use.
fn node(toml: &str) -> TestNode {
    let parts = node_parts("service", toml, None);
    let config = parts.config;
    let audit = Audit::open(&parts.dir, config.audit_log_max).unwrap();
    let operator = config.tenants.then(|| auth::hash(OPERATOR));
    let service = HttpService::new(
        Arc::clone(&config),
        Arc::new(parts.registry),
        parts.runtime,
        Arc::clone(&parts.metrics),
        operator,
        audit,
    );
    TestNode {
        service,
        metrics: parts.metrics,
        _dir: parts.dir,
    }
}

/// A request with an optional bearer token.
fn request(
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    req.body(Full::new(body.into())).unwrap()
}

/// A whole response.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `code` of a JSON error body.
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Asserts a JSON error answer: `status` and the `code` in its body.
    #[track_caller]
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.code(), code);
    }

    fn header(&self, name: impl header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }
}

impl TestNode {
    async fn call(&self, req: Request<Full<Bytes>>) -> Answer {
        let (parts, body) = self.service.handle(req).await.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `METHOD URI` (see [`request`]), answered whole.
    async fn ask(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Answer {
        self.call(request(method, uri, token, body)).await
    }

    /// Deploys a built guest fixture as `path` (`functions/NAME/versions?...`).
    async fn deploy(&self, path: &str, fixture: &str, token: Option<&str>) -> Answer {
        let uri = format!("/admin/v1/{path}");
        let answer = self.ask(Method::POST, &uri, token, guest(fixture)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        answer
    }

    /// `tensorlet_requests_total` of `function` with `status`, as /metrics shows it.
    fn requests(&self, function: &str, status: u16) -> u64 {
        let series =
            format!("tensorlet_requests_total{{function=\"{function}\",status=\"{status}\"}} ");
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.parse().unwrap())
    }
}

#[tokio::test]
async fn unknown_route_is_a_json_404_with_the_request_id() {
    let node = node("");
    let answer = node.ask(Method::GET, "/nowhere", None, "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.header(header::CONTENT_TYPE), "application/json");
    assert_eq!(answer.code(), "not_found");
    let id = answer.header("x-request-id");
    assert!(!id.is_empty());
    assert_eq!(answer.json()["request_id"], id);
    // Every request gets its own id.
    let again = node.ask(Method::GET, "/nowhere", None, "").await;
    assert_ne!(again.header("x-request-id"), id);
}

#[tokio::test]
async fn healthz_answers_get_only() {
    let node = node("");
    let answer = node.ask(Method::GET, "/healthz", None, "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "ok\n");
    assert!(!answer.header("x-request-id").is_empty());
    let answer = node.ask(Method::POST, "/healthz", None, "").await;
    answer.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn admin_route_with_the_wrong_method_is_405() {
    let node = node("");
    let answer = node.ask(Method::PUT, "/admin/v1/functions", None, "").await;
    answer.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(answer.json()["error"]["message"], "this route accepts GET");
    let answer = node
        .ask(Method::POST, "/admin/v1/functions/f", None, "")
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        answer.json()["error"]["message"],
        "this route accepts GET, DELETE"
    );
}

#[tokio::test]
async fn deploying_a_non_component_is_400_invalid_component() {
    let node = node("");
    let deploy = "/admin/v1/functions/f/versions";
    let answer = node
        .ask(Method::POST, deploy, None, "not wasm at all")
        .await;
    answer.assert_error(StatusCode::BAD_REQUEST, "invalid_component");
    let misspelt = format!("{deploy}?memroy=1");
    let answer = node.ask(Method::POST, &misspelt, None, "").await;
    answer.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn a_deployed_guest_answers_in_process() {
    let node = node("");
    let deployed = node.deploy("functions/echo/versions", "echo", None).await;
    assert_eq!(deployed.json()["live"], true, "{}", deployed.json());
    let mut req = request(Method::POST, "/fn/echo/some/path?q=1", None, "hello");
    req.headers_mut()
        .insert("x-custom", http::HeaderValue::from_static("yes"));
    let answer = node.call(req).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body, "hello");
    assert_eq!(answer.header("x-echo-method"), "POST");
    assert_eq!(answer.header("x-echo-path"), "/some/path?q=1");
    assert_eq!(answer.header("x-echo-custom"), "yes");
    assert!(!answer.header("x-request-id").is_empty());
    assert_eq!(node.requests("echo", 200), 1);
    // The same bytes and settings again are the same version.
    let again = node
        .ask(
            Method::POST,
            "/admin/v1/functions/echo/versions",
            None,
            guest("echo"),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let answer = node.ask(Method::GET, "/fn/nobody/", None, "").await;
    answer.assert_error(StatusCode::NOT_FOUND, "function_not_found");
}

#[tokio::test]
async fn tenant_functions_need_a_key_and_a_body_under_the_cap() {
    let node = node("tenants = true");
    let created = node
        .ask(Method::POST, "/admin/v1/tenants/acme", Some(OPERATOR), "")
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let token = created.json()["token"].as_str().unwrap().to_string();
    node.deploy(
        "functions/echo/versions?max_request_body=16",
        "echo",
        Some(&token),
    )
    .await;

    // Private, and no invoke key: 401 with a Bearer challenge, counted once.
    let answer = node.ask(Method::POST, "/fn/acme/echo/", None, "hi").await;
    answer.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(answer.header(header::WWW_AUTHENTICATE), "Bearer");
    assert_eq!(node.requests("acme/echo", 401), 1);

    let key = node
        .ask(Method::POST, "/admin/v1/keys", Some(&token), "")
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{:?}", key.body);
    let key = key.json()["key"].as_str().unwrap().to_string();

    // A declared body over the function's cap: 413 before the guest runs, counted once.
    let mut req = request(Method::POST, "/fn/acme/echo/", Some(&key), vec![b'x'; 17]);
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from(17));
    let answer = node.call(req).await;
    answer.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(node.requests("acme/echo", 413), 1);

    // An undeclared body over the cap is found while the guest reads it: the same 413.
    let answer = node
        .ask(Method::POST, "/fn/acme/echo/", Some(&key), vec![b'x'; 17])
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(node.requests("acme/echo", 413), 2);

    let answer = node
        .ask(Method::POST, "/fn/acme/echo/", Some(&key), "hi")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body, "hi");
    assert_eq!(node.requests("acme/echo", 200), 1);
    assert_eq!(node.requests("acme/echo", 401), 1);

    // The admin step records changes, refused ones included, for the operator to read.
    let denied = node
        .ask(Method::POST, "/admin/v1/keys", Some("tlt_acme_wrong"), "")
        .await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    let audit = node
        .ask(Method::GET, "/admin/v1/audit?limit=2", Some(OPERATOR), "")
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{:?}", audit.body);
    let records = audit.json()["records"].to_string();
    assert!(records.contains("unauthenticated"), "{records}");
    assert!(records.contains("tenant:acme"), "{records}");
}

/// Log lines written while the test runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
// The lock only keeps other tests' subscribers out; nothing else on this thread takes it.
#[allow(clippy::await_holding_lock)]
async fn a_5xx_is_counted_once_and_logged_once_with_its_request_id() {
    let _one_subscriber_at_a_time = crate::test_support::one_subscriber_at_a_time();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Current-thread test runtime: everything below runs on this thread.
    let _logging = tracing::subscriber::set_default(subscriber);
    // Another test's thread, with no subscriber, may have hit the request span's callsite first
    // and cached "never" for it while this subscriber was being registered: ask again.
    tracing::callsite::rebuild_interest_cache();

    let node = node("");
    node.deploy("functions/echo/versions?max_concurrency=1", "echo", None)
        .await;
    // The first response holds the function's one permit until its body is finished.
    let first = node
        .service
        .handle(request(Method::GET, "/fn/echo/", None, ""))
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let answer = node.ask(Method::GET, "/fn/echo/", None, "").await;
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(answer.header(header::RETRY_AFTER), "1");
    assert_eq!(node.requests("echo", 503), 1);
    drop(first);
    assert_eq!(node.requests("echo", 200), 1);
    let answer_ok = node.ask(Method::GET, "/fn/echo/", None, "").await;
    assert_eq!(answer_ok.status, StatusCode::OK);

    // A 5xx of the admin API is logged too.
    let admin = node
        .ask(Method::POST, "/admin/v1/models/m/versions", None, "x")
        .await;
    admin.assert_error(StatusCode::SERVICE_UNAVAILABLE, "onnx_unavailable");

    let text = logs.text();
    for (answer, code) in [(&answer, "overloaded"), (&admin, "onnx_unavailable")] {
        let id = answer.header("x-request-id");
        let quoted = format!("\"{id}\"");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&quoted)).collect();
        assert_eq!(lines.len(), 1, "{id} in:\n{text}");
        assert!(lines[0].contains(code), "{}", lines[0]);
    }
    // Neither the 200s nor a 4xx are the operator's problem.
    let not_found = node.ask(Method::GET, "/nowhere", None, "").await;
    assert!(!logs.text().contains(not_found.header("x-request-id")));
    assert!(!logs.text().contains(answer_ok.header("x-request-id")));
}
