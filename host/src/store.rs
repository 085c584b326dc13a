//! The embedded store in the data directory:
//!
//! ```text
//! DATA/meta.json                      every function, its versions and `live` (atomically replaced)
//! DATA/blobs/sha256/<hex>             component bytes, by digest
//! DATA/cache/<engine-hash>/<hex>.cwasm  compiled code, by digest and engine settings
//! DATA/tmp/                           temp files; emptied at start-up
//! DATA/logs/                          guest output, kept by [`crate::logs`] (not through here)
//! ```
//!
//! Every write goes to a temp file, is fsynced, renamed into place, and the directory is fsynced,
//! so a crash at any moment leaves either the old file or the new one, never a torn one. A deploy
//! is acknowledged only after its blob and the new `meta.json` are durable.
//!
//! `meta.json` is the node's [`DesiredState`] (its `revision` counts commits) and `blobs/` its
//! [`BlobStore`]; the compiled-code cache is this node's alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::desired::{BlobHold, BlobStore, CommitError, DesiredState, Revision};
use crate::key::{FunctionKey, ModelKey};
pub use crate::records::{
    FunctionRecord, ModelRecord, ModelVersion, Version, VersionRecord, Versioned,
};

/// All persisted metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Format version of this file.
    pub format: u32,
    /// Committed changes so far ([`DesiredState`]).
    #[serde(default)]
    pub revision: Revision,
    /// In fleet mode, the engine whose revisions `revision` counts (`nats:{bucket}`); absent on
    /// a single node, and in the engine's own copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Functions by key.
    pub functions: BTreeMap<FunctionKey, FunctionRecord>,
    /// ONNX models by key.
    #[serde(default)]
    pub models: BTreeMap<ModelKey, ModelRecord>,
    /// Tenants by name (a node with `tenants = true`). A tenant's functions and models are keyed
    /// `{tenant}/{name}` in the maps above; models without a `/` are the operator's, shared.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Each function's rollout, running or last finished.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<FunctionKey, crate::rollout::Rollout>,
}

/// One tenant: its token (hash), invoke keys (hashes) and quotas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// When it was created.
    pub created_at: String,
    /// SHA-256 of its token's secret part.
    pub token_hash: String,
    /// Invoke keys by id: SHA-256 of their secret part and when they were made.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyRecord>,
    /// Its quotas.
    pub quotas: crate::config::Quotas,
}

/// One invoke key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// SHA-256 of the key's secret part.
    pub hash: String,
    /// When it was made.
    pub created_at: String,
}

/// The first 12 hex digits of a digest.
pub fn short_id(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// Lowercase hex sha256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Handle on the data directory.
pub struct DataDir {
    root: PathBuf,
    tmp_counter: AtomicU64,
    /// Digests of blobs being written ahead of the commit that will refer to them (outside the
    /// admin lock): garbage collection keeps them. Counted, as two uploads may share bytes.
    pending: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// The revision of `meta.json` as last written by this process.
    revision: std::sync::Mutex<Revision>,
}

/// Keeps a blob out of garbage collection until dropped.
struct Pending {
    pending: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    digest: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pending.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.digest);
            }
        }
    }
}

impl DataDir {
    /// Opens (creating if needed) the data directory and clears leftovers of interrupted writes.
    pub fn open(root: &Path) -> anyhow::Result<DataDir> {
        for dir in ["blobs/sha256", "cache", "tmp"] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            tmp_counter: AtomicU64::new(0),
            pending: Default::default(),
            revision: Default::default(),
        })
    }

    /// Reads `meta.json`; a missing file is an empty node.
    pub fn load_meta(&self) -> anyhow::Result<Meta> {
        let path = self.root.join("meta.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid node metadata", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Meta {
                format: 1,
                ..Meta::default()
            }),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Atomically replaces `meta.json`.
    pub fn save_meta(&self, meta: &Meta) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        self.write_atomic(&self.root.join("meta.json"), &bytes)
    }

    /// Stores component bytes under their digest (a no-op if already there).
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        self.write_atomic(&path, bytes)
    }

    /// Reads component bytes and checks they still match their digest.
    pub fn read_blob(&self, digest_hex: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.blob_path(digest_hex);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(
            digest(&bytes) == digest_hex,
            "{} is corrupt (digest mismatch)",
            path.display()
        );
        Ok(bytes)
    }

    /// Bytes of blobs held (the fleet's blob cache size).
    pub fn blob_bytes(&self) -> u64 {
        let Ok(entries) = fs::read_dir(self.root.join("blobs/sha256")) else {
            return 0;
        };
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(digest)
    }

    /// Where compiled code for `digest` under these engine settings lives.
    pub fn cache_path(&self, engine_hash: &str, digest: &str) -> PathBuf {
        self.root
            .join("cache")
            .join(engine_hash)
            .join(format!("{digest}.cwasm"))
    }

    /// Writes compiled code to the cache.
    pub fn put_cache(&self, engine_hash: &str, digest: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.cache_path(engine_hash, digest);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        self.write_atomic(&path, bytes)
    }

    /// Deletes blobs and compiled code no retained version refers to.
    /// Removes blobs and compiled code that no version in `referenced` needs (held blobs stay).
    pub fn collect_garbage(&self, referenced: &HashSet<&str>) {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let referenced: HashSet<&str> = referenced
            .iter()
            .copied()
            .chain(pending.keys().map(String::as_str))
            .collect();
        let remove_unreferenced = |dir: PathBuf, strip: &str| {
            let Ok(entries) = fs::read_dir(&dir) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = name.strip_suffix(strip).unwrap_or(&name);
                if !referenced.contains(key) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        };
        remove_unreferenced(self.root.join("blobs/sha256"), "");
        if let Ok(engines) = fs::read_dir(self.root.join("cache")) {
            for engine in engines.flatten() {
                remove_unreferenced(engine.path(), ".cwasm");
            }
        }
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, path)?;
            // The rename is only durable once the directory entry is.
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl DesiredState for DataDir {
    fn load(&self) -> anyhow::Result<(Meta, Revision)> {
        let meta = self.load_meta()?;
        *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = meta.revision;
        let revision = meta.revision;
        Ok((meta, revision))
    }

    fn commit(&self, expected: Revision, next: &Meta) -> Result<Revision, CommitError> {
        let mut current = self.revision.lock().unwrap_or_else(|e| e.into_inner());
        if *current != expected {
            return Err(CommitError::Conflict {
                expected,
                current: *current,
            });
        }
        let mut next = next.clone();
        next.revision = expected + 1;
        self.save_meta(&next)?;
        *current = next.revision;
        Ok(next.revision)
    }
}

