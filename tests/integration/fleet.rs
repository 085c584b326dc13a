//! Fleets (README "Running a fleet"): three nodes on one NATS JetStream server and one OCI
//! registry, all real processes on loopback. A change made through any node is acknowledged once
//! the engine has it, reaches every node, and is refused clearly when the engine or registry is
//! down, while every node keeps serving what it applied.

use crate::fleet_parts::*;
use crate::support::*;

/// One engine, one registry and three nodes.
struct Fleet {
    nats: Server,
    registry: Server,
    nodes: Vec<Node>,
}

fn fleet(tools: &Tools, dir: &TestDir, extra: &str) -> Fleet {
    fleet_as(tools, dir, extra, None)
}

/// [`fleet`], for nodes whose admin API needs the operator token.
fn fleet_as(tools: &Tools, dir: &TestDir, extra: &str, operator: Option<&str>) -> Fleet {
    let nats = nats(tools, dir);
    let registry = registry(tools, dir);
    let nodes = (1..=3)
        .map(|i| {
            let id = format!("edge-{i}");
            let section = FleetSection {
                nats: vec![nats.port],
                registry: registry.port,
                node_id: &id,
            };
            fleet_node(dir, section, extra)
        })
        .collect::<Vec<Node>>();
    wait_reporting_as(&nodes[0], 3, operator);
    Fleet {
        nats,
        registry,
        nodes,
    }
}

impl Fleet {
    fn all(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }
}

