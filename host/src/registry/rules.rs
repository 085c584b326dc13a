//! The rules an admin change must follow, as pure functions of the metadata: which model a
//! deploy's `--model NAME` means, whether a tenant's deploy fits its quotas, which version a
//! rollback names, and which blobs are still referenced. No I/O, so each is unit-tested here.

use std::collections::HashSet;

use super::RegistryError;
use super::tenants;
use crate::config::FunctionLimits;
use crate::key::{FunctionKey, Key, ModelKey, ModelPin};
use crate::store::{self, FunctionRecord, Meta, ModelRecord, TenantRecord, VersionRecord};

/// Turns the models of a deploy into pins: `NAME` pins the model's live version now,
/// `NAME@VERSION` that version (id, digest or unique prefix), `NAME@live` follows live on
/// purpose. `NAME` is a tenant's own model `{tenant}/{name}` first, else a shared one.
pub(super) fn resolve_models(
    meta: &Meta,
    owner: Option<&str>,
    names: Vec<String>,
) -> Result<Vec<ModelPin>, RegistryError> {
    let mut pins: Vec<ModelPin> = Vec::with_capacity(names.len());
    for asked in names {
        let (name, at) = match asked.split_once('@') {
            Some((name, at)) => (name, Some(at)),
            None => (asked.as_str(), None),
        };
        let own = owner.map(|t| ModelKey::new(Some(t), name));
        let shared = ModelKey::new(None, name);
        let key = match own {
            Some(own) if meta.models.contains_key(&own) => own,
            _ if meta.models.contains_key(&shared) => shared,
            _ => {
                return Err(RegistryError::invalid_request(format!(
                    "no model named `{name}`: add it first with `tensorlet model add {name} FILE.onnx`"
                )));
            }
        };
        let m = &meta.models[&key];
        let version = match at {
            None => Some(m.live.clone()),
            Some("live") => None,
            Some(alias) if m.aliases.contains_key(alias) => Some(m.aliases[alias].clone()),
            Some(v) => Some(resolve_model_version(name, m, v)?),
        };
        pins.push(ModelPin {
            model: key,
            version,
        });
    }
    pins.sort();
    pins.dedup();
    if let Some(w) = pins.windows(2).find(|w| w[0].model == w[1].model) {
        return Err(RegistryError::invalid_request(format!(
            "model `{}` is named twice with different versions: pin one",
            w[0].model.name()
        )));
    }
    Ok(pins)
}

/// A model's version by id, full digest, `sha256:` digest or unique prefix.
pub(super) fn resolve_model_version(
    name: &str,
    m: &ModelRecord,
    to: &str,
) -> Result<String, RegistryError> {
    let digests: Vec<&str> = m.versions.iter().map(|v| v.digest.as_str()).collect();
    match by_prefix(&digests, to) {
        Ok(d) => Ok(d.to_string()),
        Err(true) => Err(RegistryError::invalid_request(format!(
            "`{to}` matches several versions of model `{name}`: give more digits"
        ))),
        Err(false) => Err(RegistryError::ModelVersionNotFound {
            name: name.to_string(),
            version: to.to_string(),
        }),
    }
}

/// The one of `keys` that `to` (an id, digest, `sha256:` digest or prefix of 4+ hex digits)
/// names; `Err(true)` when several match.
fn by_prefix<'a>(keys: &[&'a str], to: &str) -> Result<&'a str, bool> {
    let key = to
        .strip_prefix("sha256:")
        .unwrap_or(to)
        .to_ascii_lowercase();
    if key.len() < 4 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(false);
    }
    let mut matches = keys.iter().filter(|k| k.starts_with(&key));
    match (matches.next(), matches.next()) {
        (Some(k), None) => Ok(k),
        (Some(_), Some(_)) => Err(true),
        (None, _) => Err(false),
    }
}

