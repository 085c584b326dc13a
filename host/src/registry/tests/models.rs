//! Models: add (new, existing, conflicting, not a model), inspect, remove, and their use by
//! functions and tenants. All but the first need ONNX Runtime.

use super::*;
use crate::nn::onnx::{LoadError, Target};

/// `(name, type, dims)` of each slot.
fn slots(s: &[api::SlotView]) -> Vec<(&str, &str, &[i64])> {
    s.iter()
        .map(|s| (s.name.as_str(), s.ty.as_str(), s.dims.as_slice()))
        .collect()
}

fn batch(max_batch: u32) -> ModelOptions {
    ModelOptions {
        target: Target::Cpu,
        max_batch,
        public: false,
    }
}

#[tokio::test]
async fn without_onnx_runtime_models_are_unavailable() {
    let node = node();
    let options = ModelOptions::default();
    let add = node
        .registry
        .add_model(&mk("m"), model("add_f32"), options)
        .await;
    assert_refused!(add, RegistryError::OnnxUnavailable);
    assert_eq!(node.revision(), 0);
    assert!(node.registry.list_models(None).await.models.is_empty());
    for e in [
        refused(node.registry.get_model(&mk("m")).await),
        refused(node.registry.remove_model(&mk("m")).await),
    ] {
        assert!(
            matches!(&e, RegistryError::ModelNotFound(n) if n == "m"),
            "{e:?}"
        );
    }
    assert!(
        node.registry
            .nn
            .models
            .get(&crate::key::ModelPin::live(mk("m")))
            .is_none()
    );
}

onnx_test! {
    async fn models_are_added_inspected_moved_and_refused() {
        let node = node_with("", true);
        let r = &node.registry;
        let v1 = created(r.add_model(&mk("m"), model("add_f32"), batch(1)).await);
        assert!(v1.live);
        assert_eq!((v1.size, v1.target, v1.max_batch), (122, Target::Cpu, 1));
        assert_eq!(node.revision(), 1);
        let got = r.get_model(&mk("m")).await.unwrap();
        assert_eq!(
            (got.name.as_str(), got.live.as_str()),
            ("m", v1.version.as_str())
        );
        assert_eq!(got.versions, std::slice::from_ref(&v1));
        assert_eq!(
            slots(&got.inputs),
            [("a", "fp32", &[2, 3][..]), ("b", "fp32", &[2, 3][..])]
        );
        assert_eq!(slots(&got.outputs), [("sum", "fp32", &[2, 3][..])]);
        let list = r.list_models(None).await.models;
        assert_eq!(list.len(), 1);
        assert!(list[0].loaded && !list[0].shared && list[0].live == v1.version);
        assert!(r.nn.models.get(&crate::key::ModelPin::live(mk("m"))).is_some());

        // The same bytes again: the existing version.
        let again = existing(r.add_model(&mk("m"), model("add_f32"), batch(1)).await);
        assert_eq!(again.version, v1.version);
        assert_eq!(r.get_model(&mk("m")).await.unwrap(), got);
        let revision = node.revision();

        // Another version, then the first again: live moves back, one commit each.
        let v2 = created(r.add_model(&mk("m"), model("mlp"), batch(4)).await);
        assert_eq!(node.revision(), revision + 1);
        let got2 = r.get_model(&mk("m")).await.unwrap();
        assert_eq!(got2.live, v2.version);
        assert_eq!(slots(&got2.inputs), [("x", "fp32", &[-1, 16][..])]);
        assert_eq!(slots(&got2.outputs), [("y", "fp32", &[-1, 4][..])]);
        let back = existing(r.add_model(&mk("m"), model("add_f32"), batch(1)).await);
        assert_eq!(back.version, v1.version);
        assert_eq!(node.revision(), revision + 2);
        let got = r.get_model(&mk("m")).await.unwrap();
        assert_eq!(got.live, v1.version);
        assert_eq!(got.versions.len(), 2);
        assert_eq!(slots(&got.inputs).len(), 2);

        // Refusals: other options for bytes it has; not a model.
        assert_refused!(
            r.add_model(&mk("m"), model("add_f32"), batch(2)).await,
            RegistryError::Conflict(m) if m.contains("--max-batch 1")
        );
        let mlp = r.add_model(&mk("m"), model("mlp"), batch(1)).await;
        assert_refused!(mlp, RegistryError::Conflict(_));
        assert_refused!(
            r.add_model(&mk("bad"), model("not_onnx"), batch(1)).await,
            RegistryError::ModelLoad { name, error: LoadError::Invalid(_) } if name == "bad"
        );
        assert_eq!(node.revision(), revision + 2);
        assert_eq!(r.get_model(&mk("m")).await.unwrap(), got);
        assert_refused!(
            r.get_model(&mk("bad")).await,
            RegistryError::ModelNotFound(_)
        );
        assert!(r.nn.models.get(&crate::key::ModelPin::live(mk("bad"))).is_none());
    }
}

onnx_test! {
    async fn re_adding_the_live_model_version_commits_nothing() {
        let node = node_with_m().await;
        let again = node.registry.add_model(&mk("m"), model("add_f32"), batch(1)).await;
        existing(again);
        assert_eq!(node.revision(), 1);
    }
}

