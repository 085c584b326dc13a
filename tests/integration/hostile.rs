//! Hostile guests (endless loops, memory hogs, stack overflows, panics, missing responses,
//! endless responses) get the README's errors and never take the node down.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const SMALL: &str = "timeout=1s&memory=16MiB";

/// A node with `hello-plain` deployed as `hello`.
fn node_with_hello(dir: &TestDir) -> Node {
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("hello", "hello-plain", "");
    assert_healthy(&node);
    node
}

#[track_caller]
fn assert_healthy(node: &Node) {
    let r = node.get("/fn/hello");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "hello"),
        "a normal request must still work: {r}"
    );
}

#[test]
fn spin_loop_times_out_without_blocking_others() {
    let dir = TestDir::new();
    let node = node_with_hello(&dir);
    // 2 s so that the 20 requests below certainly happen while the guest spins.
    node.deploy_ok("spin", "spin-loop", "timeout=2s&memory=16MiB");

    let addr = node.addr();
    let spinning = thread::spawn(move || {
        let start = Instant::now();
        let r = Request::get("/fn/spin").send(addr);
        (r, start.elapsed())
    });
    node.wait_in_flight("spin", 1);
    for i in 0..20 {
        let r = node.get("/fn/hello");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello"),
            "request {i} while a guest spins: {r}"
        );
    }
    assert!(
        !spinning.is_finished(),
        "the 20 requests must have run while the guest was spinning"
    );

    let (r, elapsed) = spinning.join().unwrap();
    assert_error(&r, 504, "timeout");
    assert!(
        elapsed >= Duration::from_secs(2),
        "timed out too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "timed out too late: {elapsed:?}"
    );
    assert_healthy(&node);

    // With the 1 s timeout the README example uses.
    node.deploy_ok("spin1", "spin-loop", SMALL);
    let start = Instant::now();
    let r = node.get("/fn/spin1");
    let elapsed = start.elapsed();
    assert_error(&r, 504, "timeout");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    assert_healthy(&node);
}

#[test]
fn traps_become_guest_trap() {
    let dir = TestDir::new();
    let node = node_with_hello(&dir);
    for fixture_name in ["oom", "recursion", "panic"] {
        node.deploy_ok(fixture_name, fixture_name, SMALL);
        let r = node.get(&format!("/fn/{fixture_name}"));
        assert_error(&r, 500, "guest_trap");
        assert_healthy(&node);
        // Every request gets a fresh instance: a second call behaves the same.
        assert_error(
            &node.get(&format!("/fn/{fixture_name}/again")),
            500,
            "guest_trap",
        );
        assert_healthy(&node);
    }
}

#[test]
fn no_response_is_reported() {
    let dir = TestDir::new();
    let node = node_with_hello(&dir);
    node.deploy_ok("silent", "no-response", SMALL);
    assert_error(&node.get("/fn/silent"), 500, "no_response");
    assert_healthy(&node);
}

#[test]
fn endless_response_is_cut_at_the_cap() {
    let dir = TestDir::new();
    let node = node_with_hello(&dir);
    node.deploy_ok(
        "huge",
        "huge-response",
        "max_response_body=1MiB&timeout=10s",
    );

    let p = Request::get("/fn/huge/forever")
        .timeout(Duration::from_secs(30))
        .read_limit(16 * MIB)
        .send_partial(node.addr());
    eprintln!(
        "endless response: status {:?}, {} body bytes, complete {}, error {:?}",
        p.status,
        p.body.len(),
        p.complete,
        p.error
    );
    let slack = 64 * KIB;
    assert!(
        p.body.len() <= MIB + slack,
        "got {} body bytes, more than the 1 MiB cap (status {:?}, error {:?})",
        p.body.len(),
        p.status,
        p.error
    );
    let err = p.error.clone().unwrap_or_default();
    assert!(
        !err.contains("read limit") && !err.contains("no complete response"),
        "the response must end or abort, not run on: {err}"
    );
    assert!(
        !(p.status == Some(200) && p.complete),
        "a response cut at the cap must not look like a complete success ({} bytes)",
        p.body.len()
    );
    assert_healthy(&node);

    // Under the cap works.
    let r = node.get("/fn/huge/1000");
    assert_eq!(r.status, 200, "{}", r.status);
    assert_eq!(r.body.len(), 1000);
}

