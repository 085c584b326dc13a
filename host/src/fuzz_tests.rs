//! Property tests over everything that parses untrusted input: the config file, manifests, deploy
//! and model query strings, admin request bodies and tokens, and the tensor checks in front of ONNX
//! Runtime. Each property holds for any input: no panic, and an `Ok` only for input that is
//! actually valid.
//!
//! The suite runs 256 cases per property; a longer run:
//! `PROPTEST_CASES=100000 cargo test -p tensorlet --lib fuzz_tests`.

use std::sync::Arc;

use proptest::prelude::*;

use crate::auth;
use crate::config::{Config, Quotas};
use crate::manifest::Manifest;
use crate::metrics::ModelMetrics;
use crate::nn::bindings::wasi::nn::tensor::TensorType;
use crate::nn::onnx::{Model, Sessions, Slot};
use crate::nn::tensor::{self, Tensor};
use crate::registry::QuotaPatch;
use crate::service;

const CONFIG_KEYS: [&str; 16] = [
    "listen",
    "data_dir",
    "max_component_size",
    "shutdown_grace",
    "max_versions",
    "max_connections",
    "model_sessions",
    "gpu_fallback",
    "guest_model_load",
    "max_guest_model_size",
    "tenants",
    "operator_token",
    "header_read_timeout",
    "[defaults]\nmemory",
    "[ceilings]\ntimeout",
    "[tenant_defaults]\nmax_stored",
];

const MANIFEST_KEYS: [&str; 10] = [
    "name",
    "build",
    "component",
    "memory",
    "timeout",
    "max_concurrency",
    "models",
    "public",
    "[env]\nA",
    "[env]\n\"B=C\"",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{0,12}(B|KiB|MiB|GiB|TiB|ms|s|m|h|x)?".prop_map(|s| format!("{s:?}")),
        ".{0,30}".prop_map(|s| format!("{s:?}")),
        ".{0,30}",
    ]
}

fn ty() -> impl Strategy<Value = TensorType> {
    (0..tensor::ALL_TYPES.len()).prop_map(|i| tensor::ALL_TYPES[i])
}

fn tensor() -> impl Strategy<Value = Tensor> {
    (
        prop::collection::vec(prop_oneof![0u32..5, any::<u32>()], 0..5),
        ty(),
        0usize..200,
    )
        .prop_map(|(dims, ty, len)| Tensor {
            dims,
            ty,
            data: vec![0; len],
        })
}

fn slot() -> impl Strategy<Value = Slot> {
    (
        "[a-c]",
        prop::option::weighted(0.9, ty()),
        prop::collection::vec(prop_oneof![Just(-1i64), 0i64..5], 0..4),
    )
        .prop_map(|(name, ty, dims)| Slot { name, ty, dims })
}