/// A version's identity: the component's digest when every setting is the node's default and it
/// loads no models (so a plain deploy's id is its component's), else a sha256 over the
/// component and all its settings. The same combination always gets the same identity, and any
/// change of setting or pinned model makes a new one.
pub(crate) fn identity(
    digest: &str,
    settings: &super::DeploySettings<ModelPin>,
    defaults: &FunctionLimits,
) -> String {
    let s = settings;
    if s.limits == *defaults
        && s.env.is_empty()
        && s.models.is_empty()
        && !s.public
        && s.allow_outbound.is_empty()
    {
        return digest.to_string();
    }
    let mut doc = serde_json::json!({
        "component": digest,
        "limits": s.limits,
        "env": s.env,
        "models": s.models,
        "public": s.public,
    });
    // Only when set: the identities of versions from before outbound HTTP stay as they were.
    if !s.allow_outbound.is_empty() {
        doc["allow_outbound"] = serde_json::json!(s.allow_outbound);
    }
    store::digest(format!("tensorlet.version.v1\n{doc}").as_bytes())
}

/// The tenant owning `name` and its record; `None` for the operator's (no quotas).
fn tenant_of<'a, K: Clone>(
    meta: &'a Meta,
    name: &'a Key<K>,
) -> Result<Option<(&'a str, &'a TenantRecord)>, RegistryError> {
    let Some(tenant) = name.tenant() else {
        return Ok(None);
    };
    match meta.tenants.get(tenant) {
        Some(t) => Ok(Some((tenant, t))),
        None => Err(RegistryError::tenant_not_found(tenant)),
    }
}

/// A tenant's model must fit its quotas: model count and stored bytes.
pub(super) fn check_tenant_model(
    meta: &Meta,
    name: &ModelKey,
    size: u64,
) -> Result<(), RegistryError> {
    let Some((tenant, t)) = tenant_of(meta, name)? else {
        return Ok(());
    };
    let used = tenants::usage(meta, tenant);
    if !meta.models.contains_key(name) && used.models >= t.quotas.max_models {
        return Err(RegistryError::quota_exceeded(format!(
            "this tenant has {} models, its max_models quota: remove one first",
            used.models
        )));
    }
    if used.stored + size > t.quotas.max_stored {
        return Err(RegistryError::quota_exceeded(format!(
            "this tenant stores {} and this model is {}, over its max_stored quota of {}: remove something first",
            crate::config::format_size(used.stored),
            crate::config::format_size(size),
            crate::config::format_size(t.quotas.max_stored)
        )));
    }
    Ok(())
}

/// A tenant's deploy must fit its quotas: function count, stored bytes, memory and timeout.
pub(super) fn check_tenant_deploy(
    meta: &Meta,
    name: &FunctionKey,
    limits: &FunctionLimits,
    size: u64,
) -> Result<(), RegistryError> {
    let Some((tenant, t)) = tenant_of(meta, name)? else {
        return Ok(());
    };
    let q = t.quotas;
    if limits.memory > q.max_memory {
        return Err(RegistryError::invalid_request(format!(
            "memory {} is above this tenant's max_memory quota of {}: ask for less",
            crate::config::format_size(limits.memory),
            crate::config::format_size(q.max_memory)
        )));
    }
    if limits.timeout_ms > q.max_timeout_ms {
        return Err(RegistryError::invalid_request(format!(
            "timeout {}ms is above this tenant's max_timeout quota of {}ms: ask for less",
            limits.timeout_ms, q.max_timeout_ms
        )));
    }
    let used = tenants::usage(meta, tenant);
    if !meta.functions.contains_key(name) && used.functions >= q.max_functions {
        return Err(RegistryError::quota_exceeded(format!(
            "this tenant has {} functions, its max_functions quota: delete one first",
            used.functions
        )));
    }
    if used.stored + size > q.max_stored {
        return Err(RegistryError::quota_exceeded(format!(
            "this tenant stores {} and this upload is {}, over its max_stored quota of {}: delete functions, models or old versions first",
            crate::config::format_size(used.stored),
            crate::config::format_size(size),
            crate::config::format_size(q.max_stored)
        )));
    }
    Ok(())
}

/// Function `name`'s record, or why there is none.
pub(super) fn function<'a>(
    meta: &'a Meta,
    name: &FunctionKey,
) -> Result<&'a FunctionRecord, RegistryError> {
    (meta.functions.get(name)).ok_or_else(|| RegistryError::function_not_found(name.name()))
}

/// Function `name`'s record to change, or why there is none.
pub(super) fn function_mut<'a>(
    meta: &'a mut Meta,
    name: &FunctionKey,
) -> Result<&'a mut FunctionRecord, RegistryError> {
    (meta.functions.get_mut(name)).ok_or_else(|| RegistryError::function_not_found(name.name()))
}