#[test]
fn large_streamed_response_arrives_whole() {
    let dir = TestDir::new();
    let node = node_with_hello(&dir);
    node.deploy_ok("huge-response", "huge-response", "");
    let r = node.get("/fn/huge-response/5000000");
    assert_eq!(r.status, 200, "status {}", r.status);
    assert_eq!(r.body.len(), 5_000_000);
    assert!(r.body.iter().all(|&b| b == b'x'), "the body is all 'x'");
    assert_healthy(&node);
}

/// The memory cap is the deployed one: under it a guest allocates freely (and every request
/// starts from a fresh, small memory), past it growth fails and the guest traps.
#[test]
fn memory_cap_is_enforced_at_its_size() {
    let dir = TestDir::new();
    let node = node_with_hello(&dir);
    node.deploy_ok("small", "oom", "memory=16MiB");
    for _ in 0..3 {
        let r = node.get("/fn/small/4");
        assert_eq!(
            (r.status, r.text()),
            (200, "allocated 4".to_string()),
            "{r}"
        );
    }
    assert_error(&node.get("/fn/small/32"), 500, "guest_trap");
    node.deploy_ok("big", "oom", "memory=64MiB");
    let r = node.get("/fn/big/32");
    assert_eq!(
        (r.status, r.text()),
        (200, "allocated 32".to_string()),
        "{r}"
    );
    assert_healthy(&node);
}

#[test]
fn guests_cannot_hoard_resources_or_reach_outside() {
    let dir = TestDir::new();
    let node = node_with_hello(&dir);
    node.deploy_ok("hoarder", "hoarder", SMALL);
    let meta = std::fs::read(dir.data().join("meta.json")).unwrap();
    assert_eq!(node.get("/fn/hoarder/fields/100").text(), "kept 100");
    assert_eq!(node.get("/fn/hoarder/streams/100").text(), "kept 100");
    // Past the per-request resource cap (10,000 handles) the guest traps; nothing leaks into
    // the next request.
    for path in [
        "/fn/hoarder/fields/20000",
        "/fn/hoarder/pollables/20000",
        "/fn/hoarder/streams/20000",
    ] {
        assert_error(&node.get(path), 500, "guest_trap");
        assert_healthy(&node);
    }
    assert_eq!(node.get("/fn/hoarder/fields/9000").text(), "kept 9000");
    assert_error(&node.get("/fn/hoarder/dropped"), 500, "guest_trap");
    assert_healthy(&node);
    for (path, answer) in [
        ("/fn/hoarder/dns", "dns denied"),
        ("/fn/hoarder/outbound", "outbound denied"),
        ("/fn/hoarder/files", "files denied"),
    ] {
        let r = node.get(path);
        assert_eq!((r.status, r.text().as_str()), (200, answer), "{path}: {r}");
    }
    assert_healthy(&node);
    assert_eq!(std::fs::read(dir.data().join("meta.json")).unwrap(), meta);
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib << 10
}

/// wasi:nn tensors are copied into host memory, outside the guest's memory limit: a request may
/// hold at most its tensor budget (by default the function's memory limit) of them. A 64 MiB
/// guest asking the host to keep 2 GiB of tensors alive traps at the budget; the node's memory
/// stays bounded and it keeps serving.
#[test]
fn tensors_cannot_hold_host_memory_past_the_request_budget() {
    let dir = TestDir::new();
    let node = node_with_hello(&dir);
    node.deploy_ok("nn", "nn-probe", "memory=64MiB&timeout=20s");
    let before = peak_rss(node.pid());
    // 128 tensors of 16 MiB: 2 GiB on the host without a budget.
    let r = node.get("/fn/nn/hoard/128/16");
    let e = assert_error(&r, 500, "guest_trap");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_tensor_bytes_per_request"),
        "{message}"
    );
    assert!(message.contains(&(64u64 << 20).to_string()), "{message}");
    assert_healthy(&node);
    // Under the budget the same guest is fine.
    assert_eq!(node.get("/fn/nn/hoard/3/16").text(), "made 3");
    let grown = peak_rss(node.pid()).saturating_sub(before);
    assert!(
        grown < 512 << 20,
        "the node's peak memory grew by {} MiB",
        grown >> 20
    );

    // The node setting changes the budget for every function.
    let dir = TestDir::new();
    let node = Node::start(
        &dir.data(),
        Some("max_tensor_bytes_per_request = \"8MiB\"\n"),
    );
    node.deploy_ok("nn", "nn-probe", "memory=64MiB");
    assert_eq!(node.get("/fn/nn/hoard/1/8").text(), "made 1");
    let r = node.get("/fn/nn/hoard/2/8");
    let e = assert_error(&r, 500, "guest_trap");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&(8u64 << 20).to_string()),
        "{e}"
    );
}