proptest! {
    #[test]
    fn config_files_never_panic(text in ".{0,300}") {
        let _ = Config::from_toml(&text);
    }

    #[test]
    fn config_keys_with_any_values_never_panic(
        entries in prop::collection::vec((0..CONFIG_KEYS.len(), toml_value()), 0..6)
    ) {
        let text: String = entries
            .iter()
            .map(|(k, v)| format!("{} = {v}\n", CONFIG_KEYS[*k]))
            .collect();
        if let Ok(config) = Config::from_toml(&text) {
            // A config that parsed is valid: its defaults fit its ceilings.
            prop_assert!(config.check_limits(&config.defaults).is_ok());
        }
    }

    #[test]
    fn deploy_queries_never_panic(query in "([a-z_]{0,18}(=[a-zA-Z0-9%=.]{0,12})?&?){0,6}") {
        let config = Config::from_toml("").unwrap();
        if let Ok(settings) = service::deploy_settings(&config, &query) {
            prop_assert!(config.check_limits(&settings.limits).is_ok());
            for m in &settings.models {
                prop_assert!(service::check_name(m).is_ok());
            }
        }
        let _ = service::deploy_settings(&config, &query.replace('a', "%"));
    }

    #[test]
    fn manifests_never_panic(
        text in ".{0,200}",
        entries in prop::collection::vec((0..MANIFEST_KEYS.len(), toml_value()), 0..6),
    ) {
        let _ = Manifest::parse(&text);
        let text: String = entries
            .iter()
            .map(|(k, v)| format!("{} = {v}\n", MANIFEST_KEYS[*k]))
            .collect();
        if let Ok(m) = Manifest::parse(&text) {
            prop_assert!(m.env.keys().all(|k| !k.is_empty() && !k.contains('=')));
        }
    }

    #[test]
    fn model_options_never_panic(query in ".{0,60}") {
        if let Ok(o) = service::model_options(&query) {
            prop_assert!((1..=crate::nn::onnx::MAX_BATCH).contains(&o.max_batch));
        }
    }

    #[test]
    fn names_and_percent_escapes_never_panic(s in ".{0,80}") {
        if let Ok(name) = service::check_name(&s) {
            prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            prop_assert!(!name.contains('/'));
        }
        if let Ok(pairs) = service::pairs(&s) {
            prop_assert!(pairs.count() <= s.len());
        }
    }

    #[test]
    fn admin_bodies_and_tokens_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), s in ".{0,120}") {
        let _ = service::rollback_target(&bytes);
        let _ = service::rollback_target(s.as_bytes());
        if let Ok(patch) = serde_json::from_slice::<QuotaPatch>(&bytes) {
            let _ = crate::registry::apply_quotas(&patch, &mut Quotas::default());
        }
        let _ = auth::parse_tenant_token(&s);
        let _ = auth::parse_key(&s);
        prop_assert!(!auth::matches(&s, "0"));
    }

    #[test]
    fn quota_patches_never_set_a_zero(
        f in prop::option::of(0u32..3), m in prop::option::of(0u64..3), c in prop::option::of(0u32..3)
    ) {
        let patch: QuotaPatch = serde_json::from_value(serde_json::json!({
            "max_functions": f, "max_memory": m, "max_concurrency": c,
        })).unwrap();
        let mut q = Quotas::default();
        if crate::registry::apply_quotas(&patch, &mut q).is_ok() {
            prop_assert!(q.max_functions > 0 && q.max_memory > 0 && q.max_concurrency > 0);
        }
    }

    #[test]
    fn tensor_sizes_are_checked_without_overflow(t in tensor()) {
        if t.check_size().is_ok() {
            prop_assert_eq!(tensor::byte_len(&t.dims, t.ty), Some(t.data.len()));
            prop_assert!(t.data.len() <= tensor::MAX_TENSOR_BYTES);
        }
    }

    #[test]
    fn inputs_pass_only_when_they_match_the_model(
        slots in prop::collection::vec(slot(), 0..3).prop_map(|mut v| {
            // A model's inputs have distinct names.
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.dedup_by(|a, b| a.name == b.name);
            v
        }),
        inputs in prop::collection::vec(("[a-d]", tensor()), 0..4),
    ) {
        let model = Model::new(
            "fuzz",
            Arc::new(Sessions::declared(slots.clone())),
            Arc::new(ModelMetrics::default()),
        );
        let inputs: Vec<(String, Tensor)> = inputs;
        if model.check_inputs(inputs.clone()).is_ok() {
            // Every declared input given once, of its type, rank and fixed dimensions, whole.
            for s in &slots {
                let given: Vec<&Tensor> = inputs.iter().filter(|(n, _)| *n == s.name).map(|(_, t)| t).collect();
                prop_assert_eq!(given.len(), 1);
                let t = given[0];
                prop_assert_eq!(Some(t.ty), s.ty);
                prop_assert_eq!(t.dims.len(), s.dims.len());
                for (d, e) in t.dims.iter().zip(&s.dims) {
                    prop_assert!(*e < 0 || i64::from(*d) == *e);
                }
                prop_assert!(t.check_size().is_ok());
            }
            for (n, _) in &inputs {
                prop_assert!(slots.iter().any(|s| &s.name == n));
            }
        }
    }
}
