//! Following a function's log: every new line goes, once it is on disk, to the followers of its
//! function through a bounded broadcast channel. A follower that falls more than the channel
//! holds behind reads what it missed from the files instead, so no follower can make the writer
//! wait or hold more than the channel's lines.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use super::reader::{self, Read};
use super::{LogLine, LogQuery, Position};
use crate::key::FunctionKey;

/// New lines a function's followers may be behind before they read from the files.
const FOLLOW_BUFFER: usize = 1024;
/// Lines a follower that fell behind reads back from the files at most.
const CATCH_UP_LINES: usize = 1000;

/// A line just written, as followers get it.
pub(super) struct Followed {
    pub(super) pos: Position,
    pub(super) line: LogLine,
}

/// The followers of every function.
#[derive(Default)]
pub(super) struct Followers {
    senders: Mutex<HashMap<FunctionKey, broadcast::Sender<Arc<Followed>>>>,
    /// The node is stopping: streams end, and new ones end at once.
    closed: AtomicBool,
}

impl Followers {
    fn senders(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<FunctionKey, broadcast::Sender<Arc<Followed>>>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new follower of `key`.
    pub(super) fn subscribe(&self, key: &FunctionKey) -> broadcast::Receiver<Arc<Followed>> {
        let mut senders = self.senders();
        if self.closed.load(Ordering::Relaxed) {
            return broadcast::channel(1).1;
        }
        // Forget functions whose followers have all gone.
        senders.retain(|_, tx| tx.receiver_count() > 0);
        senders
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe()
    }

    /// Whether anyone follows `key` (else the writer keeps no copies of its lines).
    pub(super) fn wants(&self, key: &FunctionKey) -> bool {
        self.senders()
            .get(key)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Sends lines just written to `key`'s followers.
    pub(super) fn publish(&self, key: &FunctionKey, lines: Vec<Arc<Followed>>) {
        if let Some(tx) = self.senders().get(key) {
            for line in lines {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    }

    /// Ends the streams of `key`'s followers (the function was deleted).
    pub(super) fn end(&self, key: &FunctionKey) {
        self.senders().remove(key);
    }

    /// Ends every stream, now and from now on.
    pub(super) fn close(&self) {
        let mut senders = self.senders();
        self.closed.store(true, Ordering::Relaxed);
        senders.clear();
    }
}

/// One follower: the lines already stored that its query asks for, then new ones as they are
/// written.
pub struct Follow {
    ready: VecDeque<LogLine>,
    rx: broadcast::Receiver<Arc<Followed>>,
    /// Lines at or before it were read from the files already.
    last: Position,
    query: LogQuery,
    dir: PathBuf,
    max_age: Duration,
}

impl Follow {
    pub(super) fn new(
        read: Read,
        rx: broadcast::Receiver<Arc<Followed>>,
        query: LogQuery,
        dir: PathBuf,
        max_age: Duration,
    ) -> Self {
        Self {
            ready: read.lines.into_iter().map(|(_, line)| line).collect(),
            rx,
            last: read.upto,
            query,
            dir,
            max_age,
        }
    }

    /// The next line; `None` once the stream ends (the function was deleted, or the node is
    /// stopping).
    pub async fn next(&mut self) -> Option<LogLine> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Some(line);
            }
            match self.rx.recv().await {
                Ok(new) if new.pos > self.last => {
                    self.last = new.pos;
                    if self.query.matches(&new.line) {
                        return Some(new.line.clone());
                    }
                }
                Ok(_already_read) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Reads back from the files what this follower missed while it was behind (the newest
    /// [`CATCH_UP_LINES`] of it).
    async fn catch_up(&mut self) {
        let (dir, after) = (self.dir.clone(), self.last);
        let mut query = self.query.clone();
        query.limit = CATCH_UP_LINES;
        let oldest = crate::time::now_secs().saturating_sub(self.max_age.as_secs());
        let read =
            tokio::task::spawn_blocking(move || reader::read(&dir, &query, Some(after), oldest));
        if let Ok(read) = read.await {
            self.last = self.last.max(read.upto);
            self.ready
                .extend(read.lines.into_iter().map(|(_, line)| line));
        }
    }
}