impl BlobStore for DataDir {
    fn put(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        self.put_blob(digest, bytes)
    }

    fn get(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        self.read_blob(digest)
    }

    fn hold(&self, digest: &str) -> BlobHold {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending.entry(digest.to_string()).or_default() += 1;
        BlobHold::new(Pending {
            pending: Arc::clone(&self.pending),
            digest: digest.to_string(),
        })
    }

    fn retain(&self, referenced: &HashSet<&str>) {
        self.collect_garbage(referenced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(digest: &str) -> ModelVersion {
        ModelVersion {
            digest: digest.into(),
            created_at: format!("t-{digest}"),
            size: 1,
            target: Default::default(),
            max_batch: 1,
            public: false,
        }
    }

    #[test]
    fn versions_keep_the_live_one_and_the_newest() {
        let mut r = ModelRecord::default();
        for d in ["a", "b", "c"] {
            r.push_live(model(d), 2);
        }
        let kept: Vec<&str> = r.versions.iter().map(|v| v.digest.as_str()).collect();
        assert_eq!(
            (kept, r.live.as_str(), r.updated_at.as_str()),
            (vec!["b", "c"], "c", "t-c")
        );
        // The same bytes again: live again, not kept twice.
        assert!(r.make_live("b", "later".into()));
        assert!(!r.make_live("b", "again".into()));
        r.push_live(model("c"), 2);
        assert_eq!((r.versions.len(), r.live.as_str()), (2, "c"));
        // At the limit the live version survives even when it is the oldest.
        assert!(r.make_live("b", "later".into()));
        r.push_live(model("d"), 1);
        assert_eq!(r.live_version().map(|v| v.digest.as_str()), Some("d"));
        r.versions.insert(0, model("old"));
        r.live = "old".into();
        r.push_live(model("old"), 1);
        assert_eq!(r.versions.len(), 1);
        assert_eq!(r.live_version().map(|v| v.digest.as_str()), Some("old"));
    }

    #[test]
    fn blobs_and_meta_round_trip() {
        let dir = std::env::temp_dir().join(format!("tensorlet-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = DataDir::open(&dir).unwrap();
        let d = digest(b"abc");
        store.put_blob(&d, b"abc").unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), b"abc");
        let mut meta = store.load_meta().unwrap();
        assert!(meta.functions.is_empty());
        meta.functions.insert(
            "f".parse().unwrap(),
            FunctionRecord {
                live: d.clone(),
                ..FunctionRecord::default()
            },
        );
        store.save_meta(&meta).unwrap();
        assert_eq!(
            store.load_meta().unwrap().functions[&"f".parse().unwrap()].live,
            d
        );
        store.collect_garbage(&HashSet::new());
        assert!(store.read_blob(&d).is_err());
        fs::write(dir.join("tmp/leftover"), b"x").unwrap();
        DataDir::open(&dir).unwrap();
        assert!(!dir.join("tmp/leftover").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod seam_tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tensorlet-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn commits_move_the_revision_and_refuse_stale_writers() {
        let dir = scratch("desired");
        let store = DataDir::open(&dir).unwrap();
        let (mut meta, rev) = store.load().unwrap();
        assert_eq!(rev, 0);
        meta.tenants.clear();
        assert_eq!(store.commit(0, &meta).unwrap(), 1);
        assert_eq!(store.commit(1, &meta).unwrap(), 2);
        // A writer that read revision 1 is too late: nothing is written.
        let stale = store.commit(1, &meta).unwrap_err();
        assert!(matches!(
            stale,
            CommitError::Conflict {
                expected: 1,
                current: 2
            }
        ));
        // Durable: a fresh open sees revision 2.
        drop(store);
        let (_, rev) = DataDir::open(&dir).unwrap().load().unwrap();
        assert_eq!(rev, 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn held_blobs_survive_collection() {
        let dir = scratch("blobs");
        let store = DataDir::open(&dir).unwrap();
        let (a, b) = (digest(b"a"), digest(b"b"));
        let hold = store.hold(&a);
        store.put(&a, b"a").unwrap();
        store.put(&b, b"b").unwrap();
        store.retain(&HashSet::new());
        assert_eq!(store.get(&a).unwrap(), b"a", "held");
        assert!(store.get(&b).is_err(), "collected");
        drop(hold);
        store.retain(&HashSet::new());
        assert!(store.get(&a).is_err(), "collected once released");
        let _ = fs::remove_dir_all(&dir);
    }
}
