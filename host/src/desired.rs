//! The two storage seams of the registry, as in the fleet design (../shared/notes/distributed.md
//! §3.1): the **desired state** (every function, model and tenant record, committed as a whole
//! at a revision) and the **blobs** (components and models, content-addressed by sha256). The
//! registry commits every admin change through [`DesiredState::commit`] and stores bytes through
//! [`BlobStore`], never through files directly, so a fleet backend (NATS JetStream KV, an OCI
//! registry) plugs in behind the same traits. The data directory ([`crate::store::DataDir`]) is
//! the first implementation of both.
//!
//! Both traits are blocking: callers run them on the blocking pool.

use std::collections::HashSet;
use std::io;

use crate::store::Meta;

/// Position of the desired state in its history: one more with every committed change.
pub type Revision = u64;

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Someone else committed since `expected`: re-read and apply the change again.
    #[error("the desired state moved on to revision {current} (expected {expected})")]
    Conflict {
        /// What the committer read.
        expected: Revision,
        /// What is there now.
        current: Revision,
    },
    /// The fleet's engine is unreachable or did not confirm the change in time.
    #[error("{0}")]
    Unavailable(String),
    /// The store could not be written; nothing changed.
    #[error("cannot save the desired state: {0}")]
    Io(#[from] io::Error),
}

/// Where the node's desired state lives.
pub trait DesiredState: Send + Sync {
    /// The state as last committed, and its revision (0 for a store never written).
    fn load(&self) -> anyhow::Result<(Meta, Revision)>;

    /// Makes `next` the state at `expected + 1`, if the state is still at `expected`; durable
    /// before it returns (a change is acknowledged only once committed).
    fn commit(&self, expected: Revision, next: &Meta) -> Result<Revision, CommitError>;
}

/// Content-addressed bytes: a blob is named by the lowercase hex sha256 of its content.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` under `digest` (their sha256), durably; nothing to do if present.
    fn put(&self, digest: &str, bytes: &[u8]) -> io::Result<()>;

    /// The bytes of `digest`, checked against it.
    fn get(&self, digest: &str) -> anyhow::Result<Vec<u8>>;

    /// Keeps `digest` from [`BlobStore::retain`] until the hold is dropped: a blob is stored
    /// before the commit that refers to it, and a collection in between must not take it.
    fn hold(&self, digest: &str) -> BlobHold;

    /// Removes every blob not in `referenced` (and not held).
    fn retain(&self, referenced: &HashSet<&str>);
}

/// A blob kept from collection; see [`BlobStore::hold`].
pub struct BlobHold(#[allow(dead_code)] Box<dyn Send + Sync>);

impl BlobHold {
    /// A hold that lasts as long as `guard` lives.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self(Box::new(guard))
    }
}
