//! A node keeps its functions, versions and live pointers across restarts, including after
//! SIGKILL in the middle of deploys.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Everything the admin API says about the node's state, in a comparable form.
fn snapshot(node: &Node) -> Value {
    let list = node.get("/admin/v1/functions");
    assert_eq!(list.status, 200, "{list}");
    let mut functions = list.json()["functions"]
        .as_array()
        .expect("functions array")
        .clone();
    functions.sort_by_key(|f| f["name"].as_str().unwrap_or("").to_string());
    let details: Vec<Value> = functions
        .iter()
        .map(|f| node.versions(f["name"].as_str().expect("function name")))
        .collect();
    serde_json::json!({ "functions": functions, "details": details })
}

fn restart_keeps_everything(stop: impl FnOnce(&mut Node)) {
    let dir = TestDir::new();
    let mut node = Node::start(&dir.data(), None);
    let v1 = node.deploy_ok("greet", "greet-v1", "")["version"]
        .as_str()
        .unwrap()
        .to_string();
    let v2 = node.deploy_ok("greet", "greet-v2", "timeout=5s")["version"]
        .as_str()
        .unwrap()
        .to_string();
    node.deploy_ok("echo", "echo", "env=A%3D1&memory=32MiB");
    let r = node.rollback("greet", None);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v1");
    let before = snapshot(&node);

    stop(&mut node);
    drop(node);

    let node = Node::start(&dir.data(), None);
    assert_eq!(node.get("/readyz").status, 200);
    let after = snapshot(&node);
    assert_eq!(
        after, before,
        "state after restart differs\nbefore: {before:#}\nafter: {after:#}"
    );
    let r = node.get("/fn/greet");
    assert_eq!((r.status, r.text().as_str()), (200, "v1"), "{r}");
    let r = node.send(Request::new("POST", "/fn/echo/p").body(b"persisted".to_vec()));
    assert_eq!((r.status, r.text().as_str()), (200, "persisted"), "{r}");

    // Stored versions are usable, not just listed.
    let r = node.rollback("greet", Some(&v2));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v2");
    assert_eq!(node.versions("greet")["versions"][0]["timeout_ms"], 5000);
    let r = node.rollback("greet", Some(&v1));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(node.get("/fn/greet").text(), "v1");
}

#[test]
fn restart_after_sigterm_keeps_everything() {
    restart_keeps_everything(|node| {
        node.terminate();
        let status = node.wait_exit();
        assert_eq!(status.code(), Some(0), "SIGTERM must exit 0, got {status}");
    });
}

#[test]
fn restart_after_sigkill_keeps_everything() {
    restart_keeps_everything(|node| node.kill9());
}

/// Valid handlers that answer 200 on `/fn/NAME/1`, in deploy order.
const DEPLOYABLE: [&str; 8] = [
    "greet-v1",
    "greet-v2",
    "hello-plain",
    "echo",
    "env-probe",
    "logger",
    "sleepy",
    "huge-response",
];

enum Event {
    Starting(usize),
    Acked(String),
    Failed(usize, String),
}

/// Checks, after a restart, that every acknowledged version of `name` is listed and that every
/// listed version can be made live and answers 200.
fn check_function(node: &Node, name: &str, acked: &BTreeSet<String>) {
    let r = node.get(&format!("/admin/v1/functions/{name}/versions"));
    if r.status == 404 {
        assert!(
            acked.is_empty(),
            "{name}: acknowledged versions {acked:?} lost; {r}"
        );
        return;
    }
    assert_eq!(r.status, 200, "{name}: {r}");
    let vs = r.json();
    let listed: BTreeSet<String> = vs["versions"]
        .as_array()
        .expect("versions array")
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = acked.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "{name}: acknowledged versions {missing:?} are gone; listed {vs:#}"
    );
    if let Some(live) = vs["live"].as_str() {
        assert!(
            listed.contains(live),
            "{name}: live {live} is not a listed version: {vs:#}"
        );
    }
    for v in &listed {
        let r = node.rollback(name, Some(v));
        assert_eq!(r.status, 200, "{name}: rollback --to {v}: {r}");
        let r = node.get(&format!("/fn/{name}/1"));
        assert_eq!(
            r.status, 200,
            "{name}: invoking version {v} after recovery: {r}"
        );
    }
}