onnx_test! {
    async fn a_model_a_live_version_uses_cannot_be_removed() {
        let node = node_with_m().await;
        let r = &node.registry;
        created(r.add_model(&mk("other"), model("mlp"), batch(1)).await);
        let v = created(
            node.deploy_with("f", guest("echo"), env(&[]), vec!["m".into(), "m".into()])
                .await,
        );
        // Pinned to the model's live version at deploy time.
        assert_eq!(v.models.len(), 1);
        assert!(v.models[0].starts_with("m@") && !v.models[0].ends_with("@live"), "{:?}", v.models);
        let pins = &r.route(&fk("f")).unwrap().function.models;
        assert_eq!(pins.iter().map(|p| p.model.clone()).collect::<Vec<_>>(), [mk("m")]);
        assert!(pins[0].version.is_some());
        assert_eq!(node.revision(), 3);

        assert_refused!(
            r.remove_model(&mk("m")).await,
            RegistryError::Conflict(m) if m.contains("\"f\"")
        );
        assert_eq!(node.revision(), 3);
        assert!(r.get_model(&mk("m")).await.is_ok());
        assert!(r.nn.models.get(&crate::key::ModelPin::live(mk("m"))).is_some());

        // Unused models go at once; a used one once no live version uses it.
        let removed = r.remove_model(&mk("other")).await.unwrap();
        assert_eq!((removed.name.as_str(), removed.deleted), ("other", true));
        assert_eq!(node.revision(), 4);
        created(node.deploy("f", guest("hello_plain")).await);
        let removed = r.remove_model(&mk("m")).await.unwrap();
        assert!(removed.deleted);
        assert_eq!(node.revision(), 6);
        for name in ["m", "other"] {
            assert_refused!(
                r.get_model(&mk(name)).await,
                RegistryError::ModelNotFound(n) if n == name
            );
            assert!(r.nn.models.get(&crate::key::ModelPin::live(mk(name))).is_none());
        }
        assert!(r.list_models(None).await.models.is_empty());
        assert_refused!(
            r.remove_model(&mk("m")).await,
            RegistryError::ModelNotFound(_)
        );
        assert_eq!(node.revision(), 6);
    }
}

onnx_test! {
    async fn a_tenants_models_are_its_own_within_quota_and_go_with_it() {
        let node = node_with("tenants = true", true);
        let r = &node.registry;
        let patch = api::QuotaPatch {
            max_models: Some(1),
            ..Default::default()
        };
        r.create_tenant("acme", &patch).await.unwrap();
        created(r.add_model(&mk("shared"), model("mlp"), batch(1)).await);
        created(r.add_model(&mk("acme/m"), model("add_f32"), batch(1)).await);
        assert_eq!(node.revision(), 3);
        assert_refused!(
            r.add_model(&mk("acme/m2"), model("mlp"), batch(1)).await,
            RegistryError::QuotaExceeded(m) if m.contains("max_models")
        );
        assert_refused!(
            r.add_model(&mk("nobody/m"), model("mlp"), batch(1)).await,
            RegistryError::TenantNotFound(t) if t == "nobody"
        );
        assert_eq!(node.revision(), 3);

        // A tenant sees its own models and the shared ones, in key order (the shared ones, which
        // have no tenant, first); `m` means its own.
        let names: Vec<_> = (r.list_models(Some("acme")).await.models.into_iter())
            .map(|m| (m.name, m.shared))
            .collect();
        assert_eq!(
            names,
            [("shared".to_string(), true), ("m".to_string(), false)]
        );
        let v = created(
            node.deploy_with(
                "acme/f",
                guest("echo"),
                env(&[]),
                vec!["m".into(), "shared".into()],
            )
            .await,
        );
        // Resolved to keys, sorted: the shared model first.
        let shown: Vec<&str> = v.models.iter().map(|m| m.split('@').next().unwrap()).collect();
        assert_eq!(shown, ["shared", "m"]);
        let pins = &r.route(&fk("acme/f")).unwrap().function.models;
        assert_eq!(
            pins.iter().map(|p| p.model.clone()).collect::<Vec<_>>(),
            [mk("shared"), mk("acme/m")]
        );

        let removed = r.remove_tenant("acme").await.unwrap();
        assert_eq!(
            (removed.functions, removed.models),
            (vec!["f".to_string()], vec!["m".to_string()])
        );
        assert_eq!(node.revision(), 5);
        assert!(r.route(&fk("acme/f")).is_none());
        assert_refused!(
            r.get_model(&mk("acme/m")).await,
            RegistryError::ModelNotFound(_)
        );
        assert!(r.nn.models.get(&crate::key::ModelPin::live(mk("acme/m"))).is_none());
        assert!(r.nn.models.get(&crate::key::ModelPin::live(mk("shared"))).is_some());
        let names: Vec<_> = (r.list_models(None).await.models.into_iter())
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["shared"]);
    }
}

onnx_test! {
    async fn no_rollback_makes_live_a_version_whose_model_is_gone() {
        let node = node_with_m().await;
        let r = &node.registry;
        let uses_m = node.deploy_with("f", guest("echo"), env(&[]), vec!["m".into()]).await;
        created(uses_m);
        created(node.deploy("f", guest("hello_plain")).await);
        let removed = r.remove_model(&mk("m")).await;
        let rolled = r.rollback(&fk("f"), None).await;
        // One of the two must be refused: every model a live version names exists.
        let live = r.route(&fk("f")).unwrap();
        for m in live.function.models.iter() {
            assert!(
                r.get_model(&m.model).await.is_ok(),
                "live {} names the removed model {} (remove: {:?}, rollback: {:?})",
                live.function.version,
                m.shown(),
                removed.map(|d| d.deleted),
                rolled.map(|l| l.live)
            );
        }
    }
}
