//! Guest output, kept per function in the data directory:
//!
//! ```text
//! DATA/logs/functions/<name>/<seq>.jsonl          a node without tenants
//! DATA/logs/tenants/<tenant>/<name>/<seq>.jsonl   a tenant's function
//! ```
//!
//! Each segment is a file of JSON lines (`time`, `version`, `request_id`, `stream`, `line`).
//! The request path never touches a file: [`FunctionLog::append`] hands a request's lines to one
//! writer thread ([`writer`]) and returns; when the lines waiting for it hold more than
//! [`QUEUE_BYTES`], new lines are dropped and counted, and the next line written says how many.
//! The writer appends to the function's newest segment, starts a new one at a size, and keeps
//! every function, tenant and the node under their byte caps by deleting whole old segments;
//! segments past `max_age` go too. Readers ([`reader`]) read the files directly and skip what
//! they cannot parse (a line a crash cut short), so a restart loses nothing that was written.
//! Followers ([`follow`]) get each line as soon as it is on disk.

mod files;
mod follow;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::{format_size, parse_duration, parse_size};
use crate::key::FunctionKey;
pub use follow::Follow;
use follow::Followers;
use writer::{Msg, Writer};

/// Bytes of lines that may wait for the writer; past it, lines are dropped (and counted).
const QUEUE_BYTES: usize = 16 << 20;
/// What a line costs in the queue besides its text (its fields, the `Vec` slot).
const LINE_OVERHEAD: usize = 128;
/// The longest line the writer stores (its JSON). Captured lines are at most 4 KiB of text,
/// which JSON escaping can at most double; longer ones are not written, and neither is a line
/// longer than a cap it counts against.
const MAX_RECORD: u64 = 16 << 10;
/// The smallest cap accepted (a captured line of 4 KiB fits, with its fields).
const MIN_CAP: u64 = 8 << 10;
/// Lines `GET .../logs` answers with when it is not given a `limit`.
pub const DEFAULT_LIMIT: usize = 1000;
/// The most lines one query may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// `[logs]` in the config, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLogs {
    persist: Option<bool>,
    max_bytes_per_function: Option<String>,
    max_bytes_per_tenant: Option<String>,
    max_bytes_total: Option<String>,
    max_age: Option<String>,
}

/// How much guest output the node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsConfig {
    /// Whether guest output is kept at all (`false`: it is discarded, and `tensorlet logs` has
    /// nothing to show).
    pub persist: bool,
    /// Bytes of one function's log files.
    pub max_bytes_per_function: u64,
    /// Bytes of all of one tenant's functions' log files (a node with tenants).
    pub max_bytes_per_tenant: u64,
    /// Bytes of every log file on the node.
    pub max_bytes_total: u64,
    /// Lines older than this are not shown, and their files are deleted.
    pub max_age: Duration,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self::from_file(FileLogs::default()).expect("the defaults are valid")
    }
}

impl LogsConfig {
    /// Checks `[logs]`.
    pub fn from_file(f: FileLogs) -> anyhow::Result<Self> {
        let size = |v: &Option<String>, default: u64, what: &str| -> anyhow::Result<u64> {
            let n = match v {
                Some(text) => parse_size(text).with_context(|| format!("logs.{what}"))?,
                None => default,
            };
            anyhow::ensure!(
                n >= MIN_CAP,
                "logs.{what} must be at least {}",
                format_size(MIN_CAP)
            );
            Ok(n)
        };
        let max_age = match &f.max_age {
            Some(text) => parse_duration(text).context("logs.max_age")?,
            None => Duration::from_secs(7 * 24 * 3600),
        };
        anyhow::ensure!(
            max_age >= Duration::from_secs(1),
            "logs.max_age must be at least 1s"
        );
        Ok(Self {
            persist: f.persist.unwrap_or(true),
            max_bytes_per_function: size(
                &f.max_bytes_per_function,
                16 << 20,
                "max_bytes_per_function",
            )?,
            max_bytes_per_tenant: size(&f.max_bytes_per_tenant, 256 << 20, "max_bytes_per_tenant")?,
            max_bytes_total: size(&f.max_bytes_total, 1 << 30, "max_bytes_total")?,
            max_age,
        })
    }

