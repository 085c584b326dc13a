//! Operations: health endpoints, metrics, guest logs, environment isolation, graceful shutdown.

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

#[test]
fn health_and_readiness() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    assert_eq!(node.get("/healthz").status, 200);
    assert_eq!(node.get("/readyz").status, 200);
}

#[test]
fn metrics_count_requests() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("echo", "echo", "");
    for _ in 0..3 {
        assert_eq!(node.get("/fn/echo/m").status, 200);
    }

    let r = node.get("/metrics");
    assert_eq!(r.status, 200, "{r}");
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "Prometheus text format: {:?}",
        r.header("content-type")
    );
    let text = r.text();
    assert!(
        text.contains(r#"tensorlet_requests_total{function="echo",status="200"}"#),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "tensorlet_requests_total",
            &[("function", "echo"), ("status", "200")]
        ),
        Some(3.0),
        "{text}"
    );
    for family in [
        "tensorlet_request_duration_seconds",
        "tensorlet_instantiation_duration_seconds",
        "tensorlet_requests_in_flight",
    ] {
        assert!(text.contains(family), "metrics lack {family}:\n{text}");
    }
    assert_eq!(
        metric_value(
            &text,
            "tensorlet_requests_in_flight",
            &[("function", "echo")]
        )
        .unwrap_or(0.0),
        0.0,
        "{text}"
    );
}

fn log_lines(node: &Node, name: &str) -> Vec<Value> {
    let r = node.get(&format!("/admin/v1/functions/{name}/logs"));
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!(v["name"], name, "{v}");
    v["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines array: {v}"))
        .clone()
}

#[test]
fn guest_stdout_and_stderr_are_kept_as_logs() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    let version = node.deploy_ok("logger", "logger", "")["version"]
        .as_str()
        .unwrap()
        .to_string();

    let r = node.get("/fn/logger/abc");
    assert_eq!((r.status, r.text().as_str()), (200, "logged"), "{r}");

    let find = |lines: &[Value], stream: &str, text: &str| -> Option<Value> {
        lines
            .iter()
            .find(|l| l["stream"] == stream && l["line"].as_str().unwrap_or("").contains(text))
            .cloned()
    };
    // Output may reach the log a moment after the response: poll the API.
    let lines = wait_for("both log lines of /fn/logger/abc", || {
        let lines = log_lines(&node, "logger");
        (find(&lines, "stdout", "stdout line /abc").is_some()
            && find(&lines, "stderr", "stderr line /abc").is_some())
        .then_some(lines)
    });
    for (stream, text) in [
        ("stdout", "stdout line /abc"),
        ("stderr", "stderr line /abc"),
    ] {
        let l = find(&lines, stream, text).unwrap();
        assert_eq!(l["version"], version.as_str(), "{l}");
        assert!(
            l["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{l}"
        );
        assert!(l.get("time").is_some(), "{l}");
    }

    // Oldest first.
    assert_eq!(node.get("/fn/logger/second").status, 200);
    let lines = wait_for("log lines of /fn/logger/second", || {
        let lines = log_lines(&node, "logger");
        find(&lines, "stdout", "stdout line /second")
            .is_some()
            .then_some(lines)
    });
    let pos = |text: &str| {
        lines
            .iter()
            .position(|l| l["line"].as_str().unwrap_or("").contains(text))
            .unwrap()
    };
    assert!(
        pos("stdout line /abc") < pos("stdout line /second"),
        "oldest first: {lines:?}"
    );

    let out = node.cli(&["logs", "logger"]);
    let stdout = cli_ok(&out, "logs logger");
    assert!(
        stdout.contains("stdout line /abc") && stdout.contains("stderr line /abc"),
        "{stdout}"
    );
}

/// The `env K=V` lines and the fs/net lines of an env-probe answer.
fn probe(node: &Node, name: &str) -> (Vec<String>, Vec<String>) {
    let r = node.get(&format!("/fn/{name}"));
    assert_eq!(r.status, 200, "{r}");
    let text = r.text();
    let env = text
        .lines()
        .filter(|l| l.starts_with("env "))
        .map(str::to_string)
        .collect();
    let rest = text
        .lines()
        .filter(|l| !l.starts_with("env "))
        .map(str::to_string)
        .collect();
    (env, rest)
}

