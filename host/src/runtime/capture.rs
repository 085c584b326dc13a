//! Guest stdout/stderr capture. Each request writes into a small bounded buffer (a guest that
//! prints without end cannot grow host memory); after the request the buffer is split into lines
//! and handed to the function's log ([`crate::logs`]), which keeps them for `tensorlet logs`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes one request may log per stream; the rest is dropped and counted.
const CAPTURE_LIMIT: usize = 64 * 1024;
/// Longest single line kept.
const LINE_LIMIT: usize = 4096;

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

/// A per-request output stream that never blocks and never fails: over the limit it drops bytes.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Captured>>);

impl Capture {
    fn append(&self, data: &[u8]) {
        // A poisoned lock only means another writer panicked mid-append; the bytes are still valid.
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = CAPTURE_LIMIT.saturating_sub(c.bytes.len());
        let take = room.min(data.len());
        c.bytes.extend_from_slice(&data[..take]);
        c.dropped += data.len() - take;
    }

    /// Takes what was written so far, as lines.
    pub fn take_lines(&self) -> Vec<String> {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = std::mem::take(&mut c.bytes);
        let dropped = std::mem::take(&mut c.dropped);
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<String> = text.lines().map(|l| truncate(l, LINE_LIMIT)).collect();
        if dropped > 0 {
            lines.push(format!(
                "[tensorlet: {dropped} more bytes of output dropped]"
            ));
        }
        lines
    }
}

/// Shortens a line and escapes control characters, so guest output cannot drive the terminal
/// of whoever reads `tensorlet logs`.
fn truncate(line: &str, max: usize) -> String {
    let mut clean = String::with_capacity(line.len());
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            clean.extend(c.escape_default());
        } else {
            clean.push(c);
        }
    }
    let line = clean;
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(CAPTURE_LIMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_is_bounded() {
        let c = Capture::default();
        c.append(b"one\ntwo\n");
        c.append(&vec![b'x'; CAPTURE_LIMIT]);
        let lines = c.take_lines();
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert!(lines.last().unwrap().contains("8 more bytes"));
        assert!(c.take_lines().is_empty());
        c.append(b"\x1b[31mred\x07\tok\r\n");
        assert_eq!(c.take_lines(), vec!["\\u{1b}[31mred\\u{7}\tok"]);
    }
}
