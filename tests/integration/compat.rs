//! Handlers built without tensorlet-sdk keep working: a `wstd` server (tests/fixtures/wstd-server)
//! answers, streams a body back and makes an outbound call through the node's allow-list.
//! (Plain `wasi`-crate handlers are the other fixtures: hello-plain, fetcher, forward.)

use crate::support::*;

#[test]
fn a_wstd_handler_runs_unchanged() {
    let dir = TestDir::new();
    let node = Node::start(
        &dir.data(),
        Some("[outbound]\nallow_ips = [\"127.0.0.1/32\"]\n"),
    );
    let (upstream, server) = one_response_upstream(b"upstream says hi".to_vec());
    let allow = url_encode(&format!("http://127.0.0.1:{}", upstream.port()));
    node.deploy_ok("wstd", "wstd-server", &format!("allow_outbound={allow}"));

    let r = node.get("/fn/wstd/");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "hello from wstd\n"),
        "{r}"
    );

    let chunks: Vec<Vec<u8>> = (0..6).map(|i| pseudo_random_bytes(512 * KIB, i)).collect();
    let r = node.send(Request::new("POST", "/fn/wstd/echo").chunked(chunks.clone()));
    assert_eq!(r.status, 200, "{r}");
    assert!(r.body == chunks.concat(), "the echoed body differs");

    let r =
        node.send(Request::get("/fn/wstd/fetch").header("url", &format!("http://{upstream}/hi")));
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "200 upstream says hi"),
        "{r}"
    );
    let head = server.join().unwrap();
    assert!(head.starts_with("GET /hi HTTP/1.1\r\n"), "{head}");
}
