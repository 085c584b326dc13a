//! A rollout in a three-node fleet (README "Rollouts"): every node serves the split and publishes
//! its numbers; one node (the lowest id reporting) decides on everyone's numbers, once; the
//! decision reaches every node like any other change.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet_parts::*;
use crate::support::*;

#[test]
fn a_rollout_in_a_fleet_is_decided_once_on_every_nodes_numbers() {
    let Some(tools) = tools() else { return };
    let dir = TestDir::new();
    let nats = nats(&tools, &dir);
    let registry = registry(&tools, &dir);
    let nodes: Vec<Node> = ["edge-1", "edge-2", "edge-3"]
        .into_iter()
        .map(|id| {
            let section = FleetSection {
                nats: vec![nats.port],
                registry: registry.port,
                node_id: id,
            };
            fleet_node(&dir, section, "")
        })
        .collect();
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    wait_reporting(a, 3);
    let stable = a.deploy_ok("f", "greet-v1", "wait=10s")["version"]
        .as_str()
        .unwrap()
        .to_string();
    let staged = b.deploy("f", &fixture("flaky"), "stage=true&wait=10s");
    assert_eq!(staged.status, 201, "{staged}");
    let candidate = staged.json()["version"].as_str().unwrap().to_string();
    let r = Request::new("POST", "/admin/v1/functions/f/rollout?wait=10s")
        .body(
            json!({"candidate": candidate, "canary": 50, "steps": [50, 100],
                   "interval": "1h", "min_requests": 30})
            .to_string()
            .into_bytes(),
        )
        .send(c.addr());
    assert_eq!(r.status, 201, "{r}");

    // Traffic through edge-2 and edge-3 only: edge-1, which decides, serves none of it, so only
    // the others' published numbers can roll the candidate back.
    let status = |n: &Node| n.get("/admin/v1/functions/f/rollout").json();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while status(a)["state"] != "rolled_back" {
        assert!(Instant::now() < deadline, "no rollback after {i} requests");
        for n in [b, c] {
            n.get(&format!("/fn/f/{i}"));
        }
        i += 1;
    }
    let view: Value = status(a);
    let rollbacks = view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["decision"] == "rollback")
        .count();
    assert_eq!(rollbacks, 1, "{view}");
    let decided = |n: &Node| {
        n.metric(
            "tensorlet_rollout_decisions_total",
            &[("function", "f"), ("decision", "rollback")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!((decided(a), decided(b), decided(c)), (1.0, 0.0, 0.0));
    // Applied everywhere: stable takes all traffic on every node.
    for n in [a, b, c] {
        wait_for("the rollback on every node", || {
            (status(n)["state"] == "rolled_back").then_some(())
        });
        for j in 0..20 {
            let r = n.get(&format!("/fn/f/{j}"));
            assert_eq!(r.header("x-tensorlet-version"), Some(stable.as_str()));
        }
    }
}
