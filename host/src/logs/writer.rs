//! The writer thread: the only one that writes or deletes log files. It takes the lines of many
//! requests at a time, appends each function's to its newest segment (one write per function
//! per batch), then tells followers; it keeps the caps (function, tenant, node) before every
//! line, and drops segments by age on a timer.
//!
//! Caps hold at all times, counting what is about to be written: a line first goes to a new
//! segment when the current one would outgrow [`LogsConfig::segment_bytes`], then the oldest
//! segments go until the line fits under every cap it counts against. Old segments of the
//! function itself go for its own cap; for a tenant's or the node's, whichever of its functions'
//! segments was last written longest ago.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::files::{
    function_dir, modified_secs, remove_function_dir, scan, segment_path, segments,
};
use super::follow::{Followed, Followers};
use super::{LogLine, LogsConfig, Position, Shared, Stream};
use crate::key::FunctionKey;
use crate::time::now_secs;

/// What the writer is asked to do, in order.
pub(super) enum Msg {
    /// Store a request's lines; `dropped` lines of the function were dropped before them.
    Append {
        key: Arc<FunctionKey>,
        generation: u64,
        dropped: u64,
        lines: Vec<LogLine>,
        /// What they count in the queue.
        bytes: usize,
    },
    /// Delete a function's logs; lines of handles up to `generation` are not written any more.
    Remove { key: FunctionKey, generation: u64 },
    /// Answer once everything before it is done.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Messages handled before their lines are written out and followers told.
const BATCH: usize = 256;
/// How often a failing disk is reported, at most.
const COMPLAIN_EVERY: Duration = Duration::from_secs(60);

/// A segment no longer written to.
struct Closed {
    seq: u64,
    bytes: u64,
    /// When it was last written (seconds since the epoch).
    newest: u64,
}

/// The segment a function writes to now.
struct Active {
    seq: u64,
    /// Its size, `pending` included.
    bytes: u64,
    /// When its first and its last line were written.
    oldest: u64,
    newest: u64,
    /// Lines of this batch, not in the file yet.
    pending: Vec<u8>,
}

/// One function's log.
struct FunctionFiles {
    dir: PathBuf,
    /// Oldest first.
    closed: VecDeque<Closed>,
    active: Option<Active>,
    /// Its segments' bytes, the active one's pending lines included.
    bytes: u64,
    next_seq: u64,
}

impl FunctionFiles {
    /// The segments in `dir`: all closed (a restarted node never appends to a file it did not
    /// start, whose last line a crash may have cut short). Empty files go.
    fn load(dir: PathBuf) -> Self {
        let mut f = Self {
            closed: VecDeque::new(),
            active: None,
            bytes: 0,
            next_seq: 1,
            dir,
        };
        for (seq, path) in segments(&f.dir) {
            f.next_seq = seq + 1;
            let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if bytes == 0 {
                let _ = fs::remove_file(&path);
                continue;
            }
            let newest = modified_secs(&path).unwrap_or(0);
            f.closed.push_back(Closed { seq, bytes, newest });
            f.bytes += bytes;
        }
        f
    }
}

/// Which functions a cap counts.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Function(&'a FunctionKey),
    Tenant(&'a str),
    Node,
}

impl Scope<'_> {
    fn contains(&self, key: &FunctionKey) -> bool {
        match self {
            Scope::Function(k) => *k == key,
            Scope::Tenant(t) => key.tenant() == Some(t),
            Scope::Node => true,
        }
    }
}

/// What a batch leaves to do once its lines are in the files.
#[derive(Default)]
struct Batch {
    messages: usize,
    /// The lines written, for followers. Whether a function has any is asked once the lines
    /// are in its file: a follower that came meanwhile may have read the file before that.
    written: HashMap<FunctionKey, Vec<(Position, LogLine)>>,
    barriers: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// The writer's state: every function's files and the totals the caps count.
pub(super) struct Writer {
    root: PathBuf,
    config: LogsConfig,
    functions: HashMap<FunctionKey, FunctionFiles>,
    tenants: HashMap<String, u64>,
    total: u64,
    /// The newest handle generation removed, by function.
    removed: HashMap<FunctionKey, u64>,
    /// Functions with lines not in their file yet.
    dirty: HashSet<FunctionKey>,
    shared: Arc<Shared>,
    followers: Arc<Followers>,
    complained: Option<Instant>,
}

impl Writer {
    /// Loads what `root` holds, deleting the logs of functions not in `known`, and applies
    /// `config` to it at once (a smaller cap or age takes effect at start).
    pub(super) fn open(
        root: &Path,
        config: LogsConfig,
        known: &HashSet<&FunctionKey>,
        shared: Arc<Shared>,
        followers: Arc<Followers>,
    ) -> std::io::Result<Writer> {
        fs::create_dir_all(root)?;
        let mut w = Writer {
            root: root.to_path_buf(),
            config,
            functions: HashMap::new(),
            tenants: HashMap::new(),
            total: 0,
            removed: HashMap::new(),
            dirty: HashSet::new(),
            shared,
            followers,
            complained: None,
        };
        for (key, dir) in scan(root) {
            if !known.contains(&key) {
                remove_function_dir(root, &key);
                continue;
            }
            let f = FunctionFiles::load(dir);
            w.count(&key, f.bytes as i64);
            w.functions.insert(key, f);
        }
        w.sweep(now_secs());
        let keys: Vec<FunctionKey> = w.functions.keys().cloned().collect();
        for key in &keys {
            w.make_room(key, 0);
        }
        Ok(w)
    }

