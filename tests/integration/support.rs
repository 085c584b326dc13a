//! Shared test support: a handle on a running `tensorlet serve` process, a tiny blocking HTTP/1.1
//! client over `std::net::TcpStream`, the guest fixture builder and assertion helpers.
//!
//! Everything here is synchronous and bounded: every wait has a deadline, and waiting for a state
//! means polling something the node exposes (its stdout, `/metrics`, its HTTP API).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long the node may take to print its `listening on` line.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// Default per-request limit of the test client.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(60);
/// How long a CLI command may run.
pub const CLI_LIMIT: Duration = Duration::from_secs(60);
/// How long we wait for an observable state (a metric, a log line) before giving up.
pub const STATE_LIMIT: Duration = Duration::from_secs(15);

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

/// An environment variable set on every node process; guests must never see it.
pub const HOST_SECRET_VAR: &str = "TENSORLET_TEST_HOST_SECRET";

// ---------------------------------------------------------------------------------------------
// Paths, temp dirs
// ---------------------------------------------------------------------------------------------

/// The repository root (the host crate lives in `<root>/host`).
/// The ONNX Runtime library for nodes under test: `ORT_DYLIB_PATH`, else where
/// `scripts/fetch-onnxruntime.sh` puts it. Tests that need it are `#[ignore]`d when it is
/// missing: host/build.rs looks for it the same way and sets `cfg(onnxruntime)`.
pub fn onnxruntime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let fetched = cache_dir().join("onnxruntime/libonnxruntime.so.1.31.1");
    fetched.exists().then_some(fetched)
}

/// Where the fetch scripts put ONNX Runtime and the models: `TENSORLET_CACHE_DIR`, else the
/// repository's `.cache` (the rule host/build.rs follows too).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("TENSORLET_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join(".cache"),
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host crate has a parent directory")
        .to_path_buf()
}

