//! What clients put in URLs: names in paths, and the query strings of deploys, model uploads and
//! the audit log. `form_urlencoded` splits and decodes; on top of it the deploy and model
//! parameters are strict, because a typo in `memory=` that silently deployed with the default
//! would be found only in production: unknown parameters, bad escapes and bad values are 400s
//! that name the parameter.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::config::{Config, parse_duration, parse_size};
use crate::error::ApiError;
use crate::nn::onnx::{MAX_BATCH, ModelOptions, Target};

/// Function names are DNS-label-like so they are safe in paths, files, logs and metrics.
pub(crate) fn check_name(name: &str) -> Result<&str, ApiError> {
    if crate::key::is_valid_name(name) {
        Ok(name)
    } else {
        Err(ApiError::invalid_request(format!(
            "`{}` is not a valid function name: use 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'",
            name.escape_default()
        )))
    }
}

/// The decoded `key=value` pairs of a query string, in order; repeated keys stay repeated.
///
/// `form_urlencoded` is lenient (it keeps a stray `%` as is and replaces bytes that are not
/// UTF-8); these parameters configure a deploy, so what it would guess at is refused instead.
pub(crate) fn pairs(
    query: &str,
) -> Result<impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)>, ApiError> {
    let bytes = query.as_bytes();
    let escapes_ok = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return Err(ApiError::invalid_request(
            "bad percent-encoding in the query string",
        ));
    }
    // Splitting happens at `&` and `=`, which never occur inside a UTF-8 sequence, so the whole
    // decoded query is UTF-8 exactly when every decoded key and value is.
    if percent_encoding::percent_decode_str(query)
        .decode_utf8()
        .is_err()
    {
        return Err(ApiError::invalid_request("the query string is not UTF-8"));
    }
    Ok(form_urlencoded::parse(bytes))
}

pub(crate) use crate::registry::DeploySettings;

/// A deploy's `model=NAME`, `NAME@live`, `NAME@VERSION` (an id, digest or `sha256:` digest) or
/// `NAME@ALIAS`.
fn check_model_pin(text: &str) -> Result<&str, ApiError> {
    let (name, at) = match text.split_once('@') {
        Some((name, at)) => (name, Some(at)),
        None => (text, None),
    };
    check_name(name)?;
    let version_ok = |v: &str| {
        let hex = v.strip_prefix("sha256:").unwrap_or(v);
        (4..=64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let alias_ok =
        |a: &str| a.starts_with(|c: char| c.is_ascii_lowercase()) && check_name(a).is_ok();
    match at {
        None | Some("live") => Ok(text),
        Some(v) if version_ok(v) || alias_ok(v) => Ok(text),
        Some(v) => Err(ApiError::invalid_request(format!(
            "bad `model`: `{}` is not a model version or alias: use NAME, NAME@live, NAME@VERSION or NAME@ALIAS",
            v.escape_default()
        ))),
    }
}

/// Parses deploy settings from the query string; unknown parameters are errors.
pub(crate) fn deploy_settings(config: &Config, query: &str) -> Result<DeploySettings, ApiError> {
    let mut s = DeploySettings {
        limits: config.defaults,
        env: BTreeMap::new(),
        models: Vec::new(),
        public: false,
        allow_outbound: Vec::new(),
        stage: false,
    };
    let bad = |k: &str, e: anyhow::Error| ApiError::invalid_request(format!("bad `{k}`: {e:#}"));
    for (k, v) in pairs(query)? {
        let limits = &mut s.limits;
        match &*k {
            "memory" => limits.memory = parse_size(&v).map_err(|e| bad(&k, e))?,
            "timeout" => {
                limits.timeout_ms = parse_duration(&v).map_err(|e| bad(&k, e))?.as_millis() as u64
            }
            "max_concurrency" => {
                limits.max_concurrency = v
                    .parse()
                    .map_err(|e: std::num::ParseIntError| bad(&k, e.into()))?
            }
            "max_request_body" => {
                limits.max_request_body = parse_size(&v).map_err(|e| bad(&k, e))?
            }
            "max_response_body" => {
                limits.max_response_body = parse_size(&v).map_err(|e| bad(&k, e))?
            }
            "env" => {
                let (ek, ev) = v
                    .split_once('=')
                    .filter(|(ek, _)| !ek.is_empty() && !ek.contains('\0'))
                    .ok_or_else(|| {
                        ApiError::invalid_request(format!("bad `env`: `{v}` is not KEY=VALUE"))
                    })?;
                s.env.insert(ek.to_string(), ev.to_string());
            }
            "model" => s.models.push(check_model_pin(&v)?.to_string()),
            "allow_outbound" => {
                let pattern: crate::outbound::HostPattern = v.parse().map_err(|e: String| {
                    ApiError::invalid_request(format!("bad `allow_outbound`: {e}"))
                })?;
                // The operator's policy bounds what any deploy may allow.
                let ceiling = &config.outbound.allowed_hosts;
                if ceiling.find_covering(&pattern).is_none() {
                    return Err(ApiError::invalid_request(format!(
                        "bad `allow_outbound`: `{pattern}` is outside what this node lets functions reach \
                         (its [outbound] allowed_hosts): ask the operator"
                    )));
                }
                s.allow_outbound.push(pattern.to_string());
            }
            "stage" => {
                s.stage = match &*v {
                    "true" | "" => true,
                    "false" => false,
                    _ => return Err(ApiError::invalid_request("bad `stage`: use stage=true")),
                }
            }
            "public" => {
                s.public = match &*v {
                    "true" | "" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::invalid_request(format!(
                            "bad `public`: `{v}` is neither true nor false"
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown deploy parameter `{other}`: use memory, timeout, max_concurrency, max_request_body, max_response_body, env, model, public or allow_outbound"
                )));
            }
        }
    }
    config
        .check_limits(&s.limits)
        .map_err(ApiError::invalid_request)?;
    Ok(s)
}

/// Parses a model version's options (`target=cpu|gpu`, `max_batch=N`) from the query string.
pub(crate) fn model_options(query: &str) -> Result<ModelOptions, ApiError> {
    let mut options = ModelOptions::default();
    for (k, v) in pairs(query)? {
        match &*k {
            "target" => {
                options.target = match &*v {
                    "cpu" => Target::Cpu,
                    "gpu" => Target::Gpu,
                    _ => {
                        return Err(ApiError::invalid_request(format!(
                            "bad `target`: `{v}` is neither cpu nor gpu"
                        )));
                    }
                }
            }
            "max_batch" => {
                options.max_batch = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_BATCH).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_request(format!(
                            "bad `max_batch`: `{v}` is not a number from 1 to {MAX_BATCH}"
                        ))
                    })?
            }
            "public" => {
                options.public = match &*v {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::invalid_request(format!(
                            "bad `public`: `{v}` is neither true nor false"
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown model parameter `{other}`: use target (cpu or gpu), max_batch or public"
                )));
            }
        }
    }
    Ok(options)
}

