//! The guest SDK's streaming bodies and async handlers, from real guests: `stream-probe` (a
//! plain handler taking a `StreamRequest`, answering streamed `Body`s) and `async-probe` (an
//! `async fn` handler on the SDK's executor, with `fetch` and `join_all`).

use std::io::Write;
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::support::*;

/// Less memory than the bodies below: only a guest that streams can handle them.
const SMALL: &str = "memory=16MiB&max_request_body=64MiB&max_response_body=64MiB";

#[test]
fn request_and_response_bodies_stream_through_a_small_instance() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("stream", "stream-probe", SMALL);
    node.deploy_ok("whole", "echo", SMALL);

    // 40 MiB up, in 1 MiB chunks, through 16 MiB of guest memory.
    let chunks: Vec<Vec<u8>> = (0..40).map(|i| pseudo_random_bytes(MIB, i)).collect();
    let mut hash = 0xcbf29ce484222325u64;
    for b in chunks.iter().flatten() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    let upload = |path: &str| {
        Request::new("POST", path)
            .chunked(chunks.clone())
            .timeout(Duration::from_secs(60))
            .send(node.addr())
    };
    let r = upload("/fn/stream/count");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["bytes"], 40 * MIB as u64);
    assert_eq!(r.json()["fnv"], format!("{hash:016x}"));
    let r = upload("/fn/stream/pipe");
    assert_eq!(r.status, 200, "{} bytes", r.body.len());
    assert!(r.body == chunks.concat(), "the piped body differs");
    // The control: a handler that takes the body whole cannot, in the same memory.
    let r = upload("/fn/whole/");
    assert_ne!(
        r.status, 200,
        "a buffering guest held 40 MiB in 16 MiB: {r}"
    );

    // 48 MiB down, made chunk by chunk while it is sent.
    let r = node.send(Request::get("/fn/stream/big?mib=48").timeout(Duration::from_secs(60)));
    assert_eq!(r.status, 200, "{} bytes", r.body.len());
    assert_eq!(r.body.len(), 48 * MIB);
    assert!(r.body.iter().all(|b| *b == b'x'));

    // A bounded read of the whole body.
    let r = node.send(Request::new("POST", "/fn/stream/whole?limit=1000").body(vec![7; 1000]));
    assert_eq!(
        (r.status, r.json()["bytes"].as_u64()),
        (200, Some(1000)),
        "{r}"
    );
    let r = node.send(Request::new("POST", "/fn/stream/whole?limit=1000").body(vec![7; 1001]));
    assert_eq!(r.status, 413, "{r}");
    assert_eq!(r.json()["error"]["code"], "body_too_large");
}

#[test]
fn streamed_answers_keep_their_headers_order_and_failures() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("stream", "stream-probe", "");

    let r = node.get("/fn/stream/lines?n=500");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 500);
    assert!(lines.iter().enumerate().all(|(i, v)| v["i"] == i));

    let r = node.get("/fn/stream/events");
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.text().matches("event: tick\n").count(), 3, "{r}");
    assert!(r.text().ends_with("data: three\n\n"), "{r}");

    let r = node.get("/fn/stream/writer?n=4");
    assert_eq!(r.text(), "line 0\nline 1\nline 2\nline 3\n");
    // A writer that fails midway: the client gets what was written and no clean end.
    let p = Request::get("/fn/stream/writer?n=4&fail_at=2").send_partial(node.addr());
    assert_eq!(p.status, Some(200));
    assert_eq!(p.body, b"line 0\nline 1\n");
    assert!(!p.complete, "a failed stream must not look complete: {p:?}");

    let r = node.get("/fn/stream/headers");
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.header("x-probe"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("text/csv"));
    assert_eq!(r.text(), "a,b\n");
    let r = node.get("/fn/stream/bad-header");
    assert_eq!(r.status, 500, "{r}");
    assert_eq!(r.json()["error"]["code"], "invalid_header");
}

/// An upstream that answers `/a` only once `/b` has arrived (or after 20 s with `late`), each
/// connection on its own thread: a guest that fetched them one after the other would get `late`.
fn barrier_upstream() -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (b_arrived, wait_b) = mpsc::channel::<()>();
        let mut wait_b = Some(wait_b);
        let mut handlers = Vec::new();
        for _ in 0..2 {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let head = read_request_head(&mut conn);
            let (b_arrived, wait_b) = (b_arrived.clone(), wait_b.take());
            handlers.push(thread::spawn(move || {
                let body = if head.starts_with("GET /a ") {
                    let waited = wait_b.map(|w| w.recv_timeout(Duration::from_secs(20)));
                    if matches!(waited, Some(Ok(()))) {
                        "a"
                    } else {
                        "late"
                    }
                } else {
                    let _ = b_arrived.send(());
                    "b"
                };
                let raw = format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(raw.as_bytes());
                let _ = conn.shutdown(Shutdown::Write);
            }));
        }
        for h in handlers {
            let _ = h.join();
        }
    });
    (addr, server)
}

#[test]
fn async_handlers_fetch_at_once_read_streams_and_sleep() {
    let dir = TestDir::new();
    let node = Node::start(
        &dir.data(),
        Some("[outbound]\nallow_ips = [\"127.0.0.1/32\"]\n"),
    );
    let (upstream, server) = barrier_upstream();
    let big = pseudo_random_bytes(8 * MIB, 3);
    let (source, source_server) = one_response_upstream(big.clone());
    let allow =
        |addr: std::net::SocketAddr| url_encode(&format!("http://127.0.0.1:{}", addr.port()));
    let query = format!(
        "allow_outbound={}&allow_outbound={}",
        allow(upstream),
        allow(source)
    );
    node.deploy_ok("async", "async-probe", &query);
    node.deploy_ok("plain", "async-probe", "");

    let r = node.send(
        Request::get("/fn/async/fanout")
            .header("url", &format!("http://{upstream}/a"))
            .header("url", &format!("http://{upstream}/b"))
            .timeout(Duration::from_secs(40)),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.text(),
        "200 a\n200 b\n",
        "the two fetches must run at once"
    );
    server.join().unwrap();

    // Errors from fetch become SDK errors with `?`: a destination this function may not reach.
    let r =
        node.send(Request::get("/fn/plain/fetch").header("url", &format!("http://{upstream}/a")));
    assert_eq!(r.status, 502, "{r}");
    assert_eq!(r.json()["error"]["code"], "fetch_http_request_denied");

    // An upstream's 8 MiB passed through as it arrives.
    let r =
        node.send(Request::get("/fn/async/proxy").header("url", &format!("http://{source}/big")));
    assert_eq!(r.status, 200, "{} bytes", r.body.len());
    assert!(r.body == big, "the proxied body differs");
    assert!(
        source_server
            .join()
            .unwrap()
            .starts_with("GET /big HTTP/1.1\r\n")
    );

    let body: Vec<Vec<u8>> = (0..8).map(|i| pseudo_random_bytes(256 * KIB, i)).collect();
    let r = node.send(Request::new("POST", "/fn/async/count").chunked(body));
    assert_eq!(r.text(), format!("bytes {}", 8 * 256 * KIB), "{r}");
    assert_eq!(node.get("/fn/async/sleep?ms=20").text(), "slept");
}
