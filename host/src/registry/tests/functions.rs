//! Functions: deploy (new, existing, conflicting, invalid), rollback, delete, list, get, logs.

use super::*;

impl Node {
    /// Rolls `name` back (to the version `to` names, else the one before the live one) and
    /// returns the short id of the version now live.
    async fn roll_back(&self, name: &str, to: Option<&str>) -> String {
        let moved = self.registry.rollback(&fk(name), to).await.unwrap();
        moved.live
    }
}

/// `(version, live)` of each version a function view shows, in its order.
fn versions(f: &api::FunctionView) -> Vec<(&str, bool)> {
    f.versions
        .iter()
        .map(|v| (v.version.as_str(), v.live))
        .collect()
}

#[tokio::test]
async fn a_deploy_creates_a_live_version_the_request_path_routes() {
    let node = node();
    assert_eq!(node.revision(), 0);
    let v = created(node.deploy("echo", guest("echo")).await);
    assert!(v.live);
    assert_eq!(v.version.len(), 12);
    assert_eq!(
        v.digest,
        format!("sha256:{}", crate::store::digest(&guest("echo")))
    );
    assert!(v.digest[7..].starts_with(&v.version));
    assert_eq!(v.size, guest("echo").len() as u64);
    assert_eq!(v.memory, node.limits().memory);
    assert_eq!(node.revision(), 1);

    assert_eq!(node.routed("echo").as_deref(), Some(v.version.as_str()));
    assert_eq!(node.registry.len(), 1);
    let got = node.registry.get(&fk("echo")).await.unwrap();
    assert_eq!(got.name, "echo");
    assert_eq!(got.live, v.version);
    assert_eq!(got.versions, std::slice::from_ref(&v));
    let list = node.registry.list(None).await;
    assert_eq!(list.functions.len(), 1);
    assert_eq!(list.functions[0].name, "echo");
    assert_eq!(list.functions[0].live, v.version);
    assert_eq!(list.functions[0].versions, 1);
    assert!(
        node.registry
            .logs(&fk("echo"), Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_same_bytes_and_settings_again_are_the_existing_version_made_live() {
    let node = node();
    let v1 = created(node.deploy("f", guest("echo")).await);
    let v2 = created(node.deploy("f", guest("hello_plain")).await);
    assert_ne!(v1.version, v2.version);
    assert_eq!(node.routed("f").as_deref(), Some(v2.version.as_str()));
    assert_eq!(node.revision(), 2);

    // The older bytes again: no new version, live moves back, one commit.
    let again = existing(node.deploy("f", guest("echo")).await);
    assert_eq!(again.version, v1.version);
    assert!(again.live);
    assert_eq!(node.revision(), 3);
    assert_eq!(node.routed("f").as_deref(), Some(v1.version.as_str()));
    let got = node.registry.get(&fk("f")).await.unwrap();
    assert_eq!(got.live, v1.version);
    assert_eq!(
        versions(&got),
        [(v2.version.as_str(), false), (v1.version.as_str(), true)]
    );

    // The live version's bytes again: nothing to commit.
    let same = existing(node.deploy("f", guest("echo")).await);
    assert_eq!(same.version, v1.version);
    assert_eq!(node.revision(), 3);
    assert_eq!(node.registry.get(&fk("f")).await.unwrap(), got);
}

#[tokio::test]
async fn the_same_bytes_with_other_settings_are_another_version() {
    let node = node();
    let v = created(
        node.deploy_with("f", guest("echo"), env(&[("A", "1")]), Vec::new())
            .await,
    );
    // A version is the component and every setting: each change of setting is a new version
    // with its own id, and the identical combination again is the same version.
    let other_env = created(
        node.deploy_with("f", guest("echo"), env(&[("A", "2")]), Vec::new())
            .await,
    );
    let mut limits = node.limits();
    limits.timeout_ms += 1;
    let f = fk("f");
    let with = |settings| node.registry.deploy(&f, guest("echo"), settings);
    let other_limits = created(
        with(DeploySettings {
            limits,
            ..node.settings(env(&[("A", "1")]), Vec::new())
        })
        .await,
    );
    let public = created(
        with(DeploySettings {
            public: true,
            ..node.settings(env(&[("A", "1")]), Vec::new())
        })
        .await,
    );
    let ids = [&v, &other_env, &other_limits, &public].map(|v| v.version.clone());
    assert!(
        ids.iter()
            .all(|id| ids.iter().filter(|o| *o == id).count() == 1),
        "{ids:?}"
    );
    assert!(
        ids.iter().all(|id| id != &v.digest[7..19]),
        "settings are in the id: {ids:?}"
    );
    assert_eq!(node.revision(), 4);
    let again = existing(
        node.deploy_with("f", guest("echo"), env(&[("A", "1")]), Vec::new())
            .await,
    );
    assert_eq!(again.version, v.version);
    assert_eq!(node.routed("f").as_deref(), Some(v.version.as_str()));
    // A plain deploy (the node's defaults, no models) is named by its component's digest.
    let plain = created(node.deploy("g", guest("echo")).await);
    assert_eq!(plain.version, plain.digest[7..19]);
}

#[tokio::test]
async fn what_is_not_a_runnable_component_is_refused_and_changes_nothing() {
    let node = node();
    for bad in [
        Bytes::from_static(b"not wasm at all"),
        guest("not-handler"),
        guest("unknown-import"),
    ] {
        assert_refused!(
            node.deploy("f", bad).await,
            RegistryError::InvalidComponent(_)
        );
    }
    assert_eq!(node.revision(), 0);
    assert_refused!(
        node.registry.get(&fk("f")).await,
        RegistryError::FunctionNotFound(n) if n == "f"
    );
    assert!(node.registry.route(&fk("f")).is_none());
    assert!(node.registry.list(None).await.functions.is_empty());

    // Nor does it touch a function that exists.
    let v = created(node.deploy("f", guest("echo")).await);
    let before = node.registry.get(&fk("f")).await.unwrap();
    let junk = Bytes::from_static(b"\0asm junk");
    assert_refused!(
        node.deploy("f", junk).await,
        RegistryError::InvalidComponent(_)
    );
    assert_eq!(node.revision(), 1);
    assert_eq!(node.registry.get(&fk("f")).await.unwrap(), before);
    assert_eq!(node.routed("f").as_deref(), Some(v.version.as_str()));
}

#[tokio::test]
async fn a_deploy_naming_no_model_is_invalid() {
    let node = node();
    let answer = node
        .deploy_with("f", guest("echo"), env(&[]), vec!["nope".into()])
        .await;
    assert_refused!(answer, RegistryError::Invalid(m) if m.contains("`nope`"));
    assert_eq!(node.revision(), 0);
    assert!(node.registry.route(&fk("f")).is_none());
    assert!(node.registry.list(None).await.functions.is_empty());
}

#[tokio::test]
async fn rollback_moves_live_to_the_previous_or_a_named_version() {
    let node = node();
    let v1 = created(node.deploy("f", guest("echo")).await);
    let v2 = created(node.deploy("f", guest("hello_plain")).await);
    let v3 = created(node.deploy("f", guest("greet_v1")).await);
    assert_eq!(node.revision(), 3);

    let moved = node.registry.rollback(&fk("f"), None).await.unwrap();
    assert_eq!(
        (moved.name.as_str(), moved.live.as_str()),
        ("f", v2.version.as_str())
    );
    assert_eq!(node.revision(), 4);
    assert_eq!(node.routed("f").as_deref(), Some(v2.version.as_str()));
    assert_eq!(node.registry.get(&fk("f")).await.unwrap().live, v2.version);

    // Again: the one before v2.
    assert_eq!(node.roll_back("f", None).await, v1.version);
    assert_eq!(node.revision(), 5);

    // To a prefix, and to a full `sha256:` digest.
    let prefix = &v3.version[..6];
    assert_eq!(node.roll_back("f", Some(prefix)).await, v3.version);
    assert_eq!(node.revision(), 6);
    assert_eq!(node.routed("f").as_deref(), Some(v3.version.as_str()));
    assert_eq!(node.roll_back("f", Some(&v2.digest)).await, v2.version);
    assert_eq!(node.revision(), 7);

    // To the live version: nothing to commit.
    assert_eq!(node.roll_back("f", Some(&v2.version)).await, v2.version);
    assert_eq!(node.revision(), 7);

    // The versions stay, newest deployed first, whichever is live.
    let got = node.registry.get(&fk("f")).await.unwrap();
    assert_eq!(
        versions(&got),
        [
            (v3.version.as_str(), false),
            (v2.version.as_str(), true),
            (v1.version.as_str(), false)
        ]
    );
}

#[tokio::test]
async fn rollback_refusals_change_nothing() {
    let node = node();
    let v1 = created(node.deploy("f", guest("echo")).await);
    let v2 = created(node.deploy("f", guest("hello_plain")).await);
    node.registry.rollback(&fk("f"), None).await.unwrap();
    assert_eq!(node.revision(), 3);
    let before = node.registry.get(&fk("f")).await.unwrap();

    // Live is the oldest version: nothing before it.
    assert_refused!(
        node.registry.rollback(&fk("f"), None).await,
        RegistryError::Invalid(m) if m.contains("oldest")
    );
    // No version by that name: unknown hex, too short, not hex.
    let unknown = ["0000", "ffff"]
        .into_iter()
        .find(|p| !v1.version.starts_with(p) && !v2.version.starts_with(p))
        .unwrap();
    for to in [unknown, &v2.version[..3], "zzzzzz"] {
        let e = refused(node.registry.rollback(&fk("f"), Some(to)).await);
        assert!(
            matches!(&e, RegistryError::VersionNotFound { name, version } if name == "f" && version == to),
            "{to}: {e:?}"
        );
    }
    // No such function.
    assert_refused!(
        node.registry.rollback(&fk("nobody"), None).await,
        RegistryError::FunctionNotFound(n) if n == "nobody"
    );
    let to_v1 = node
        .registry
        .rollback(&fk("nobody"), Some(&v1.version))
        .await;
    assert_refused!(to_v1, RegistryError::FunctionNotFound(_));

    assert_eq!(node.revision(), 3);
    assert_eq!(node.registry.get(&fk("f")).await.unwrap(), before);
    assert_eq!(node.routed("f").as_deref(), Some(v1.version.as_str()));
}

#[tokio::test]
async fn versions_past_max_versions_are_dropped_oldest_first_with_their_blobs() {
    let node = node_with("max_versions = 2", false);
    let v1 = created(node.deploy("f", guest("echo")).await);
    let v2 = created(node.deploy("f", guest("hello_plain")).await);
    node.registry
        .rollback(&fk("f"), Some(&v1.version))
        .await
        .unwrap();
    assert!(node.blob(&v1));
    // A third version is live and pushes out the oldest, even though it was live until now.
    let v3 = created(node.deploy("f", guest("greet_v1")).await);
    assert_eq!(node.revision(), 4);
    let got = node.registry.get(&fk("f")).await.unwrap();
    let ids: Vec<_> = got.versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(ids, [v3.version.as_str(), v2.version.as_str()]);
    assert!(!node.blob(&v1) && node.blob(&v2) && node.blob(&v3));
    let to_v1 = node.registry.rollback(&fk("f"), Some(&v1.version)).await;
    assert_refused!(to_v1, RegistryError::VersionNotFound { .. });
    let moved = node.registry.rollback(&fk("f"), None).await.unwrap();
    assert_eq!(moved.live, v2.version);
    assert_eq!(node.revision(), 5);
}

#[tokio::test]
async fn delete_removes_the_function_and_its_versions() {
    let node = node();
    created(node.deploy("a", guest("echo")).await);
    let a2 = created(node.deploy("a", guest("hello_plain")).await);
    let b = created(node.deploy("b", guest("echo")).await);
    assert_eq!(node.revision(), 3);

    let deleted = node.registry.delete(&fk("a")).await.unwrap();
    assert_eq!((deleted.name.as_str(), deleted.deleted), ("a", true));
    assert_eq!(node.revision(), 4);
    assert!(node.registry.route(&fk("a")).is_none());
    assert_eq!(node.routed("b").as_deref(), Some(b.version.as_str()));
    assert_eq!(node.registry.len(), 1);
    assert_eq!(node.names(None).await, ["b"]);
    // Its blobs go, but for the bytes `b` still has.
    assert!(!node.blob(&a2) && node.blob(&b));
    for e in [
        refused(node.registry.get(&fk("a")).await),
        refused(node.registry.logs(&fk("a"), Default::default()).await),
        refused(node.registry.rollback(&fk("a"), None).await),
        refused(node.registry.delete(&fk("a")).await),
    ] {
        assert!(
            matches!(&e, RegistryError::FunctionNotFound(n) if n == "a"),
            "{e:?}"
        );
    }
    assert_eq!(node.revision(), 4);

    // The name is free again: its old bytes are a new first version.
    let again = created(node.deploy("a", guest("echo")).await);
    assert_eq!(again.version, b.version);
    assert_eq!(node.registry.get(&fk("a")).await.unwrap().versions.len(), 1);
    assert_eq!(node.revision(), 5);
}

#[tokio::test]
async fn list_get_and_logs_of_what_is_not_there() {
    let node = node();
    assert!(node.registry.list(None).await.functions.is_empty());
    assert!(node.registry.is_empty());
    for e in [
        refused(node.registry.logs(&fk("nobody"), Default::default()).await),
        refused(node.registry.get(&fk("nobody")).await),
        refused(node.registry.delete(&fk("nobody")).await),
    ] {
        assert!(
            matches!(&e, RegistryError::FunctionNotFound(n) if n == "nobody"),
            "{e:?}"
        );
    }

    // The list is sorted by name and shows each function's live version and count.
    created(node.deploy("zeta", guest("echo")).await);
    let a1 = created(node.deploy("alpha", guest("echo")).await);
    created(node.deploy("alpha", guest("hello_plain")).await);
    node.registry.rollback(&fk("alpha"), None).await.unwrap();
    let list = node.registry.list(None).await.functions;
    let rows: Vec<_> = list
        .iter()
        .map(|f| (f.name.as_str(), f.live.as_str(), f.versions))
        .collect();
    assert_eq!(
        rows,
        [
            ("alpha", a1.version.as_str(), 2),
            ("zeta", a1.version.as_str(), 1)
        ]
    );
    assert_eq!(node.revision(), 4);
}
