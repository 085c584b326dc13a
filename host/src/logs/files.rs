//! Where guest logs live on disk: one directory per function, segment files numbered in the
//! order they were started.

use std::fs;
use std::path::{Path, PathBuf};

use crate::key::FunctionKey;

/// The directory of a function's segments: `functions/<name>` on a node without tenants,
/// `tenants/<tenant>/<name>` for a tenant's (names never hold a `/`, so the two cannot meet).
pub(super) fn function_dir(root: &Path, key: &FunctionKey) -> PathBuf {
    match key.tenant() {
        Some(t) => root.join("tenants").join(t).join(key.name()),
        None => root.join("functions").join(key.name()),
    }
}

/// Segment `seq` of the function in `dir`.
pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:012}.jsonl"))
}

/// The segments in `dir`, oldest first; nothing when there is no such directory.
pub(super) fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let seq = e
                .file_name()
                .to_str()?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()?;
            Some((seq, e.path()))
        })
        .collect();
    found.sort_unstable_by_key(|(seq, _)| *seq);
    found
}

/// Every function directory under `root`, with its function's key.
pub(super) fn scan(root: &Path) -> Vec<(FunctionKey, PathBuf)> {
    let mut found: Vec<(FunctionKey, PathBuf)> = subdirs(&root.join("functions"))
        .into_iter()
        .map(|(name, dir)| (FunctionKey::new(None, &name), dir))
        .collect();
    for (tenant, tenant_dir) in subdirs(&root.join("tenants")) {
        for (name, dir) in subdirs(&tenant_dir) {
            found.push((FunctionKey::new(Some(&tenant), &name), dir));
        }
    }
    found
}

/// The directories in `dir`, by name.
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_str()?.to_string();
            e.file_type().ok()?.is_dir().then(|| (name, e.path()))
        })
        .collect()
}

/// When a file was last written, in whole seconds since the epoch.
pub(super) fn modified_secs(path: &Path) -> Option<u64> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
}

/// Removes a function's directory and, when it was a tenant's last, the tenant's.
pub(super) fn remove_function_dir(root: &Path, key: &FunctionKey) {
    let dir = function_dir(root, key);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), "cannot delete guest logs: {e}"),
    }
    if key.tenant().is_some()
        && let Some(parent) = dir.parent()
    {
        // Fails, as it should, while the tenant has other functions' logs.
        let _ = fs::remove_dir(parent);
    }
}
