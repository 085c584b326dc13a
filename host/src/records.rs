//! The records of functions and models: immutable versions (by digest, or for a function by the
//! identity of its component and settings), the `live` pointer and aliases, and the rules for
//! adding versions and pruning old ones. Stored in [`crate::store::Meta`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::FunctionLimits;
use crate::key::ModelPin;
use crate::store::short_id;

/// A function or a model: its immutable versions (oldest first) and which one is live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versioned<V> {
    /// Hex digest of the live version.
    pub live: String,
    /// When `live` last moved.
    pub updated_at: String,
    /// Retained versions, oldest first.
    pub versions: Vec<V>,
    /// Named pointers besides `live` (alias to a version's full key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, String>,
}

impl<V> Default for Versioned<V> {
    fn default() -> Self {
        Self {
            live: String::new(),
            updated_at: String::new(),
            versions: Vec::new(),
            aliases: BTreeMap::new(),
        }
    }
}

/// What [`Versioned`] needs of a version.
pub trait Version {
    /// Lowercase hex sha256 of its bytes.
    fn digest(&self) -> &str;
    /// When it was stored.
    fn created_at(&self) -> &str;
}

impl<V: Version> Versioned<V> {
    /// Adds `version` (unless one with its digest is kept already) and makes it live; then drops
    /// the oldest versions but the live one while more than `max` are kept.
    pub fn push_live(&mut self, version: V, max: usize) {
        self.push_live_keeping(version, max, |_| false)
    }

    /// [`Versioned::push_live`], never dropping a version `keep` holds on to (a model version
    /// that a function version pins).
    pub fn push_live_keeping(&mut self, version: V, max: usize, keep: impl Fn(&V) -> bool) {
        self.live = version.digest().to_string();
        self.updated_at = version.created_at().to_string();
        if self.find(&self.live).is_none() {
            self.versions.push(version);
        }
        while self.versions.len() > max {
            let droppable = |v: &V| v.digest() != self.live && !keep(v);
            let Some(oldest) = self.versions.iter().position(droppable) else {
                break;
            };
            self.versions.remove(oldest);
        }
    }

    /// Adds `version` without making it live (a staged version, for a rollout); pruning keeps
    /// the live version and what `keep` holds on to.
    pub fn push_staged(&mut self, version: V, max: usize, keep: impl Fn(&V) -> bool) {
        let (live, updated_at) = (self.live.clone(), self.updated_at.clone());
        self.push_live_keeping(version, max, |v| keep(v) || v.digest() == live);
        self.live = live;
        self.updated_at = updated_at;
    }

    /// Makes the kept version `digest` live; false if it already was.
    pub fn make_live(&mut self, digest: &str, now: String) -> bool {
        if self.live == digest {
            return false;
        }
        self.live = digest.to_string();
        self.updated_at = now;
        true
    }

    /// The kept version with this digest.
    pub fn find(&self, digest: &str) -> Option<&V> {
        self.versions.iter().find(|v| v.digest() == digest)
    }

    /// The live version.
    pub fn live_version(&self) -> Option<&V> {
        self.find(&self.live)
    }
}

/// One model.
pub type ModelRecord = Versioned<ModelVersion>;

/// One immutable model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelVersion {
    /// Lowercase hex sha256 of the model file.
    pub digest: String,
    /// When it was added.
    pub created_at: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it runs.
    #[serde(default)]
    pub target: crate::nn::onnx::Target,
    /// Most rows one inference may stack from queued requests (1: no batching).
    #[serde(default = "one")]
    pub max_batch: u32,
    /// Callable over the inference protocol without an invoke key (`model add --public`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

fn one() -> u32 {
    1
}

impl Version for ModelVersion {
    fn digest(&self) -> &str {
        &self.digest
    }
    fn created_at(&self) -> &str {
        &self.created_at
    }
}

impl ModelVersion {
    /// How this version runs.
    pub fn options(&self) -> crate::nn::onnx::ModelOptions {
        crate::nn::onnx::ModelOptions {
            target: self.target,
            max_batch: self.max_batch,
            public: self.public,
        }
    }
}

/// One function.
pub type FunctionRecord = Versioned<VersionRecord>;

/// One immutable version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// The version's identity when it is not the component's digest: a sha256 over the
    /// component and every setting, pinned models included (see `registry::rules::identity`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Lowercase hex sha256 of the component.
    pub digest: String,
    /// When it was deployed.
    pub created_at: String,
    /// Component size in bytes.
    pub size: u64,
    /// Limits fixed at deploy.
    pub limits: FunctionLimits,
    /// Environment the guest sees.
    pub env: BTreeMap<String, String>,
    /// Models the function may load by name, each pinned to a version or following live.
    #[serde(default)]
    pub models: Vec<ModelPin>,
    /// Whether anyone may invoke it; otherwise (on a node with tenants) callers need one of
    /// its tenant's invoke keys.
    #[serde(default)]
    pub public: bool,
    /// Destinations its outbound HTTP may reach (`scheme://host[:port]` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_outbound: Vec<String>,
}

impl Version for VersionRecord {
    fn digest(&self) -> &str {
        self.key()
    }
    fn created_at(&self) -> &str {
        &self.created_at
    }
}

impl VersionRecord {
    /// The version's full identity: what `live` names.
    pub fn key(&self) -> &str {
        if self.version.is_empty() {
            &self.digest
        } else {
            &self.version
        }
    }

    /// The short id users see: the first 12 hex digits of [`VersionRecord::key`].
    pub fn id(&self) -> &str {
        short_id(self.key())
    }
}
