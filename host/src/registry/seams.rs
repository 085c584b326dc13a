//! Where a registry commits and stores ([`Seams`]), and compiled code loaded through them.

use std::sync::Arc;

use crate::desired::{BlobStore, DesiredState};
use crate::runtime::{Prepared, Runtime};
use crate::store::DataDir;

/// Where a registry commits and stores: the data directory alone (one node), or a fleet's
/// engine and registry with the data directory as the node's copy.
pub struct Seams {
    /// The node's data directory.
    pub local: Arc<DataDir>,
    /// Where changes are committed.
    pub desired: Arc<dyn DesiredState>,
    /// Where blobs are stored.
    pub blobs: Arc<dyn BlobStore>,
    /// Whether `desired` is not the data directory (see [`Registry::mirror`]).
    pub mirror: bool,
    /// In a fleet, the engine's id (`nats:{bucket}`): a data directory whose revision counts in
    /// another (a node that ran alone) starts from revision 0 there.
    pub engine: Option<String>,
}

impl Seams {
    /// A single node: the data directory is both.
    pub fn local(local: Arc<DataDir>) -> Self {
        Self {
            desired: Arc::clone(&local) as Arc<dyn DesiredState>,
            blobs: Arc::clone(&local) as Arc<dyn BlobStore>,
            local,
            mirror: false,
            engine: None,
        }
    }
}

/// Compiled code for `digest`: from the node's cache, else compiled from the blob (which
/// `blobs` may have to fetch) and cached.
pub(super) fn load_prepared(
    runtime: &Runtime,
    store: &DataDir,
    blobs: &dyn BlobStore,
    digest: &str,
) -> anyhow::Result<Prepared> {
    let cache = store.cache_path(runtime.engine_hash(), digest);
    let component = match runtime.deserialize_file(&cache) {
        Ok(c) => c,
        Err(_) => {
            let bytes = blobs.get(digest)?;
            let c = runtime.compile(&bytes).map_err(anyhow::Error::msg)?;
            if let Ok(code) = runtime.serialize(&c) {
                let _ = store.put_cache(runtime.engine_hash(), digest, &code);
            }
            c
        }
    };
    runtime.prepare(&component).map_err(anyhow::Error::msg)
}