    /// Handles messages until every sender is gone.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        // Often enough that nothing outlives `max_age` by much more than a quarter of it.
        let every =
            (self.config.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut next_sweep = Instant::now() + every;
        loop {
            match rx.recv_timeout(next_sweep.saturating_duration_since(Instant::now())) {
                Ok(first) => {
                    let mut batch = Batch::default();
                    self.handle(first, &mut batch);
                    while batch.messages < BATCH {
                        match rx.try_recv() {
                            Ok(msg) => self.handle(msg, &mut batch),
                            Err(_) => break,
                        }
                    }
                    self.finish(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_sweep {
                self.sweep(now_secs());
                self.flush();
                next_sweep = Instant::now() + every;
            }
        }
        self.flush();
    }

    fn handle(&mut self, msg: Msg, batch: &mut Batch) {
        batch.messages += 1;
        match msg {
            Msg::Append {
                key,
                generation,
                dropped,
                lines,
                bytes,
            } => {
                self.shared.queued.fetch_sub(bytes, Ordering::Relaxed);
                if self.removed.get(&*key).is_some_and(|&g| g >= generation) {
                    return;
                }
                self.append(&key, dropped, lines, batch);
            }
            Msg::Remove { key, generation } => self.remove(key, generation, batch),
            Msg::Barrier(done) => batch.barriers.push(done),
        }
    }

    /// Writes the batch's lines out, then tells followers and whoever waits on a barrier.
    fn finish(&mut self, batch: Batch) {
        self.flush();
        for (key, lines) in batch.written {
            if self.followers.wants(&key) {
                let lines = lines
                    .into_iter()
                    .map(|(pos, line)| Arc::new(Followed { pos, line }));
                self.followers.publish(&key, lines.collect());
            }
        }
        for done in batch.barriers {
            let _ = done.send(());
        }
    }

    fn append(&mut self, key: &FunctionKey, dropped: u64, lines: Vec<LogLine>, batch: &mut Batch) {
        let now = now_secs();
        let max_record = self.config.max_record(key);
        let marker = (dropped > 0).then(|| LogLine {
            time: crate::time::rfc3339(now),
            version: lines.first().map(|l| l.version.clone()).unwrap_or_default(),
            request_id: String::new(),
            stream: Stream::Stderr,
            line: format!(
                "[tensorlet: {dropped} lines of output dropped: the log writer was behind]"
            ),
        });
        let written = batch.written.entry(key.clone()).or_default();
        for line in marker.into_iter().chain(lines) {
            let mut record = serde_json::to_vec(&line).unwrap_or_default();
            record.push(b'\n');
            if record.len() as u64 > max_record {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let pos = self.place(key, &record, now);
            self.shared.written.fetch_add(1, Ordering::Relaxed);
            written.push((pos, line));
        }
    }

    /// Adds one record to the function's active segment (starting one if need be), after
    /// making room for it under every cap.
    fn place(&mut self, key: &FunctionKey, record: &[u8], now: u64) -> Position {
        let len = record.len() as u64;
        if !self.functions.contains_key(key) {
            let f = FunctionFiles::load(function_dir(&self.root, key));
            self.count(key, f.bytes as i64);
            self.functions.insert(key.clone(), f);
        }
        let segment_bytes = self.config.segment_bytes();
        let full = (self.functions[key].active.as_ref())
            .is_some_and(|a| a.bytes > 0 && a.bytes + len > segment_bytes);
        if full {
            self.close_active(key);
        }
        self.make_room(key, len);
        let f = self.functions.get_mut(key).expect("loaded above");
        let a = match &mut f.active {
            Some(a) => a,
            None => {
                let seq = f.next_seq;
                f.next_seq += 1;
                f.active.insert(Active {
                    seq,
                    bytes: 0,
                    oldest: now,
                    newest: now,
                    pending: Vec::new(),
                })
            }
        };
        let pos = Position {
            segment: a.seq,
            offset: a.bytes,
        };
        a.pending.extend_from_slice(record);
        a.bytes += len;
        a.newest = now;
        f.bytes += len;
        self.count(key, len as i64);
        self.dirty.insert(key.clone());
        pos
    }

    /// Deletes old segments until `len` more bytes of `key` fit under its function's, its
    /// tenant's and the node's cap.
    fn make_room(&mut self, key: &FunctionKey, len: u64) {
        let c = self.config;
        while self
            .functions
            .get(key)
            .is_some_and(|f| f.bytes + len > c.max_bytes_per_function)
        {
            if !self.evict(Scope::Function(key), key) {
                break;
            }
        }
        if let Some(tenant) = key.tenant() {
            while self.tenants.get(tenant).copied().unwrap_or(0) + len > c.max_bytes_per_tenant {
                if !self.evict(Scope::Tenant(tenant), key) {
                    break;
                }
            }
        }
        while self.total + len > c.max_bytes_total {
            if !self.evict(Scope::Node, key) {
                break;
            }
        }
    }

    /// Deletes one segment in `scope`: the closed one last written longest ago; without closed
    /// ones, the active segment of another function (the longest idle), else `writing`'s own.
    /// False when `scope` has no segment at all.
    fn evict(&mut self, scope: Scope<'_>, writing: &FunctionKey) -> bool {
        let oldest_closed = (self.functions.iter())
            .filter(|(k, _)| scope.contains(k))
            .filter_map(|(k, f)| f.closed.front().map(|c| ((c.newest, c.seq), k)))
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, k)| k.clone());
        if let Some(key) = oldest_closed {
            let f = self.functions.get_mut(&key).expect("found above");
            let c = f.closed.pop_front().expect("found above");
            delete_file(&segment_path(&f.dir, c.seq));
            f.bytes -= c.bytes;
            self.count(&key, -(c.bytes as i64));
            return true;
        }
        let active = (self.functions.iter())
            .filter(|(k, f)| scope.contains(k) && f.active.is_some())
            .map(|(k, f)| ((k == writing, f.active.as_ref().map_or(0, |a| a.newest)), k))
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, k)| k.clone());
        match active {
            Some(key) => {
                self.drop_active(&key);
                true
            }
            None => false,
        }
    }

