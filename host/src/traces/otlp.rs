//! Finished spans and their OTLP/HTTP body: an `ExportTraceServiceRequest` in protobuf, written
//! by hand. The node writes only these few messages, so a small writer replaces a protobuf code
//! generator and its build step. Field numbers are those of opentelemetry-proto:
//! `collector/trace/v1/trace_service.proto`, `trace/v1/trace.proto`, `common/v1/common.proto`
//! and `resource/v1/resource.proto`. The unit tests decode the output with message structs
//! written separately from the same files.

use std::borrow::Cow;
use std::sync::Arc;

use super::context::{SpanId, TraceId};

/// An attribute value (the `AnyValue` variants the node uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `string_value`.
    Str(String),
    /// `int_value`.
    Int(i64),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

/// A key and its value; keys are the node's own constants.
pub type Attribute = (&'static str, Value);

/// `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SPAN_KIND_INTERNAL`: a step inside the node.
    Internal = 1,
    /// `SPAN_KIND_SERVER`: the handling of a request from a client.
    Server = 2,
}

/// A finished span, times in nanoseconds since the Unix epoch.
#[derive(Debug, Clone)]
pub struct Span {
    /// The trace it belongs to.
    pub trace_id: TraceId,
    /// Its own id.
    pub span_id: SpanId,
    /// Its parent, if it has one.
    pub parent_id: Option<SpanId>,
    /// Whether the parent is another process's span (a `traceparent`'s).
    pub remote_parent: bool,
    /// W3C `tracestate` of the trace, passed through as it came.
    pub trace_state: Option<Arc<str>>,
    /// W3C trace flags.
    pub flags: u8,
    /// What it did.
    pub name: Cow<'static, str>,
    /// Server or internal.
    pub kind: Kind,
    /// When it started.
    pub start: u64,
    /// When it ended.
    pub end: u64,
    /// Its attributes.
    pub attributes: Vec<Attribute>,
    /// `Some(message)`: status ERROR with that message; `None`: status unset.
    pub error: Option<String>,
}

/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`: whether the parent is remote is known...
const HAS_IS_REMOTE: u32 = 0x100;
/// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`: ...and it is.
const IS_REMOTE: u32 = 0x200;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The body of `POST /v1/traces`: one `ResourceSpans` (the node, described by `resource`) with
/// one `ScopeSpans` (scope `scope_name` at `scope_version`) holding `spans`.
pub fn export_request(
    resource: &[Attribute],
    scope_name: &str,
    scope_version: &str,
    spans: &[Span],
) -> Vec<u8> {
    let mut w = Writer::default();
    // ExportTraceServiceRequest.resource_spans = 1
    w.message(1, |w| {
        // ResourceSpans.resource = 1 { Resource.attributes = 1 }
        w.message(1, |w| {
            for attribute in resource {
                w.message(1, |w| key_value(w, attribute));
            }
        });
        // ResourceSpans.scope_spans = 2
        w.message(2, |w| {
            // ScopeSpans.scope = 1 { InstrumentationScope.name = 1, version = 2 }
            w.message(1, |w| {
                w.string(1, scope_name);
                w.string(2, scope_version);
            });
            for span in spans {
                // ScopeSpans.spans = 2
                w.message(2, |w| write_span(w, span));
            }
        });
    });
    w.0
}

fn write_span(w: &mut Writer, s: &Span) {
    w.bytes(1, &s.trace_id);
    w.bytes(2, &s.span_id);
    if let Some(state) = s.trace_state.as_deref().filter(|t| !t.is_empty()) {
        w.string(3, state);
    }
    if let Some(parent) = &s.parent_id {
        w.bytes(4, parent);
    }
    w.string(5, &s.name);
    w.key(6, VARINT);
    w.varint(s.kind as u64);
    w.key(7, FIXED64);
    w.0.extend_from_slice(&s.start.to_le_bytes());
    w.key(8, FIXED64);
    w.0.extend_from_slice(&s.end.to_le_bytes());
    for attribute in &s.attributes {
        w.message(9, |w| key_value(w, attribute));
    }
    if let Some(message) = &s.error {
        // Status: message = 2, code = 3.
        w.message(15, |w| {
            w.string(2, message);
            w.key(3, VARINT);
            w.varint(STATUS_ERROR);
        });
    }
    let remote = if s.remote_parent { IS_REMOTE } else { 0 };
    w.key(16, FIXED32);
    let flags = u32::from(s.flags) | HAS_IS_REMOTE | remote;
    w.0.extend_from_slice(&flags.to_le_bytes());
}

/// `KeyValue`: key = 1, value = 2 (`AnyValue`: string_value = 1, int_value = 3). A oneof member
/// is written even when it holds its default: its presence says which member it is.
fn key_value(w: &mut Writer, (key, value): &Attribute) {
    w.string(1, key);
    w.message(2, |w| match value {
        Value::Str(s) => w.string(1, s),
        Value::Int(i) => {
            w.key(3, VARINT);
            // int64: negative values as their 64-bit two's complement.
            w.varint(*i as u64);
        }
    });
}

