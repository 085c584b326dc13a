//! Hostile clients: slow-loris headers and bodies, oversized and too many headers, malformed
//! HTTP, request smuggling, unicode and traversal tricks in names. After each case the node
//! still serves a normal request and its stored metadata is unchanged.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::support::*;

const TIMEOUTS: &str = "header_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"";

fn meta(node: &Node) -> Vec<u8> {
    std::fs::read(node.data_dir().join("meta.json")).expect("meta.json")
}

/// Writes `head` raw, then reads until the server answers or closes (at most 20 s): the first
/// bytes of its answer, empty if it closed without one.
fn raw(node: &Node, head: &[u8]) -> String {
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(head);
    let mut buf = vec![0u8; 4096];
    match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
        Err(e) => panic!("the node neither answered nor closed: {e}"),
    }
}

fn assert_still_serving(node: &Node, before: &[u8]) {
    assert_eq!(node.get("/fn/hello/").text(), "hello");
    assert_eq!(meta(node), before, "stored metadata changed");
}

#[test]
fn slow_clients_are_cut_off() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(TIMEOUTS));
    node.deploy_ok("hello", "hello-plain", "");
    node.deploy_ok("echo", "echo", "timeout=1s");
    let before = meta(&node);

    // Slow-loris headers: one more header line every 100 ms, never the blank line that ends them.
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /fn/hello/ HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut writer = s.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        for i in 0..100 {
            if writer
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .is_err()
            {
                return true; // the node hung up
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    });
    let mut buf = [0u8; 1024];
    let answer = match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
        Err(e) => panic!("a slow-loris connection was kept open: {e}"),
    };
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        trickle.join().unwrap(),
        "the node kept reading slow headers"
    );

    // A slow upload: 10 of 1000 announced bytes, then nothing.
    let answer = raw(
        &node,
        b"POST /admin/v1/functions/late/versions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // A slow body to a function that reads it: its timeout ends the request.
    let answer = raw(
        &node,
        b"POST /fn/echo/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
    );
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert_still_serving(&node, &before);
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(TIMEOUTS));
    node.deploy_ok("hello", "hello-plain", "");
    let before = meta(&node);

    let huge_header = format!(
        "GET /fn/hello/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let many_headers: String = (0..2000).map(|i| format!("X-{i}: y\r\n")).collect();
    let many_headers = format!("GET /fn/hello/ HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not HTTP", b"HELLO THERE\r\n\r\n".to_vec()),
        ("binary", pseudo_random_bytes(4096, 7)),
        ("bad version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("huge header", huge_header.into_bytes()),
        ("many headers", many_headers.into_bytes()),
        (
            "bad header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n".to_vec(),
        ),
    ];
    // Both framings: hyper follows Transfer-Encoding, as RFC 9112 allows, so the announced length
    // cannot smuggle a second request in.
    let answer = raw(
        &node,
        b"POST /fn/hello/ HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/v1/functions HTTP/1.1\r\n\r\n",
    );
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_still_serving(&node, &before);
    // A broken chunked body to a guest that never reads it: whatever the guest answered stands.
    let answer = raw(
        &node,
        b"POST /fn/hello/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_still_serving(&node, &before);
    for (what, bytes) in cases {
        let answer = raw(&node, &bytes);
        let refused = answer.is_empty()
            || answer.starts_with("HTTP/1.1 400")
            || answer.starts_with("HTTP/1.1 431");
        assert!(refused, "{what}: {answer}");
        assert_still_serving(&node, &before);
    }
}

#[test]
fn names_with_tricks_are_not_names() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("hello", "hello-plain", "");
    let before = meta(&node);
    let bytes = fixture_bytes("hello-plain");
    for name in [
        "h%C3%A9llo",     // é
        "%EF%BD%88ello",  // fullwidth h
        "hello%E2%80%8B", // zero-width space
        "hel%E2%80%AElo", // right-to-left override
        "HELLO",
        "..",
        "%2E%2E",
        "hello%2F..%2Fx",
        "hello%00",
        "-hello",
    ] {
        let r = node.deploy_bytes(name, bytes.clone(), "");
        assert!(r.status == 400 || r.status == 404, "{name}: {r}");
        assert_error(
            &node.get(&format!("/fn/{name}/")),
            404,
            "function_not_found",
        );
    }
    assert_error(
        &node.get("/fn/../admin/v1/functions"),
        404,
        "function_not_found",
    );
    assert_still_serving(&node, &before);
}
