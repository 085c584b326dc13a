//! Guest logs kept in the data directory (restarts, filters, following, retention, tenants) and
//! the node's own log lines as JSON with request ids.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// `GET /admin/v1/functions/{name}/logs?{query}` as `token`, asserted 200; its lines.
fn lines(node: &Node, name: &str, query: &str, token: Option<&str>) -> Vec<Value> {
    let mut req = Request::get(&format!("/admin/v1/functions/{name}/logs?{query}"));
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let r = node.send(req);
    assert_eq!(r.status, 200, "logs of {name}?{query}: {r}");
    let v = r.json();
    assert_eq!(v["name"], name, "{v}");
    v["lines"].as_array().expect("a lines array").clone()
}

/// The texts of `lines`.
fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

/// Calls `/fn/logger{path}`; the response's `x-request-id`.
fn log_something(node: &Node, path: &str) -> String {
    let r = node.get(&format!("/fn/logger{path}"));
    assert_eq!((r.status, r.text().as_str()), (200, "logged"), "{r}");
    r.header("x-request-id").expect("x-request-id").to_string()
}

/// Waits until the logger's lines of `path` are kept.
fn wait_for_lines(node: &Node, path: &str) -> Vec<Value> {
    wait_for(&format!("the log lines of {path}"), || {
        let all = lines(node, "logger", "", None);
        texts(&all)
            .contains(&format!("stderr line {path}"))
            .then_some(all)
    })
}

/// Bytes of the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                disk_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[test]
fn guest_lines_survive_a_restart() {
    let dir = TestDir::new();
    let mut node = Node::start(&dir.data(), None);
    node.deploy_ok("logger", "logger", "");
    let before = log_something(&node, "/before");
    wait_for_lines(&node, "/before");
    assert!(dir.data().join("logs/functions/logger").is_dir());
    // A crash, not a clean stop: what was written is kept all the same.
    node.kill9();

    let node = Node::start(&dir.data(), None);
    let kept = lines(&node, "logger", "", None);
    assert_eq!(
        texts(&kept),
        ["stdout line /before", "stderr line /before"],
        "{kept:?}"
    );
    assert!(kept.iter().all(|l| l["request_id"] == before.as_str()));
    log_something(&node, "/after");
    let all = wait_for_lines(&node, "/after");
    assert_eq!(all.len(), 4, "{all:?}");
    let out = cli_ok(&node.cli(&["logs", "logger"]), "logs logger");
    assert!(
        out.contains("stdout line /before") && out.contains("stdout line /after"),
        "{out}"
    );
}

#[test]
fn since_version_and_request_id_pick_lines() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    let v1 = node.deploy_ok("logger", "logger", "")["version"]
        .as_str()
        .unwrap()
        .to_string();
    let first = log_something(&node, "/one");
    // The same component with other settings is another version.
    let v2 = node.deploy_ok("logger", "logger", "env=A%3D1")["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);
    let second = log_something(&node, "/two");
    wait_for_lines(&node, "/two");

    let of = |query: &str| texts(&lines(&node, "logger", query, None));
    assert_eq!(
        of(&format!("version={v1}")),
        ["stdout line /one", "stderr line /one"]
    );
    assert_eq!(of(&format!("version={}", &v2[..6])).len(), 2);
    assert_eq!(of("version=live"), ["stdout line /two", "stderr line /two"]);
    assert_eq!(
        of(&format!("request_id={first}")),
        ["stdout line /one", "stderr line /one"]
    );
    assert_eq!(of(&format!("request_id={second}&version={v1}")).len(), 0);
    assert_eq!(of("since=10m").len(), 4);
    assert_eq!(of("since=2001-01-01T00%3A00%3A00Z").len(), 4);
    assert!(of("since=2999-01-01T00%3A00%3A00Z").is_empty());
    assert_eq!(of("limit=1"), ["stderr line /two"]);

    // The CLI says the same, as text and as JSON.
    let out = node.cli(&[
        "logs",
        "logger",
        "--since",
        "10m",
        "--version",
        &v2,
        "--request-id",
        &second,
        "--json",
    ]);
    let doc: Value = serde_json::from_str(&cli_ok(&out, "logs --json")).unwrap();
    assert_eq!(
        texts(doc["lines"].as_array().unwrap()),
        ["stdout line /two", "stderr line /two"]
    );
    let out = cli_ok(
        &node.cli(&["logs", "logger", "--request-id", &first]),
        "logs --request-id",
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains(&v1) && out.contains("stderr line /one"),
        "{out}"
    );

    // Parameters are hostile until checked: each refusal says how to fix it.
    for query in [
        "since=yesterday",
        "since=%1B%5B2J",
        "limit=0",
        "version=x%2F..",
        "request_id=%0A",
        "colour=red",
    ] {
        let r = node.get(&format!("/admin/v1/functions/logger/logs?{query}"));
        let e = assert_error(&r, 400, "invalid_request");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains('\u{1b}') && !message.contains('\n'),
            "{message}"
        );
    }
    let r = node.get("/admin/v1/functions/logger/logs?since=yesterday");
    assert!(error_message(&r).contains("10m"), "{r}");
    let out = node.cli(&["logs", "logger", "--since", "yesterday"]);
    let (_, stderr) = out_text(&out);
    assert!(
        !out.status.success() && stderr.contains("since"),
        "{stderr}"
    );
    assert_error(
        &node.get("/admin/v1/functions/nobody/logs?since=10m"),
        404,
        "function_not_found",
    );
}

