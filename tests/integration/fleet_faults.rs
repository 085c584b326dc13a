//! Fleet faults (README "Running a fleet", the contract): a node cut off from the engine (reset
//! or silent blackhole), a node restarted while the engine is unreachable, blobs missing or
//! corrupt in the registry, records in the engine that are malformed or name what does not
//! exist, and a three-server NATS cluster losing its stream leader during a loop of deploys.

use crate::fleet_parts::*;
use crate::support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The engine's desired-state bucket, as another writer (or an attacker) sees it.
fn bucket(rt: &tokio::runtime::Runtime, port: u16) -> async_nats::jetstream::kv::Store {
    rt.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        async_nats::jetstream::new(client)
            .get_key_value("tensorlet")
            .await
            .unwrap()
    })
}

#[test]
fn a_cut_off_node_serves_stale_and_catches_up_after_a_reset_or_a_blackhole() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    // Bound whole: the engine and registry live as long as the pair.
    let pair = Pair::start(&tools, &dir, "edge-3", Through::Engine);
    let Pair { link, a, b, .. } = &pair;
    let c = b;
    let versions: Vec<String> = ["greet-v1", "greet-v2", "hello-plain"]
        .iter()
        .map(|f| version_id(&fixture(f)))
        .collect();
    a.deploy_ok("greet", "greet-v1", "wait=10s");
    wait_serving(&[a, c], "greet", &versions[0]);

    // Reset: edge-3 notices, keeps serving v1 while edge-1 serves v2, then catches up.
    link.cut();
    a.deploy_ok("greet", "greet-v2", "");
    wait_serving(&[a], "greet", &versions[1]);
    wait_for("edge-3 to notice the reset", || {
        (c.metric("tensorlet_fleet_engine_connected", &[]) == Some(0.0)).then_some(())
    });
    assert_eq!(serving(c, "greet").as_deref(), Some(versions[0].as_str()));
    link.heal();
    wait_serving(&[c], "greet", &versions[1]);

    // Blackhole: nothing arrives and nothing fails; the pings tell.
    link.blackhole();
    a.deploy_ok("greet", "hello-plain", "");
    wait_for("edge-3 to notice the blackhole", || {
        (c.metric("tensorlet_fleet_engine_connected", &[]) == Some(0.0)).then_some(())
    });
    assert_eq!(serving(c, "greet").as_deref(), Some(versions[1].as_str()));
    // Seen from the rest of the fleet, edge-3 stopped reporting.
    wait_for("edge-1 to see edge-3 gone quiet", || {
        let me = node_in(&fleet_view(a), "edge-3");
        (me["engine_connected"] == false).then_some(())
    });
    link.heal();
    wait_serving(&[c], "greet", &versions[2]);
}

#[test]
fn a_restarted_node_serves_from_disk_without_the_engine_then_resumes() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let mut pair = Pair::start(&tools, &dir, "edge-2", Through::Engine);
    let (v1, v2) = (
        version_id(&fixture("greet-v1")),
        version_id(&fixture("greet-v2")),
    );
    pair.a.deploy_ok("greet", "greet-v1", "wait=10s");
    wait_serving(&[&pair.b], "greet", &v1);

    pair.b.kill9();
    pair.a.deploy_ok("greet", "greet-v2", "");
    pair.link.cut();
    let b = pair.restart_b(&dir);
    // At once, from its own disk, with the engine unreachable.
    assert_eq!(serving(&b, "greet").as_deref(), Some(v1.as_str()));
    assert_eq!(b.metric("tensorlet_fleet_applied_revision", &[]), Some(1.0));
    pair.link.heal();
    wait_serving(&[&b], "greet", &v2);
}