    /// Deletes a function's active segment, unwritten lines and all.
    fn drop_active(&mut self, key: &FunctionKey) {
        let Some(f) = self.functions.get_mut(key) else {
            return;
        };
        if let Some(a) = f.active.take() {
            delete_file(&segment_path(&f.dir, a.seq));
            f.bytes -= a.bytes;
            self.count(key, -(a.bytes as i64));
        }
    }

    /// Writes out a function's active segment and starts the next line in a new one.
    fn close_active(&mut self, key: &FunctionKey) {
        self.write_out(key);
        if let Some(f) = self.functions.get_mut(key)
            && let Some(a) = f.active.take()
        {
            f.closed.push_back(Closed {
                seq: a.seq,
                bytes: a.bytes,
                newest: a.newest,
            });
        }
    }

    /// Appends a function's pending lines to its active segment's file. After a failed write
    /// the segment is closed: its end may be a torn line, which must stay its last.
    fn write_out(&mut self, key: &FunctionKey) {
        let Some(f) = self.functions.get_mut(key) else {
            return;
        };
        let Some(a) = f.active.as_mut().filter(|a| !a.pending.is_empty()) else {
            return;
        };
        let path = segment_path(&f.dir, a.seq);
        let written = fs::create_dir_all(&f.dir).and_then(|()| {
            let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
            file.write_all(&a.pending)
        });
        a.pending.clear();
        if let Err(e) = written {
            let first = self
                .complained
                .is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY);
            if first {
                self.complained = Some(Instant::now());
                tracing::warn!(file = %path.display(), "cannot write guest logs: {e}");
            }
            self.close_active(key);
        }
    }

    /// Writes out every function's pending lines.
    fn flush(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            self.write_out(&key);
        }
    }

    /// Deletes a function's logs and refuses lines of its handles up to `generation`.
    fn remove(&mut self, key: FunctionKey, generation: u64, batch: &mut Batch) {
        let newest = self.removed.entry(key.clone()).or_default();
        *newest = (*newest).max(generation);
        if let Some(f) = self.functions.remove(&key) {
            self.count(&key, -(f.bytes as i64));
        }
        self.dirty.remove(&key);
        batch.written.remove(&key);
        remove_function_dir(&self.root, &key);
        self.followers.end(&key);
    }

    /// Deletes segments last written before `max_age`, and closes active segments that began
    /// before half of it (so that they can go in time).
    fn sweep(&mut self, now: u64) {
        let max_age = self.config.max_age.as_secs();
        let (cutoff, close_before) = (now.saturating_sub(max_age), now.saturating_sub(max_age / 2));
        let keys: Vec<FunctionKey> = self.functions.keys().cloned().collect();
        for key in keys {
            loop {
                let f = &self.functions[&key];
                if f.closed.front().is_none_or(|c| c.newest >= cutoff) {
                    break;
                }
                self.evict(Scope::Function(&key), &key);
            }
            let f = &self.functions[&key];
            match &f.active {
                Some(a) if a.newest < cutoff => self.drop_active(&key),
                Some(a) if a.oldest < close_before => self.close_active(&key),
                _ => {}
            }
        }
    }

    /// Adds `delta` bytes of `key` to its tenant's and the node's totals.
    fn count(&mut self, key: &FunctionKey, delta: i64) {
        let add = |n: &mut u64| *n = n.saturating_add_signed(delta);
        if let Some(t) = key.tenant() {
            add(self.tenants.entry(t.to_string()).or_default());
        }
        add(&mut self.total);
        self.shared.bytes.store(self.total, Ordering::Relaxed);
    }
}

/// Deletes a segment file; one already gone is fine.
fn delete_file(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), "cannot delete a guest log segment: {e}");
    }
}
