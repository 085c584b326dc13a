//! Reading a function's log: its segment files, newest first, until the query has its lines.
//! Readers share no state with the writer: a line still being written, or one a crash cut short,
//! has no newline yet and is not a line; anything that does not parse is skipped.

use std::path::Path;

use super::files::{modified_secs, segments};
use super::{LogLine, LogQuery, Position};

/// What one read found.
pub(super) struct Read {
    /// The lines asked for, oldest first.
    pub(super) lines: Vec<(Position, LogLine)>,
    /// The position of the newest whole line seen, asked for or not: lines past it are new.
    pub(super) upto: Position,
}

/// The newest lines (at most `query.limit`) of the function whose segments are in `dir` that
/// `query` asks for, none older than `oldest` (seconds since the epoch: `max_age`), and with
/// `after`, only lines past it.
pub(super) fn read(dir: &Path, query: &LogQuery, after: Option<Position>, oldest: u64) -> Read {
    let mut query = query.clone();
    query.since = Some(query.since.unwrap_or(0).max(oldest));
    let since = query.since.unwrap_or(0);
    let mut newest_first: Vec<Vec<(Position, LogLine)>> = Vec::new();
    let (mut found, mut upto) = (0, Position::default());
    for (segment, path) in segments(dir).into_iter().rev() {
        if found >= query.limit || after.is_some_and(|a| segment < a.segment) {
            break;
        }
        // A segment last written before `since` holds only older lines, and so do those
        // before it.
        if modified_secs(&path).is_some_and(|m| m < since) {
            break;
        }
        // Deleted since it was listed (retention): its lines are gone.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let mut lines = Vec::new();
        let mut offset = 0;
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let pos = Position { segment, offset };
            offset += chunk.len() as u64;
            let Some(text) = chunk.strip_suffix(b"\n") else {
                break;
            };
            upto = upto.max(pos);
            if after.is_some_and(|a| pos <= a) {
                continue;
            }
            match serde_json::from_slice::<LogLine>(text) {
                Ok(line) if query.matches(&line) => lines.push((pos, line)),
                _ => {}
            }
        }
        found += lines.len();
        newest_first.push(lines);
    }
    let mut lines: Vec<(Position, LogLine)> = newest_first.into_iter().rev().flatten().collect();
    let excess = lines.len().saturating_sub(query.limit);
    lines.drain(..excess);
    Read { lines, upto }
}
