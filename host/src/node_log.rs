//! The node's own log on stderr: tracing's text lines, or with `log_format = "json"` one JSON
//! object per line. Every event inside a span carries the span's fields (the request span of
//! [`crate::service`] gives each line about a request its `request_id`); in JSON they are at the
//! top level of the object, next to the event's own fields, so a log pipeline can match a line
//! to an `x-request-id` without knowing how the node nests its spans.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How the node writes its own log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `log_format` in the config: `"text"` or `"json"`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => anyhow::bail!("log_format must be \"text\" or \"json\", not \"{other}\""),
        }
    }
}

/// Installs the process's subscriber: stderr, filtered by `RUST_LOG` (default
/// `tensorlet=info,warn`). Does nothing if one is installed already.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("tensorlet=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .try_init(),
    };
}

/// Records fields into a JSON object: numbers and booleans as themselves, the rest as text.
struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Keeps a span's fields as a JSON object's text (in the span's extensions), for [`JsonLines`].
struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut Visitor(&mut map));
        writer.write_str(&Value::Object(map).to_string())
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut map: Map<String, Value> = serde_json::from_str(&current.fields).unwrap_or_default();
        fields.record(&mut Visitor(&mut map));
        current.fields = Value::Object(map).to_string();
        Ok(())
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, the fields of the spans it is in
/// (outermost first) and then its own (`message` among them), all at the top level; and, in
/// the shape of tracing-subscriber's JSON format, the event's fields again under `fields`, its
/// innermost span under `span` and all its spans under `spans`.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut spans = Vec::new();
        for span in ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
        {
            let ext = span.extensions();
            let mut fields: Map<String, Value> = ext
                .get::<FormattedFields<N>>()
                .and_then(|f| serde_json::from_str(&f.fields).ok())
                .unwrap_or_default();
            line.extend(fields.clone());
            fields.insert("name".into(), span.name().into());
            spans.push(Value::Object(fields));
        }
        let mut fields = Map::new();
        event.record(&mut Visitor(&mut fields));
        line.extend(fields.clone());
        line.insert("fields".into(), Value::Object(fields));
        if let Some(innermost) = spans.last() {
            line.insert("span".into(), innermost.clone());
        }
        if !spans.is_empty() {
            line.insert("spans".into(), Value::Array(spans));
        }
        let meta = event.metadata();
        line.insert("timestamp".into(), crate::time::now_rfc3339_millis().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_their_spans_fields_at_the_top() {
        let _one_subscriber_at_a_time = crate::test_support::one_subscriber_at_a_time();
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // See `test_support::one_subscriber_at_a_time`.
            tracing::callsite::rebuild_interest_cache();
            let span = tracing::error_span!("request", request_id = "abc-1");
            let _in = span.enter();
            tracing::warn!(status = 503u64, "too \"busy\"\nnow");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["request_id"], "abc-1", "{v}");
        assert_eq!(v["message"], "too \"busy\"\nnow", "{v}");
        assert_eq!(v["status"], 503, "{v}");
        assert_eq!(v["level"], "WARN", "{v}");
        assert_eq!(v["fields"]["message"], v["message"], "{v}");
        assert_eq!(v["span"]["name"], "request", "{v}");
        assert_eq!(v["span"]["request_id"], "abc-1", "{v}");
        assert_eq!(v["spans"][0]["request_id"], "abc-1", "{v}");
        assert!(crate::time::parse_rfc3339(v["timestamp"].as_str().unwrap()).is_some());
        assert!(LogFormat::parse("yaml").is_err());
    }
}