/// Model `name`'s record, or why there is none.
pub(super) fn model<'a>(meta: &'a Meta, name: &ModelKey) -> Result<&'a ModelRecord, RegistryError> {
    (meta.models.get(name)).ok_or_else(|| RegistryError::model_not_found(name.name()))
}

/// Tenant `name`'s record, or why there is none.
pub(super) fn tenant<'a>(meta: &'a Meta, name: &str) -> Result<&'a TenantRecord, RegistryError> {
    (meta.tenants.get(name)).ok_or_else(|| RegistryError::tenant_not_found(name))
}

/// Whether function `name` has a version with `digest`.
pub(super) fn has_version(meta: &Meta, name: &FunctionKey, digest: &str) -> bool {
    (meta.functions.get(name)).is_some_and(|f| f.find(digest).is_some())
}

/// A version can only go live again if every model (and pinned model version) it may load still
/// exists (models in use by a live version cannot be removed, but older versions may name
/// removed ones).
pub(super) fn check_models_exist(
    meta: &Meta,
    name: &FunctionKey,
    digest: &str,
) -> Result<(), RegistryError> {
    let version = (meta.functions.get(name)).and_then(|f| f.find(digest));
    let missing = version.and_then(|v| v.models.iter().find(|p| !pin_exists(meta, p)));
    match missing {
        Some(p) => Err(RegistryError::version_conflict(format!(
            "version {} of `{}` loads model {}, which was removed since: add the model again, or roll back to another version",
            store::short_id(digest),
            name.name(),
            p.shown()
        ))),
        None => Ok(()),
    }
}

/// Whether the model (and the version) a pin names exists.
pub(crate) fn pin_exists(meta: &Meta, pin: &ModelPin) -> bool {
    meta.models
        .get(&pin.model)
        .is_some_and(|m| match &pin.version {
            None => true,
            Some(d) => m.find(d).is_some(),
        })
}

/// Every digest the metadata refers to: function versions and model versions.
pub(super) fn referenced(meta: &Meta) -> HashSet<&str> {
    let functions = meta
        .functions
        .values()
        .flat_map(|f| f.versions.iter().map(|v| v.digest.as_str()));
    let models = meta
        .models
        .values()
        .flat_map(|m| m.versions.iter().map(|v| v.digest.as_str()));
    functions.chain(models).collect()
}