    /// Where a function's segment ends and the next begins: an eighth of its cap (so retention
    /// drops an eighth at a time), at least 1 KiB and at most 8 MiB (a query reads a segment at
    /// a time). A longer line has a segment of its own.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes_per_function / 8).clamp(1 << 10, 8 << 20)
    }

    /// The longest record `key` may write: one that fits under each of its caps.
    fn max_record(&self, key: &FunctionKey) -> u64 {
        let tenant = key.tenant().map_or(u64::MAX, |_| self.max_bytes_per_tenant);
        (MAX_RECORD.min(self.max_bytes_per_function))
            .min(tenant)
            .min(self.max_bytes_total)
    }
}

/// Which of the guest's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line of guest output, as stored and as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the request that wrote it finished (RFC 3339, UTC, whole seconds).
    pub time: String,
    /// The version id that wrote it.
    pub version: String,
    /// The request that wrote it.
    pub request_id: String,
    /// Which stream.
    pub stream: Stream,
    /// The text, control characters escaped.
    pub line: String,
}

/// Where a line is in its function's log: the segment and the byte offset in it. Later lines
/// have greater positions, which is how a follower tells lines it has seen from new ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    segment: u64,
    offset: u64,
}

/// Which lines to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// Only lines from this time on (seconds since the epoch).
    pub since: Option<u64>,
    /// Only lines of versions whose id starts with this (or that this starts with).
    pub version: Option<String>,
    /// Only the lines of this request.
    pub request_id: Option<String>,
    /// At most this many, the newest.
    pub limit: usize,
}

