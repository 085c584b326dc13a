//! Outbound HTTPS from a guest: the node's own TLS (rustls on ring) with SNI, trusting the system's
//! roots plus `[outbound] ca_file`. The upstream is a real TLS server (tests/certs/tls_server.py,
//! Python's ssl module) with a certificate for `localhost` and `127.0.0.1` signed by the test CA
//! in tests/certs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::support::*;

/// A running tests/certs/tls_server.py, killed when dropped.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start() -> TlsServer {
        let certs = repo_root().join("tests/certs");
        let mut child = Command::new("python3")
            .arg(certs.join("tls_server.py"))
            .arg(certs.join("localhost.pem"))
            .arg(certs.join("localhost.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/certs/tls_server.py with python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("its stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("its first line");
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("tls_server.py said {line:?}, not `listening on PORT`"));
        TlsServer { child, port }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/fetch?url=URL` of the fetcher fixture deployed as `name`.
fn fetch(node: &Node, name: &str, url: &str) -> Response {
    let encoded: String = url
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    node.get(&format!("/fn/{name}/fetch?url={encoded}"))
}

#[test]
fn https_reaches_an_allowed_host_with_a_trusted_certificate_only() {
    let server = TlsServer::start();
    let port = server.port;
    let ca = repo_root().join("tests/certs/ca.pem");
    let dir = TestDir::new();
    let config = format!(
        "[outbound]\nallow_ips = [\"127.0.0.1/32\"]\nca_file = \"{}\"\n",
        ca.display()
    );
    let node = Node::start(&dir.data(), Some(&config));
    let allow = format!(
        "allow_outbound=https%3A%2F%2Flocalhost%3A{port}&allow_outbound=https%3A%2F%2F127.0.0.1%3A{port}"
    );
    node.deploy_ok("tls", "fetcher", &allow);

    // By name (SNI and the certificate's DNS name) and by address (its IP name).
    for host in ["localhost", "127.0.0.1"] {
        let r = fetch(&node, "tls", &format!("https://{host}:{port}/x?y=1"));
        assert_eq!(r.status, 200, "{host}: {r}");
        assert_eq!(r.text(), "status 200\nhello over tls /x?y=1", "{host}");
    }
    // Plain http to the TLS port is another pattern: not allowed.
    let r = fetch(&node, "tls", &format!("http://localhost:{port}/"));
    assert_eq!(
        (r.status, r.text()),
        (502, "error: HttpRequestDenied".into())
    );
    assert_eq!(
        node.metric(
            "tensorlet_outbound_requests_total",
            &[
                ("function", "tls"),
                ("host", &format!("https://localhost:{port}")),
                ("outcome", "response")
            ]
        ),
        Some(1.0)
    );

    // Without the test CA the same server is not trusted.
    let dir = TestDir::new();
    let node = Node::start(
        &dir.data(),
        Some("[outbound]\nallow_ips = [\"127.0.0.1/32\"]\n"),
    );
    node.deploy_ok("tls", "fetcher", &allow);
    let r = fetch(&node, "tls", &format!("https://localhost:{port}/"));
    assert_eq!(
        (r.status, r.text()),
        (502, "error: TlsCertificateError".into())
    );
    // A CA file that is not PEM stops the node at start, with the key's name.
    let bad = dir.write("bad-ca.pem", b"not a certificate");
    let mut cmd = Command::new(bin());
    let config = dir.write(
        "bad.toml",
        format!("[outbound]\nca_file = \"{}\"\n", bad.display()).as_bytes(),
    );
    let child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("other"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tensorlet serve");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let Ok(out) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        panic!("tensorlet serve started with a ca_file that holds no certificate");
    };
    let out = out.expect("wait for tensorlet serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("outbound.ca_file"), "{stderr}");
}