#[test]
fn bad_blobs_and_bad_records_are_refused_and_reported() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let pair = Pair::start(&tools, &dir, "edge-2", Through::Registry);
    let Pair {
        nats, link, a, b, ..
    } = &pair;
    // Waits until edge-2 reports a lag whose reason says `expected`.
    let lag_reason = |what: &str, expected: &str| {
        wait_for(what, || {
            let me = node_in(&fleet_view(a), "edge-2");
            let why = me["lag_reason"].as_str()?;
            why.contains(expected).then(|| why.to_string())
        })
    };
    let (v1, v2) = (
        version_id(&fixture("greet-v1")),
        version_id(&fixture("greet-v2")),
    );
    a.deploy_ok("greet", "greet-v1", "wait=10s");
    wait_serving(&[b], "greet", &v1);

    // A corrupt blob: edge-2 never serves it, says why, and takes it once it is whole.
    link.cut();
    a.deploy_ok("greet", "greet-v2", "");
    let hex = sha256_hex(&std::fs::read(fixture("greet-v2")).unwrap());
    let file = registry_blob_file(&dir, &hex);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    std::fs::write(&file, &bad).unwrap();
    link.heal();
    lag_reason("edge-2 to refuse the corrupt blob", &hex);
    assert_eq!(serving(b, "greet").as_deref(), Some(v1.as_str()));
    assert!(
        b.metric("tensorlet_fleet_blob_fetch_failures_total", &[])
            .unwrap()
            >= 1.0
    );
    std::fs::write(&file, &good).unwrap();
    wait_serving(&[b], "greet", &v2);

    let rt = runtime();
    let kv = bucket(&rt, nats.port);
    let entry = rt.block_on(kv.entry("desired")).unwrap().unwrap();
    let good_record = entry.value.to_vec();

    // A record that does not parse: kept out, reported; the nodes serve on.
    rt.block_on(kv.put("desired", b"{\"format\":1,\"functions\":".to_vec().into()))
        .unwrap();
    lag_reason(
        "edge-2 to refuse a record that does not parse",
        "does not parse",
    );
    for n in [a, b] {
        assert_eq!(serving(n, "greet").as_deref(), Some(v2.as_str()));
    }

    // A record naming a blob that exists nowhere, or a path instead of a digest.
    let missing = "ab".repeat(32);
    let text = String::from_utf8(good_record.clone())
        .unwrap()
        .replace(&hex, &missing);
    rt.block_on(kv.put("desired", text.into_bytes().into()))
        .unwrap();
    lag_reason("edge-2 to refuse a blob nobody has", &missing);
    let text = String::from_utf8(good_record.clone())
        .unwrap()
        .replace(&hex, "../../../../etc/passwd");
    rt.block_on(kv.put("desired", text.into_bytes().into()))
        .unwrap();
    lag_reason("edge-2 to refuse a path for a digest", "not sha256 hex");
    for n in [a, b] {
        assert_eq!(serving(n, "greet").as_deref(), Some(v2.as_str()));
        assert!(n.stderr_text().find("panicked").is_none());
    }

    // A change made through a node writes over the refused record, from the state it serves.
    let r = b.rollback("greet", Some(&v1));
    assert_eq!(r.status, 200, "{r}");
    wait_serving(&[a, b], "greet", &v1);
}

#[test]
fn acknowledged_deploys_survive_killing_the_stream_leader() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let mut servers = nats_cluster(&tools, &dir);
    let registry = registry(&tools, &dir);
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let section = |id| FleetSection {
        nats: ports.clone(),
        registry: registry.port,
        node_id: id,
    };
    let a = fleet_node(&dir, section("edge-1"), "");
    let b = fleet_node(&dir, section("edge-2"), "");
    let echo = std::fs::read(fixture("echo")).unwrap();
    let mut acked = Vec::new();
    let deploy = |name: &str, acked: &mut Vec<String>| {
        let r = a.deploy_bytes(name, echo.clone(), "");
        match r.status {
            201 => acked.push(name.to_string()),
            // Refused (the engine is electing, or the node was behind): not acknowledged.
            503 | 409 => {}
            _ => panic!("deploy {name}: {r}"),
        }
        r.status
    };
    for i in 0..5 {
        assert_eq!(deploy(&format!("f{i}"), &mut acked), 201);
    }
    // The bucket is replicated three times; kill whichever server leads its stream.
    let rt = runtime();
    let leader = rt.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{}", ports[0]))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("KV_tensorlet").await.unwrap();
        let info = stream.info().await.unwrap();
        let cluster = info.cluster.clone().unwrap();
        assert_eq!(info.config.num_replicas, 3, "{info:?}");
        cluster.leader.unwrap()
    });
    let index: usize = leader.trim_start_matches('n').parse().unwrap();
    servers[index].kill();
    // Deploys go on through the election; writes resume.
    let resumed = std::time::Instant::now();
    let mut after = 0;
    let mut i = 5;
    while after < 5 {
        assert!(
            resumed.elapsed() < std::time::Duration::from_secs(60),
            "writes did not resume"
        );
        if deploy(&format!("f{i}"), &mut acked) == 201 {
            after += 1;
        }
        i += 1;
    }
    // Every acknowledged deploy is on every node.
    for n in [&a, &b] {
        wait_for("every acknowledged deploy everywhere", || {
            let list = n.get("/admin/v1/functions").json();
            let names: Vec<&str> = list["functions"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f["name"].as_str())
                .collect();
            acked
                .iter()
                .all(|f| names.contains(&f.as_str()))
                .then_some(())
        });
    }
}