/// How many audit records to show: `limit=N`, else 100. Reading the log is harmless, so a
/// malformed query shows the default rather than failing.
pub(super) fn audit_limit(query: Option<&str>) -> usize {
    query
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "limit")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("hello-2").is_ok());
        for bad in ["", "Bad_Name", "-x", "a/b", "a%2Fb", "é", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deploy_query() {
        let c = Config::from_toml("").unwrap();
        let s = deploy_settings(
            &c,
            "memory=16MiB&timeout=2s&env=A%3D1&env=B=x%20y&env=C=a+b&model=mlp&model=m-2&public=true",
        )
        .unwrap();
        assert_eq!(s.models, ["mlp", "m-2"]);
        assert!(s.public);
        assert_eq!(s.limits.memory, 16 << 20);
        assert_eq!(s.limits.timeout_ms, 2000);
        assert_eq!(s.env["A"], "1");
        assert_eq!(s.env["B"], "x y");
        assert_eq!(s.env["C"], "a b");
        let empty = deploy_settings(&c, "").unwrap();
        assert!(!empty.public);
        assert_eq!(empty.limits, c.defaults);
        assert!(deploy_settings(&c, "public").unwrap().public);
        assert!(!deploy_settings(&c, "public=false").unwrap().public);
    }

    /// The messages are part of the API: clients and the integration tests read them.
    #[test]
    fn deploy_query_errors_name_the_problem() {
        let c = Config::from_toml("").unwrap();
        let message = |q: &str| deploy_settings(&c, q).unwrap_err().message;
        assert_eq!(
            message("public=yes"),
            "bad `public`: `yes` is neither true nor false"
        );
        assert!(message("memroy=1").starts_with("unknown deploy parameter `memroy`"));
        assert!(message("memory=99GiB").contains("memory"));
        assert_eq!(message("env=nokey"), "bad `env`: `nokey` is not KEY=VALUE");
        assert_eq!(message("env==v"), "bad `env`: `=v` is not KEY=VALUE");
        assert_eq!(
            message("timeout=%zz"),
            "bad percent-encoding in the query string"
        );
        assert_eq!(
            message("memory=1%4"),
            "bad percent-encoding in the query string"
        );
        assert_eq!(message("env=A=%ff"), "the query string is not UTF-8");
        assert!(message("model=Bad").contains("not a valid function name"));
        assert!(message("max_concurrency=x").starts_with("bad `max_concurrency`"));
    }

    #[test]
    fn model_query() {
        let o = model_options("target=gpu&max_batch=4").unwrap();
        assert_eq!((o.target, o.max_batch), (Target::Gpu, 4));
        assert_eq!(model_options("").unwrap(), ModelOptions::default());
        let message = |q: &str| model_options(q).unwrap_err().message;
        assert_eq!(
            message("target=tpu"),
            "bad `target`: `tpu` is neither cpu nor gpu"
        );
        assert!(message("max_batch=0").starts_with("bad `max_batch`: `0`"));
        assert!(message("batch=2").starts_with("unknown model parameter `batch`"));
        assert_eq!(
            message("target=%g0"),
            "bad percent-encoding in the query string"
        );
    }

    #[test]
    fn audit_query() {
        assert_eq!(audit_limit(None), 100);
        assert_eq!(audit_limit(Some("limit=5")), 5);
        assert_eq!(audit_limit(Some("limit=x")), 100);
        assert_eq!(audit_limit(Some("limit=%zz")), 100);
    }
}
