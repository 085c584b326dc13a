//! The fleet's real parts for the fleet tests: nats-server (one, or a three-server cluster),
//! the CNCF distribution registry, a loopback TCP proxy that cuts or blackholes one node's link,
//! and fleet nodes. Every process binds 127.0.0.1 on a free port, keeps its files in a test
//! directory and is killed (by PID, through its `Child`) when its handle drops.
//!
//! The binaries come from `scripts/fetch-fleet-tools.sh`; without them a fleet test prints why
//! and passes, except under CI (`CI` set), where a missing binary fails it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Node, STARTUP_LIMIT, TestDir, cache_dir, wait_for};

/// The fleet's server binaries.
pub struct Tools {
    pub nats: PathBuf,
    pub registry: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// The binaries, or `None` (with the reason printed) when they are missing outside CI.
pub fn tools() -> Option<Tools> {
    let nats = std::env::var_os("TENSORLET_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| Some(cache_dir().join("fleet/venv/bin/nats-server")).filter(|p| p.is_file()))
        .or_else(|| on_path("nats-server"));
    let registry = on_path("docker-registry");
    match (nats, registry) {
        (Some(nats), Some(registry)) => Some(Tools { nats, registry }),
        _ if std::env::var_os("CI").is_some() => {
            panic!("nats-server or docker-registry is missing: run scripts/fetch-fleet-tools.sh")
        }
        _ => {
            eprintln!(
                "skipped: nats-server or docker-registry missing (scripts/fetch-fleet-tools.sh)"
            );
            None
        }
    }
}

/// A free port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before listening on {port}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} in time"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A server process, killed on drop.
pub struct Server {
    child: Option<Child>,
    cmd: Vec<String>,
    pub port: u16,
    what: String,
}

impl Server {
    fn spawn(cmd: Vec<String>, port: u16, what: &str, log: &Path) -> Server {
        let mut s = Server {
            child: None,
            cmd,
            port,
            what: what.to_string(),
        };
        s.start_logging(log);
        s
    }

    fn start_logging(&mut self, log: &Path) {
        let out = std::fs::File::create(log).expect("server log");
        let mut child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.what));
        wait_listening(self.port, &self.what, &mut child);
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same arguments (and so the same files and port).
    pub fn restart(&mut self, log: &Path) {
        self.kill();
        self.start_logging(log);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One JetStream server with `sync_interval: always` (what the README requires).
pub fn nats(tools: &Tools, dir: &TestDir) -> Server {
    let port = free_port();
    let store = dir.path().join("jetstream");
    let conf = dir.write(
        "nats.conf",
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n",
            store.display()
        )
        .as_bytes(),
    );
    let cmd = vec![
        tools.nats.display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ];
    Server::spawn(cmd, port, "nats-server", &dir.path().join("nats.log"))
}

/// Three clustered JetStream servers (routes on loopback); `(servers, client URLs)`.
pub fn nats_cluster(tools: &Tools, dir: &TestDir) -> Vec<Server> {
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_list: Vec<String> = routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    (0..3)
        .map(|i| {
            let store = dir.path().join(format!("js-{i}"));
            let conf = dir.write(
                &format!("nats-{i}.conf"),
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                     cluster {{ name: tl, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    clients[i],
                    store.display(),
                    routes[i],
                    route_list.join(", ")
                )
                .as_bytes(),
            );
            let cmd = vec![
                tools.nats.display().to_string(),
                "-c".into(),
                conf.display().to_string(),
            ];
            Server::spawn(
                cmd,
                clients[i],
                &format!("nats-server n{i}"),
                &dir.path().join(format!("nats-{i}.log")),
            )
        })
        .collect()
}

/// The CNCF distribution registry, filesystem storage in the test directory.
pub fn registry(tools: &Tools, dir: &TestDir) -> Server {
    let port = free_port();
    let conf = dir.write(
        "registry.yml",
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("registry").display()
        )
        .as_bytes(),
    );
    let cmd = vec![
        tools.registry.display().to_string(),
        "serve".into(),
        conf.display().to_string(),
    ];
    Server::spawn(
        cmd,
        port,
        "docker-registry",
        &dir.path().join("registry.log"),
    )
}

/// Where the registry keeps the bytes of blob `hex` (to damage it).
pub fn registry_blob_file(dir: &TestDir, hex: &str) -> PathBuf {
    dir.path()
        .join("registry/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

const FORWARD: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

/// A loopback TCP proxy in front of one server: forwards, or cuts the link (open connections
/// are reset and new ones closed at once), or blackholes it (connections stay open, nothing
/// gets through: the peer only notices by its pings).
pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn to(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, c) = (Arc::clone(&mode), Arc::clone(&conns));
        // The accept thread ends with the test process; each connection ends with its sockets.
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if m.load(Ordering::SeqCst) == CUT {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                {
                    let mut list = c.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                }
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Arc::clone(&m),
                );
                pump(server, client, Arc::clone(&m));
            }
        });
        Proxy { port, mode, conns }
    }

    fn close_all(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Resets every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        self.close_all();
    }

    /// Lets nothing through, silently.
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Forwards again (connections from the blackhole are closed: bytes were lost in them).
    pub fn heal(&self) {
        if self.mode.swap(FORWARD, Ordering::SeqCst) == BLACKHOLE {
            self.close_all();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, mode: Arc<AtomicU8>) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if mode.load(Ordering::SeqCst) != FORWARD {
                        continue; // blackholed: swallowed
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// The `[fleet]` section of a node.
pub struct FleetSection<'a> {
    pub nats: Vec<u16>,
    pub registry: u16,
    pub node_id: &'a str,
}

impl FleetSection<'_> {
    pub fn toml(&self) -> String {
        let nats: Vec<String> = self
            .nats
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect();
        format!(
            "[fleet]\nnats = [{}]\nregistry = \"http://127.0.0.1:{}\"\nnode_id = \"{}\"\nping_interval = \"300ms\"\n",
            nats.join(", "),
            self.registry,
            self.node_id
        )
    }
}