/// The `tensorlet` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tensorlet")
}

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under `$TMPDIR/tensorlet-tests/`, removed on drop unless the test failed
/// (then it is kept for inspection and its path is printed).
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join("tensorlet-tests").join(format!(
            "{}-{}",
            std::process::id(),
            n
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node's data directory (created by the node itself).
    pub fn data(&self) -> PathBuf {
        self.path.join("data")
    }

    /// Writes `contents` to a file in this directory and returns its path.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write test file");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test dir kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// `cargo build --release --target wasm32-wasip2` of a guest workspace into `target_dir`, without
/// the outer build's flags (they are for the host target).
fn wasm_build(manifest: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(manifest)
    .arg("--target-dir")
    .arg(target_dir)
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("RUSTFLAGS");
    cmd
}

static FIXTURES: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn build_fixtures() -> Result<PathBuf, String> {
    let root = repo_root();
    let manifest = root.join("tests/fixtures/Cargo.toml");
    let target_dir = root.join("target/wasm");
    let out = wasm_build(&manifest, &target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run cargo to build the guest fixtures: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("may not be installed")
            || stderr.contains("can't find crate for `core`")
            || stderr.contains("can't find crate for `std`")
        {
            return Err(
                "the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`"
                    .to_string(),
            );
        }
        return Err(format!(
            "building the guest fixtures failed ({}):\n{stderr}",
            out.status
        ));
    }
    Ok(target_dir.join("wasm32-wasip2/release"))
}

/// The path of a built guest fixture (builds all fixtures once per test process).
///
/// cdylib fixtures are `<name with '-' replaced by '_'>.wasm`; the command-style fixtures
/// `not-handler` and `unknown-import` keep their hyphens.
pub fn fixture(name: &str) -> PathBuf {
    let dir = match FIXTURES.get_or_init(build_fixtures) {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let file = match name {
        "not-handler" | "unknown-import" => format!("{name}.wasm"),
        _ => format!("{}.wasm", name.replace('-', "_")),
    };
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "fixture {name} was not built: {} is missing",
        path.display()
    );
    path
}

/// The path of a built example (`examples/NAME`), built on first use. Examples that are their own
/// workspace (`[workspace]` in their Cargo.toml) are built from their own manifest.
pub fn example(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_build_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = repo_root();
    let own = root.join("examples").join(name).join("Cargo.toml");
    let manifest = match std::fs::read_to_string(&own) {
        Ok(text) if text.lines().any(|l| l.trim() == "[workspace]") => own,
        _ => root.join("examples/Cargo.toml"),
    };
    let status = wasm_build(&manifest, &root.join("target/wasm"))
        .status()
        .expect("run cargo for the examples");
    assert!(status.success(), "building example {name} failed");
    let path = root.join(format!(
        "target/wasm/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    ));
    assert!(
        path.is_file(),
        "example {name} was not built: {} is missing",
        path.display()
    );
    path
}

/// A real model fetched by `scripts/fetch-models.sh` (`models/FILE` in [`cache_dir`]). Tests that
/// use one are `#[ignore]`d unless host/build.rs found them all (`cfg(example_models)`).
pub fn real_model(file: &str) -> PathBuf {
    let path = cache_dir().join("models").join(file);
    assert!(
        path.is_file(),
        "{} is missing although it was there at build time: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

/// Declares a test that needs ONNX Runtime: `#[ignore]`d, with the reason, when host/build.rs did
/// not find it (`cfg(onnxruntime)`). With `example_models:` first, the test needs the examples'
/// real models too ([`real_model`], `cfg(example_models)`).
///
/// ```ignore
/// nn_test! {
///     /// What it checks.
///     fn a_guest_runs_a_model() { ... }
/// }
/// ```
macro_rules! nn_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        #[cfg_attr(
            not(onnxruntime),
            ignore = "needs ONNX Runtime: run scripts/fetch-onnxruntime.sh"
        )]
        fn $name() $body
    };
    (example_models: $(#[$meta:meta])* fn $name:ident() $body:block) => {
        $crate::support::nn_test! {
            $(#[$meta])*
            #[cfg_attr(
                all(onnxruntime, not(example_models)),
                ignore = "needs the examples' models: run scripts/fetch-models.sh"
            )]
            fn $name() $body
        }
    };
}
pub(crate) use nn_test;

/// Starts a node on `dir` (with `config`, as [`Node::start`]) and adds the real model `file` (see
/// [`real_model`]) to it as `name`.
pub fn start_with_real_model(dir: &TestDir, config: Option<&str>, name: &str, file: &str) -> Node {
    let model = real_model(file);
    let node = Node::start(&dir.data(), config);
    add_model_file(&node, name, &model);
    node
}

/// Adds a model file (any path) to the node under `name`; asserts success.
pub fn add_model_file(node: &Node, name: &str, path: &Path) {
    let bytes = std::fs::read(path).expect("read model");
    let r = Request::new("POST", &format!("/admin/v1/models/{name}/versions"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send(node.addr());
    assert!(r.status == 201 || r.status == 200, "model add {name}: {r}");
}

/// The fields of a function version record (`VersionView` in host/src/api.rs), as the admin API
/// documents them.
pub const VERSION_FIELDS: &[&str] = &[
    "version",
    "digest",
    "created_at",
    "size",
    "live",
    "memory",
    "timeout_ms",
    "max_concurrency",
    "max_request_body",
    "max_response_body",
    "env",
    "models",
    "public",
];

/// The fixtures `greet-v1` and `greet-v2` (they answer `v1` and `v2`), each with its version id.
pub fn greet_fixtures() -> [(PathBuf, String); 2] {
    ["greet-v1", "greet-v2"].map(|name| {
        let path = fixture(name);
        let id = version_id(&path);
        (path, id)
    })
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("read fixture")
}

/// Full lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The version id the node must assign to a component file: first 12 hex digits of its sha256.
pub fn version_id(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read component");
    sha256_hex(&bytes)[..12].to_string()
}

/// The version ids of a `versions` answer, newest first.
pub fn version_ids(versions: &Value) -> Vec<String> {
    versions["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions array in {versions}"))
        .iter()
        .map(|v| v["version"].as_str().expect("version id").to_string())
        .collect()
}

/// The head of one HTTP request read from a test upstream's connection (up to the blank line,
/// at most 64 KiB, 10 s).
pub fn read_request_head(conn: &mut TcpStream) -> String {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let (mut raw, mut buf) = (Vec::new(), [0u8; 4096]);
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") && raw.len() < 64 * KIB {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// An upstream on 127.0.0.1 that answers one request with 200 and `body` (Content-Length), then
/// closes; joining it gives the request's head.
pub fn one_response_upstream(body: Vec<u8>) -> (SocketAddr, JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let head = read_request_head(&mut conn);
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(raw.as_bytes());
        let _ = conn.write_all(&body);
        let _ = conn.shutdown(Shutdown::Write);
        head
    });
    (addr, server)
}

/// Percent-encodes everything but unreserved characters (for URLs in query strings).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The node process
// ---------------------------------------------------------------------------------------------

/// A running `tensorlet serve`. Killed on drop; its output is printed if the test panics.
pub struct Node {
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

/// Spawns a thread that copies `src` line by line into `buf` and, while `tx` is alive, sends
/// each line over it.
fn drain<R: Read + Send + 'static>(
    src: R,
    buf: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    buf.lock().unwrap().push_str(&text);
                    if let Some(tx) = &tx {
                        let _ = tx.send(text);
                    }
                }
            }
        }
    })
}

