//! Bodies that stream: the request's as it arrives ([`BodyReader`]), the response's as the
//! handler produces it ([`Body`], [`BodyWriter`]).
//!
//! Both sides wait on the host's streams, so a slow client slows the handler down instead of
//! making it buffer (back-pressure): a chunk is pulled from an iterator, or a `write` returns,
//! only once the previous one was taken by the host.

use std::fmt;
use std::io;

use ::http::StatusCode;
use wasi::http::types::{IncomingBody, IncomingRequest, IncomingResponse, OutgoingBody};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

use crate::error::Error;

/// `blocking-write-and-flush` accepts at most 4096 bytes per call (wasi:io/streams).
const WRITE_CHUNK: usize = 4096;

/// How many bytes to ask for per read of a body.
pub(crate) const READ_CHUNK: u64 = 64 * 1024;

/// A response body: whole bytes, or produced while the response is being sent.
///
/// ```no_run
/// use std::io::Write;
/// use tensorlet_sdk::{Body, Request, header};
///
/// // NDJSON, one line per item, each sent as soon as it is made.
/// fn handle(_req: Request) -> impl tensorlet_sdk::IntoResponse {
///     let lines = (1..=3).map(|i| format!("{{\"n\":{i}}}\n"));
///     ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_chunks(lines))
/// }
///
/// // The same with a writer (any `std::io::Write` code works).
/// fn handle_writer(_req: Request) -> Body {
///     Body::from_writer(|w| {
///         for i in 1..=3 {
///             writeln!(w, "{{\"n\":{i}}}")?;
///         }
///         Ok(())
///     })
/// }
/// # tensorlet_sdk::export_handler!(handle);
/// ```
pub struct Body(pub(crate) Inner);

/// Writes a streamed body: what [`Body::from_writer`] keeps.
type Write = Box<dyn FnOnce(&mut BodyWriter<'_>) -> io::Result<()>>;

pub(crate) enum Inner {
    Full(Vec<u8>),
    Chunks(Box<dyn Iterator<Item = Vec<u8>>>),
    Writer(Write),
}

impl Body {
    /// No bytes.
    pub fn empty() -> Body {
        Body(Inner::Full(Vec::new()))
    }

    /// A body sent chunk by chunk: each item is written (and flushed to the client) before the
    /// next is pulled, so items can be computed lazily (server-sent events, NDJSON, long outputs).
    pub fn from_chunks<I, T>(chunks: I) -> Body
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: 'static,
        T: Into<Vec<u8>> + 'static,
    {
        Body(Inner::Chunks(Box::new(chunks.into_iter().map(Into::into))))
    }

    /// A body written by `write` while the response is sent. Returning an error cuts the
    /// response short: the client sees an incomplete body, never a clean end (the status and
    /// headers are already on their way). The error goes to the function's log.
    pub fn from_writer(
        write: impl FnOnce(&mut BodyWriter<'_>) -> io::Result<()> + 'static,
    ) -> Body {
        Body(Inner::Writer(Box::new(write)))
    }

    /// The bytes of a whole body, `None` for a streamed one.
    ///
    /// ```
    /// use tensorlet_sdk::Body;
    /// assert_eq!(Body::from("hi").as_bytes(), Some(&b"hi"[..]));
    /// assert_eq!(Body::from_chunks(["h", "i"]).as_bytes(), None);
    /// ```
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            Inner::Full(bytes) => Some(bytes),
            _ => None,
        }
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Full(bytes) => write!(f, "Body({} bytes)", bytes.len()),
            Inner::Chunks(_) => f.write_str("Body(chunks)"),
            Inner::Writer(_) => f.write_str("Body(writer)"),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body(Inner::Full(bytes))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Body {
        Body(Inner::Full(text.into_bytes()))
    }
}

/// A body read as it arrives, sent on as it arrives: a request streamed back, or an upstream's
/// response passed through (a proxy) without holding it. A read error cuts the response short.
///
/// ```no_run
/// use tensorlet_sdk::{Body, Error, StreamRequest, fetch_stream, http, rt};
///
/// // Streams an upstream's body through, whatever its size.
/// fn handle(_req: StreamRequest) -> Result<Body, Error> {
///     let request = http::Request::get("https://data.example.com/big.csv").body(Vec::new()).unwrap();
///     let upstream = rt::block_on(fetch_stream(request))?;
///     Ok(Body::from(upstream.into_body()))
/// }
/// # tensorlet_sdk::export_handler!(handle);
/// ```
impl From<BodyReader> for Body {
    fn from(reader: BodyReader) -> Body {
        Body::from_writer(move |w| {
            for chunk in reader {
                io::Write::write_all(w, &chunk.map_err(io::Error::other)?)?;
            }
            Ok(())
        })
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Body {
        Body(Inner::Full(text.as_bytes().to_vec()))
    }
}

/// Writes a streamed response body (see [`Body::from_writer`]). Every `write` is flushed to
/// the client before it returns; wrap it in a `std::io::BufWriter` to send fewer, bigger chunks.
///
/// ```
/// use std::io::Write;
/// let body = tensorlet_sdk::Body::from_writer(|w| {
///     let mut w = std::io::BufWriter::new(w);
///     for i in 0..1000 {
///         writeln!(w, "{i}")?;
///     }
///     w.flush()
/// });
/// assert!(body.as_bytes().is_none());
/// ```
pub struct BodyWriter<'a> {
    stream: &'a OutputStream,
}

impl io::Write for BodyWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(WRITE_CHUNK);
        self.stream
            .blocking_write_and_flush(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, format!("{e:?}")))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends `body` into an outgoing body's stream and finishes it; a body cut short (the client