/// Starts a fleet node with `extra` (top-level keys) before its `[fleet]` section.
pub fn fleet_node(dir: &TestDir, fleet: FleetSection, extra: &str) -> Node {
    let data = dir.path().join(fleet.node_id);
    Node::start(&data, Some(&format!("{extra}\n{}", fleet.toml())))
}

/// The version a node serves `name` with (`x-tensorlet-version` of a 200), if any.
pub fn serving(node: &Node, name: &str) -> Option<String> {
    let r = node.get(&format!("/fn/{name}/"));
    (r.status == 200)
        .then(|| r.header("x-tensorlet-version").map(str::to_string))
        .flatten()
}

/// Waits until every node serves `name` at `version`.
#[track_caller]
pub fn wait_serving(nodes: &[&Node], name: &str, version: &str) {
    for n in nodes {
        wait_for(&format!("{} to serve {name} {version}", n.url()), || {
            (serving(n, name).as_deref() == Some(version)).then_some(())
        });
    }
}

/// `GET /admin/v1/fleet` of a node, asserted 200.
pub fn fleet_view(node: &Node) -> serde_json::Value {
    fleet_view_as(node, None)
}

/// `GET /admin/v1/fleet` with a token, asserted 200.
pub fn fleet_view_as(node: &Node, token: Option<&str>) -> serde_json::Value {
    let mut req = crate::support::Request::get("/admin/v1/fleet");
    if let Some(token) = token {
        req = req.header("authorization", &format!("Bearer {token}"));
    }
    let r = req.send(node.addr());
    assert_eq!(r.status, 200, "fleet status: {r}");
    r.json()
}

/// Waits until `node` sees `n` nodes reporting (each reaches the engine): `--wait` counts the
/// nodes that report.
#[track_caller]
pub fn wait_reporting(node: &Node, n: usize) {
    wait_reporting_as(node, n, None)
}

/// [`wait_reporting`] with a token.
#[track_caller]
pub fn wait_reporting_as(node: &Node, n: usize, token: Option<&str>) {
    wait_for(&format!("{n} nodes reporting"), || {
        let view = fleet_view_as(node, token);
        let live = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["engine_connected"] == true)
            .count();
        (live == n).then_some(())
    });
}

/// A node's view of one node in the fleet.
pub fn node_in(view: &serde_json::Value, id: &str) -> serde_json::Value {
    view["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node_id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no node {id} in {view}"))
}

/// The address of a server port.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Which link of the second node of a [`Pair`] goes through its proxy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Through {
    /// Its link to NATS.
    Engine,
    /// Its link to the registry.
    Registry,
}

/// An engine, a registry and two nodes: `a` (edge-1) reaches both directly, `b` reaches one of
/// them through `link`, a proxy the test can cut.
pub struct Pair {
    pub nats: Server,
    pub registry: Server,
    pub link: Proxy,
    pub a: Node,
    pub b: Node,
    b_id: &'static str,
    through: Through,
}

impl Pair {
    pub fn start(tools: &Tools, dir: &TestDir, b_id: &'static str, through: Through) -> Pair {
        let nats = nats(tools, dir);
        let registry = registry(tools, dir);
        let link = Proxy::to(match through {
            Through::Engine => nats.port,
            Through::Registry => registry.port,
        });
        let a = fleet_node(
            dir,
            FleetSection {
                nats: vec![nats.port],
                registry: registry.port,
                node_id: "edge-1",
            },
            "",
        );
        let b = b_node(dir, b_id, through, (nats.port, registry.port, link.port));
        wait_reporting(&a, 2);
        Pair {
            nats,
            registry,
            link,
            a,
            b,
            b_id,
            through,
        }
    }

    /// Starts `b` again, on the same data directory.
    pub fn restart_b(&self, dir: &TestDir) -> Node {
        let ports = (self.nats.port, self.registry.port, self.link.port);
        b_node(dir, self.b_id, self.through, ports)
    }
}

fn b_node(
    dir: &TestDir,
    id: &str,
    through: Through,
    (nats, registry, link): (u16, u16, u16),
) -> Node {
    let (nats, registry) = match through {
        Through::Engine => (link, registry),
        Through::Registry => (nats, link),
    };
    let section = FleetSection {
        nats: vec![nats],
        registry,
        node_id: id,
    };
    fleet_node(dir, section, "")
}
