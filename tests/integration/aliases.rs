//! Aliases and direct calls (README "Versions and aliases"): any retained version, or an alias
//! naming one, can be called at `/fn/{name}@{version|alias}/...` before (or without) taking
//! traffic; aliases keep their versions from being pruned.

use crate::support::*;

#[test]
fn versions_and_aliases_can_be_called_directly() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some("max_versions = 2"));
    let [(_, v1), (_, v2)] = greet_fixtures();
    node.deploy_ok("greet", "greet-v1", "");
    node.deploy_ok("greet", "greet-v2", "");

    let out = node.cli(&["alias", "set", "greet", "stable", &v1]);
    let text = cli_ok(&out, "alias set");
    assert!(text.contains("stable") && text.contains(&v1), "{text}");
    let list = node.get("/admin/v1/functions/greet/aliases").json();
    assert_eq!(
        list,
        serde_json::json!({"name": "greet", "aliases": {"live": v2, "stable": v1}})
    );

    for (path, body, version) in [
        ("/fn/greet@stable/", "v1", &v1),
        (&format!("/fn/greet@{v1}/") as &str, "v1", &v1),
        (&format!("/fn/greet@{}/x", &v1[..6]), "v1", &v1),
        ("/fn/greet@live/", "v2", &v2),
        ("/fn/greet/", "v2", &v2),
    ] {
        let r = node.get(path);
        assert_eq!((r.status, r.text().as_str()), (200, body), "{path}");
        assert_eq!(
            r.header("x-tensorlet-version"),
            Some(version.as_str()),
            "{path}"
        );
    }
    for bad in ["/fn/greet@nope/", "/fn/greet@0000/", "/fn/greet@/"] {
        assert_error(&node.get(bad), 404, "version_not_found");
    }

    // An aliased version is kept past max_versions; the others go.
    node.deploy_ok("greet", "hello-plain", "");
    node.deploy_ok("greet", "echo", "");
    let kept = version_ids(&node.versions("greet"));
    assert!(kept.contains(&v1) && !kept.contains(&v2), "{kept:?}");
    assert_eq!(node.get("/fn/greet@stable/").text(), "v1");

    // Refusals.
    let set = |alias: &str, body: &str| {
        Request::new("PUT", &format!("/admin/v1/functions/greet/aliases/{alias}"))
            .body(body.as_bytes().to_vec())
            .send(node.addr())
    };
    assert_error(
        &set("live", &format!("{{\"version\":\"{v1}\"}}")),
        400,
        "invalid_request",
    );
    assert_error(
        &set("9lives", &format!("{{\"version\":\"{v1}\"}}")),
        400,
        "invalid_request",
    );
    assert_error(
        &set("canary", "{\"version\":\"000000\"}"),
        404,
        "version_not_found",
    );
    assert_error(&set("canary", "not json"), 400, "invalid_request");
    // An alias may name `live` or another alias: it takes the version they name now.
    assert_eq!(
        set("again", "{\"version\":\"stable\"}").json()["aliases"]["again"],
        v1.as_str()
    );

    let out = node.cli(&["alias", "rm", "greet", "stable", "--json"]);
    let left: serde_json::Value = serde_json::from_str(&cli_ok(&out, "alias rm")).unwrap();
    assert!(left["aliases"].get("stable").is_none(), "{left}");
    assert_error(&node.get("/fn/greet@stable/"), 404, "version_not_found");
    let r = node.delete("/admin/v1/functions/greet/aliases/stable");
    assert_error(&r, 404, "alias_not_found");
    assert_eq!(node.get("/fn/greet@again/").text(), "v1");

    // After a restart, aliases and direct calls are still there.
    drop(node);
    let node = Node::start(&dir.data(), Some("max_versions = 2"));
    assert_eq!(node.get("/fn/greet@again/").text(), "v1");
}
