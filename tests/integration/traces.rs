//! Traces over OTLP/HTTP (README "Traces"): with `otlp_endpoint` the node sends a SERVER span per
//! function request, with `instantiate`, `guest` and wasi:nn children, to a collector. The
//! collector here is a loopback listener that decodes the protobuf bodies with messages declared
//! from the official .proto files ([`collector`]). A `traceparent` from the client is honoured
//! and the guest (the `echo` fixture, which echoes the header back) sees one naming the request
//! span.

mod collector;

use std::net::TcpListener;

use collector::{Any, Collector, INTERNAL, SERVER, STATUS_ERROR, Span};

use crate::support::*;

/// The W3C example caller: its trace and span.
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn caller(flags: &str) -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}")
}

/// A node on a directory of its own that traces to `collector`.
fn traced_node(collector: &Collector) -> (TestDir, Node) {
    let dir = TestDir::new();
    let config = format!("otlp_endpoint = \"{}\"\n", collector.endpoint());
    let node = Node::start(&dir.data(), Some(&config));
    (dir, node)
}

/// The `traceparent` the guest saw (echoed back by `echo`): trace id, parent id and flags.
fn guest_traceparent(r: &Response) -> (Vec<u8>, Vec<u8>, String) {
    let value = r
        .header("x-echo-traceparent")
        .unwrap_or_else(|| panic!("the guest got no traceparent: {r}"));
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace, parent, flags] = parts[..] else {
        panic!("not a traceparent: {value}")
    };
    assert_eq!(version, "00", "{value}");
    assert_eq!(
        (trace.len(), parent.len(), flags.len()),
        (32, 16, 2),
        "{value}"
    );
    let trace = hex::decode(trace).expect("hex trace id");
    let parent = hex::decode(parent).expect("hex parent id");
    assert_ne!(trace, [0; 16], "{value}");
    assert_ne!(parent, [0; 8], "{value}");
    (trace, parent, flags.to_string())
}

/// The one span named `name` among `spans`.
fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let named: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(named.len(), 1, "one {name} span in {spans:#?}");
    named[0]
}

/// Waits for a SERVER span named `name` and returns its trace id.
fn trace_of(collector: &Collector, name: &str) -> Vec<u8> {
    wait_for(&format!("a {name} span"), || {
        let spans = collector.spans();
        let s = spans
            .into_iter()
            .find(|s| s.name == name && s.kind == SERVER)?;
        Some(s.trace_id)
    })
}

