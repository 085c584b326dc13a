//! Outbound HTTP from guests (`wasi:http/outgoing-handler`) on a per-function allow list:
//! deploy-time checks, the node's `[outbound]` policy (inside addresses, timeouts, the response
//! cap), redirects checked again, and the metrics. The upstreams are small `TcpListener` threads
//! in this file; the guests are the `fetcher` and `forward` fixtures, which report a failed call
//! as 502 `error: {wasi error-code}`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support::*;

/// A node that may reach this machine's 127.0.0.1 (and nothing else inside).
const LOCAL: &str = "[outbound]\nallow_ips = [\"127.0.0.1/32\"]\n";

// ---------------------------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 server on its own thread that handles one connection at a time: `answer` gets
/// the request head and returns the raw response to write before closing, or `None` to hold the
/// connection open, unanswered, until the upstream is dropped.
struct Upstream {
    addr: SocketAddr,
    /// Connections accepted.
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(answer: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static) -> Upstream {
        Upstream::start_on("127.0.0.1", answer)
    }

    fn start_on(ip: &str, answer: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static) -> Upstream {
        let listener = TcpListener::bind((ip, 0)).expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (hits2, stop2) = (Arc::clone(&hits), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                hits2.fetch_add(1, Ordering::SeqCst);
                let head = read_request_head(&mut conn);
                match answer(&head) {
                    Some(response) => {
                        let _ = conn.write_all(&response);
                        let _ = conn.shutdown(Shutdown::Write);
                    }
                    None => held.push(conn),
                }
            }
        });
        Upstream {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://ADDR{path}`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The request target of a head (`/path?query`).
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// A complete response with Content-Length.
fn reply(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<Vec<u8>> {
    let mut raw = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    Some(raw)
}

/// An upstream answering 200 `hello {target}` to everything.
fn hello_upstream() -> Upstream {
    Upstream::start(|head| reply("200 OK", &[], format!("hello {}", target(head)).as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The deploy query allowing each pattern.
fn allow(patterns: &[&str]) -> String {
    patterns
        .iter()
        .map(|p| format!("allow_outbound={}", url_encode(p)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `GET /fn/{function}/{op}?url={url}` through the fetcher.
fn call(node: &Node, function: &str, op: &str, url: &str) -> Response {
    node.send(
        Request::get(&format!("/fn/{function}/{op}?url={}", url_encode(url)))
            .timeout(Duration::from_secs(30)),
    )
}

/// Asserts the fetcher's 502 for the wasi error-code `code` (its Debug form).
#[track_caller]
fn assert_call_error(r: &Response, code: &str) {
    assert_eq!(
        (r.status, r.text()),
        (502, format!("error: {code}")),
        "expected the guest to see {code}: {r}"
    );
}

/// A port next to `port` (nothing of these tests listens there).
fn other_port(port: u16) -> u16 {
    if port == u16::MAX { port - 1 } else { port + 1 }
}

/// FNV-1a 64, as the fetcher's `/hash-all` prints it.
fn fnv1a(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

fn outbound_count(node: &Node, function: &str, host: &str, outcome: &str) -> Option<f64> {
    node.metric(
        "tensorlet_outbound_requests_total",
        &[("function", function), ("host", host), ("outcome", outcome)],
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn an_allowed_destination_answers_and_is_counted() {
    let up = hello_upstream();
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(LOCAL));
    let pattern = format!("http://127.0.0.1:{}", up.port());
    node.deploy_ok("f", "fetcher", &allow(&[&pattern]));

    let r = call(&node, "f", "fetch", &up.url("/greeting?x=1"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "status 200\nhello /greeting?x=1"),
        "{r}"
    );
    assert_eq!(up.hits(), 1);

    let labels = [("function", "f"), ("host", pattern.as_str())];
    assert_eq!(outbound_count(&node, "f", &pattern, "response"), Some(1.0));
    assert_eq!(outbound_count(&node, "f", &pattern, "error"), None);
    let histogram = "tensorlet_outbound_request_duration_seconds_count";
    assert_eq!(node.metric(histogram, &labels), Some(1.0));
}

#[test]
fn a_destination_off_the_list_is_denied_without_a_connection() {
    let up = hello_upstream();
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(LOCAL));
    node.deploy_ok("closed", "fetcher", "");
    let elsewhere = format!("http://127.0.0.1:{}", other_port(up.port()));
    node.deploy_ok("elsewhere", "fetcher", &allow(&[&elsewhere]));

    let r = call(&node, "closed", "fetch", &up.url("/"));
    assert_call_error(&r, "HttpRequestDenied");
    let r = call(&node, "elsewhere", "fetch", &up.url("/"));
    assert_call_error(&r, "HttpRequestDenied");
    // The same port over https is another destination.
    let r = call(
        &node,
        "elsewhere",
        "fetch",
        &format!("https://127.0.0.1:{}/", other_port(up.port())),
    );
    assert_call_error(&r, "HttpRequestDenied");
    assert_eq!(up.hits(), 0, "a denied call must not connect");

    assert_eq!(
        outbound_count(&node, "closed", "(denied)", "denied"),
        Some(1.0)
    );
    assert_eq!(
        outbound_count(&node, "elsewhere", "(denied)", "denied"),
        Some(2.0)
    );
}

#[test]
fn inside_addresses_are_refused_after_resolution() {
    let up = hello_upstream();
    let dir = TestDir::new();
    // No allow_ips: loopback is inside.
    let node = Node::start(&dir.data(), None);
    let by_ip = format!("http://127.0.0.1:{}", up.port());
    let by_name = format!("http://localhost:{}", up.port());
    node.deploy_ok("f", "fetcher", &allow(&[&by_ip, &by_name]));

    let r = call(&node, "f", "fetch", &format!("{by_ip}/"));
    assert_call_error(&r, "DestinationIpProhibited");
    // A name is resolved by the node and its addresses are checked the same way.
    let r = call(&node, "f", "fetch", &format!("{by_name}/"));
    assert_call_error(&r, "DestinationIpProhibited");
    assert_eq!(
        up.hits(),
        0,
        "a prohibited address must not be connected to"
    );
    assert_eq!(outbound_count(&node, "f", &by_ip, "error"), Some(1.0));
    assert_eq!(outbound_count(&node, "f", &by_name, "error"), Some(1.0));
}

#[test]
fn redirects_are_not_followed_and_the_next_request_is_checked_again() {
    // B listens on 127.0.0.2 where the platform allows it, so that a node wrongly following the
    // redirect there would reach it.
    let answer_b = |_: &str| reply("200 OK", &[], b"inside");
    let b = match TcpListener::bind(("127.0.0.2", 0)) {
        Ok(probe) => {
            drop(probe);
            Upstream::start_on("127.0.0.2", answer_b)
        }
        Err(_) => Upstream::start(answer_b),
    };
    let c = Upstream::start(|_| reply("200 OK", &[], b"c"));
    let to_b = format!("http://127.0.0.2:{}/", b.port());
    let to_c = c.url("/");
    let a = Upstream::start(move |head| match target(head) {
        "/to-b" => reply("302 Found", &[("Location", to_b.as_str())], b""),
        _ => reply("302 Found", &[("Location", to_c.as_str())], b""),
    });

    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(LOCAL));
    node.deploy_ok("any", "fetcher", &allow(&["http://*:*"]));
    let only_a = format!("http://127.0.0.1:{}", a.port());
    node.deploy_ok("one", "fetcher", &allow(&[&only_a]));

    // The guest gets the 302 itself.
    let r = call(&node, "any", "fetch", &a.url("/to-b"));
    assert_eq!((r.status, r.text().as_str()), (200, "status 302\n"), "{r}");
    // Its next request goes to an address the policy holds back.
    let r = call(&node, "any", "follow", &a.url("/to-b"));
    assert_call_error(&r, "DestinationIpProhibited");
    assert_eq!(
        b.hits(),
        0,
        "the redirect target inside must not be reached"
    );

    // A redirect to a destination the function may not reach.
    let r = call(&node, "one", "follow", &a.url("/to-c"));
    assert_call_error(&r, "HttpRequestDenied");
    assert_eq!(
        c.hits(),
        0,
        "the redirect target off the list must not be reached"
    );

    // Where both are allowed, following works.
    let r = call(&node, "any", "follow", &a.url("/to-c"));
    assert_eq!((r.status, r.text().as_str()), (200, "status 200\nc"), "{r}");
    assert_eq!(c.hits(), 1);
}

#[test]
fn a_silent_upstream_times_out_at_first_byte_timeout() {
    let silent = Upstream::start(|_| None);
    let dir = TestDir::new();
    let config = format!("{LOCAL}first_byte_timeout = \"300ms\"\n");
    let node = Node::start(&dir.data(), Some(&config));
    let pattern = format!("http://127.0.0.1:{}", silent.port());
    node.deploy_ok(
        "f",
        "fetcher",
        &format!("{}&timeout=20s", allow(&[&pattern])),
    );

    let start = Instant::now();
    let r = call(&node, "f", "fetch", &silent.url("/"));
    let elapsed = start.elapsed();
    assert_call_error(&r, "ConnectionReadTimeout");
    assert!(
        elapsed < Duration::from_secs(5),
        "the call should end at first_byte_timeout (300ms), took {elapsed:?}"
    );
    assert_eq!(silent.hits(), 1);
    assert_eq!(outbound_count(&node, "f", &pattern, "error"), Some(1.0));
}

#[test]
fn a_silent_upstream_is_cut_off_by_the_function_deadline() {
    let silent = Upstream::start(|_| None);
    let up = hello_upstream();
    let dir = TestDir::new();
    // The default first_byte_timeout (30s) is longer than the function's timeout.
    let node = Node::start(&dir.data(), Some(LOCAL));
    node.deploy_ok(
        "f",
        "fetcher",
        &format!("{}&timeout=1s", allow(&["http://127.0.0.1:*"])),
    );

    let start = Instant::now();
    let r = call(&node, "f", "fetch", &silent.url("/"));
    let elapsed = start.elapsed();
    assert!(
        r.status == 504 || r.status == 502,
        "expected 504 (or the guest's 502) at the deadline: {r}"
    );
    if r.status == 502 {
        assert_call_error(&r, "ConnectionReadTimeout");
    }
    assert!(
        elapsed < Duration::from_secs(10),
        "the call should end by the 1s deadline, took {elapsed:?}"
    );

    // The node goes on serving.
    let r = call(&node, "f", "fetch", &up.url("/after"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "status 200\nhello /after"),
        "{r}"
    );
}

#[test]
fn a_response_over_max_response_bytes_fails() {
    let up = Upstream::start(|head| match target(head) {
        "/declared" => reply("200 OK", &[], &[b'd'; 4096]),
        "/undeclared" => {
            // No Content-Length: the body ends when the connection closes.
            let mut raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
            raw.extend_from_slice(&[b'u'; 4096]);
            Some(raw)
        }
        _ => reply("200 OK", &[], &[b's'; 100]),
    });
    let dir = TestDir::new();
    let config = format!("{LOCAL}max_response_bytes = \"1KiB\"\n");
    let node = Node::start(&dir.data(), Some(&config));
    let pattern = format!("http://127.0.0.1:{}", up.port());
    node.deploy_ok("f", "fetcher", &allow(&[&pattern]));

    let r = call(&node, "f", "fetch", &up.url("/small"));
    assert_eq!(
        (r.status, r.text()),
        (200, format!("status 200\n{}", "s".repeat(100))),
        "{r}"
    );
    let r = call(&node, "f", "fetch", &up.url("/declared"));
    assert_call_error(&r, "HttpResponseBodySize(Some(4096))");
    // Without a declared length, reading the body fails once it passes the cap. wasmtime-wasi-http
    // (48) gives no `http-error-code` for a body stream's error, so the guest may only have the
    // error's text.
    let r = call(&node, "f", "fetch", &up.url("/undeclared"));
    let text = r.text();
    assert!(
        r.status == 502
            && (text.starts_with("error: HttpResponseBodySize")
                || text.contains("body size exceeds limit")),
        "expected the body's read to fail on the cap: {r}"
    );
}

#[test]
fn deploy_checks_patterns_against_the_nodes_allowed_hosts() {
    let dir = TestDir::new();
    let node = Node::start(
        &dir.data(),
        Some("[outbound]\nallowed_hosts = [\"https://*\"]\n"),
    );

    for bad in [
        "not-a-pattern",
        "ftp://example.com",
        "http://example.com/path",
    ] {
        let r = node.deploy("v", &fixture("fetcher"), &allow(&[bad]));
        assert_error(&r, 400, "invalid_request");
        assert!(
            error_message(&r).contains("SCHEME://HOST[:PORT]"),
            "{bad}: the message should show the pattern's form: {r}"
        );
    }
    let r = node.deploy("v", &fixture("fetcher"), &allow(&["http://127.0.0.1:1"]));
    assert_error(&r, 400, "invalid_request");
    assert!(
        error_message(&r).contains("allowed_hosts"),
        "the message should name allowed_hosts: {r}"
    );
    assert_eq!(
        node.get("/admin/v1/functions/v/versions").status,
        404,
        "a refused deploy creates nothing"
    );

    let one = node.deploy_ok("v", "fetcher", &allow(&["https://api.example.com"]));
    let two = node.deploy_ok(
        "v",
        "fetcher",
        &allow(&["https://api.example.com", "https://*.example.org"]),
    );
    let none = node.deploy_ok("v", "fetcher", "");
    let ids: Vec<&str> = [&one, &two, &none]
        .iter()
        .map(|v| v["version"].as_str().expect("version id"))
        .collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "each allow list is its own version: {ids:?}"
    );

    let versions = node.versions("v");
    let entry = |id: &str| {
        versions["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == id)
            .unwrap_or_else(|| panic!("version {id} missing: {versions}"))
            .clone()
    };
    assert_eq!(
        entry(ids[0])["allow_outbound"],
        serde_json::json!(["https://api.example.com"])
    );
    assert_eq!(
        entry(ids[1])["allow_outbound"],
        serde_json::json!(["https://api.example.com", "https://*.example.org"])
    );
    let plain = entry(ids[2]);
    assert!(
        plain
            .get("allow_outbound")
            .is_none_or(|v| v == &serde_json::json!([])),
        "a version without outbound shows no patterns: {plain}"
    );
}

#[test]
fn hash_all_reports_each_url() {
    let up = hello_upstream();
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(LOCAL));
    node.deploy_ok(
        "h",
        "fetcher",
        &allow(&[&format!("http://127.0.0.1:{}", up.port())]),
    );

    let urls = [
        up.url("/a"),
        up.url("/b"),
        format!("http://127.0.0.1:{}/c", other_port(up.port())),
    ];
    let mut req = Request::get("/fn/h/hash-all").timeout(Duration::from_secs(30));
    for u in &urls {
        req = req.header("url", u);
    }
    let r = node.send(req);
    let expected = format!(
        "{}: {}\n{}: {}\n{}: error HttpRequestDenied\n",
        urls[0],
        fnv1a(b"hello /a"),
        urls[1],
        fnv1a(b"hello /b"),
        urls[2]
    );
    assert_eq!((r.status, r.text()), (200, expected), "{r}");
    assert_eq!(up.hits(), 2);
}

#[test]
fn forward_passes_the_request_through() {
    let up = Upstream::start(|head| {
        let body = format!("forwarded {}", target(head));
        reply("200 OK", &[("x-upstream", "yes")], body.as_bytes())
    });
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(LOCAL));
    let authority = format!("127.0.0.1:{}", up.port());
    node.deploy_ok("fwd", "forward", &allow(&[&format!("http://{authority}")]));

    // The node passes the client's Host header to the guest as the request's authority.
    let (status, headers, body) = get_with_host(&node, "/fn/fwd/some/path?q=1", &authority);
    assert_eq!(
        (status, body.as_str()),
        (200, "forwarded /some/path?q=1"),
        "{headers}"
    );
    assert!(
        headers.to_ascii_lowercase().contains("x-upstream: yes"),
        "the upstream's headers come back: {headers}"
    );

    // Another Host is another destination: not on the list.
    let (status, _, body) = get_with_host(&node, "/fn/fwd/x", "example.com");
    assert_eq!((status, body.as_str()), (502, "error: HttpRequestDenied"));
}

/// `GET path` with exactly one Host header (the support client always sends the node's):
/// (status, response head, de-chunked body).
fn get_with_host(node: &Node, path: &str, host: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&node.addr(), Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("read the response to its end");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, mut rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, head.to_string(), rest.to_string());
    }
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    (status, head.to_string(), body)
}