/// went away, a writer failed) is dropped unfinished, which tells the host it is incomplete.
pub(crate) fn send(body: Body, outgoing: OutgoingBody) {
    let Ok(stream) = outgoing.write() else {
        return;
    };
    let complete = match body.0 {
        Inner::Full(bytes) => write_all(&stream, &bytes),
        Inner::Chunks(mut chunks) => chunks.all(|chunk| write_all(&stream, &chunk)),
        Inner::Writer(write) => match write(&mut BodyWriter { stream: &stream }) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("tensorlet-sdk: the response body was cut short: {e}");
                false
            }
        },
    };
    // The stream is a child of the body: dropped first.
    drop(stream);
    if complete {
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

/// Writes all of `bytes`; false when the stream is closed (the client hung up).
pub(crate) fn write_all(stream: &OutputStream, bytes: &[u8]) -> bool {
    bytes
        .chunks(WRITE_CHUNK)
        .all(|chunk| stream.blocking_write_and_flush(chunk).is_ok())
}

/// What a [`BodyReader`]'s body belongs to: kept alive until the body is done with, since the
/// host ties the body's lifetime to it.
enum Owner {
    Request(#[allow(dead_code)] IncomingRequest),
    Response(#[allow(dead_code)] IncomingResponse),
}

/// A body read as it arrives: a request's (take `http::Request<BodyReader>` in a handler, see
/// [`StreamRequest`](crate::StreamRequest)) or an outbound response's.
///
/// Read it with [`chunk`](BodyReader::chunk) (or as an iterator of chunks), through
/// `std::io::Read`, with [`next_chunk`](BodyReader::next_chunk) in an async handler, or whole
/// with [`read_all`](BodyReader::read_all) up to a limit. Only what the handler holds is in
/// memory, so a body larger than the function's memory can be hashed, counted or parsed line
/// by line.
///
/// ```no_run
/// use std::io::BufRead;
/// use tensorlet_sdk::{Error, StreamRequest};
///
/// // Counts the lines of an upload of any size.
/// fn handle(req: StreamRequest) -> Result<String, Error> {
///     let lines = std::io::BufReader::new(req.into_body()).lines().count();
///     Ok(format!("{lines} lines\n"))
/// }
///
/// tensorlet_sdk::export_handler!(handle);
/// ```
pub struct BodyReader {
    // Field order is drop order: the stream, then the body, then what owns it.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    _owner: Owner,
    /// Bytes read by `io::Read` callers' previous chunk and not yet returned.
    pending: Vec<u8>,
    offset: usize,
}

impl BodyReader {
    pub(crate) fn of_request(request: IncomingRequest) -> Result<BodyReader, String> {
        let body = request
            .consume()
            .map_err(|()| "request body already consumed")?;
        Self::new(body, Owner::Request(request))
    }

    pub(crate) fn of_response(response: IncomingResponse) -> Result<BodyReader, String> {
        let body = response
            .consume()
            .map_err(|()| "response body already consumed")?;
        Self::new(body, Owner::Response(response))
    }

    fn new(body: IncomingBody, owner: Owner) -> Result<BodyReader, String> {
        let stream = body.stream().map_err(|()| "body stream already taken")?;
        Ok(BodyReader {
            stream: Some(stream),
            body: Some(body),
            _owner: owner,
            pending: Vec::new(),
            offset: 0,
        })
    }

    /// The next chunk as it arrives (waiting for it), `None` at the end.
    ///
    /// ```no_run
    /// # fn f(req: tensorlet_sdk::StreamRequest) -> Result<u64, tensorlet_sdk::Error> {
    /// let mut body = req.into_body();
    /// let mut total = 0;
    /// while let Some(chunk) = body.chunk() {
    ///     total += chunk?.len() as u64;
    /// }
    /// # Ok(total) }
    /// ```
    pub fn chunk(&mut self) -> Option<Result<Vec<u8>, Error>> {
        let stream = self.stream.as_ref()?;
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => Some(Ok(chunk)),
            Err(e) => self.ended(e),
        }
    }

    /// The next chunk, for async handlers: other futures run while it waits.
    pub async fn next_chunk(&mut self) -> Option<Result<Vec<u8>, Error>> {
        loop {
            let stream = self.stream.as_ref()?;
            match stream.read(READ_CHUNK) {
                Ok(chunk) if chunk.is_empty() => crate::rt::wait(stream.subscribe()).await,
                Ok(chunk) => return Some(Ok(chunk)),
                Err(e) => return self.ended(e),
            }
        }
    }

    /// The whole rest of the body, refused with 413 `body_too_large` past `limit` bytes (so a
    /// client cannot make the handler hold more than it chose to).
    ///
    /// ```no_run
    /// # fn f(req: tensorlet_sdk::StreamRequest) -> Result<(), tensorlet_sdk::Error> {
    /// // At most 1 MiB of JSON; a bigger body is answered 413 by the `?`.
    /// let bytes = req.into_body().read_all(1 << 20)?;
    /// let value: serde_json::Value = serde_json::from_slice(&bytes)?;
    /// # Ok(()) }
    /// ```
    pub fn read_all(&mut self, limit: usize) -> Result<Vec<u8>, Error> {
        let mut bytes = std::mem::take(&mut self.pending).split_off(self.offset);
        self.offset = 0;
        while let Some(chunk) = self.chunk() {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() > limit {
                return Err(Error::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is larger than {limit} bytes"),
                ));
            }
        }
        Ok(bytes)
    }

    /// The end of the stream: finishes the body (trailers are not read).
    fn ended(&mut self, e: StreamError) -> Option<Result<Vec<u8>, Error>> {
        self.stream = None;
        if let Some(body) = self.body.take() {
            drop(IncomingBody::finish(body));
        }
        match e {
            StreamError::Closed => None,
            StreamError::LastOperationFailed(e) => Some(Err(Error::bad_request(
                "body_read_failed",
                format!("reading the body failed: {}", e.to_debug_string()),
            ))),
        }
    }
}

impl Iterator for BodyReader {
    type Item = Result<Vec<u8>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.chunk()
    }
}

impl io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset >= self.pending.len() {
            match self.chunk() {
                Some(Ok(chunk)) => (self.pending, self.offset) = (chunk, 0),
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.offset);
        buf[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyReader")
    }
}
