//! The audit log: one JSON line per admin change (every admin call but reads), in
//! `DATA/audit.log`: when, who (`operator`, `tenant:NAME` or `unauthenticated`), what (method
//! and path; never the query, which may hold environment values) and the resulting status.
//!
//! Lines are appended with one `write` each (`O_APPEND`), so concurrent records never interleave;
//! accepted changes are also fsynced before the response goes out. A line cut short by a crash
//! is skipped when the log is read. Refused calls are recorded too, so the log is bounded: past
//! `audit_log_max` bytes it moves to `audit.log.1` (replacing the one before) and starts again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::api::AuditRecord;

use crate::time::now_rfc3339;

/// The node's audit log (cheap to clone: clones share the file).
#[derive(Clone)]
pub struct Audit {
    path: PathBuf,
    max: u64,
    file: Arc<Mutex<File>>,
    /// In a fleet, the fleet-wide log in the engine, which every node appends to.
    fleet: Option<Arc<crate::fleet::engine::Engine>>,
}

impl Audit {
    /// Opens (or creates) `DATA/audit.log`, to be moved aside past `max` bytes.
    pub fn open(data_dir: &Path, max: u64) -> std::io::Result<Self> {
        let path = data_dir.join("audit.log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            max,
            file: Arc::new(Mutex::new(file)),
            fleet: None,
        })
    }

    /// Also records every call in the fleet's log (a JetStream stream), and reads from it.
    pub fn with_fleet(mut self, engine: Arc<crate::fleet::engine::Engine>) -> Self {
        self.fleet = Some(engine);
        self
    }

    /// Records one admin call.
    pub async fn record(&self, who: &str, method: &str, path: &str, status: u16) {
        let mut shown: String = path.chars().take(256).collect();
        if shown.len() < path.len() {
            shown.push('…');
        }
        let record = AuditRecord {
            time: now_rfc3339(),
            who: who.to_string(),
            action: format!("{method} {shown}"),
            status,
            node: self.fleet.as_ref().map(|e| e.node_id().to_string()),
        };
        if let Some(engine) = &self.fleet
            && let Err(e) = engine.audit_append(&record).await
        {
            // The local line below still holds it.
            tracing::warn!("cannot add to the fleet's audit log: {e}");
        }
        let Ok(mut line) = serde_json::to_string(&record) else {
            return;
        };
        line.push('\n');
        let file = Arc::clone(&self.file);
        let (path, max) = (self.path.clone(), self.max);
        let durable = (200..300).contains(&status);
        let written = tokio::task::spawn_blocking(move || {
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            if f.metadata()?.len() >= max {
                std::fs::rename(&path, path.with_extension("log.1"))?;
                *f = OpenOptions::new().create(true).append(true).open(&path)?;
            }
            f.write_all(line.as_bytes())?;
            if durable {
                f.sync_data()?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(?written, "cannot write the audit log");
        }
    }

    /// The last `n` records, oldest first: the fleet's when in a fleet and the engine answers,
    /// else this node's.
    pub async fn tail(&self, n: usize) -> Vec<AuditRecord> {
        if let Some(engine) = &self.fleet {
            match engine.audit_tail(n).await {
                Ok(records) => return records,
                Err(e) => tracing::warn!("fleet audit log unreadable, showing this node's: {e}"),
            }
        }
        let path = self.path.clone();
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let records: Vec<AuditRecord> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let skip = records.len().saturating_sub(n);
        records.into_iter().skip(skip).collect()
    }
}