impl Node {
    /// Starts `tensorlet serve --listen 127.0.0.1:0 --data-dir DATA_DIR [--config FILE]` and
    /// waits for its `listening on http://ADDR` line. `extra_config_toml` is written to
    /// `DATA_DIR.toml` (next to the data dir, not in it).
    pub fn start(data_dir: &Path, extra_config_toml: Option<&str>) -> Node {
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir);
        if let Some(toml) = extra_config_toml {
            let config = data_dir.with_extension("toml");
            std::fs::write(&config, toml).expect("write node config");
            cmd.arg("--config").arg(config);
        }
        Node::spawn(cmd, data_dir)
    }

    /// Like [`Node::start`], but under `ulimit -v` of `limit_kib`, which leaves too little address
    /// space for the pooling allocator's reservation.
    pub fn start_with_address_space_limit(data_dir: &Path, limit_kib: u64) -> Node {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -v {limit_kib} && exec \"$0\" \"$@\""))
            .arg(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        Node::spawn(cmd, data_dir)
    }

    fn spawn(mut cmd: Command, data_dir: &Path) -> Node {
        if let Some(ort) = onnxruntime() {
            cmd.env("ORT_DYLIB_PATH", ort);
        }
        cmd.env(HOST_SECRET_VAR, "host-only-value")
            .env_remove("TENSORLET_NODE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tensorlet serve");

        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let out_reader = drain(child.stdout.take().unwrap(), stdout.clone(), Some(tx));
        let err_reader = drain(child.stderr.take().unwrap(), stderr.clone(), None);

        let deadline = Instant::now() + STARTUP_LIMIT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(pos) = line.find("listening on http://") {
                        let rest = &line[pos + "listening on http://".len()..];
                        let text = rest.split_whitespace().next().unwrap_or("");
                        break text
                            .parse::<SocketAddr>()
                            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process exited (or closed stdout) before listening.
                    let status = child.wait().expect("wait for tensorlet");
                    let _ = err_reader.join();
                    panic!(
                        "tensorlet serve exited ({status}) before printing `listening on`\n\
                         --- stdout ---\n{}\n--- stderr ---\n{}",
                        stdout.lock().unwrap(),
                        stderr.lock().unwrap()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = err_reader.join();
                    panic!(
                        "tensorlet serve did not print `listening on` within {STARTUP_LIMIT:?}\n\
                         --- stdout ---\n{}\n--- stderr ---\n{}",
                        stdout.lock().unwrap(),
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        // Keep the channel's receiver alive no longer than needed: dropping it makes the stdout
        // thread's sends fail harmlessly while it keeps draining into the buffer.
        drop(rx);

        Node {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            exit: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What the node wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL (`Child::kill` is SIGKILL on unix), then reap the process.
    pub fn kill9(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = Some(self.child.wait().expect("wait after SIGKILL"));
        }
    }

    /// Sends SIGTERM (via `kill -TERM <pid>`); does not wait.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(Duration::from_secs(60))
    }

    pub fn wait_exit_within(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                panic!("tensorlet did not exit within {limit:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `tensorlet` CLI command against this node (`--node URL` appended).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg("--node").arg(self.url());
        run_cli(cmd)
    }

    /// `tensorlet deploy NAME WASM ARGS...` against this node; asserts that it succeeded and
    /// printed exactly the new version's id (the component's, without settings), and returns
    /// its output.
    #[track_caller]
    pub fn cli_deploy(&self, name: &str, wasm: &Path, args: &[&str]) -> Output {
        let args = [&["deploy", name, wasm.to_str().unwrap()], args].concat();
        let out = self.cli(&args);
        let printed = cli_ok(&out, &args.join(" "));
        if args.len() == 3 {
            // A plain deploy's version is named by its component's digest.
            assert_eq!(printed, format!("{}\n", version_id(wasm)));
        } else {
            // With settings, the id covers them: it is the version now live.
            let live = self.versions(name)["live"].as_str().unwrap().to_string();
            assert_eq!(printed, format!("{live}\n"));
        }
        out
    }

    // --- HTTP conveniences --------------------------------------------------------------------

    pub fn get(&self, path: &str) -> Response {
        Request::new("GET", path).send(self.addr)
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Response {
        Request::new("POST", path)
            .body(body.to_vec())
            .send(self.addr)
    }

    pub fn delete(&self, path: &str) -> Response {
        Request::new("DELETE", path).send(self.addr)
    }

    pub fn send(&self, req: Request) -> Response {
        req.send(self.addr)
    }

    /// `POST /admin/v1/functions/{name}/versions?{query}` with the bytes of `wasm`.
    pub fn deploy(&self, name: &str, wasm: &Path, query: &str) -> Response {
        let bytes = std::fs::read(wasm).expect("read component");
        self.deploy_bytes(name, bytes, query)
    }

    pub fn deploy_bytes(&self, name: &str, bytes: Vec<u8>, query: &str) -> Response {
        let mut path = format!("/admin/v1/functions/{name}/versions");
        if !query.is_empty() {
            path.push('?');
            path.push_str(query);
        }
        Request::new("POST", &path)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send(self.addr)
    }

    /// Adds a model from `tests/models/FILE` under `name`.
    pub fn add_model(&self, name: &str, file: &str) -> Response {
        let bytes =
            std::fs::read(repo_root().join("tests/models").join(file)).expect("read test model");
        Request::new("POST", &format!("/admin/v1/models/{name}/versions"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send(self.addr)
    }

    /// Deploys a fixture and asserts 201 or 200; returns the version record.
    pub fn deploy_ok(&self, name: &str, fixture_name: &str, query: &str) -> Value {
        self.deploy_file_ok(name, &fixture(fixture_name), query)
    }

    /// Deploys the component `wasm` (a fixture, an [`example`]) and asserts 201 or 200; returns
    /// the version record.
    pub fn deploy_file_ok(&self, name: &str, wasm: &Path, query: &str) -> Value {
        let resp = self.deploy(name, wasm, query);
        assert!(
            resp.status == 201 || resp.status == 200,
            "deploy of {} as {name} (query {query:?}) failed: {resp}",
            wasm.display()
        );
        resp.json()
    }

    /// `GET /admin/v1/functions/{name}/versions`, asserted 200.
    pub fn versions(&self, name: &str) -> Value {
        let resp = self.get(&format!("/admin/v1/functions/{name}/versions"));
        assert_eq!(resp.status, 200, "versions of {name}: {resp}");
        resp.json()
    }

    /// `POST /admin/v1/functions/{name}/rollback` with `{"to": to}` or an empty body.
    pub fn rollback(&self, name: &str, to: Option<&str>) -> Response {
        let body = match to {
            Some(v) => serde_json::json!({ "to": v }).to_string().into_bytes(),
            None => Vec::new(),
        };
        let mut req = Request::new("POST", &format!("/admin/v1/functions/{name}/rollback"));
        if to.is_some() {
            req = req.header("content-type", "application/json");
        }
        req.body(body).send(self.addr)
    }

    pub fn metrics(&self) -> String {
        let resp = self.get("/metrics");
        assert_eq!(resp.status, 200, "/metrics: {resp}");
        resp.text()
    }

    /// The value of the sample `name{labels...}` in `/metrics` now (see [`metric_value`]).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// Polls `/metrics` until the sample `name{labels...}` (see [`metric_value`]) is there and its
    /// value passes `ok`, at most `STATE_LIMIT`; panics with `what`. Returns the value.
    pub fn wait_for_metric(
        &self,
        what: &str,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        wait_for(what, || self.metric(name, labels).filter(|&v| ok(v)))
    }

    /// Polls `/metrics` until `tensorlet_requests_in_flight{function="NAME"}` equals `n`.
    pub fn wait_in_flight(&self, function: &str, n: u64) {
        let deadline = Instant::now() + STATE_LIMIT;
        loop {
            let text = self.metrics();
            let v = metric_value(
                &text,
                "tensorlet_requests_in_flight",
                &[("function", function)],
            );
            // A gauge at 0 may also be absent.
            if v == Some(n as f64) || (n == 0 && v.is_none()) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tensorlet_requests_in_flight{{function=\"{function}\"}} never became {n} \
                     (last {v:?}); metrics:\n{text}"
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
        // The pipes close when the process is gone; the readers then finish.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if thread::panicking() {
            eprintln!(
                "--- tensorlet {} stdout ---\n{}\n--- tensorlet {} stderr ---\n{}\n--- end ---",
                self.addr,
                self.stdout.lock().unwrap(),
                self.addr,
                self.stderr.lock().unwrap()
            );
        }
    }
}

/// Runs a prepared CLI command with a bounded wait; returns its output.
pub fn run_cli(cmd: Command) -> Output {
    run_cli_within(cmd, CLI_LIMIT)
}

/// [`run_cli`] for a command that may take longer than [`CLI_LIMIT`] (`tensorlet build`).
pub fn run_cli_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn tensorlet CLI");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for tensorlet CLI"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("tensorlet CLI {cmd:?} did not finish within {limit:?}");
        }
    }
}

/// A CLI command with no `--node` (for `TENSORLET_NODE` tests); `TENSORLET_NODE` removed.
pub fn cli_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("TENSORLET_NODE");
    cmd
}

pub fn out_text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a CLI command exited 0 and returns its stdout.
#[track_caller]
pub fn cli_ok(out: &Output, what: &str) -> String {
    let (stdout, stderr) = out_text(out);
    assert!(
        out.status.success(),
        "`tensorlet {what}` failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    stdout
}

// ---------------------------------------------------------------------------------------------
// A tiny blocking HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self}"))
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(2000).collect();
        write!(
            f,
            "HTTP {} {:?} body ({} bytes): {shown}",
            self.status,
            self.headers,
            self.body.len()
        )
    }
}

/// Whatever arrived of a response that may have been cut off.
#[derive(Debug, Clone)]
pub struct Partial {
    /// `None` when not even the status line and headers arrived.
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    /// The (de-chunked) body bytes that arrived.
    pub body: Vec<u8>,
    /// The message was complete according to its framing (Content-Length, the last chunk, or a
    /// clean EOF for a close-delimited body).
    pub complete: bool,
    /// Why reading stopped early (I/O error, read timeout, byte limit), if it did.
    pub error: Option<String>,
    /// Time from sending the request until reading stopped.
    pub elapsed: Duration,
}

impl Partial {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone)]
pub enum Body {
    Empty,
    /// Sent with `Content-Length`.
    Bytes(Arc<Vec<u8>>),
    /// Sent with `Transfer-Encoding: chunked`, one chunk per element.
    Chunked(Arc<Vec<Vec<u8>>>),
}

/// One HTTP/1.1 request on a fresh connection with `Connection: close`.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Body,
    timeout: Duration,
    /// Stop reading after this many raw bytes (guards against endless responses).
    read_limit: usize,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Body::Empty,
            timeout: REQUEST_LIMIT,
            read_limit: 256 * MIB,
        }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = Body::Bytes(Arc::new(body));
        self
    }

    pub fn chunked(mut self, chunks: Vec<Vec<u8>>) -> Request {
        self.body = Body::Chunked(Arc::new(chunks));
        self
    }

    /// Read timeout of the socket and overall limit of the exchange.
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    pub fn read_limit(mut self, bytes: usize) -> Request {
        self.read_limit = bytes;
        self
    }

    /// Sends the request and returns the complete response; panics on anything else.
    #[track_caller]
    pub fn send(self, addr: SocketAddr) -> Response {
        let what = format!("{} {}", self.method, self.path);
        match self.try_send(addr) {
            Ok(r) => r,
            Err(e) => panic!("{what} on {addr}: {e}"),
        }
    }

    /// Sends the request; `Err` unless a complete response arrived.
    pub fn try_send(self, addr: SocketAddr) -> Result<Response, String> {
        let p = self.send_partial(addr);
        match (p.status, p.complete) {
            (Some(status), true) => Ok(Response {
                status,
                headers: p.headers,
                body: p.body,
            }),
            _ => Err(format!(
                "incomplete response (status {:?}, {} body bytes, error {:?}, after {:?})",
                p.status,
                p.body.len(),
                p.error,
                p.elapsed
            )),
        }
    }

    /// Sends the request and returns whatever arrived, complete or not.
    pub fn send_partial(self, addr: SocketAddr) -> Partial {
        let start = Instant::now();
        let fail = |error: String| Partial {
            status: None,
            headers: Vec::new(),
            body: Vec::new(),
            complete: false,
            error: Some(error),
            elapsed: start.elapsed(),
        };
        let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => s,
            Err(e) => return fail(format!("connect: {e}")),
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(self.timeout));
        let _ = stream.set_write_timeout(Some(self.timeout));

        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        match &self.body {
            Body::Empty => {
                if matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
                    head.push_str("Content-Length: 0\r\n");
                }
            }
            Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
            Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        head.push_str("\r\n");

        // Write on a separate thread so that a server answering early (413) is read at once,
        // even while it refuses to read the rest of a large body.
        let mut writer_stream = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => return fail(format!("clone stream: {e}")),
        };
        let body = self.body.clone();
        let writer = thread::spawn(move || -> std::io::Result<()> {
            writer_stream.write_all(head.as_bytes())?;
            match &body {
                Body::Empty => {}
                Body::Bytes(b) => writer_stream.write_all(b)?,
                Body::Chunked(chunks) => {
                    for c in chunks.iter().filter(|c| !c.is_empty()) {
                        writer_stream.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                        writer_stream.write_all(c)?;
                        writer_stream.write_all(b"\r\n")?;
                    }
                    writer_stream.write_all(b"0\r\n\r\n")?;
                }
            }
            writer_stream.flush()
        });

        let deadline = start + self.timeout;
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut reader = &stream;
        let mut read_error = None;
        loop {
            if let Some(done) = complete_length(&raw, &self.method) {
                raw.truncate(done);
                break;
            }
            if raw.len() >= self.read_limit {
                read_error = Some(format!("read limit of {} bytes reached", self.read_limit));
                break;
            }
            if Instant::now() >= deadline {
                read_error = Some(format!("no complete response within {:?}", self.timeout));
                break;
            }
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    read_error = Some(format!("read: {e}"));
                    break;
                }
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        let _ = writer.join();

        let mut p = parse_response(&raw, &self.method, read_error.is_none());
        p.error = read_error;
        p.elapsed = start.elapsed();
        p
    }
}