/// Reads a streamed answer into a shared buffer as it comes.
fn stream_into(mut source: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&seen);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = source.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

/// Kills the child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn follow_streams_lines_as_they_are_written() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("logger", "logger", "");
    log_something(&node, "/old");
    wait_for_lines(&node, "/old");

    // The API: a chunked answer of JSON lines that stays open.
    let mut stream = TcpStream::connect(node.addr()).unwrap();
    stream.set_read_timeout(Some(REQUEST_LIMIT)).unwrap();
    write!(
        stream,
        "GET /admin/v1/functions/logger/logs?follow=true HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let api = stream_into(stream.try_clone().unwrap());
    // The CLI, as JSON lines.
    let cli = Command::new(bin())
        .args([
            "logs",
            "logger",
            "--follow",
            "--json",
            "--node",
            &node.url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tensorlet logs --follow");
    let mut cli = Killed(cli);
    let cli_lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&cli_lines);
    let out = cli.0.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });

    // Both have what was kept before they started.
    wait_for("the followers to have the old lines", || {
        let cli_has = (cli_lines.lock().unwrap().iter()).any(|l| l.contains("stderr line /old"));
        (api.lock().unwrap().contains("stderr line /old") && cli_has).then_some(())
    });
    let api_text = api.lock().unwrap().clone();
    assert!(api_text.starts_with("HTTP/1.1 200"), "{api_text}");
    assert!(
        api_text
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{api_text}"
    );

    // A line written after they started comes as it is written.
    let id = log_something(&node, "/new");
    wait_for("the followers to get the new line", || {
        let cli_has = (cli_lines.lock().unwrap().iter()).any(|l| l.contains("stderr line /new"));
        (api.lock().unwrap().contains("stderr line /new") && cli_has).then_some(())
    });
    let cli_lines = cli_lines.lock().unwrap().clone();
    let objects: Vec<Value> = cli_lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let new: Vec<&Value> = objects
        .iter()
        .filter(|o| o["request_id"] == id.as_str())
        .collect();
    assert_eq!(new.len(), 2, "each line once: {cli_lines:?}");
    assert_eq!(new[0]["line"], "stdout line /new");
    assert_eq!(new[1]["stream"], "stderr");

    // A client that goes away, and a deleted function, end their streams.
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(node.delete("/admin/v1/functions/logger").status, 200);
    let status = wait_for("the CLI to end with the function", || {
        cli.0.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    assert!(!dir.data().join("logs/functions/logger").exists());
}

#[test]
fn a_flood_of_output_stays_under_the_cap() {
    let dir = TestDir::new();
    let node = Node::start(
        &dir.data(),
        Some("[logs]\nmax_bytes_per_function = \"64KiB\"\n"),
    );
    node.deploy_ok("logger", "logger", "");
    // 150 requests of two 2 KiB lines each: ten times the cap.
    let long = "x".repeat(2000);
    for i in 0..150 {
        log_something(&node, &format!("/{i}-{long}"));
    }
    let last = format!("/149-{long}");
    let kept = wait_for_lines(&node, &last);
    let logs = dir.data().join("logs");
    let on_disk = disk_bytes(&logs);
    assert!(
        on_disk <= 64 * 1024,
        "{on_disk} bytes of logs on disk, over the 64KiB cap"
    );
    assert!(
        !texts(&kept).contains(&format!("stdout line /0-{long}")),
        "the oldest lines go first"
    );
    assert!(kept.len() >= 10, "the newest lines stay: {}", kept.len());
    let written = node
        .metric("tensorlet_guest_log_lines_written_total", &[])
        .unwrap();
    assert!(written >= 300.0, "{written}");
}

#[test]
fn json_node_logs_carry_the_request_id() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some("log_format = \"json\"\n"));
    let deploy = node.deploy("crash", &fixture("panic"), "");
    assert_eq!(deploy.status, 201, "{deploy}");
    let deploy_id = deploy.header("x-request-id").unwrap().to_string();
    let r = node.get("/fn/crash");
    assert_eq!(r.status, 500, "{r}");
    let crash_id = r.header("x-request-id").unwrap().to_string();

    let lines_of = |id: &str| -> Vec<Value> {
        (node.stderr_text().lines())
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["request_id"] == id)
            .collect()
    };
    let crash = wait_for("the 500's log line", || {
        let lines = lines_of(&crash_id);
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(crash[0]["level"], "ERROR", "{crash:?}");
    assert_eq!(crash[0]["status"], 500, "{crash:?}");
    let deployed = lines_of(&deploy_id);
    assert!(
        deployed.iter().any(|l| l["message"] == "deployed"),
        "{deployed:?}"
    );
    for line in node.stderr_text().lines().filter(|l| !l.is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn tenants_read_only_their_own_logs() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some("tenants = true"));
    let op = std::fs::read_to_string(dir.data().join("operator-token"))
        .unwrap()
        .trim()
        .to_string();
    let as_ = |token: &str, method: &str, path: &str| {
        Request::new(method, path).header("authorization", &format!("Bearer {token}"))
    };
    let tenant = |name: &str| {
        let r =
            node.send(as_(&op, "POST", &format!("/admin/v1/tenants/{name}")).body(b"{}".to_vec()));
        assert_eq!(r.status, 201, "{r}");
        r.json()["token"].as_str().unwrap().to_string()
    };
    let (acme, zeta) = (tenant("acme"), tenant("zeta"));
    let bytes = std::fs::read(fixture("logger")).unwrap();
    for token in [&acme, &zeta] {
        let r = node.send(
            as_(
                token,
                "POST",
                "/admin/v1/functions/logger/versions?public=true",
            )
            .body(bytes.clone()),
        );
        assert_eq!(r.status, 201, "{r}");
    }
    assert_eq!(node.get("/fn/acme/logger/secret").status, 200);
    wait_for("acme's line", || {
        let l = lines(&node, "logger", "", Some(&acme));
        texts(&l)
            .contains(&"stdout line /secret".to_string())
            .then_some(())
    });
    assert!(dir.data().join("logs/tenants/acme/logger").is_dir());

    // zeta's function of the same name has its own log; acme's is out of reach.
    assert!(lines(&node, "logger", "", Some(&zeta)).is_empty());
    let r = node.send(as_(
        &zeta,
        "GET",
        "/admin/v1/functions/logger/logs?since=10m",
    ));
    assert_eq!(r.status, 200, "{r}");
    assert!(!r.text().contains("secret"), "{r}");
    for query in ["", "?follow=true", "?since=10m"] {
        let r = node.send(as_(
            &zeta,
            "GET",
            &format!("/admin/v1/functions/other/logs{query}"),
        ));
        assert_error(&r, 404, "function_not_found");
        let r = node.send(as_(
            &op,
            "GET",
            &format!("/admin/v1/functions/logger/logs{query}"),
        ));
        assert_error(&r, 403, "forbidden");
    }
    assert_error(
        &node.get("/admin/v1/functions/logger/logs"),
        401,
        "unauthorized",
    );
    // A removed tenant's logs go with it.
    let r = node.send(as_(&op, "DELETE", "/admin/v1/tenants/acme"));
    assert_eq!(r.status, 200, "{r}");
    assert!(!dir.data().join("logs/tenants/acme").exists());
}

#[test]
fn a_follower_does_not_hold_up_a_stop() {
    let dir = TestDir::new();
    let mut node = Node::start(&dir.data(), Some("shutdown_grace = \"60s\"\n"));
    node.deploy_ok("logger", "logger", "");
    let mut stream = TcpStream::connect(node.addr()).unwrap();
    write!(
        stream,
        "GET /admin/v1/functions/logger/logs?follow=true HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let api = stream_into(stream);
    wait_for("the follow answer's head", || {
        api.lock()
            .unwrap()
            .starts_with("HTTP/1.1 200")
            .then_some(())
    });
    node.terminate();
    let status = node.wait_exit_within(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    // The answer ended properly: the last chunk was sent.
    assert!(
        api.lock().unwrap().ends_with("0\r\n\r\n"),
        "{:?}",
        api.lock().unwrap()
    );
}