impl Default for LogQuery {
    fn default() -> Self {
        Self {
            since: None,
            version: None,
            request_id: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl LogQuery {
    /// Whether `line` is one the query asks for (the limit aside).
    pub fn matches(&self, line: &LogLine) -> bool {
        let version_ok = self.version.as_deref().is_none_or(|v| {
            let n = v.len().min(line.version.len());
            !v.is_empty() && v.as_bytes()[..n] == line.version.as_bytes()[..n]
        });
        let request_ok = (self.request_id.as_deref()).is_none_or(|r| r == line.request_id);
        let since_ok = self
            .since
            .is_none_or(|since| crate::time::parse_rfc3339(&line.time).is_some_and(|t| t >= since));
        version_ok && request_ok && since_ok
    }
}

/// Counters shared by the request path, the writer and `/metrics`.
#[derive(Default)]
struct Shared {
    /// Bytes of lines waiting for the writer ([`QUEUE_BYTES`]).
    queued: AtomicUsize,
    /// Lines dropped because the writer was behind (or could not write them).
    dropped: AtomicU64,
    /// Lines written.
    written: AtomicU64,
    /// Bytes of log files on disk now.
    bytes: AtomicU64,
}

/// The node's guest logs: the writer thread, and reading.
pub struct LogStore {
    root: PathBuf,
    config: LogsConfig,
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    followers: Arc<Followers>,
    /// Each [`FunctionLog`] gets the next; see [`FunctionLog::generation`].
    generations: AtomicU64,
}

impl LogStore {
    /// Opens `root` (DATA/logs), deletes the logs of functions not in `functions` (deleted
    /// while the node was down, or before their files were gone), and starts the writer.
    pub fn open<'a>(
        root: &Path,
        config: LogsConfig,
        functions: impl IntoIterator<Item = &'a FunctionKey>,
    ) -> anyhow::Result<LogStore> {
        let known: HashSet<&FunctionKey> = functions.into_iter().collect();
        let shared = Arc::new(Shared::default());
        let followers = Arc::new(Followers::default());
        let writer = Writer::open(
            root,
            config,
            &known,
            Arc::clone(&shared),
            Arc::clone(&followers),
        )
        .with_context(|| format!("opening the guest logs in {}", root.display()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tensorlet-logs".into())
            .spawn(move || writer.run(rx))
            .context("starting the guest log writer")?;
        Ok(LogStore {
            root: root.to_path_buf(),
            config,
            tx,
            shared,
            followers,
            generations: AtomicU64::new(1),
        })
    }

    /// The handle a function's versions write through.
    pub fn function(&self, key: &FunctionKey) -> FunctionLog {
        FunctionLog {
            key: Arc::new(key.clone()),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
            dropped: AtomicU64::new(0),
            retired: AtomicBool::new(!self.config.persist),
        }
    }

    /// Deletes a function's logs (it was deleted). Lines that handles given out so far still
    /// hand over are not written; a new handle (the name deployed again) starts a new log.
    /// Done in the background: [`LogStore::settled`] waits for it.
    pub fn remove(&self, key: &FunctionKey) {
        let _ = self.tx.send(Msg::Remove {
            key: key.clone(),
            generation: self.generations.load(Ordering::Relaxed) - 1,
        });
    }

    /// Waits until the writer has handled everything handed to it before this call.
    pub async fn settled(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Barrier(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// The lines of `key` that `query` asks for, oldest first. Reads files: call it off the
    /// async workers.
    pub fn read(&self, key: &FunctionKey, query: &LogQuery) -> Vec<LogLine> {
        let dir = files::function_dir(&self.root, key);
        let read = reader::read(&dir, query, None, self.oldest_shown());
        read.lines.into_iter().map(|(_, line)| line).collect()
    }

    /// The lines of `key` that `query` asks for, then each new one that matches as it is
    /// written. Reads files: call it off the async workers.
    pub fn follow(&self, key: &FunctionKey, query: LogQuery) -> Follow {
        // Subscribe before reading, so that no line falls between what was read and what is
        // sent; what both see is told apart by its position.
        let rx = self.followers.subscribe(key);
        let dir = files::function_dir(&self.root, key);
        let read = reader::read(&dir, &query, None, self.oldest_shown());
        Follow::new(read, rx, query, dir, self.config.max_age)
    }

    /// Ends every follower's stream (the node is stopping), now and from now on.
    pub fn close_followers(&self) {
        self.followers.close();
    }

    /// The oldest time a line may have and still be shown.
    fn oldest_shown(&self) -> u64 {
        crate::time::now_secs().saturating_sub(self.config.max_age.as_secs())
    }

    /// Appends the log series to `/metrics`.
    pub fn render(&self, out: &mut String) {
        let s = &self.shared;
        let series = [
            (
                "tensorlet_guest_log_lines_written_total",
                "counter",
                "Guest output lines written to the data directory.",
                s.written.load(Ordering::Relaxed),
            ),
            (
                "tensorlet_guest_log_lines_dropped_total",
                "counter",
                "Guest output lines dropped: the log writer was behind, or could not write.",
                s.dropped.load(Ordering::Relaxed),
            ),
            (
                "tensorlet_guest_log_bytes",
                "gauge",
                "Bytes of guest log files in the data directory.",
                s.bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// Where one function's versions hand their output: cheap to call on the request path, it never
/// waits for a disk.
pub struct FunctionLog {
    key: Arc<FunctionKey>,
    /// Tells this handle's lines from those of the function of the same name deployed again
    /// after a delete: the writer drops lines of handles as old as a removal.
    generation: u64,
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    /// Lines this function dropped since its last lines were queued.
    dropped: AtomicU64,
    /// The function was deleted, or the node keeps no guest output (`persist = false`).
    retired: AtomicBool,
}

impl FunctionLog {
    /// Stops queueing lines: the function was deleted (see [`LogStore::remove`]).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Queues a request's lines for the writer, or drops and counts them when the queue is full.
    pub fn append(&self, lines: Vec<LogLine>) {
        if lines.is_empty() || self.retired.load(Ordering::Relaxed) {
            return;
        }
        let bytes: usize = lines.iter().map(|l| l.line.len() + LINE_OVERHEAD).sum();
        let queued = self.shared.queued.fetch_add(bytes, Ordering::Relaxed);
        if queued + bytes > QUEUE_BYTES {
            self.shared.queued.fetch_sub(bytes, Ordering::Relaxed);
            let n = lines.len() as u64;
            self.dropped.fetch_add(n, Ordering::Relaxed);
            self.shared.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let msg = Msg::Append {
            key: Arc::clone(&self.key),
            generation: self.generation,
            dropped: self.dropped.swap(0, Ordering::Relaxed),
            lines,
            bytes,
        };
        if self.tx.send(msg).is_err() {
            // The writer is gone (the node is stopping).
            self.shared.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}