#[test]
fn a_change_through_any_node_reaches_every_node() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let f = fleet(&tools, &dir, "");
    let [a, b, c] = [&f.nodes[0], &f.nodes[1], &f.nodes[2]];

    // Acknowledged through edge-1, served by all, each naming itself.
    let v1 = version_id(&fixture("greet-v1"));
    let resp = a.deploy("greet", &fixture("greet-v1"), "wait=10s");
    assert_eq!(resp.status, 201, "{resp}");
    for (node, id) in [(a, "edge-1"), (b, "edge-2"), (c, "edge-3")] {
        // `?wait` answered only once every node serves it: no polling needed.
        let r = node.get("/fn/greet/");
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.header("x-tensorlet-version"), Some(v1.as_str()));
        assert_eq!(r.header("x-tensorlet-node"), Some(id));
    }

    // Another function through another node, a new version and a rollback through a third.
    b.deploy_ok("echo", "echo", "");
    let v2 = version_id(&fixture("greet-v2"));
    cli_ok(
        &c.cli(&[
            "deploy",
            "greet",
            fixture("greet-v2").to_str().unwrap(),
            "--wait=10s",
        ]),
        "deploy v2",
    );
    wait_serving(&f.all(), "greet", &v2);
    let out = a.cli(&["rollback", "greet", "--wait"]);
    assert_eq!(
        cli_ok(&out, "rollback").trim(),
        format!("{v1} is live for greet")
    );
    wait_serving(&f.all(), "greet", &v1);
    for n in f.all() {
        assert_eq!(n.get("/fn/echo/").status, 200);
        let versions = n.versions("greet");
        assert_eq!(
            versions["versions"].as_array().unwrap().len(),
            2,
            "{versions}"
        );
    }

    // The fleet as each node sees it: everyone at the engine's revision.
    let view = fleet_view(b);
    let engine = view["engine_revision"].as_u64().unwrap();
    assert!(engine >= 4, "{view}");
    assert_eq!(view["node_id"], "edge-2");
    assert_eq!(view["nodes"].as_array().unwrap().len(), 3, "{view}");
    wait_for("every node to report the engine's revision", || {
        let view = fleet_view(a);
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| {
                n["applied_revision"] == engine && n["lag"] == 0 && n["engine_connected"] == true
            })
            .then_some(())
    });
    let me = node_in(&fleet_view(c), "edge-3");
    assert_eq!(me["registry_reachable"], true, "{me}");
    assert!(me["blob_cache_bytes"].as_u64().unwrap() > 0, "{me}");
    let out = c.cli(&["fleet", "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&cli_ok(&out, "fleet status")).unwrap();
    assert_eq!(json["engine_revision"], engine);
    let text = cli_ok(&c.cli(&["fleet", "status"]), "fleet status");
    assert!(
        text.contains("edge-1") && text.contains(&format!("engine revision {engine}")),
        "{text}"
    );
    let metrics = c.metrics();
    assert_eq!(
        metric_value(&metrics, "tensorlet_fleet_applied_revision", &[]),
        Some(engine as f64)
    );
    assert_eq!(
        metric_value(&metrics, "tensorlet_fleet_engine_connected", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "tensorlet_fleet_lag", &[]),
        Some(0.0)
    );
    // edge-3 never had greet's bytes uploaded to it: it pulled them.
    assert!(metric_value(&metrics, "tensorlet_fleet_blob_fetches_total", &[]).unwrap() >= 2.0);
    assert!(metric_value(&metrics, "tensorlet_fleet_blob_fetch_bytes_total", &[]).unwrap() > 0.0);

    // A node joining later bootstraps from the engine and the registry.
    let late = fleet_node(
        &dir,
        FleetSection {
            nats: vec![f.nats.port],
            registry: f.registry.port,
            node_id: "edge-4",
        },
        "",
    );
    wait_serving(&[&late], "greet", &v1);
    assert_eq!(late.get("/fn/echo/").status, 200);
}

#[test]
fn racing_changes_never_lose_an_acknowledged_one() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let f = fleet(&tools, &dir, "");
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let echo = std::fs::read(fixture("echo")).unwrap();
    let mut acked = Vec::new();
    // Answered 503 (the engine did not confirm in time, as can happen on a loaded machine): the
    // outcome is unknown, and the message says so.
    let mut unknown = Vec::new();
    let mut conflicts = 0;
    for round in 0..12 {
        let names = [format!("a{round}"), format!("b{round}")];
        let answers = std::thread::scope(|s| {
            let ha = s.spawn(|| a.deploy_bytes(&names[0], echo.clone(), ""));
            let hb = s.spawn(|| b.deploy_bytes(&names[1], echo.clone(), ""));
            [ha.join().unwrap(), hb.join().unwrap()]
        });
        for (name, r) in names.iter().zip(answers) {
            match r.status {
                201 => acked.push(name.clone()),
                409 => {
                    // The loser is told, and nothing of its change was kept.
                    assert_error(&r, 409, "revision_conflict");
                    conflicts += 1;
                }
                503 => {
                    let body = assert_error(&r, 503, "engine_unavailable");
                    assert!(
                        body["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("may or may not"),
                        "{body}"
                    );
                    unknown.push(name.clone());
                }
                status => panic!("deploy of {name}: HTTP {status}: {}", r.text()),
            }
        }
    }
    eprintln!(
        "{} acknowledged, {conflicts} conflicts, {} unknown",
        acked.len(),
        unknown.len()
    );
    assert!(
        acked.len() + unknown.len() >= 12,
        "at least one deploy of each round wins"
    );
    for n in f.all() {
        wait_for("every acknowledged function on every node", || {
            let list = n.get("/admin/v1/functions").json();
            let names: Vec<String> = list["functions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_string())
                .collect();
            acked.iter().all(|a| names.contains(a)).then_some(names)
        });
        // What was refused was not kept either.
        let list = n.get("/admin/v1/functions").json();
        for f in list["functions"].as_array().unwrap() {
            let name = f["name"].as_str().unwrap().to_string();
            assert!(
                acked.contains(&name) || unknown.contains(&name),
                "{name} was refused but kept"
            );
        }
    }
}

#[test]
fn engine_down_changes_fail_with_503_nodes_keep_serving_and_catch_up() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let mut f = fleet(&tools, &dir, "");
    let v1 = version_id(&fixture("greet-v1"));
    f.nodes[0].deploy_ok("greet", "greet-v1", "");
    wait_serving(&f.all(), "greet", &v1);

    f.nats.kill();
    let r = f.nodes[1].deploy("greet", &fixture("greet-v2"), "");
    let body = assert_error(&r, 503, "engine_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine"),
        "{body}"
    );
    for n in f.all() {
        assert_eq!(serving(n, "greet").as_deref(), Some(v1.as_str()));
        wait_for("the node to notice the engine is gone", || {
            (n.metric("tensorlet_fleet_engine_connected", &[]) == Some(0.0)).then_some(())
        });
        let view = fleet_view(n);
        assert_eq!(view["engine_connected"], false, "{view}");
        assert!(view["engine_revision"].is_null(), "{view}");
    }

    // Back with the same store: changes work again and every node catches up by itself.
    f.nats.restart(&dir.path().join("nats-2.log"));
    let v2 = version_id(&fixture("greet-v2"));
    wait_for("the engine to take changes again", || {
        let r = f.nodes[1].deploy("greet", &fixture("greet-v2"), "");
        (r.status == 201).then_some(())
    });
    wait_serving(&f.all(), "greet", &v2);
}

