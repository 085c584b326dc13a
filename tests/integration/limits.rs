//! Per-function limits: request body cap (413), concurrency cap (503), response cap, timeout,
//! and a burst of concurrent requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn request_body_over_the_cap_is_413() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("small", "echo", "max_request_body=1KiB");

    let r = node.send(Request::new("POST", "/fn/small").body(vec![b'a'; 2 * KIB]));
    assert_error(&r, 413, "payload_too_large");

    // At and under the cap.
    for len in [0, 512, KIB] {
        let r = node.send(Request::new("POST", "/fn/small").body(vec![b'b'; len]));
        assert_eq!(r.status, 200, "{len} bytes: {r}");
        assert_eq!(r.body.len(), len);
    }

    // Chunked, so the node only learns the size while streaming: must not succeed.
    let chunks = vec![vec![b'c'; 256]; 8];
    let p = Request::new("POST", "/fn/small")
        .chunked(chunks)
        .send_partial(node.addr());
    let status = p.status.unwrap_or(0);
    assert!(
        !(200..300).contains(&status) || !p.complete,
        "a 2 KiB chunked body over a 1 KiB cap must not succeed: status {status}, {} bytes",
        p.body.len()
    );
    if status == 413 {
        let r = Response {
            status,
            headers: p.headers.clone(),
            body: p.body.clone(),
        };
        assert_error(&r, 413, "payload_too_large");
    }

    // Chunked under the cap works.
    let r = node.send(Request::new("POST", "/fn/small").chunked(vec![vec![b'd'; 100]; 3]));
    assert_eq!((r.status, r.body.len()), (200, 300), "{r}");
}

#[test]
fn max_concurrency_sheds_load_with_503() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("one", "sleepy", "max_concurrency=1");

    let addr = node.addr();
    let busy = thread::spawn(move || Request::get("/fn/one/1500").send(addr));
    node.wait_in_flight("one", 1);

    let r = node.get("/fn/one/1");
    assert_error(&r, 503, "overloaded");
    let retry = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After: {r}"));
    assert!(
        retry.trim().parse::<u64>().is_ok(),
        "Retry-After should be seconds: {retry:?}"
    );

    let first = busy.join().unwrap();
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "slept 1500"),
        "{first}"
    );

    // The slot is free again.
    node.wait_in_flight("one", 0);
    let r = node.get("/fn/one/1");
    assert_eq!((r.status, r.text().as_str()), (200, "slept 1"), "{r}");
}

#[test]
fn timeout_of_a_waiting_guest_is_504() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("s", "sleepy", "timeout=1s");

    let start = Instant::now();
    let r = node.get("/fn/s/5000");
    let elapsed = start.elapsed();
    assert_error(&r, 504, "timeout");
    assert!(
        elapsed >= Duration::from_secs(1),
        "timed out too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "timed out too late: {elapsed:?}"
    );

    let r = node.get("/fn/s/10");
    assert_eq!((r.status, r.text().as_str()), (200, "slept 10"), "{r}");
}

#[test]
fn response_cap_boundary() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("h", "huge-response", "max_response_body=1MiB");

    let r = node.get(&format!("/fn/h/{MIB}"));
    assert_eq!(r.status, 200, "exactly at the cap: status {}", r.status);
    assert_eq!(r.body.len(), MIB);

    let p = Request::get(&format!("/fn/h/{}", 2 * MIB))
        .timeout(Duration::from_secs(30))
        .read_limit(16 * MIB)
        .send_partial(node.addr());
    assert!(
        p.body.len() <= MIB + 64 * KIB,
        "{} bytes over a 1 MiB cap",
        p.body.len()
    );
    assert!(
        !(p.status == Some(200) && p.complete),
        "2 MiB over a 1 MiB cap must not arrive as a complete 200 ({} bytes)",
        p.body.len()
    );

    let r = node.get("/fn/h/10");
    assert_eq!((r.status, r.body.len()), (200, 10));
}

#[test]
fn thousand_requests_at_64_way_concurrency() {
    const TOTAL: usize = 1000;
    const THREADS: usize = 64;
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("hello", "hello-plain", "");

    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let addr = node.addr();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let next = next.clone();
            let failures = failures.clone();
            thread::spawn(move || {
                while next.fetch_add(1, Ordering::SeqCst) < TOTAL {
                    match Request::get("/fn/hello/burst").try_send(addr) {
                        Ok(r) if r.status == 200 && r.body == b"hello" => {}
                        Ok(r) => failures.lock().unwrap().push(format!("{r}")),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed; first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );

    let metrics = node.metrics();
    let count = metric_value(
        &metrics,
        "tensorlet_requests_total",
        &[("function", "hello"), ("status", "200")],
    );
    assert_eq!(
        count,
        Some(TOTAL as f64),
        "tensorlet_requests_total counts every request:\n{metrics}"
    );
}
