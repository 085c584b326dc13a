//! Tenants: create, update quotas, quota checks of their deploys, remove, tokens and keys.

use super::*;
use crate::api::QuotaPatch;
use crate::auth;

fn tenants() -> Node {
    node_with("tenants = true", false)
}

/// A node with tenants, and `acme` created with the default quotas (revision 1).
async fn acme() -> (Node, api::CreatedTenant) {
    let node = tenants();
    let created = node.create_tenant("acme").await;
    (node, created)
}

/// The secret part of a tenant token.
fn token_secret(token: &str, tenant: &str) -> String {
    let (name, secret) = auth::parse_tenant_token(token).unwrap();
    assert_eq!(name, tenant);
    secret.to_string()
}

#[tokio::test]
async fn a_tenant_is_created_once_with_its_token() {
    let node = tenants();
    let r = &node.registry;
    let created = node.create_tenant("acme").await;
    assert_eq!(created.tenant.name, "acme");
    assert_eq!(created.tenant.quotas, node.config.tenant_defaults);
    assert_eq!(
        (created.tenant.usage.functions, created.tenant.keys),
        (0, 0)
    );
    assert!(created.token.starts_with("tlt_acme_"), "{}", created.token);
    let secret = token_secret(&created.token, "acme");
    assert_eq!(node.revision(), 1);
    let live = r.tenant("acme").unwrap();
    assert!(live.token_matches(&secret));
    assert!(!live.token_matches("wrong"));
    assert_eq!(live.quotas, node.config.tenant_defaults);
    assert_eq!(
        r.list_tenants().await.tenants,
        std::slice::from_ref(&created.tenant)
    );

    // Twice: refused, and the first token still works.
    assert_refused!(
        r.create_tenant("acme", &QuotaPatch::default()).await,
        RegistryError::TenantExists(n) if n == "acme"
    );
    assert_eq!(node.revision(), 1);
    assert!(r.tenant("acme").unwrap().token_matches(&secret));

    // Quotas given at creation; a zero is refused before anything is stored.
    let patch = QuotaPatch {
        max_functions: Some(3),
        ..Default::default()
    };
    let other = r.create_tenant("other", &patch).await.unwrap();
    assert_eq!(other.tenant.quotas.max_functions, 3);
    assert_eq!(r.tenant("other").unwrap().quotas.max_functions, 3);
    assert_eq!(node.revision(), 2);
    let zero = QuotaPatch {
        max_concurrency: Some(0),
        ..Default::default()
    };
    assert_refused!(
        r.create_tenant("zero", &zero).await,
        RegistryError::Invalid(m) if m.contains("max_concurrency")
    );
    assert!(r.tenant("zero").is_none());
    assert_eq!(r.list_tenants().await.tenants.len(), 2);
    assert_eq!(node.revision(), 2);
}

#[tokio::test]
async fn quotas_are_updated_and_the_limiters_kept() {
    let (node, _) = acme().await;
    let r = &node.registry;
    let before = r.tenant("acme").unwrap();
    let patch = QuotaPatch {
        max_concurrency: Some(5),
        max_stored: Some(1 << 20),
        ..Default::default()
    };
    let view = r.update_tenant("acme", &patch).await.unwrap();
    assert_eq!(
        (view.quotas.max_concurrency, view.quotas.max_stored),
        (5, 1 << 20)
    );
    assert_eq!(
        view.quotas.max_functions,
        node.config.tenant_defaults.max_functions
    );
    assert_eq!(node.revision(), 2);
    let after = r.tenant("acme").unwrap();
    assert_eq!(after.quotas, view.quotas);
    assert!(Arc::ptr_eq(&before.concurrency, &after.concurrency));
    assert!(Arc::ptr_eq(
        &before.inferences.permits,
        &after.inferences.permits
    ));
    assert_eq!(r.list_tenants().await.tenants[0].quotas, view.quotas);

    let zero = QuotaPatch {
        max_stored: Some(0),
        max_concurrency: Some(7),
        ..Default::default()
    };
    assert_refused!(
        r.update_tenant("acme", &zero).await,
        RegistryError::Invalid(m) if m.contains("max_stored")
    );
    assert_refused!(
        r.update_tenant("nobody", &patch).await,
        RegistryError::TenantNotFound(n) if n == "nobody"
    );
    assert_eq!(node.revision(), 2);
    assert_eq!(r.tenant("acme").unwrap().quotas, view.quotas);
}

