//! A small client for the admin API, used by the CLI: answers are read into the typed bodies of
//! [`crate::api`]; uploads stream from the file, with a progress bar when stderr is a terminal.

use std::io::IsTerminal;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, ReadBuf};

use crate::api::ErrorBody;

/// Every request body the client sends: empty, JSON, or a file streamed from disk.
type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Bytes read from an uploaded file per body frame: enough that a large model is not hundreds
/// of thousands of frames, few enough that the bar moves smoothly on a slow link.
const CHUNK: usize = 256 * 1024;

/// Talks JSON to one node's `/admin/v1`.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, RequestBody>,
    /// `--wait`: sent as `wait=` with every change.
    wait: Option<String>,
}

impl AdminClient {
    /// `node` is the node's base URL, e.g. `http://127.0.0.1:8080`; `token` is sent as a
    /// bearer token.
    pub fn new(node: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let base = node.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| anyhow::anyhow!("`{node}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => anyhow::bail!(
                "the CLI speaks plain http to nodes, not `{other}`: use http://HOST:PORT"
            ),
            None => anyhow::bail!("`{node}` has no scheme: use http://HOST:PORT"),
        }
        Ok(Self {
            base,
            token: token.map(str::to_string),
            client: Client::builder(TokioExecutor::new()).build_http(),
            wait: None,
        })
    }

    /// Asks the node, with every change, to answer only once the whole fleet serves it.
    pub fn waiting(mut self, wait: Option<String>) -> Self {
        self.wait = wait;
        self
    }

    /// POSTs `bytes` to `/admin/v1/{path}` (an artifact pulled from a registry).
    pub async fn upload_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> anyhow::Result<T> {
        let body = Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync();
        self.request(Method::POST, path, Some(content_type), body)
            .await
    }

    /// Sends a request without a body to `/admin/v1/{path}`; see [`AdminClient::request`].
    pub async fn send<T: DeserializeOwned>(&self, method: Method, path: &str) -> anyhow::Result<T> {
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        self.request(method, path, None, body).await
    }

    /// Sends `body` as JSON to `/admin/v1/{path}`; see [`AdminClient::request`].
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        let body = Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync();
        self.request(method, path, Some("application/json"), body)
            .await
    }

    /// POSTs the contents of `file` to `/admin/v1/{path}`, read and sent in chunks rather than
    /// held in memory (models can be gigabytes). While stderr is a terminal a progress bar there
    /// follows the chunks sent, then waits with the node while it checks the upload.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &Path,
        content_type: &str,
    ) -> anyhow::Result<T> {
        let reading = || format!("reading {}", file.display());
        let f = tokio::fs::File::open(file).await.with_context(reading)?;
        let len = f.metadata().await.with_context(reading)?.len();
        let bar = upload_bar(len, file);
        let body = FileBody::new(f, len, bar.clone()).boxed_unsync();
        let answer = self
            .request(Method::POST, path, Some(content_type), body)
            .await;
        bar.finish_and_clear();
        answer
    }

    /// Sends a request to `/admin/v1/{path}` and reads the JSON answer into `T`, or returns the
    /// node's error message as the error.
    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> anyhow::Result<T> {
        let resp = self.exchange(method, path, content_type, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "the node answered HTTP {status} with a body this CLI does not understand ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
        }
        Err(refusal(status, &bytes))
    }

    /// GETs `/admin/v1/{path}`, an answer of JSON lines that may go on for as long as the node
    /// has more (`logs --follow`), and hands each line to `on_line` as it arrives; stops when the
    /// node ends the answer or `on_line` returns false.
    pub async fn lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        /// Longest line taken from the node (its guest lines are at most a few KiB).
        const MAX_LINE: usize = 1 << 20;
        let empty = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let resp = self.exchange(Method::GET, path, None, empty).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(refusal(status, &bytes));
        }
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.len() > 1 && !on_line(&line[..line.len() - 1])? {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                pending.len() <= MAX_LINE,
                "the node sent a line longer than {MAX_LINE} bytes"
            );
        }
        Ok(())
    }

    /// Sends a request to `/admin/v1/{path}` and returns the node's answer, whatever its
    /// status.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let mut uri = format!("{}/admin/v1/{path}", self.base);
        if let Some(wait) = self.wait.as_deref().filter(|_| method != Method::GET) {
            let sep = if path.contains('?') { '&' } else { '?' };
            uri = format!("{uri}{sep}wait={}", encode(wait));
        }
        let mut req = Request::builder().method(method).uri(&uri);
        if let Some(content_type) = content_type {
            req = req.header("content-type", content_type);
        }
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        self.client.request(req.body(body)?).await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!("cannot reach the node at {}: {e} (is `tensorlet serve` running? set --node or TENSORLET_NODE)", self.base)
            } else {
                // Past the connection, the cause (a file that cannot be read, a node that hung
                // up mid-upload) is deeper in the chain than hyper's own words.
                anyhow::Error::new(e).context(format!("talking to the node at {}", self.base))
            }
        })
    }
}