#[test]
fn guests_see_only_their_own_env_and_no_fs_or_net() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);

    node.deploy_ok("probe", "env-probe", "env=FOO%3Dbar");
    let (env, rest) = probe(&node, "probe");
    assert_eq!(
        env,
        vec!["env FOO=bar".to_string()],
        "exactly the configured env"
    );
    assert!(rest.iter().any(|l| l == "fs denied"), "{rest:?}");
    assert!(rest.iter().any(|l| l == "net denied"), "{rest:?}");

    // Without env settings the guest sees nothing (in particular not the node's environment).
    node.deploy_ok("bare", "env-probe", "");
    let (env, rest) = probe(&node, "bare");
    assert!(env.is_empty(), "the guest must not see any env: {env:?}");
    assert!(!env.iter().any(|l| l.contains(HOST_SECRET_VAR)));
    assert!(
        rest.iter().any(|l| l == "fs denied") && rest.iter().any(|l| l == "net denied"),
        "{rest:?}"
    );

    // Values with '=' in them, and several variables.
    node.deploy_ok("multi", "env-probe", "env=A%3D1&env=B%3Dx%3Dy");
    let (mut env, _) = probe(&node, "multi");
    env.sort();
    assert_eq!(env, vec!["env A=1".to_string(), "env B=x=y".to_string()]);
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let dir = TestDir::new();
    let mut node = Node::start(&dir.data(), None);
    node.deploy_ok("sleepy", "sleepy", "");

    let addr = node.addr();
    let slow = thread::spawn(move || Request::get("/fn/sleepy/3000").send(addr));
    node.wait_in_flight("sleepy", 1);
    node.terminate();

    // The listener closes while the request drains.
    wait_for("the listener to close after SIGTERM", || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .is_err()
            .then_some(())
    });
    assert!(
        !slow.is_finished(),
        "new connections must be refused while in-flight requests drain"
    );

    let r = slow.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slept 3000"), "{r}");
    let status = node.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "connections are refused after exit"
    );
}

#[test]
fn shutdown_grace_bounds_the_drain() {
    let dir = TestDir::new();
    let mut node = Node::start(&dir.data(), Some("shutdown_grace = \"1s\"\n"));
    node.deploy_ok("sleepy", "sleepy", "timeout=60s");

    let addr = node.addr();
    let slow = thread::spawn(move || Request::get("/fn/sleepy/30000").send_partial(addr));
    node.wait_in_flight("sleepy", 1);
    let start = Instant::now();
    node.terminate();
    let status = node.wait_exit_within(Duration::from_secs(20));
    let elapsed = start.elapsed();
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    assert!(
        elapsed < Duration::from_secs(8),
        "shutdown took {elapsed:?} with a 1 s grace"
    );

    let p = slow.join().unwrap();
    assert!(
        p.status != Some(200) || !p.complete,
        "the 30 s request cannot have completed: {:?} {:?}",
        p.status,
        p.error
    );
}

#[test]
fn bad_config_is_refused_at_startup() {
    let dir = TestDir::new();
    let config = dir.write("bad.toml", b"no_such_key = 1\n");
    let out = run_cli({
        let mut cmd = cli_command(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
        cmd.arg(dir.data()).arg("--config").arg(&config);
        cmd
    });
    let (_, stderr) = out_text(&out);
    assert!(
        !out.status.success(),
        "an unknown config key must be an error"
    );
    assert!(
        stderr.contains("no_such_key"),
        "stderr should name the bad key: {stderr}"
    );
}

/// Where the pooling allocator cannot reserve its address space (here a `ulimit -v` of 16 GiB,
/// far below the ~4 TiB its 1,000 slots reserve), the node falls back to on-demand instances,
/// says so, and still gives every request a fresh instance.
#[test]
fn falls_back_to_on_demand_instances_without_address_space() {
    let dir = TestDir::new();
    let node = Node::start_with_address_space_limit(&dir.data(), 16 * 1024 * 1024);
    node.deploy_ok("hello", "hello-plain", "");
    for _ in 0..5 {
        let r = node.get("/fn/hello");
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.text(), "hello");
    }
    // stderr is drained by a reader thread: wait for the line rather than race it.
    wait_for("the fallback to be logged", || {
        node.stderr_text()
            .contains("pooling allocator unavailable")
            .then_some(())
    });
}

/// The alerting rules that ship in deploy/prometheus/ are valid, and fire on the series a node
/// exports when something goes wrong (their own promtool unit tests).
#[test]
fn the_prometheus_alerting_rules_pass_promtool() {
    let dir = repo_root().join("deploy/prometheus");
    for args in [
        ["check", "rules", "tensorlet-rules.yml"],
        ["test", "rules", "tensorlet-rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian prometheus): run scripts/fetch-ops-tools.sh");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