#[test]
fn registry_down_rollbacks_work_and_new_versions_wait_with_a_reason() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let nats = nats(&tools, &dir);
    let mut registry = registry(&tools, &dir);
    // edge-3 reaches the registry through a proxy, to take the registry away from it alone.
    let link = Proxy::to(registry.port);
    let nodes: Vec<Node> = [
        ("edge-1", registry.port),
        ("edge-2", registry.port),
        ("edge-3", link.port),
    ]
    .into_iter()
    .map(|(id, port)| {
        fleet_node(
            &dir,
            FleetSection {
                nats: vec![nats.port],
                registry: port,
                node_id: id,
            },
            "",
        )
    })
    .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    wait_reporting(&nodes[0], 3);
    let (v1, v2) = (
        version_id(&fixture("greet-v1")),
        version_id(&fixture("greet-v2")),
    );
    nodes[0].deploy_ok("greet", "greet-v1", "");
    nodes[0].deploy_ok("greet", "greet-v2", "wait=10s");
    wait_serving(&all, "greet", &v2);

    // A new version edge-3 cannot fetch: the others serve it, edge-3 keeps v2 and says why.
    link.cut();
    nodes[1].deploy_ok("greet", "hello-plain", "");
    let v3 = version_id(&fixture("hello-plain"));
    wait_serving(&all[..2], "greet", &v3);
    let why = wait_for("edge-3 to report its lag", || {
        let me = node_in(&fleet_view(&nodes[0]), "edge-3");
        (me["lag"].as_u64() >= Some(1) && me["lag_reason"].is_string()).then_some(me)
    });
    assert!(
        why["lag_reason"].as_str().unwrap().contains("registry"),
        "{why}"
    );
    assert_eq!(why["registry_reachable"], false, "{why}");
    assert_eq!(serving(&nodes[2], "greet").as_deref(), Some(v2.as_str()));
    // `--wait` says which node lags, and fails.
    let r = nodes[0].post(
        "/admin/v1/functions/greet/rollback?wait=1s",
        format!("{{\"to\":\"{v3}\"}}").as_bytes(),
    );
    let body = assert_error(&r, 504, "fleet_lagging");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("edge-3"),
        "{body}"
    );
    let out = nodes[0].cli(&["rollback", "greet", "--to", &v3, "--wait=1s"]);
    assert!(!out.status.success());
    assert!(out_text(&out).1.contains("edge-3"), "{out:?}");

    // Heal: edge-3 catches up by itself.
    link.heal();
    wait_serving(&all, "greet", &v3);

    // The registry down for everyone: rollbacks to versions the nodes have still work...
    registry.kill();
    let r = nodes[2].rollback("greet", Some(&v1));
    assert_eq!(r.status, 200, "{r}");
    wait_serving(&all, "greet", &v1);
    // ...and a new version cannot be stored: refused, nothing changed.
    let r = nodes[1].deploy("fresh", &fixture("echo"), "");
    assert_error(&r, 503, "registry_unavailable");
    assert_eq!(nodes[0].get("/fn/fresh/").status, 404);
}

