//! Logs and traces: `tracing` to stderr (text or JSON), OTLP export when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context carried in AMQP headers
//! so one job is one trace across ingest, render and deliver.
//!
//! Spans get trace and span ids whether or not traces are exported: JSON log lines inside
//! a span carry `trace_id` and `span_id`, so the log lines of one job can be found across
//! the three stages (and, with export on, next to its trace).

use std::collections::HashMap;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::amqp::{header_str, set_header};
use crate::config::{LogFormat, TelemetrySettings};

/// Keeps the trace exporter alive; dropping it flushes pending spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Whether an event or span may be recorded at all, whatever the filter says. lapin's
/// trace level dumps every AMQP frame it writes, Connection.StartOk included, whose SASL
/// response holds the RabbitMQ password: that level of the AMQP crates is never recorded.
fn never_secret(meta: &tracing::Metadata<'_>) -> bool {
    let amqp = meta.target().starts_with("lapin") || meta.target().starts_with("amq_protocol");
    !(amqp && *meta.level() == tracing::Level::TRACE)
}

/// The OTLP protocol from the standard variables: `http/protobuf` (the default) or
/// `http/json`. `grpc` is refused rather than silently changed: this build speaks HTTP only.
fn otlp_protocol(
    traces: Option<String>,
    general: Option<String>,
) -> anyhow::Result<opentelemetry_otlp::Protocol> {
    let (var, value) = match (traces, general) {
        (Some(v), _) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
        (None, Some(v)) => ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
        (None, None) => return Ok(opentelemetry_otlp::Protocol::HttpBinary),
    };
    match value.as_str() {
        "http/protobuf" => Ok(opentelemetry_otlp::Protocol::HttpBinary),
        "http/json" => Ok(opentelemetry_otlp::Protocol::HttpJson),
        other => anyhow::bail!(
            "{var}={other:?} is not supported: mailpipe exports OTLP over HTTP; set it to \
             \"http/protobuf\" or \"http/json\" and point OTEL_EXPORTER_OTLP_ENDPOINT at the \
             collector's HTTP port (4318)"
        ),
    }
}

/// JSON log lines, with `trace_id` and `span_id` (W3C hex) when a trace is active.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .event_format(WithTraceIds(tracing_subscriber::fmt::format().json()))
        .with_ansi(false)
        .with_writer(writer)
}

/// The layer that gives spans OpenTelemetry contexts (ids, parents from AMQP headers) and
/// exports them through `provider`'s processors, if it has any.
fn otel_layer<S>(provider: &SdkTracerProvider, service: &str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_owned()))
}

/// A JSON event formatter plus the active trace's ids. The OpenTelemetry layer makes an
/// entered span's context the current one, so the ids are read from there.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt as _;
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatter writes one object and a newline: the ids go before its `}`.
        match line.trim_end().strip_suffix('}') {
            Some(object) if !object.ends_with('{') => writeln!(
                writer,
                "{object},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                ids.trace_id(),
                ids.span_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(service: &str, settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    use std::io::IsTerminal as _;
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&settings.log_filter))?;
    // Colours only on a terminal: escape codes in a file or a log collector are noise.
    let ansi = std::io::stderr().is_terminal();
    let fmt = match settings.log_format {
        LogFormat::Json => json_layer(std::io::stderr).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        use opentelemetry_otlp::WithExportConfig as _;
        let protocol = otlp_protocol(
            std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").ok(),
            std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok(),
        )?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    // Without an exporter the provider still gives spans their ids (for the logs and the
    // AMQP headers); nothing is sent anywhere.
    let provider = provider.build();
    let otel = otel_layer(&provider, service);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::filter_fn(never_secret))
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into headers.
pub fn inject_trace_context(headers: &mut FieldTable) {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    for (k, v) in carrier {
        set_header(headers, &k, v);
    }
}

/// Makes `span` a child of the trace context carried by a delivery, if any.
pub fn adopt_trace_context(span: &tracing::Span, props: &BasicProperties) {
    let mut carrier = HashMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = header_str(props, key) {
            carrier.insert(key.to_owned(), v);
        }
    }
    if !carrier.is_empty() {
        let cx = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry_otlp::Protocol;

    use super::*;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn json_logs_carry_the_trace_and_span_ids_of_the_active_span() {
        let capture = Capture::default();
        // A provider without an exporter, as a process without OTEL_EXPORTER_OTLP_ENDPOINT has.
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(json_layer(capture.clone()))
            .with(otel_layer(&provider, "test"));
        // A job published by another stage: its trace context rides in the headers.
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = FieldTable::default();
        set_header(&mut headers, "traceparent", incoming.to_owned());
        let props = BasicProperties::default().with_headers(headers);
        let (own, adopted) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before any span");
            let own = {
                let span = tracing::info_span!("batch");
                let _entered = span.enter();
                tracing::info!(lines = 3, "inside a span");
                span.context().span().span_context().clone()
            };
            let span = tracing::info_span!("job");
            adopt_trace_context(&span, &props);
            let _entered = span.enter();
            tracing::info!("inside a job from the queue");
            (own, span.context().span().span_context().clone())
        });
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["fields"]["message"], "before any span");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert!(lines[0].get("span_id").is_none(), "{text}");

        assert!(own.is_valid());
        assert_eq!(lines[1]["fields"]["lines"], 3);
        assert_eq!(lines[1]["trace_id"], own.trace_id().to_string());
        assert_eq!(lines[1]["span_id"], own.span_id().to_string());
        assert_eq!(lines[1]["span"]["name"], "batch");

        // The job's lines carry the trace id the publishing stage logged.
        assert_eq!(lines[2]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[2]["span_id"], adopted.span_id().to_string());
        assert_ne!(adopted.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn otlp_over_http_is_chosen_and_grpc_is_refused_by_name() {
        let p = |t: Option<&str>, g: Option<&str>| {
            otlp_protocol(t.map(str::to_owned), g.map(str::to_owned))
        };
        assert!(matches!(p(None, None), Ok(Protocol::HttpBinary)));
        assert!(matches!(p(None, Some("http/json")), Ok(Protocol::HttpJson)));
        assert!(matches!(
            p(Some("http/protobuf"), Some("http/json")),
            Ok(Protocol::HttpBinary)
        ));
        let err = p(None, Some("grpc")).unwrap_err().to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\" is not supported"),
            "{err}"
        );
        let err = p(Some("grpc"), None).unwrap_err().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), "{err}");
    }
}
