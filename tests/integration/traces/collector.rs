//! A loopback OTLP/HTTP collector: a plain TCP listener that takes `POST /v1/traces` requests
//! (HTTP/1.1, keep-alive, a `Content-Length` or chunked body), answers 200 and decodes each body
//! as an `ExportTraceServiceRequest`. The messages are declared here from opentelemetry-proto's
//! .proto files (collector/trace/v1/trace_service.proto, trace/v1/trace.proto,
//! common/v1/common.proto, resource/v1/resource.proto), independently of the node's encoder, so
//! a wrong field number or wire type on the node's side fails to decode or decodes wrong.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use prost::Message;

use crate::support::wait_for;

#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
    #[prost(string, tag = "5")]
    pub name: String,
    /// `SpanKind`: 1 internal, 2 server.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "10")]
    pub dropped_attributes_count: u32,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    /// `StatusCode`: 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "Any", tags = "1, 2, 3, 4, 7")]
    pub value: Option<Any>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Any {
    #[prost(string, tag = "1")]
    Str(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

pub const SERVER: i32 = 2;
pub const INTERNAL: i32 = 1;
pub const STATUS_ERROR: i32 = 2;

impl Span {
    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<Any> {
        attr(&self.attributes, key)
    }

    /// The string attribute `key`, or "" when there is none.
    pub fn text(&self, key: &str) -> String {
        match self.attr(key) {
            Some(Any::Str(s)) => s,
            other => panic!(
                "{key} is not a string attribute of {}: {other:?}",
                self.name
            ),
        }
    }

    pub fn failed(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.code == STATUS_ERROR)
    }
}

pub fn attr(attributes: &[KeyValue], key: &str) -> Option<Any> {
    let kv = attributes.iter().find(|kv| kv.key == key)?;
    kv.value.clone()?.value
}

/// One export request as the collector received it.
pub struct Export {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub request: ExportTraceServiceRequest,
}

/// The collector; stops listening when dropped.
pub struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
}

/// Export requests, and the bodies that did not decode.
#[derive(Default)]
pub struct Received {
    pub exports: Vec<Export>,
    pub undecodable: Vec<String>,
}

impl Collector {
    pub fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&received), Arc::clone(&stop));
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let r = Arc::clone(&r);
                thread::spawn(move || serve(conn, &r));
            }
        });
        Collector {
            addr,
            received,
            stop,
        }
    }

    /// What `otlp_endpoint` is set to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The export requests received so far.
    pub fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap()
    }

    /// Every span received so far (none may have come in a body that did not decode).
    pub fn spans(&self) -> Vec<Span> {
        let received = self.received();
        assert!(
            received.undecodable.is_empty(),
            "export bodies that do not decode: {:?}",
            received.undecodable
        );
        (received.exports.iter())
            .flat_map(|e| &e.request.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    /// Waits until trace `trace_id` has a span of each of `names`; returns all of its spans.
    pub fn wait_for_trace(&self, trace_id: &[u8], names: &[&str]) -> Vec<Span> {
        let what = format!("spans {names:?} of trace {}", hex::encode(trace_id));
        wait_for(&what, || {
            let spans: Vec<Span> = (self.spans().into_iter())
                .filter(|s| s.trace_id == trace_id)
                .collect();
            names
                .iter()
                .all(|n| spans.iter().any(|s| s.name == *n))
                .then_some(spans)
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one keep-alive connection until the client closes it.
fn serve(conn: TcpStream, received: &Mutex<Received>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone the connection"));
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut length, mut chunked, mut content_type) = (0usize, false, String::new());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "content-type" => content_type = value.to_string(),
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)
        } else {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).map(|()| body).ok()
        };
        let Some(body) = body else { return };
        match ExportTraceServiceRequest::decode(body.as_slice()) {
            Ok(request) => received.lock().unwrap().exports.push(Export {
                method,
                path,
                content_type,
                request,
            }),
            Err(e) => received.lock().unwrap().undecodable.push(e.to_string()),
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).ok()?;
                if line.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).ok()?;
    }
}