/// A keep-alive connection sending bodiless requests one after another.
pub struct KeepAlive {
    stream: TcpStream,
    addr: SocketAddr,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(REQUEST_LIMIT)).unwrap();
        KeepAlive { stream, addr }
    }

    /// Sends `method path` and reads its response whole.
    #[track_caller]
    pub fn send(&mut self, method: &str, path: &str) -> Response {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.stream.write_all(head.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let done = loop {
            if let Some(done) = complete_length(&raw, method) {
                break done;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("connection closed after {} bytes", raw.len()),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read: {e}"),
            }
        };
        assert_eq!(done, raw.len(), "the node answered more than was asked");
        let p = parse_response(&raw, method, true);
        Response {
            status: p.status.unwrap(),
            headers: p.headers,
            body: p.body,
        }
    }
}

/// If `raw` holds a complete response whose end is known from its framing (Content-Length,
/// chunked, no body), the length of that response.
fn complete_length(raw: &[u8], method: &str) -> Option<usize> {
    let head_end = find(raw, b"\r\n\r\n")? + 4;
    let (status, headers) = parse_head(&raw[..head_end])?;
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Some(head_end);
    }
    if is_chunked(&headers) {
        let (_, consumed, done) = decode_chunked(&raw[head_end..]);
        return done.then_some(head_end + consumed);
    }
    let len: usize = header_of(&headers, "content-length")?.trim().parse().ok()?;
    (raw.len() >= head_end + len).then_some(head_end + len)
}

