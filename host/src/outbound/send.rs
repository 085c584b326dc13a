//! One outbound request, from the guest's allow-list to the response head: the destination
//! checked against the function's patterns, the name resolved by the node, every address checked
//! against the policy, a connection to one that passed (TLS with SNI for https), HTTP/1.1, and a
//! response body capped in bytes. Every step is bounded by its timeout and by the function's
//! deadline; each failure is the wasi:http error code that says what happened.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use wasmtime_wasi_http::{Error, WasiBody};

use super::pattern::default_port;
use super::{AllowList, Outbound, SendResult};
use crate::metrics::Histogram;

/// One request's outbound side, moved into the send.
pub(super) struct Call {
    pub node: Arc<Outbound>,
    pub function: Arc<str>,
    pub allow: Arc<AllowList>,
    pub deadline: Instant,
    pub open: Arc<tokio::sync::Semaphore>,
    /// The calling function's tenant (the namespace of its `{name}.fn.internal` calls).
    pub tenant: Option<Arc<str>>,
    /// How many function-to-function calls deep the calling request is.
    pub hops: u8,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Call {
    pub(super) async fn send(self, req: http::Request<WasiBody>) -> SendResult {
        let uri = req.uri();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Error::HttpRequestUriInvalid),
        };
        let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(default_port(https));
        let stats = |dest: &str| self.node.stats(&self.function, dest);
        let Some(pattern) = self.allow.find(https, &host, port) else {
            stats("(denied)").denied.fetch_add(1, Ordering::Relaxed);
            return Err(Error::HttpRequestDenied);
        };
        let stats = stats(&pattern.to_string());
        let started = Instant::now();
        let result = match super::local::function_name(&host) {
            Some(name) => self.local_call(req, name).await,
            None => self.exchange(req, https, &host, port).await,
        };
        match &result {
            Ok(_) => {
                stats.responses.fetch_add(1, Ordering::Relaxed);
                stats.duration.observe(started.elapsed());
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// A call to another function of this node, through its own listener.
    async fn local_call(&self, mut req: http::Request<WasiBody>, name: &str) -> SendResult {
        use super::local::{HOPS, INTERNAL, MAX_HOPS};
        let Some(local) = self.node.local.get() else {
            return Err(Error::HttpRequestDenied);
        };
        if self.hops >= MAX_HOPS {
            return Err(Error::LoopDetected);
        }
        let permit = self.permit()?;
        let connect_by = (Instant::now() + self.node.config.connect_timeout).min(self.deadline);
        let tenant = self
            .tenant
            .as_deref()
            .map(|t| format!("{t}/"))
            .unwrap_or_default();
        let rest = (req.uri().path_and_query()).map_or("/", |p| p.as_str());
        let rest = if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        };
        *req.uri_mut() = format!("http://{}/fn/{tenant}{name}{rest}", local.addr)
            .parse()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let h = req.headers_mut();
        let value =
            |v: &str| http::HeaderValue::from_str(v).map_err(|_| Error::InternalError(None));
        h.insert(http::header::HOST, value(&local.addr.to_string())?);
        h.insert(INTERNAL, value(&local.secret)?);
        h.insert(HOPS, value(&(self.hops + 1).to_string())?);
        let tcp = timeout_at(connect_by.into(), TcpStream::connect(local.addr))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(|_| Error::ConnectionRefused)?;
        let _ = tcp.set_nodelay(true);
        self.http(Box::new(tcp), req, connect_by, permit).await
    }

    /// One of the instance's `max_concurrent` outbound requests.
    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        Arc::clone(&self.open)
            .try_acquire_owned()
            .map_err(|_| Error::ConnectionLimitReached)
    }

