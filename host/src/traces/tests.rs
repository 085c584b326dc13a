//! The tracer on the request path: what a request's headers become, which spans a request
//! records, and how they hang together.

use super::*;

const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn tracer(capacity: usize) -> (Tracer, tokio::sync::mpsc::Receiver<Span>) {
    let (exporter, rx) = Exporter::detached(capacity);
    let tracer = Tracer {
        exporter: Arc::new(exporter),
        sample_below: None,
    };
    (tracer, rx)
}

#[test]
fn new_traces_are_sampled_by_the_ratio_and_callers_decide_for_theirs() {
    let (mut t, _rx) = tracer(16);
    let sampled = |t: &Tracer, headers: &[(&str, &str)]| {
        let mut req = request(headers);
        let recorded = t.begin(&mut req, "r").is_some();
        // Either way the guest is told the trace, with the flag that was decided.
        assert_eq!(traceparent(&req).sampled(), recorded);
        recorded
    };
    assert!((0..100).all(|_| sampled(&t, &[])));
    t.sample_below = sample_below(0.0);
    assert!(!(0..100).any(|_| sampled(&t, &[])));
    // A caller that samples is followed, whatever the ratio.
    assert!(sampled(&t, &[("traceparent", CALLER)]));
    t.sample_below = sample_below(0.25);
    let n = (0..10_000).filter(|_| sampled(&t, &[])).count();
    assert!((2_000..3_000).contains(&n), "{n}");
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method("POST").uri("/fn/echo/x?y=1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn traceparent(req: &Request<()>) -> TraceParent {
    let v = req
        .headers()
        .get(TRACEPARENT)
        .expect("a traceparent for the guest");
    TraceParent::parse(v.as_bytes()).expect("a valid one")
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[test]
fn a_caller_s_trace_is_continued_and_the_guest_is_told_the_request_span() {
    let (tracer, mut rx) = tracer(16);
    let mut req = request(&[(TRACEPARENT, CALLER), (TRACESTATE, "congo=t61rcWkgMzE")]);
    let mut span = tracer.begin(&mut req, "abc-1").expect("sampled");
    let caller = TraceParent::parse(CALLER.as_bytes()).unwrap();
    let guest = traceparent(&req);
    assert_eq!(guest.trace_id, caller.trace_id);
    assert_eq!(guest.flags, caller.flags);
    assert_ne!(guest.parent_id, caller.parent_id);
    assert_eq!(req.headers()[TRACESTATE], "congo=t61rcWkgMzE");
    let ctx = req
        .extensions()
        .get::<TraceCtx>()
        .expect("context for the runtime")
        .clone();
    assert_eq!(ctx.span_id(), guest.parent_id);

    let t0 = Instant::now();
    let compute = ctx
        .child("wasi-nn compute", t0)
        .attr("tensorlet.model", "add");
    let mut queue = compute.child("wasi-nn queue", t0);
    queue.fail("deadline");
    queue.end(t0 + Duration::from_millis(3));
    compute.end(t0 + Duration::from_millis(5));
    span.function("echo", "0123456789ab", None);
    span.status(StatusCode::BAD_GATEWAY, Some("the guest failed"));
    drop(span);

    let queue = rx.try_recv().unwrap();
    let compute = rx.try_recv().unwrap();
    let server = rx.try_recv().unwrap();
    assert!(rx.try_recv().is_err());

    assert_eq!(server.kind, Kind::Server);
    assert_eq!(server.name, "POST /fn/echo");
    assert_eq!(server.trace_id, caller.trace_id);
    assert_eq!(server.span_id, guest.parent_id);
    assert_eq!(server.parent_id, Some(caller.parent_id));
    assert!(server.remote_parent);
    assert_eq!(server.trace_state.as_deref(), Some("congo=t61rcWkgMzE"));
    assert_eq!(server.error.as_deref(), Some("the guest failed"));
    assert_eq!(
        attr(&server, "http.response.status_code"),
        Some(&Value::Int(502))
    );
    assert_eq!(
        attr(&server, "http.request.method"),
        Some(&Value::from("POST"))
    );
    assert_eq!(attr(&server, "url.path"), Some(&Value::from("/fn/echo/x")));
    assert_eq!(
        attr(&server, "tensorlet.function"),
        Some(&Value::from("echo"))
    );
    assert_eq!(
        attr(&server, "tensorlet.version"),
        Some(&Value::from("0123456789ab"))
    );
    assert_eq!(
        attr(&server, "tensorlet.request_id"),
        Some(&Value::from("abc-1"))
    );
    assert_eq!(attr(&server, "tensorlet.tenant"), None);

    assert_eq!(compute.kind, Kind::Internal);
    assert_eq!(compute.parent_id, Some(server.span_id));
    assert!(!compute.remote_parent);
    assert_eq!(compute.end - compute.start, 5_000_000);
    assert_eq!(attr(&compute, "tensorlet.model"), Some(&Value::from("add")));
    assert_eq!(queue.parent_id, Some(compute.span_id));
    assert_eq!(queue.error.as_deref(), Some("deadline"));
    assert_eq!(queue.start, compute.start);
    assert!(server.start <= compute.start && compute.end <= server.end + 5_000_000);
}

#[test]
fn without_a_valid_traceparent_a_trace_starts_here() {
    let (tracer, mut rx) = tracer(16);
    for incoming in [
        None,
        Some("garbage"),
        Some("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"),
    ] {
        let mut req = match incoming {
            Some(v) => request(&[(TRACEPARENT, v), (TRACESTATE, "a=b")]),
            None => request(&[(TRACESTATE, "a=b")]),
        };
        let mut span = tracer.begin(&mut req, "r").expect("sampled");
        let guest = traceparent(&req);
        assert!(guest.sampled());
        assert_ne!(
            guest.trace_id,
            TraceParent::parse(CALLER.as_bytes()).unwrap().trace_id
        );
        // A tracestate belongs to the traceparent it came with.
        assert!(req.headers().get(TRACESTATE).is_none(), "{incoming:?}");
        span.status(StatusCode::NOT_FOUND, None);
        drop(span);
        let server = rx.try_recv().unwrap();
        assert_eq!(server.trace_id, guest.trace_id);
        assert_eq!(server.parent_id, None);
        assert!(!server.remote_parent);
        assert_eq!(server.name, "POST /fn");
        // A 4xx is the client's: no error status.
        assert_eq!(server.error, None);
    }
    // Two traceparents are no valid one either.
    let mut req = request(&[(TRACEPARENT, CALLER)]);
    req.headers_mut()
        .append(TRACEPARENT, HeaderValue::from_static(CALLER));
    drop(tracer.begin(&mut req, "r"));
    assert_eq!(req.headers().get_all(TRACEPARENT).iter().count(), 1);
    assert_ne!(
        traceparent(&req).trace_id,
        TraceParent::parse(CALLER.as_bytes()).unwrap().trace_id
    );
}

#[test]
fn an_unsampled_trace_is_passed_on_but_not_recorded() {
    let (tracer, mut rx) = tracer(16);
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let mut req = request(&[(TRACEPARENT, unsampled)]);
    assert!(tracer.begin(&mut req, "r").is_none());
    assert!(req.extensions().get::<TraceCtx>().is_none());
    let guest = traceparent(&req);
    assert!(!guest.sampled());
    assert_eq!(
        guest.trace_id,
        TraceParent::parse(unsampled.as_bytes()).unwrap().trace_id
    );
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (tracer, mut rx) = tracer(2);
    for _ in 0..5 {
        let mut req = request(&[]);
        drop(tracer.begin(&mut req, "r"));
    }
    assert_eq!(tracer.exporter.counts().dropped.load(Ordering::Relaxed), 3);
    let mut text = String::new();
    tracer.render(&mut text);
    assert!(
        text.contains("tensorlet_trace_spans_dropped_total 3\n"),
        "{text}"
    );
    assert!(rx.try_recv().is_ok());
}

#[test]
fn the_traces_path_is_added_once() {
    assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
    assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
    assert_eq!(
        traces_url("http://c:4318/v1/traces"),
        "http://c:4318/v1/traces"
    );
}