fn parse_response(raw: &[u8], method: &str, clean_eof: bool) -> Partial {
    let mut p = Partial {
        status: None,
        headers: Vec::new(),
        body: Vec::new(),
        complete: false,
        error: None,
        elapsed: Duration::ZERO,
    };
    let Some(pos) = find(raw, b"\r\n\r\n") else {
        return p;
    };
    let head_end = pos + 4;
    let Some((status, headers)) = parse_head(&raw[..head_end]) else {
        return p;
    };
    let rest = &raw[head_end..];
    p.status = Some(status);
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        p.complete = true;
    } else if is_chunked(&headers) {
        let (body, _, done) = decode_chunked(rest);
        p.body = body;
        p.complete = done;
    } else if let Some(len) =
        header_of(&headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok())
    {
        p.body = rest[..rest.len().min(len)].to_vec();
        p.complete = rest.len() >= len;
    } else {
        p.body = rest.to_vec();
        p.complete = clean_eof;
    }
    p.headers = headers;
    p
}

fn parse_head(head: &[u8]) -> Option<(u16, Vec<(String, String)>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Some((status, headers))
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    header_of(headers, "transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
}

/// Decodes as much of a chunked body as is present: (body, bytes consumed, saw the last chunk
/// and the end of the trailers).
fn decode_chunked(mut data: &[u8]) -> (Vec<u8>, usize, bool) {
    let total = data.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return (body, total - data.len(), false);
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            return (body, total - data.len(), false);
        };
        let after_line = &data[line_end + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            let mut t = after_line;
            loop {
                let Some(e) = find(t, b"\r\n") else {
                    return (body, total - data.len(), false);
                };
                if e == 0 {
                    let consumed = total - t.len() + 2;
                    return (body, consumed, true);
                }
                t = &t[e + 2..];
            }
        }
        if after_line.len() < size {
            body.extend_from_slice(after_line);
            return (body, total, false);
        }
        body.extend_from_slice(&after_line[..size]);
        if after_line.len() < size + 2 {
            return (body, total, false);
        }
        data = &after_line[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Assertions and metric parsing
// ---------------------------------------------------------------------------------------------

/// Asserts the README's error shape: `{"error": {"code", "message"}, "request_id"}` with the
/// given status and code, a non-empty message and a non-empty request id. Returns the JSON.
#[track_caller]
pub fn assert_error(resp: &Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status, status, "expected {status} {code}, got {resp}");
    let v = resp.json();
    assert_eq!(v["error"]["code"], code, "error code: {resp}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        !msg.trim().is_empty(),
        "error.message must be a non-empty string: {resp}"
    );
    let rid = v["request_id"].as_str().unwrap_or("");
    assert!(
        !rid.is_empty(),
        "request_id must be a non-empty string: {resp}"
    );
    v
}

/// The error message of an error response.
pub fn error_message(resp: &Response) -> String {
    resp.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The value of the sample `name{labels...}` in Prometheus text, matching all `labels` given
/// (other labels on the sample are allowed).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let found: BTreeMap<&str, &str> = label_text
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim(), v.trim().trim_matches('"')))
            })
            .collect();
        if labels.iter().all(|(k, v)| found.get(k) == Some(v)) {
            return value.trim().parse().ok();
        }
    }
    None
}