/// Appends protobuf fields to a buffer.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, LEN);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// An embedded message, built by `body` in a buffer of its own: its length goes first.
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        body(&mut inner);
        self.bytes(field, &inner.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    // The messages as opentelemetry-proto defines them (only the fields the node writes, plus
    // a few it must leave out), to decode what the writer wrote.
    #[derive(Clone, PartialEq, Message)]
    struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        scope_spans: Vec<ScopeSpans>,
        #[prost(string, tag = "3")]
        schema_url: String,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Resource {
        #[prost(message, repeated, tag = "1")]
        attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        scope: Option<Scope>,
        #[prost(message, repeated, tag = "2")]
        spans: Vec<PbSpan>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Scope {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        version: String,
    }
    #[derive(Clone, PartialEq, Message)]
    struct PbSpan {
        #[prost(bytes = "vec", tag = "1")]
        trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        parent_span_id: Vec<u8>,
        #[prost(fixed32, tag = "16")]
        flags: u32,
        #[prost(string, tag = "5")]
        name: String,
        #[prost(int32, tag = "6")]
        kind: i32,
        #[prost(fixed64, tag = "7")]
        start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "10")]
        dropped_attributes_count: u32,
        #[prost(message, optional, tag = "15")]
        status: Option<Status>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Status {
        #[prost(string, tag = "2")]
        message: String,
        #[prost(int32, tag = "3")]
        code: i32,
    }
    #[derive(Clone, PartialEq, Message)]
    struct KeyValue {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(message, optional, tag = "2")]
        value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct AnyValue {
        #[prost(oneof = "Any", tags = "1, 2, 3, 4")]
        value: Option<Any>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    enum Any {
        #[prost(string, tag = "1")]
        Str(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
    }

    fn span(kind: Kind, parent: Option<SpanId>, error: Option<&str>) -> Span {
        Span {
            trace_id: [0xab; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_id: parent,
            remote_parent: parent.is_some() && kind == Kind::Server,
            trace_state: Some(Arc::from("vendor=x")),
            flags: 1,
            name: Cow::Borrowed("GET /fn/echo"),
            kind,
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_000_250_000_000,
            attributes: vec![
                ("tensorlet.function", Value::from("echo")),
                ("http.response.status_code", Value::Int(503)),
                ("negative", Value::Int(-2)),
                ("empty", Value::from("")),
            ],
            error: error.map(str::to_string),
        }
    }

    fn attr(attributes: &[KeyValue], key: &str) -> Option<Any> {
        let kv = attributes.iter().find(|kv| kv.key == key)?;
        kv.value.clone()?.value
    }

    #[test]
    fn the_request_decodes_with_the_official_field_numbers() {
        let spans = [
            span(Kind::Server, Some([9; 8]), Some("the guest trapped")),
            span(Kind::Internal, None, None),
        ];
        let resource = [("service.name", Value::from("tensorlet"))];
        let body = export_request(&resource, "tensorlet", "0.1.0", &spans);
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans.len(), 1);
        let rs = &decoded.resource_spans[0];
        let resource = rs.resource.as_ref().unwrap();
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some(Any::Str("tensorlet".into()))
        );
        assert_eq!(rs.scope_spans.len(), 1);
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!((&*scope.name, &*scope.version), ("tensorlet", "0.1.0"));
        let [server, internal] = &rs.scope_spans[0].spans[..] else {
            panic!("two spans: {:?}", rs.scope_spans[0].spans)
        };

        assert_eq!(server.trace_id, vec![0xab; 16]);
        assert_eq!(server.span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(server.parent_span_id, vec![9; 8]);
        assert_eq!(server.trace_state, "vendor=x");
        assert_eq!(server.name, "GET /fn/echo");
        assert_eq!(server.kind, 2);
        assert_eq!(server.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(server.end_time_unix_nano, 1_700_000_000_250_000_000);
        // Sampled, parent known to be remote.
        assert_eq!(server.flags, 0x301);
        assert_eq!(server.dropped_attributes_count, 0);
        let status = server.status.as_ref().unwrap();
        assert_eq!((status.code, &*status.message), (2, "the guest trapped"));
        let a = &server.attributes;
        assert_eq!(attr(a, "tensorlet.function"), Some(Any::Str("echo".into())));
        assert_eq!(attr(a, "http.response.status_code"), Some(Any::Int(503)));
        assert_eq!(attr(a, "negative"), Some(Any::Int(-2)));
        // An empty string is still a string value, not an empty AnyValue.
        assert_eq!(attr(a, "empty"), Some(Any::Str(String::new())));

        // A root span has no parent; a span without an error has no status.
        assert_eq!(internal.kind, 1);
        assert!(internal.parent_span_id.is_empty());
        assert_eq!(internal.status, None);
        assert_eq!(internal.flags, 0x101);
    }

    #[test]
    fn varints_take_as_many_bytes_as_they_need() {
        let mut w = Writer::default();
        w.varint(1);
        w.varint(300);
        w.varint(u64::MAX);
        assert_eq!(w.0[..3], [0x01, 0xac, 0x02]);
        assert_eq!(w.0.len(), 3 + 10);
        // A long attribute value needs a two-byte length.
        let long = "x".repeat(200);
        let mut s = span(Kind::Internal, None, None);
        s.attributes = vec![("long", Value::Str(long.clone()))];
        let body = export_request(&[], "tensorlet", "", &[s]);
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(attr(&spans[0].attributes, "long"), Some(Any::Str(long)));
    }
}