#[test]
fn tenants_tokens_and_keys_are_fleet_wide() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let operator = format!("tlo_{}", "f".repeat(40));
    let extra = format!("tenants = true\noperator_token = \"{operator}\"");
    let f = fleet_as(&tools, &dir, &extra, Some(&operator));
    let [a, b, c] = [&f.nodes[0], &f.nodes[1], &f.nodes[2]];
    let as_operator = |node: &Node, args: &[&str]| {
        let mut cmd = cli_command(args);
        cmd.arg("--node")
            .arg(node.url())
            .env("TENSORLET_TOKEN", &operator);
        run_cli(cmd)
    };
    let token = cli_ok(
        &as_operator(a, &["tenant", "create", "acme", "--wait=10s"]),
        "tenant create",
    );
    let token = token.trim();
    let as_tenant = |node: &Node, args: &[&str]| {
        let mut cmd = cli_command(args);
        cmd.arg("--node")
            .arg(node.url())
            .env("TENSORLET_TOKEN", token);
        run_cli(cmd)
    };
    // Made through three different nodes, used through a fourth path.
    cli_ok(
        &as_tenant(
            b,
            &[
                "deploy",
                "hello",
                fixture("hello-plain").to_str().unwrap(),
                "--wait=10s",
            ],
        ),
        "deploy",
    );
    let key = cli_ok(
        &as_tenant(c, &["key", "create", "--wait=10s"]),
        "key create",
    );
    let r = Request::get("/fn/acme/hello/")
        .header("authorization", &format!("Bearer {}", key.trim()))
        .send(a.addr());
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(Request::get("/fn/acme/hello/").send(a.addr()).status, 401);
    // A quota set through one node holds on another.
    cli_ok(
        &as_operator(
            c,
            &[
                "tenant",
                "update",
                "acme",
                "--max-functions",
                "1",
                "--wait=10s",
            ],
        ),
        "update",
    );
    let out = as_tenant(a, &["deploy", "second", fixture("echo").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out_text(&out).1.contains("quota_exceeded"), "{out:?}");
    // One audit log for the fleet: every node's calls, from any node.
    let out = as_operator(b, &["audit", "--json"]);
    let log: serde_json::Value = serde_json::from_str(&cli_ok(&out, "audit")).unwrap();
    let records = log["records"].as_array().unwrap();
    for (node, action) in [
        ("edge-1", "POST /admin/v1/tenants/acme"),
        ("edge-2", "POST /admin/v1/functions/hello/versions"),
        ("edge-3", "POST /admin/v1/keys"),
        ("edge-1", "POST /admin/v1/functions/second/versions"),
    ] {
        assert!(
            records
                .iter()
                .any(|r| r["node"] == node && r["action"] == action),
            "{node} {action} in {log}"
        );
    }
    let refused = records
        .iter()
        .find(|r| r["action"] == "POST /admin/v1/functions/second/versions")
        .unwrap();
    assert_eq!(refused["status"], 403, "{refused}");
}

#[test]
fn a_node_that_ran_alone_seeds_an_empty_fleet_or_takes_the_fleets_state() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let nats = nats(&tools, &dir);
    let registry = registry(&tools, &dir);
    let section = |id| FleetSection {
        nats: vec![nats.port],
        registry: registry.port,
        node_id: id,
    };
    let v1 = version_id(&fixture("greet-v1"));
    {
        let alone = Node::start(&dir.path().join("edge-1"), None);
        alone.deploy_ok("greet", "greet-v1", "");
    }
    // The fleet is empty: the node's state becomes the fleet's, blobs and all.
    let a = fleet_node(&dir, section("edge-1"), "");
    let b = fleet_node(&dir, section("edge-2"), "");
    wait_serving(&[&a, &b], "greet", &v1);

    // Another node ran alone, further along (more revisions) and with other functions: in a
    // fleet that has a state, it takes the fleet's.
    {
        let alone = Node::start(&dir.path().join("edge-3"), None);
        alone.deploy_ok("mine", "echo", "");
        alone.deploy_ok("greet", "greet-v2", "");
        alone.deploy_ok("greet", "hello-plain", "");
    }
    let c = fleet_node(&dir, section("edge-3"), "");
    wait_serving(&[&c], "greet", &v1);
    assert_eq!(c.get("/fn/mine/").status, 404);
    // And changes made through it count in the fleet's revisions.
    let r = c.deploy("greet", &fixture("greet-v2"), "wait=10s");
    assert_eq!(r.status, 201, "{r}");
    wait_serving(&[&a, &b, &c], "greet", &version_id(&fixture("greet-v2")));
}
