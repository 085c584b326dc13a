//! The desired-state document as the engine holds it, checked before a node trusts it. Whoever
//! can write to the bucket can write anything there, so a record is hostile until it parses and
//! holds together: digests name files in the data directory (only lowercase hex ever reaches a
//! path), every live pointer names a retained version, every model a version may load exists,
//! every owner is a tenant, and every limit fits this node's ceilings.

use crate::config::Config;
use crate::store::{Meta, Versioned};

/// Why a record cannot be applied, for the node's lag report.
pub type Refusal = String;

/// Parses the engine's bytes into a checked document.
pub fn decode(bytes: &[u8], config: &Config) -> Result<Meta, Refusal> {
    let meta: Meta =
        serde_json::from_slice(bytes).map_err(|e| format!("the record does not parse: {e}"))?;
    check_meta(&meta, config)?;
    Ok(meta)
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_versioned<V>(
    what: &str,
    record: &Versioned<V>,
    digest: impl Fn(&V) -> &str,
) -> Result<(), Refusal> {
    for v in &record.versions {
        if !is_digest(digest(v)) {
            return Err(format!(
                "{what} has a version whose digest is not sha256 hex"
            ));
        }
    }
    if !record.versions.iter().any(|v| digest(v) == record.live) {
        return Err(format!(
            "{what}'s live version `{}` is not one of its versions",
            record.live
        ));
    }
    for (alias, key) in &record.aliases {
        if !record.versions.iter().any(|v| digest(v) == key) {
            return Err(format!("{what}'s alias `{alias}` names no version of it"));
        }
    }
    Ok(())
}

/// Checks that a document holds together and fits this node (see the module doc).
pub fn check_meta(meta: &Meta, config: &Config) -> Result<(), Refusal> {
    if meta.format != 1 {
        return Err(format!("unknown record format {}", meta.format));
    }
    let tenant_exists = |t: Option<&str>| t.is_none_or(|t| meta.tenants.contains_key(t));
    for (key, f) in &meta.functions {
        let what = format!("function `{key}`");
        check_versioned(&what, f, |v| v.key())?;
        if let Some(v) = f.versions.iter().find(|v| !is_digest(&v.digest)) {
            return Err(format!(
                "{what} version {} names a component digest that is not sha256 hex",
                v.id()
            ));
        }
        if !tenant_exists(key.tenant()) {
            return Err(format!("{what} belongs to no tenant"));
        }
        for v in &f.versions {
            config
                .check_limits(&v.limits)
                .map_err(|e| format!("{what} version {}: {e}", v.id()))?;
            if let Some(p) = v
                .models
                .iter()
                .find(|p| !crate::registry::pin_exists(meta, p))
            {
                return Err(format!(
                    "{what} version {} names model {}, which does not exist",
                    v.id(),
                    p.shown()
                ));
            }
        }
    }
    for (key, m) in &meta.models {
        let what = format!("model `{key}`");
        check_versioned(&what, m, |v| &v.digest)?;
        if !tenant_exists(key.tenant()) {
            return Err(format!("{what} belongs to no tenant"));
        }
    }
    for (key, r) in &meta.rollouts {
        let what = format!("the rollout of `{key}`");
        let f = meta
            .functions
            .get(key)
            .ok_or_else(|| format!("{what} names a function that does not exist"))?;
        if [&r.candidate, &r.stable]
            .iter()
            .any(|k| f.find(k).is_none())
        {
            return Err(format!("{what} names a version the function does not have"));
        }
        // A shadow phase is a first step at 0%.
        let shares = match r.shadow {
            Some(_) if r.steps.first() == Some(&0) => &r.steps[1..],
            _ => &r.steps[..],
        };
        let ascending = shares.windows(2).all(|w| w[0] < w[1]);
        if shares.is_empty() || !ascending || shares.iter().any(|s| !(1..=100).contains(s)) {
            return Err(format!(
                "{what} has steps that are not ascending shares of 1 to 100"
            ));
        }
        let t = &r.thresholds;
        let numbers = [t.max_error_increase, t.max_latency_ratio, t.max_mismatch];
        if !numbers.iter().all(|n| n.is_finite()) {
            return Err(format!("{what} has thresholds that are not numbers"));
        }
        if let Some(s) = r.shadow
            && (!(1..=100).contains(&s.percent)
                || !(0.0..=1.0).contains(&s.tolerance)
                || s.max_body > crate::rollout::Shadow::MAX_CAP)
        {
            return Err(format!("{what} has a malformed shadow"));
        }
    }
    for (name, t) in &meta.tenants {
        if !crate::fleet::is_token(name) || !is_digest(&t.token_hash) {
            return Err(format!("tenant `{name}` is malformed"));
        }
        if t.keys.values().any(|k| !is_digest(&k.hash)) {
            return Err(format!("tenant `{name}` has a malformed invoke key"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml("").unwrap()
    }

    fn doc(digest: &str, live: &str) -> String {
        format!(
            r#"{{"format":1,"functions":{{"hello":{{"live":"{live}","updated_at":"t","versions":[
            {{"digest":"{digest}","created_at":"t","size":1,"env":{{}},
              "limits":{{"memory":1048576,"timeout_ms":1000,"max_concurrency":1,"max_request_body":1,"max_response_body":1}}}}]}}}}}}"#
        )
    }

    #[test]
    fn hostile_records_are_refused() {
        let good = "a".repeat(64);
        assert!(decode(doc(&good, &good).as_bytes(), &config()).is_ok());
        let refused = |text: String| decode(text.as_bytes(), &config()).unwrap_err();
        assert!(refused(doc("../../etc/passwd", "../../etc/passwd")).contains("digest"));
        assert!(refused(doc(&good, &"b".repeat(64))).contains("live"));
        assert!(refused("{\"format\":1,".into()).contains("parse"));
        assert!(refused(doc(&good, &good).replace("1048576", "99999999999")).contains("memory"));
        let with_model = doc(&good, &good).replace("\"env\":{}", "\"env\":{},\"models\":[\"m\"]");
        assert!(refused(with_model).contains("does not exist"));
        let owned = doc(&good, &good).replace("\"hello\"", "\"acme/hello\"");
        assert!(refused(owned).contains("tenant"));
        let rollout = |candidate: &str| {
            doc(&good, &good).replacen(
                "}}}",
                &format!(
                    "}}}},\"rollouts\":{{\"hello\":{{\"candidate\":\"{candidate}\",\"stable\":\"{good}\",\
                     \"steps\":[5,100],\"step\":0,\"interval_ms\":1000,\"state\":\"running\",\
                     \"thresholds\":{{\"max_error_increase\":5.0,\"max_latency_ratio\":2.0,\"min_requests\":1}},\
                     \"started_at\":\"t\",\"decisions\":[]}}}}}}"
                ),
                1,
            )
        };
        assert!(
            decode(rollout(&good).as_bytes(), &config()).is_ok(),
            "{}",
            rollout(&good)
        );
        assert!(refused(rollout("éééééééééééééééé")).contains("version"));
    }
}