/// Polls `probe` until it returns `Some`, at most `STATE_LIMIT`; panics with `what`.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + STATE_LIMIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {STATE_LIMIT:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The node's stdout
// ---------------------------------------------------------------------------------------------

impl Node {
    /// What the node wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
}

/// The operator token a node with tenants wrote at its first start.
pub fn operator_token(node: &Node) -> String {
    std::fs::read_to_string(node.data_dir().join("operator-token"))
        .expect("the node writes its operator token at first start")
        .trim()
        .to_string()
}

/// A request sent with `Authorization: Bearer {token}`.
pub fn as_(token: &str, method: &str, path: &str) -> Request {
    Request::new(method, path).header("authorization", &format!("Bearer {token}"))
}

/// Creates tenant `name` with `quotas` as the operator `op`; returns its token.
pub fn create_tenant(node: &Node, op: &str, name: &str, quotas: serde_json::Value) -> String {
    let r = node.send(
        as_(op, "POST", &format!("/admin/v1/tenants/{name}")).body(quotas.to_string().into_bytes()),
    );
    assert_eq!(r.status, 201, "tenant create {name}: {r}");
    let token = r.json()["token"].as_str().unwrap().to_string();
    assert!(token.starts_with(&format!("tlt_{name}_")), "{token}");
    token
}

/// A new invoke key of the tenant whose token is `token`.
pub fn new_key(node: &Node, token: &str) -> String {
    let r = node.send(as_(token, "POST", "/admin/v1/keys"));
    assert_eq!(r.status, 201, "key create: {r}");
    r.json()["key"].as_str().unwrap().to_string()
}