/// The error of a refused request: the node's message when it sent its JSON error.
fn refusal(status: http::StatusCode, bytes: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => anyhow::anyhow!(
            "{} ({}, HTTP {})",
            b.error.message,
            b.error.code,
            status.as_u16()
        ),
        Err(_) => anyhow::anyhow!(
            "the node answered HTTP {status}: {}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// A byte progress bar on stderr, or a hidden one (which draws nothing) when stderr is not a
/// terminal: logs and pipes keep exactly what they got before there was a bar.
fn upload_bar(len: u64, file: &Path) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let name = file.file_name().unwrap_or(file.as_os_str());
    ProgressBar::new(len)
        .with_style(style)
        .with_message(format!("uploading {}", name.to_string_lossy()))
}

/// The first `len` bytes of a file as a request body, read a [`CHUNK`] at a time as hyper asks
/// for more (so reading keeps pace with the network); each chunk advances `bar`.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Box<[u8]>,
    bar: ProgressBar,
}

impl FileBody {
    fn new(file: tokio::fs::File, len: u64, bar: ProgressBar) -> Self {
        Self {
            file,
            remaining: len,
            buf: vec![0; CHUNK].into_boxed_slice(),
            bar,
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this
            .buf
            .len()
            .min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
        let mut read = ReadBuf::new(&mut this.buf[..want]);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut read))?;
        let chunk = read.filled();
        if chunk.is_empty() {
            // The length was announced up front, so a short file cannot just end the body.
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was being uploaded",
            ))));
        }
        this.remaining -= chunk.len() as u64;
        this.bar.inc(chunk.len() as u64);
        if this.remaining == 0 && !this.bar.is_hidden() {
            // The node now checks the upload (compiles it, loads the model), which can take a
            // while; ticking redraws the bar with this message even though nothing moves.
            this.bar.set_message("sent; the node is checking it");
            this.bar
                .enable_steady_tick(std::time::Duration::from_millis(250));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    /// Exact, so hyper sends `Content-Length` (the node can refuse an oversized upload before
    /// reading it) rather than chunked encoding.
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Percent-encodes a query-string component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` varied bytes in a directory of its own, removed by the caller.
    fn file_of(len: usize, tag: &str) -> (std::path::PathBuf, Vec<u8>) {
        let dir =
            std::env::temp_dir().join(format!("tensorlet-client-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let path = dir.join("upload.bin");
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    #[tokio::test]
    async fn a_file_is_sent_in_chunks_that_advance_the_bar() {
        let len = 2 * CHUNK + 12_345;
        let (path, bytes) = file_of(len, "chunks");
        let bar = ProgressBar::hidden();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let mut body = FileBody::new(file, len as u64, bar.clone());
        assert_eq!(body.size_hint().exact(), Some(len as u64));
        let (mut sent, mut frames) = (Vec::new(), 0);
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK, "a frame of {} bytes", data.len());
            sent.extend_from_slice(&data);
            frames += 1;
            assert_eq!(bar.position(), sent.len() as u64);
        }
        assert!(body.is_end_stream());
        assert!(frames >= 3, "{len} bytes in {frames} frames");
        assert!(sent == bytes, "the body differs from the file");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_file_shorter_than_announced_fails_the_body() {
        let (path, _) = file_of(1000, "short");
        let file = tokio::fs::File::open(&path).await.unwrap();
        let body = FileBody::new(file, 2000, ProgressBar::hidden());
        let err = body.collect().await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
