//! The function manifest: a function's component and deploy settings in a TOML file (by
//! convention `tensorlet.toml` next to the crate), for `tensorlet deploy --manifest FILE`.
//! Unknown keys are errors; flags on the command line win over the file. `build` is the shell
//! command `tensorlet build` runs in the manifest's directory; `deploy` ignores it.
//!
//! ```toml
//! name = "classify-image"
//! build = "cargo build --target wasm32-wasip2 --release"
//! component = "target/wasm32-wasip2/release/classify_image.wasm"   # relative to this file
//! memory = "64MiB"
//! timeout = "10s"
//! max_concurrency = 100
//! max_request_body = "10MiB"
//! max_response_body = "64MiB"
//! models = ["orientation"]
//! public = false
//! allowed_outbound_hosts = ["https://api.example.com", "https://*.example.org:8443"]
//!
//! [env]
//! LABELS = "0,90,180,270"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::config::{parse_duration, parse_size};

/// A parsed, checked manifest.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Function name.
    pub name: Option<String>,
    /// The shell command that builds the component (`tensorlet build`), run in the manifest's
    /// directory.
    pub build: Option<String>,
    /// The component, relative to the manifest's directory.
    pub component: Option<PathBuf>,
    /// Linear memory cap per instance.
    pub memory: Option<String>,
    /// Wall-clock limit per request.
    pub timeout: Option<String>,
    /// Requests served at once.
    pub max_concurrency: Option<u32>,
    /// Request body cap.
    pub max_request_body: Option<String>,
    /// Response body cap.
    pub max_response_body: Option<String>,
    /// Environment the guest sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Models the function may load by name.
    #[serde(default)]
    pub models: Vec<String>,
    /// Whether anyone may invoke it (on a node with tenants).
    #[serde(default)]
    pub public: bool,
    /// Destinations its outbound HTTP may reach (`scheme://host[:port]`, as Spin writes them).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
}

impl Manifest {
    /// Parses and checks a manifest's text: sizes and durations must parse, environment keys
    /// must be non-empty and without `=`.
    pub fn parse(text: &str) -> anyhow::Result<Manifest> {
        let m: Manifest = toml::from_str(text).context("not a valid manifest")?;
        for (key, value) in [
            ("memory", &m.memory),
            ("max_request_body", &m.max_request_body),
            ("max_response_body", &m.max_response_body),
        ] {
            if let Some(v) = value {
                parse_size(v).with_context(|| format!("manifest key `{key}`"))?;
            }
        }
        if m.build.as_ref().is_some_and(|b| b.trim().is_empty()) {
            bail!(
                "manifest key `build` is empty: give the command that builds the component, or leave the key out"
            );
        }
        if let Some(t) = &m.timeout {
            parse_duration(t).context("manifest key `timeout`")?;
        }
        if let Some(bad) = m
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            bail!(
                "manifest [env] key `{}` must be non-empty and hold no `=`",
                bad.escape_default()
            );
        }
        Ok(m)
    }

    /// Reads and parses `path`; a relative `component` file becomes relative to the manifest
    /// (an `oci://` reference stays as it is).
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        let mut m = Manifest::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let is_file = |c: &&PathBuf| !c.to_str().is_some_and(|s| s.starts_with("oci://"));
        if let Some(c) = (m.component.as_ref()).filter(|c| c.is_relative() && is_file(c)) {
            m.component = Some(path.parent().unwrap_or(Path::new(".")).join(c));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_components_follow_the_manifest_but_oci_references_do_not() {
        let dir = std::env::temp_dir().join(format!("tensorlet-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tensorlet.toml");
        for (component, expected) in [
            ("f.wasm", dir.join("f.wasm")),
            (
                "oci://127.0.0.1:5000/fns/f:v1",
                PathBuf::from("oci://127.0.0.1:5000/fns/f:v1"),
            ),
        ] {
            std::fs::write(&path, format!("component = \"{component}\"\n")).unwrap();
            assert_eq!(Manifest::load(&path).unwrap().component, Some(expected));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_and_checks() {
        let m = Manifest::parse(
            "name = \"f\"\nmemory = \"32MiB\"\nmodels = [\"m\"]\npublic = true\n[env]\nA = \"1\"\n",
        )
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("f"));
        assert_eq!(m.env["A"], "1");
        assert!(m.public);
        assert_eq!(m.build, None);
        let b = Manifest::parse("build = \"cargo build --release\"").unwrap();
        assert_eq!(b.build.as_deref(), Some("cargo build --release"));
        assert!(Manifest::parse("build = \" \"").is_err());
        assert!(Manifest::parse("build = [\"cargo\"]").is_err());
        assert!(Manifest::parse("memroy = \"1MiB\"").is_err());
        assert!(Manifest::parse("memory = \"lots\"").is_err());
        assert!(Manifest::parse("timeout = \"soon\"").is_err());
        assert!(Manifest::parse("[env]\n\"A=B\" = \"x\"").is_err());
        assert_eq!(Manifest::parse("").unwrap(), Manifest::default());
    }
}
