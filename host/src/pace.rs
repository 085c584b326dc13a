//! Read pacing for connections whose tenant keeps sending past its limits. A refusal (429) costs
//! the node about as much CPU as a small answer, so a client that ignores `Retry-After` on 64
//! keep-alive connections could keep the node's threads busy with refusals and slow every other
//! tenant down. Once a tenant's refusals run past their own budget ([`crate::registry`]), the
//! refusal tells the connection to read nothing more until its `Retry-After` is over: the
//! client's next request waits in its socket, at no cost to the node. A client that honours
//! `Retry-After` never notices.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::time::{Instant, Sleep};

/// Put on a response (as an extension, never sent): its connection reads nothing more for this
/// long.
#[derive(Debug, Clone, Copy)]
pub struct PauseReads(pub Duration);

/// Shared by a connection's IO and its service: when the next read may happen.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<Mutex<Option<Instant>>>);

impl Gate {
    /// Holds reads back for `pause` from now (never shortens a longer pause).
    pub fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|u| u < until) {
            *g = Some(until);
        }
    }

    fn until(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// IO that reads only while its [`Gate`] is open; writes always go through.
pub struct Paced<I> {
    inner: I,
    gate: Gate,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<I> Paced<I> {
    /// Wraps `inner`, reading only while `gate` is open.
    pub fn new(inner: I, gate: Gate) -> Self {
        Self {
            inner,
            gate,
            sleep: None,
        }
    }
}

impl<I: Read + Unpin> Read for Paced<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(until) = self.gate.until() {
            if Instant::now() < until {
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if sleep.deadline() != until {
                    sleep.as_mut().reset(until);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            self.gate.open();
            self.sleep = None;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for Paced<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}
