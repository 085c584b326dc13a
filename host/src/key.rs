//! The identity of a function or a model: its owner's namespace and its name there. On a node
//! with tenants a tenant's function is `{tenant}/{name}`; the single user's functions and the
//! operator's shared models have no tenant. One typed key replaces the strings that were built
//! and split in several modules, and a function key cannot be passed where a model key is meant.
//!
//! Stored (meta.json keys), in metric labels and in logs a key is written `tenant/name` or
//! `name`, as before.

use std::fmt;
use std::marker::PhantomData;

/// Whether `name` is a valid function, model or tenant name: 1 to 63 characters of a-z, 0-9 and
/// '-', not starting with '-'.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// A name in an owner's namespace; `K` says what it names ([`OfFunction`] or [`OfModel`]).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Key<K: Clone> {
    tenant: Option<String>,
    name: String,
    kind: PhantomData<K>,
}

/// Marks a [`Key`] of a function.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfFunction;

/// Marks a [`Key`] of a model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfModel;

/// A function's key.
pub type FunctionKey = Key<OfFunction>;

/// A model's key.
pub type ModelKey = Key<OfModel>;

impl<K: Clone> Key<K> {
    /// `name` in `tenant`'s namespace (`None`: the single user's, or the operator's).
    pub fn new(tenant: Option<&str>, name: &str) -> Self {
        Self {
            tenant: tenant.map(str::to_string),
            name: name.to_string(),
            kind: PhantomData,
        }
    }

    /// The owning tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The name within its namespace: what users and guests call it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it belongs to `owner` (a tenant, or `None` for the unowned namespace).
    pub fn owned_by(&self, owner: Option<&str>) -> bool {
        self.tenant() == owner
    }

    /// The same name in another kind's namespace (a tenant's model of the same name, say).
    pub fn with_name(&self, name: &str) -> Self {
        Self::new(self.tenant(), name)
    }
}

impl<K: Clone> fmt::Display for Key<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "{t}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl<K: Clone> From<Key<K>> for String {
    fn from(key: Key<K>) -> String {
        key.to_string()
    }
}

/// A stored key that is not `name` or `tenant/name`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a key: expected NAME or TENANT/NAME")]
pub struct BadKey(String);

impl<K: Clone> TryFrom<String> for Key<K> {
    type Error = BadKey;

    fn try_from(s: String) -> Result<Self, BadKey> {
        let (tenant, name) = match s.split_once('/') {
            Some((t, n)) => (Some(t), n),
            None => (None, s.as_str()),
        };
        let bad = |part: &str| part.is_empty() || part.contains('/');
        if bad(name) || tenant.is_some_and(bad) {
            return Err(BadKey(s));
        }
        Ok(Self::new(tenant, name))
    }
}

impl<K: Clone> std::str::FromStr for Key<K> {
    type Err = BadKey;

    fn from_str(s: &str) -> Result<Self, BadKey> {
        Self::try_from(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_as_before() {
        let k = FunctionKey::new(Some("acme"), "hello");
        assert_eq!(k.to_string(), "acme/hello");
        assert_eq!((k.tenant(), k.name()), (Some("acme"), "hello"));
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"acme/hello\"");
        let back: FunctionKey = serde_json::from_str("\"acme/hello\"").unwrap();
        assert_eq!(back, k);
        let plain = ModelKey::new(None, "mlp");
        assert_eq!(plain.to_string(), "mlp");
        assert!(plain.owned_by(None) && !plain.owned_by(Some("acme")));
        assert_eq!(k.with_name("other").to_string(), "acme/other");
        for bad in ["", "/x", "x/", "a/b/c"] {
            assert!(FunctionKey::try_from(bad.to_string()).is_err(), "{bad}");
        }
        // As map keys in meta.json.
        let map: std::collections::BTreeMap<FunctionKey, u8> =
            serde_json::from_str(r#"{"a/f": 1, "g": 2}"#).unwrap();
        assert_eq!(serde_json::to_string(&map).unwrap(), r#"{"g":2,"a/f":1}"#);
    }
}

/// A model a function version loads, and which of its versions: one pinned by digest, or
/// whichever is live (`None`, asked for with `NAME@live`). Stored `{key}@{hex digest}` or
/// `{key}@live`; a bare key (records from before versions pinned their models) follows live.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct ModelPin {
    /// The model.
    pub model: ModelKey,
    /// The pinned version's full hex digest; `None` follows the model's live version.
    pub version: Option<String>,
}

impl ModelPin {
    /// Follows `model`'s live version.
    pub fn live(model: ModelKey) -> Self {
        Self {
            model,
            version: None,
        }
    }

    /// How users see it: `name@{short id}` or `name@live`.
    pub fn shown(&self) -> String {
        let at = self
            .version
            .as_deref()
            .map_or("live", |d| &d[..d.len().min(12)]);
        format!("{}@{at}", self.model.name())
    }
}

impl From<ModelPin> for String {
    fn from(p: ModelPin) -> String {
        format!("{}@{}", p.model, p.version.as_deref().unwrap_or("live"))
    }
}

impl TryFrom<String> for ModelPin {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (key, at) = match s.split_once('@') {
            Some((key, at)) => (key, Some(at)),
            None => (s.as_str(), None),
        };
        let version = match at {
            None | Some("live") => None,
            Some(d)
                if d.len() == 64 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Some(d.to_string())
            }
            Some(other) => return Err(format!("`{other}` is not a model version digest")),
        };
        Ok(Self {
            model: key.parse().map_err(|e| format!("{e}"))?,
            version,
        })
    }
}