/// Finds a version by id, full identity, `sha256:` digest or unique prefix; failing that, by
/// its component's digest (when one version has it).
pub(super) fn resolve<'a>(
    name: &str,
    f: &'a FunctionRecord,
    to: &str,
) -> Result<&'a VersionRecord, RegistryError> {
    let keys: Vec<&str> = f.versions.iter().map(|v| v.key()).collect();
    let found = match by_prefix(&keys, to) {
        Err(false) => {
            let components: Vec<&str> = f.versions.iter().map(|v| v.digest.as_str()).collect();
            by_prefix(&components, to).and_then(|d| {
                let mut with = f.versions.iter().filter(|v| v.digest == d);
                match (with.next(), with.next()) {
                    (Some(v), None) => Ok(v.key()),
                    _ => Err(true),
                }
            })
        }
        other => other,
    };
    match found {
        Ok(key) => f
            .find(key)
            .ok_or_else(|| RegistryError::version_not_found(name, to)),
        Err(true) => Err(RegistryError::invalid_request(format!(
            "`{to}` matches several versions of `{name}`: give more digits"
        ))),
        Err(false) => Err(RegistryError::version_not_found(name, to)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k<K: Clone>(s: &str) -> Key<K> {
        s.parse().unwrap()
    }
    use crate::store::{ModelRecord, ModelVersion};

    fn version(digest: &str, size: u64) -> VersionRecord {
        VersionRecord {
            version: String::new(),
            digest: digest.into(),
            created_at: String::new(),
            size,
            limits: crate::config::Config::from_toml("").unwrap().defaults,
            env: Default::default(),
            models: Vec::new(),
            public: false,
            allow_outbound: Vec::new(),
        }
    }

    fn meta_with_tenant(max_functions: u32, max_stored: u64) -> Meta {
        let mut quotas = crate::config::Config::from_toml("")
            .unwrap()
            .tenant_defaults;
        quotas.max_functions = max_functions;
        quotas.max_stored = max_stored;
        let mut meta = Meta::default();
        meta.tenants.insert(
            "t".into(),
            TenantRecord {
                created_at: String::new(),
                token_hash: String::new(),
                keys: Default::default(),
                quotas,
            },
        );
        meta
    }

    #[test]
    fn a_tenants_own_model_comes_before_a_shared_one() {
        let mut meta = Meta::default();
        let model = |d: &str| {
            let mut m = ModelRecord::default();
            m.push_live(
                ModelVersion {
                    digest: d.into(),
                    created_at: String::new(),
                    size: 1,
                    target: Default::default(),
                    max_batch: 1,
                    public: false,
                },
                5,
            );
            m
        };
        meta.models.insert("m".parse().unwrap(), model("aa"));
        meta.models.insert("t/m".parse().unwrap(), model("bb"));
        meta.models.insert("shared".parse().unwrap(), model("cc"));
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            resolve_models(
                &meta,
                Some("t"),
                names(&["m@live", "shared@live", "m@live"])
            )
            .unwrap(),
            [ModelPin::live(k("shared")), ModelPin::live(k("t/m"))]
        );
        assert_eq!(
            resolve_models(&meta, None, names(&["m"])).unwrap(),
            [ModelPin {
                model: k("m"),
                version: Some("aa".into())
            }]
        );
        let missing = resolve_models(&meta, Some("t"), names(&["nope"])).unwrap_err();
        assert!(matches!(missing, RegistryError::Invalid(m) if m.contains("model add nope")));
    }

    #[test]
    fn a_tenants_deploy_must_fit_its_quotas() {
        let limits = crate::config::Config::from_toml("").unwrap().defaults;
        let mut meta = meta_with_tenant(1, 100);
        assert!(check_tenant_deploy(&meta, &k("t/a"), &limits, 60).is_ok());
        assert!(check_tenant_deploy(&meta, &k("op-fn"), &limits, 1 << 40).is_ok());
        assert!(matches!(
            check_tenant_deploy(&meta, &k("u/a"), &limits, 1),
            Err(RegistryError::TenantNotFound(t)) if t == "u"
        ));
        let mut f = FunctionRecord::default();
        f.push_live(version("aa", 60), 5);
        meta.functions.insert("t/a".parse().unwrap(), f);
        // A second function is over max_functions; a new version of the first is not, until
        // the stored bytes are.
        assert!(matches!(
            check_tenant_deploy(&meta, &k("t/b"), &limits, 1),
            Err(RegistryError::QuotaExceeded(_))
        ));
        assert!(check_tenant_deploy(&meta, &k("t/a"), &limits, 40).is_ok());
        assert!(matches!(
            check_tenant_deploy(&meta, &k("t/a"), &limits, 41),
            Err(RegistryError::QuotaExceeded(m)) if m.contains("max_stored")
        ));
        let mut big = limits;
        big.memory = u64::MAX;
        assert!(matches!(
            check_tenant_deploy(&meta, &k("t/a"), &big, 1),
            Err(RegistryError::Invalid(m)) if m.contains("max_memory")
        ));
    }

    #[test]
    fn versions_are_named_by_unique_prefixes() {
        let mut f = FunctionRecord::default();
        for d in ["abcd11", "abcd22", "ef0123"] {
            f.push_live(version(d, 1), 5);
        }
        assert_eq!(resolve("f", &f, "ef01").unwrap().digest, "ef0123");
        assert_eq!(resolve("f", &f, "sha256:ABCD11").unwrap().digest, "abcd11");
        assert!(matches!(
            resolve("f", &f, "abcd"),
            Err(RegistryError::Invalid(_))
        ));
        for bad in ["abc", "zzzz", "9999"] {
            assert!(matches!(
                resolve("f", &f, bad),
                Err(RegistryError::VersionNotFound { .. })
            ));
        }
    }

    #[test]
    fn referenced_covers_every_retained_version() {
        let mut meta = Meta::default();
        let mut f = FunctionRecord::default();
        f.push_live(version("aa", 1), 5);
        f.push_live(version("bb", 1), 5);
        meta.functions.insert("f".parse().unwrap(), f);
        let got = referenced(&meta);
        assert_eq!(got, HashSet::from(["aa", "bb"]));
    }
}