#[test]
fn sigkill_during_deploys_loses_nothing_acknowledged() {
    const ROUNDS: usize = 8;
    // (deploy index to kill at, delay in µs after that deploy's request started). A deploy of
    // these small fixtures takes a few ms, so most kills land while one is in progress.
    let plan: [(usize, u64); ROUNDS] = [
        (0, 0),
        (3, 300),
        (5, 1000),
        (7, 2000),
        (2, 4000),
        (4, 700),
        (6, 1500),
        (1, 8000),
    ];
    let dir = TestDir::new();
    let files: Vec<_> = DEPLOYABLE.iter().map(|f| fixture(f)).collect();
    let mut acked_per_fn: Vec<(String, BTreeSet<String>)> = Vec::new();

    for (round, &(kill_at, delay_us)) in plan.iter().enumerate() {
        let mut node = Node::start(&dir.data(), None);
        let name = format!("f{round}");
        // Rotate the order so that a different component is in flight each round.
        let order: Vec<_> = (0..files.len())
            .map(|i| files[(i + round) % files.len()].clone())
            .collect();

        let (tx, rx) = mpsc::channel();
        let addr = node.addr();
        let fname = name.clone();
        let deployer = thread::spawn(move || {
            for (i, file) in order.iter().enumerate() {
                let bytes = std::fs::read(file).unwrap();
                let _ = tx.send(Event::Starting(i));
                let req = Request::new("POST", &format!("/admin/v1/functions/{fname}/versions"))
                    .header("content-type", "application/wasm")
                    .body(bytes);
                match req.try_send(addr) {
                    Ok(r) if r.status == 200 || r.status == 201 => {
                        let v = r.json()["version"].as_str().unwrap_or_default().to_string();
                        let _ = tx.send(Event::Acked(v));
                    }
                    Ok(r) => {
                        let _ = tx.send(Event::Failed(i, format!("unexpected response: {r}")));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Failed(i, e));
                        return;
                    }
                }
            }
        });

        // Wait for the kill point, then SIGKILL; collect what was acknowledged.
        let mut acked = BTreeSet::new();
        let mut unexpected = None;
        loop {
            match rx.recv_timeout(REQUEST_LIMIT) {
                Ok(Event::Starting(i)) if i == kill_at => {
                    thread::sleep(Duration::from_micros(delay_us));
                    node.kill9();
                    break;
                }
                Ok(Event::Starting(_)) => {}
                Ok(Event::Acked(v)) => {
                    acked.insert(v);
                }
                Ok(Event::Failed(i, e)) => {
                    unexpected = Some(format!("deploy {i} failed before the kill: {e}"));
                    node.kill9();
                    break;
                }
                Err(e) => panic!("round {round}: deployer stalled: {e}"),
            }
        }
        deployer.join().expect("deployer thread");
        for ev in rx.try_iter() {
            if let Event::Acked(v) = ev {
                acked.insert(v);
            }
        }
        if let Some(e) = unexpected {
            panic!(
                "round {round}: {e}\n--- node stderr ---\n{}",
                node.stderr_text()
            );
        }
        assert!(
            acked.len() >= kill_at,
            "round {round}: deploys before the kill point must be acknowledged"
        );
        eprintln!(
            "round {round}: killed at deploy {kill_at} (+{delay_us} µs), {} acknowledged",
            acked.len()
        );
        drop(node);
        acked_per_fn.push((name, acked));

        // Restart on the same data dir: startup must succeed and nothing acknowledged is lost,
        // for this round's function and all earlier ones.
        let node = Node::start(&dir.data(), None);
        let r = node.get("/readyz");
        assert_eq!(r.status, 200, "round {round}: {r}");
        for (name, acked) in &acked_per_fn {
            check_function(&node, name, acked);
        }
        // The node still takes deploys on the function that was interrupted.
        let r = node.deploy(&format!("f{round}"), &fixture("greet-v1"), "");
        assert!(
            r.status == 200 || r.status == 201,
            "round {round}: deploy after recovery: {r}"
        );
        assert_eq!(node.get(&format!("/fn/f{round}")).text(), "v1");
        drop(node);
    }
}