#[tokio::test]
async fn a_tenants_deploys_must_fit_its_quotas() {
    let node = tenants();
    let r = &node.registry;
    let one = QuotaPatch {
        max_functions: Some(1),
        ..Default::default()
    };
    r.create_tenant("acme", &one).await.unwrap();
    let echo = guest("echo").len() as u64;
    let small = QuotaPatch {
        max_stored: Some(echo + 1),
        ..Default::default()
    };
    r.create_tenant("small", &small).await.unwrap();
    assert_eq!(node.revision(), 2);

    created(node.deploy("acme/a", guest("echo")).await);
    assert_refused!(
        node.deploy("acme/b", guest("echo")).await,
        RegistryError::QuotaExceeded(m) if m.contains("max_functions")
    );
    // A new version of the function it has is within max_functions.
    created(node.deploy("acme/a", guest("hello_plain")).await);
    created(node.deploy("small/a", guest("echo")).await);
    assert_refused!(
        node.deploy("small/a", guest("hello_plain")).await,
        RegistryError::QuotaExceeded(m) if m.contains("max_stored")
    );
    let mut big = node.limits();
    big.memory = node.config.tenant_defaults.max_memory + 1;
    let settings = DeploySettings {
        limits: big,
        ..node.settings(env(&[]), Vec::new())
    };
    assert_refused!(
        r.deploy(&fk("acme/a"), guest("greet_v1"), settings).await,
        RegistryError::Invalid(m) if m.contains("max_memory")
    );
    assert_refused!(
        node.deploy("nobody/a", guest("echo")).await,
        RegistryError::TenantNotFound(n) if n == "nobody"
    );
    assert_eq!(node.revision(), 5);
    assert!(r.route(&fk("acme/b")).is_none() && r.route(&fk("nobody/a")).is_none());

    // Each owner lists its own functions, under their short names.
    created(node.deploy("op", guest("echo")).await);
    assert_eq!(node.names(Some("acme")).await, ["a"]);
    assert_eq!(node.names(Some("small")).await, ["a"]);
    assert_eq!(node.names(None).await, ["op"]);
    let usage: Vec<_> = (r.list_tenants().await.tenants.into_iter())
        .map(|t| (t.name, t.usage.functions, t.usage.stored))
        .collect();
    let both = echo + guest("hello_plain").len() as u64;
    assert_eq!(usage, [("acme".into(), 1, both), ("small".into(), 1, echo)]);
}

#[tokio::test]
async fn a_tenant_at_max_stored_may_redeploy_a_version_it_has() {
    let node = tenants();
    let stored = (guest("echo").len() + guest("hello_plain").len()) as u64;
    let patch = QuotaPatch {
        max_stored: Some(stored),
        ..Default::default()
    };
    node.registry.create_tenant("acme", &patch).await.unwrap();
    let v1 = created(node.deploy("acme/f", guest("echo")).await);
    created(node.deploy("acme/f", guest("hello_plain")).await);
    // Nothing new is stored: the same as `rollback --to v1`, which is allowed.
    let again = existing(node.deploy("acme/f", guest("echo")).await);
    assert_eq!(again.version, v1.version);
    assert_eq!(node.routed("acme/f").as_deref(), Some(v1.version.as_str()));
}

#[tokio::test]
async fn removing_a_tenant_removes_its_functions() {
    let (node, first) = acme().await;
    let r = &node.registry;
    created(node.deploy("acme/a", guest("echo")).await);
    created(node.deploy("acme/b", guest("hello_plain")).await);
    let op = created(node.deploy("op", guest("echo")).await);
    assert_eq!(node.revision(), 4);

    let removed = r.remove_tenant("acme").await.unwrap();
    assert_eq!((removed.name.as_str(), removed.deleted), ("acme", true));
    assert_eq!(removed.functions, ["a", "b"]);
    assert!(removed.models.is_empty());
    assert_eq!(node.revision(), 5);
    assert!(r.tenant("acme").is_none());
    assert!(r.route(&fk("acme/a")).is_none() && r.route(&fk("acme/b")).is_none());
    assert_refused!(
        r.get(&fk("acme/a")).await,
        RegistryError::FunctionNotFound(_)
    );
    assert!(node.names(Some("acme")).await.is_empty());
    assert!(r.list_tenants().await.tenants.is_empty());
    assert_eq!(node.routed("op").as_deref(), Some(op.version.as_str()));
    assert_eq!(node.names(None).await, ["op"]);

    assert_refused!(
        r.remove_tenant("acme").await,
        RegistryError::TenantNotFound(n) if n == "acme"
    );
    assert_eq!(node.revision(), 5);

    // The name can be taken again, by someone else: the old token is no good.
    let second = node.create_tenant("acme").await;
    let live = r.tenant("acme").unwrap();
    assert!(!live.token_matches(&token_secret(&first.token, "acme")));
    assert!(live.token_matches(&token_secret(&second.token, "acme")));
    assert_eq!(second.tenant.usage.functions, 0);
}