    async fn exchange(
        &self,
        req: http::Request<WasiBody>,
        https: bool,
        host: &str,
        port: u16,
    ) -> SendResult {
        let config = &self.node.config;
        let permit = self.permit()?;
        let connect_by = (Instant::now() + config.connect_timeout).min(self.deadline);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let found = timeout_at(connect_by.into(), tokio::net::lookup_host((host, port)))
                    .await
                    .map_err(|_| Error::DnsTimeout)?;
                found
                    .map_err(|e| Error::DnsError {
                        rcode: Some(e.to_string()),
                        info_code: None,
                    })?
                    .collect()
            }
        };
        // Connect only to an address that passed the check: the name is not resolved again.
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| config.reachable(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(Error::DestinationIpProhibited);
        }
        let mut last = Error::ConnectionRefused;
        let mut tcp = None;
        for addr in allowed {
            match timeout_at(connect_by.into(), TcpStream::connect(addr)).await {
                Err(_) => {
                    last = Error::ConnectionTimeout;
                    break;
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last = Error::ConnectionRefused;
                }
                Ok(Err(e)) => last = Error::Connect(e),
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
            }
        }
        let tcp = tcp.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Stream> = if https {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.node.tls));
            let stream = timeout_at(connect_by.into(), tls.connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        self.http(io, req, connect_by, permit).await
    }

    /// HTTP/1.1 over a connected stream: the request in origin form, its response head within
    /// `first_byte_timeout`, its body capped.
    async fn http(
        &self,
        io: Box<dyn Stream>,
        mut req: http::Request<WasiBody>,
        connect_by: Instant,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> SendResult {
        let config = &self.node.config;
        let (mut sender, conn) = timeout_at(
            connect_by.into(),
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::from)?;
        // The connection runs beside the exchange; it ends when both sides are dropped (the
        // response body with the guest's store at the latest).
        let connection = tokio::spawn(conn);
        let path = (req.uri().path_and_query())
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        *req.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
        let first_byte_by = (Instant::now() + config.first_byte_timeout).min(self.deadline);
        let response = timeout_at(first_byte_by.into(), sender.send_request(req))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(Error::from)?;
        let max = config.max_response_bytes;
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(Error::HttpResponseBodySize(declared));
        }
        let response = response.map(|body| {
            Capped {
                inner: body,
                left: max,
                max,
                _permit: permit,
            }
            .boxed_unsync()
        });
        let io = async move {
            let _ = connection.await;
            Ok(())
        };
        Ok((response, Box::new(io)))
    }
}

/// A response body that fails once it has carried more than `max` bytes, and holds its
/// request's concurrency permit until it is done.
struct Capped {
    inner: Incoming,
    left: u64,
    max: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > self.left {
                    let max = self.max;
                    return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(max)))));
                }
                self.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            other => other.map(|f| f.map(|r| r.map_err(Error::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The numbers of one function's calls to one destination (the pattern that allowed them).
#[derive(Default)]
pub struct DestStats {
    /// Requests answered with a response head.
    pub responses: AtomicU64,
    /// Requests that failed (DNS, connection, TLS, timeouts, limits).
    pub errors: AtomicU64,
    /// Requests no pattern allowed.
    pub denied: AtomicU64,
    /// From the request to its response head.
    pub duration: Histogram,
}

/// Every function's destinations.
pub(super) type StatsMap = Mutex<HashMap<(Arc<str>, String), Arc<DestStats>>>;

impl Outbound {
    /// The numbers of `function`'s calls to `dest`.
    fn stats(&self, function: &Arc<str>, dest: &str) -> Arc<DestStats> {
        let mut map = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            map.entry((Arc::clone(function), dest.to_string()))
                .or_default(),
        )
    }

    /// Appends the outbound series to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let map = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        out.push_str("# HELP tensorlet_outbound_requests_total Outbound HTTP requests of guests by function, allowing pattern and outcome.\n");
        out.push_str("# TYPE tensorlet_outbound_requests_total counter\n");
        for ((function, host), s) in &rows {
            for (outcome, n) in [
                ("response", &s.responses),
                ("error", &s.errors),
                ("denied", &s.denied),
            ] {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tensorlet_outbound_requests_total{{function=\"{function}\",host=\"{}\",outcome=\"{outcome}\"}} {n}",
                        host.escape_default()
                    );
                }
            }
        }
        out.push_str("# HELP tensorlet_outbound_request_duration_seconds Outbound HTTP requests of guests: from the request to its response head.\n");
        out.push_str("# TYPE tensorlet_outbound_request_duration_seconds histogram\n");
        for ((function, host), s) in &rows {
            if s.responses.load(Ordering::Relaxed) > 0 {
                let labels = format!("function=\"{function}\",host=\"{}\"", host.escape_default());
                s.duration
                    .render(out, "tensorlet_outbound_request_duration_seconds", &labels);
            }
        }
    }
}
