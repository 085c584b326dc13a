//! A commit that cannot be saved changes nothing: the answer is `Internal`, and the admin views,
//! the request path and `meta.json` stay as they were; the next change commits normally.

use super::*;
use crate::api::QuotaPatch;
use crate::auth;

impl Node {
    /// Makes every write to the data directory fail: `DATA/tmp`, where each write starts, becomes
    /// a regular file (a read-only directory would not stop a test running as root).
    fn break_writes(&self) {
        let tmp = self.dir.join("tmp");
        std::fs::remove_dir_all(&tmp).unwrap();
        std::fs::write(&tmp, b"not a directory").unwrap();
    }

    fn mend_writes(&self) {
        let tmp = self.dir.join("tmp");
        std::fs::remove_file(&tmp).unwrap();
        std::fs::create_dir(&tmp).unwrap();
    }
}

fn internal(e: RegistryError) {
    assert!(matches!(e, RegistryError::Internal(_)), "{e:?}");
}

#[tokio::test]
async fn a_function_change_that_cannot_be_saved_changes_nothing() {
    let node = node();
    let r = &node.registry;
    let v1 = created(node.deploy("a", guest("echo")).await);
    let v2 = created(node.deploy("a", guest("hello_plain")).await);
    let (get, list, revision) = (
        r.get(&fk("a")).await.unwrap(),
        r.list(None).await,
        node.revision(),
    );
    assert_eq!(revision, 2);
    node.break_writes();

    // Bytes the node has (compiled and stored): only the commit fails.
    internal(refused(node.deploy("b", guest("echo")).await));
    // New bytes: their blob cannot be stored.
    internal(refused(node.deploy("a", guest("greet_v1")).await));
    // Live moving back, by redeploy or rollback; a delete.
    internal(refused(node.deploy("a", guest("echo")).await));
    internal(refused(r.rollback(&fk("a"), None).await));
    internal(refused(r.delete(&fk("a")).await));

    assert_eq!(node.revision(), revision);
    assert_eq!(r.get(&fk("a")).await.unwrap(), get);
    assert_eq!(r.list(None).await, list);
    assert_eq!(node.routed("a").as_deref(), Some(v2.version.as_str()));
    assert!(r.route(&fk("b")).is_none());
    assert_refused!(r.get(&fk("b")).await, RegistryError::FunctionNotFound(_));

    // Writable again: each change is one commit on top of the last saved one.
    node.mend_writes();
    created(node.deploy("b", guest("echo")).await);
    assert_eq!(node.revision(), revision + 1);
    let moved = r.rollback(&fk("a"), None).await.unwrap();
    assert_eq!(moved.live, v1.version);
    assert_eq!(node.revision(), revision + 2);
    assert_eq!(node.routed("a").as_deref(), Some(v1.version.as_str()));
}

#[tokio::test]
async fn a_tenant_change_that_cannot_be_saved_changes_nothing() {
    let node = node_with("tenants = true", false);
    let r = &node.registry;
    let created = node.create_tenant("acme").await;
    let (_, token) = auth::parse_tenant_token(&created.token).unwrap();
    let key = r.create_key("acme").await.unwrap();
    let (_, id, secret) = auth::parse_key(&key.key).unwrap();
    let (tenants, keys) = (r.list_tenants().await, r.list_keys("acme").await.unwrap());
    let before = r.tenant("acme").unwrap();
    assert_eq!(node.revision(), 2);
    node.break_writes();

    internal(refused(
        r.create_tenant("beta", &QuotaPatch::default()).await,
    ));
    let patch = QuotaPatch {
        max_functions: Some(1),
        ..Default::default()
    };
    internal(refused(r.update_tenant("acme", &patch).await));
    internal(refused(r.rotate_token("acme").await));
    internal(refused(r.create_key("acme").await));
    internal(refused(r.remove_key("acme", id).await));
    internal(refused(r.remove_tenant("acme").await));

    assert_eq!(node.revision(), 2);
    assert!(r.tenant("beta").is_none());
    assert_eq!(r.list_tenants().await, tenants);
    assert_eq!(r.list_keys("acme").await.unwrap(), keys);
    let live = r.tenant("acme").unwrap();
    assert!(
        Arc::ptr_eq(&live, &before),
        "the tenant snapshot was republished"
    );
    assert!(live.token_matches(token) && live.key_matches(id, secret));

    node.mend_writes();
    node.create_tenant("beta").await;
    assert_eq!(node.revision(), 3);
}

onnx_test! {
    async fn a_model_change_that_cannot_be_saved_changes_nothing() {
        let node = node_with_m().await;
        let r = &node.registry;
        let options = ModelOptions::default();
        let (get, revision) = (r.get_model(&mk("m")).await.unwrap(), node.revision());
        node.break_writes();

        // The same bytes under another name: loaded and stored already, only the commit fails.
        internal(refused(r.add_model(&mk("m2"), model("add_f32"), options).await));
        // New bytes: their blob cannot be stored.
        internal(refused(r.add_model(&mk("m"), model("mlp"), options).await));
        internal(refused(r.remove_model(&mk("m")).await));

        assert_eq!(node.revision(), revision);
        assert_eq!(r.get_model(&mk("m")).await.unwrap(), get);
        assert_refused!(r.get_model(&mk("m2")).await, RegistryError::ModelNotFound(_));
        assert!(r.nn.models.get(&crate::key::ModelPin::live(mk("m2"))).is_none() && r.nn.models.get(&crate::key::ModelPin::live(mk("m"))).is_some());
        let names: Vec<_> = (r.list_models(None).await.models.into_iter())
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["m"]);

        node.mend_writes();
        created(r.add_model(&mk("m2"), model("add_f32"), options).await);
        assert_eq!(node.revision(), revision + 1);
        assert!(r.nn.models.get(&crate::key::ModelPin::live(mk("m2"))).is_some());
    }
}