#[test]
fn a_request_continues_the_caller_s_trace_and_the_guest_is_told_its_span() {
    let collector = Collector::start();
    let (_dir, node) = traced_node(&collector);
    node.deploy_ok("echo", "echo", "");
    node.deploy_ok("panic", "panic", "");

    let r = Request::get("/fn/echo/hello?x=1")
        .header("traceparent", &caller("01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .send(node.addr());
    assert_eq!(r.status, 200, "{r}");
    let (trace, parent, flags) = guest_traceparent(&r);
    assert_eq!(
        hex::encode(&trace),
        CALLER_TRACE,
        "the caller's trace goes on"
    );
    assert_eq!(flags, "01");
    assert_ne!(
        hex::encode(&parent),
        CALLER_SPAN,
        "the guest's parent is the node's span"
    );
    assert_eq!(r.header("x-echo-tracestate"), Some("congo=t61rcWkgMzE"));

    let spans = collector.wait_for_trace(&trace, &["GET /fn/echo", "instantiate", "guest"]);
    let server = one(&spans, "GET /fn/echo");
    assert_eq!(server.kind, SERVER);
    assert_eq!(hex::encode(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(
        server.span_id, parent,
        "the guest's traceparent names the request span"
    );
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(server.flags & 0xff, 1, "sampled");
    assert_eq!(server.text("tensorlet.function"), "echo");
    let version = r.header("x-tensorlet-version").expect("version header");
    assert_eq!(server.text("tensorlet.version"), version);
    let request_id = r.header("x-request-id").expect("request id header");
    assert_eq!(server.text("tensorlet.request_id"), request_id);
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(Any::Int(200))
    );
    assert_eq!(server.text("http.request.method"), "GET");
    assert_eq!(server.text("url.path"), "/fn/echo/hello");
    assert!(!server.failed(), "{server:?}");
    assert!(
        server.start_time_unix_nano > 0 && server.start_time_unix_nano <= server.end_time_unix_nano
    );

    let instantiate = one(&spans, "instantiate");
    let guest = one(&spans, "guest");
    for child in [instantiate, guest] {
        assert_eq!(child.kind, INTERNAL, "{child:?}");
        assert_eq!(child.parent_span_id, server.span_id, "{child:?}");
        assert_eq!(child.span_id.len(), 8);
        assert_ne!(child.span_id, server.span_id);
        assert_eq!(child.text("tensorlet.function"), "echo");
        assert_eq!(child.text("tensorlet.version"), version);
        assert!(!child.failed(), "{child:?}");
        assert!(child.start_time_unix_nano <= child.end_time_unix_nano);
    }
    assert!(server.start_time_unix_nano <= instantiate.start_time_unix_nano);
    assert!(instantiate.end_time_unix_nano <= guest.start_time_unix_nano);

    // A guest that traps: a 500, and both its request span and its run failed.
    let r = node.get("/fn/panic");
    assert_eq!(r.status, 500, "{r}");
    let trace = trace_of(&collector, "GET /fn/panic");
    let spans = collector.wait_for_trace(&trace, &["GET /fn/panic", "instantiate", "guest"]);
    let server = one(&spans, "GET /fn/panic");
    assert!(server.parent_span_id.is_empty(), "a trace of its own");
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(Any::Int(500))
    );
    let status = server.status.as_ref().expect("a status");
    assert_eq!(status.code, STATUS_ERROR);
    assert!(!status.message.is_empty(), "{status:?}");
    assert!(one(&spans, "guest").failed());
    assert!(!one(&spans, "instantiate").failed());

    // What came in: OTLP/HTTP protobuf requests from the node, and only function requests
    // (the deploys above were not traced).
    let received = collector.received();
    assert!(!received.exports.is_empty());
    for export in &received.exports {
        assert_eq!((&*export.method, &*export.path), ("POST", "/v1/traces"));
        assert_eq!(export.content_type, "application/x-protobuf");
        for rs in &export.request.resource_spans {
            let resource = rs.resource.as_ref().expect("a resource");
            let attr = |k| collector::attr(&resource.attributes, k);
            assert_eq!(attr("service.name"), Some(Any::Str("tensorlet".into())));
            assert!(matches!(attr("service.instance.id"), Some(Any::Str(s)) if !s.is_empty()));
            for ss in &rs.scope_spans {
                assert_eq!(ss.scope.as_ref().map(|s| &*s.name), Some("tensorlet"));
                for span in ss.spans.iter().filter(|s| s.kind == SERVER) {
                    assert!(span.name.starts_with("GET /fn/"), "{}", span.name);
                }
            }
        }
    }
}

#[test]
fn without_a_valid_traceparent_the_request_starts_a_trace() {
    let collector = Collector::start();
    let (_dir, node) = traced_node(&collector);
    node.deploy_ok("echo", "echo", "");
    let caller_trace = hex::decode(CALLER_TRACE).unwrap();

    // None, then invalid ones: each gets a fresh trace, and a tracestate without a valid
    // traceparent is dropped.
    let invalid = [
        None,
        Some("garbage".to_string()),
        Some(format!("00-{CALLER_TRACE}-0000000000000000-01")),
        Some(format!(
            "00-00000000000000000000000000000000-{CALLER_SPAN}-01"
        )),
        Some(format!("ff-{CALLER_TRACE}-{CALLER_SPAN}-01")),
        Some(format!(
            "00-{}-{CALLER_SPAN}-01",
            CALLER_TRACE.to_uppercase()
        )),
        Some(format!("00-{CALLER_TRACE}-{CALLER_SPAN}")),
    ];
    let mut traces = Vec::new();
    for incoming in &invalid {
        let mut req = Request::get("/fn/echo").header("tracestate", "congo=t61rcWkgMzE");
        if let Some(v) = incoming {
            req = req.header("traceparent", v);
        }
        let r = req.send(node.addr());
        assert_eq!(r.status, 200, "{incoming:?}: {r}");
        let (trace, parent, flags) = guest_traceparent(&r);
        assert_ne!(trace, caller_trace, "{incoming:?}");
        assert_eq!(flags, "01", "a new trace is sampled");
        assert_eq!(r.header("x-echo-tracestate"), None, "{incoming:?}");
        let spans = collector.wait_for_trace(&trace, &["GET /fn/echo"]);
        let server = one(&spans, "GET /fn/echo");
        assert!(server.parent_span_id.is_empty(), "{incoming:?}: {server:?}");
        assert_eq!(server.span_id, parent);
        assert_eq!(server.trace_state, "");
        traces.push(trace);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(
        traces.len(),
        invalid.len(),
        "every request a trace of its own"
    );

    // A caller that does not sample its trace: the guest still gets it, nothing is recorded.
    // The request after it is recorded; by then the first one's spans would have come first.
    let r = Request::get("/fn/echo")
        .header("traceparent", &caller("00"))
        .send(node.addr());
    let (trace, _, flags) = guest_traceparent(&r);
    assert_eq!(
        (hex::encode(&trace), &*flags),
        (CALLER_TRACE.to_string(), "00")
    );
    let r = node.get("/fn/echo");
    let (next, _, _) = guest_traceparent(&r);
    collector.wait_for_trace(&next, &["GET /fn/echo", "guest"]);
    let unsampled: Vec<Span> = (collector.spans().into_iter())
        .filter(|s| s.trace_id == caller_trace)
        .collect();
    assert!(unsampled.is_empty(), "{unsampled:#?}");
}

nn_test! {
    fn a_wasi_nn_compute_is_timed_as_its_queue_wait_and_its_inference() {
        let collector = Collector::start();
        let (_dir, node) = traced_node(&collector);
        let r = node.add_model("add", "add_f32.onnx");
        assert!(r.status == 201 || r.status == 200, "model add: {r}");
        node.deploy_ok("nn", "nn-probe", "model=add");

        let r = Request::get("/fn/nn/add")
            .header("traceparent", &caller("01"))
            .send(node.addr());
        assert_eq!(r.text(), "2 3 4 5 6 7", "{r}");
        let names = ["GET /fn/nn", "guest", "wasi-nn compute", "wasi-nn queue", "wasi-nn inference"];
        let spans = collector.wait_for_trace(&hex::decode(CALLER_TRACE).unwrap(), &names);
        let server = one(&spans, "GET /fn/nn");
        assert_eq!(hex::encode(&server.parent_span_id), CALLER_SPAN);
        let compute = one(&spans, "wasi-nn compute");
        let queue = one(&spans, "wasi-nn queue");
        let inference = one(&spans, "wasi-nn inference");
        assert_eq!(compute.parent_span_id, server.span_id, "a step of the request");
        for span in [compute, queue, inference] {
            assert_eq!(span.kind, INTERNAL);
            assert_eq!(span.attr("tensorlet.model"), Some(Any::Str("add".into())), "{span:?}");
            assert!(!span.failed(), "{span:?}");
            assert!(span.start_time_unix_nano <= span.end_time_unix_nano, "{span:?}");
        }
        for part in [queue, inference] {
            assert_eq!(part.parent_span_id, compute.span_id, "{part:?}");
            assert!(compute.start_time_unix_nano <= part.start_time_unix_nano);
            assert!(part.end_time_unix_nano <= compute.end_time_unix_nano);
        }
        // First the wait for a session, then the inference.
        assert!(queue.end_time_unix_nano <= inference.start_time_unix_nano);
    }
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = TestDir::new();
    let config = format!("otlp_endpoint = \"http://127.0.0.1:{port}\"\n");
    let node = Node::start(&dir.data(), Some(&config));
    node.deploy_ok("echo", "echo", "");
    for _ in 0..3 {
        let r = node.get("/fn/echo");
        assert_eq!(r.status, 200, "{r}");
    }
    // The batch fails, is counted and logged, and the node serves on.
    let failed = node.wait_for_metric(
        "spans that could not be exported",
        "tensorlet_trace_spans_failed_total",
        &[],
        |v| v >= 1.0,
    );
    assert!(failed >= 1.0);
    wait_for("the export failure in the log", || {
        node.stderr_text()
            .contains("cannot export spans")
            .then_some(())
    });
    assert_eq!(node.get("/fn/echo").status, 200);
}

#[test]
fn without_an_endpoint_nothing_is_traced() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), None);
    node.deploy_ok("echo", "echo", "");
    // The guest sees the request's own headers, nothing added.
    let r = node.get("/fn/echo");
    assert_eq!(r.header("x-echo-traceparent"), None, "{r}");
    let r = Request::get("/fn/echo")
        .header("traceparent", &caller("01"))
        .send(node.addr());
    assert_eq!(r.header("x-echo-traceparent"), Some(&*caller("01")));
    assert!(!node.metrics().contains("tensorlet_trace_"));
}