#[tokio::test]
async fn a_rotated_token_replaces_the_old_one() {
    let (node, created) = acme().await;
    let r = &node.registry;
    let old = token_secret(&created.token, "acme");
    let before = r.tenant("acme").unwrap();
    let rotated = r.rotate_token("acme").await.unwrap();
    assert_eq!(rotated.name, "acme");
    let new = token_secret(&rotated.token, "acme");
    assert_ne!(old, new);
    assert_eq!(node.revision(), 2);
    let after = r.tenant("acme").unwrap();
    assert!(after.token_matches(&new));
    assert!(!after.token_matches(&old));
    assert!(Arc::ptr_eq(&before.concurrency, &after.concurrency));

    assert_refused!(
        r.rotate_token("nobody").await,
        RegistryError::TenantNotFound(n) if n == "nobody"
    );
    assert_eq!(node.revision(), 2);
    assert!(r.tenant("nobody").is_none());
}

#[tokio::test]
async fn invoke_keys_are_created_listed_and_removed() {
    let (node, _) = acme().await;
    let r = &node.registry;
    let before = r.tenant("acme").unwrap();
    let key = r.create_key("acme").await.unwrap();
    let (tenant, id, secret) = auth::parse_key(&key.key).unwrap();
    assert_eq!((tenant, id), ("acme", key.id.as_str()));
    assert_eq!(node.revision(), 2);
    let after = r.tenant("acme").unwrap();
    assert!(after.key_matches(id, secret));
    assert!(!after.key_matches(id, "wrong") && !after.key_matches("other", secret));
    // The new record keeps the tenant's limiters: a key cannot reset them.
    assert!(Arc::ptr_eq(&before.concurrency, &after.concurrency));
    assert!(Arc::ptr_eq(
        &before.inferences.permits,
        &after.inferences.permits
    ));
    assert!(Arc::ptr_eq(&before.metrics, &after.metrics));
    let list = r.list_keys("acme").await.unwrap().keys;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].id.as_str(), list[0].created_at.as_str()),
        (id, key.created_at.as_str())
    );
    assert_eq!(r.list_tenants().await.tenants[0].keys, 1);

    let removed = r.remove_key("acme", id).await.unwrap();
    assert_eq!((removed.id.as_str(), removed.deleted), (id, true));
    assert_eq!(node.revision(), 3);
    assert!(!r.tenant("acme").unwrap().key_matches(id, secret));
    assert!(r.list_keys("acme").await.unwrap().keys.is_empty());
    for gone in [id, "nokey"] {
        assert_refused!(
            r.remove_key("acme", gone).await,
            RegistryError::KeyNotFound(k) if k == gone
        );
    }
    for e in [
        refused(r.create_key("nobody").await),
        refused(r.list_keys("nobody").await),
        refused(r.remove_key("nobody", id).await),
    ] {
        assert!(
            matches!(&e, RegistryError::TenantNotFound(n) if n == "nobody"),
            "{e:?}"
        );
    }
    assert_eq!(node.revision(), 3);
}

#[tokio::test]
async fn a_tenant_has_at_most_100_keys() {
    let (node, _) = acme().await;
    let r = &node.registry;
    for _ in 0..100 {
        r.create_key("acme").await.unwrap();
    }
    assert_eq!(node.revision(), 101);
    assert_refused!(
        r.create_key("acme").await,
        RegistryError::QuotaExceeded(m) if m.contains("100")
    );
    assert_eq!(node.revision(), 101);
    assert_eq!(r.list_keys("acme").await.unwrap().keys.len(), 100);
    // Removing one makes room for one.
    let id = r.list_keys("acme").await.unwrap().keys[0].id.clone();
    r.remove_key("acme", &id).await.unwrap();
    r.create_key("acme").await.unwrap();
    assert_eq!(node.revision(), 103);
}
