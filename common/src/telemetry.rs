//! Logs and traces: `tracing` to stderr (text or JSON), OTLP export when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context carried in AMQP headers
//! so one job is one trace across ingest, render and deliver.

use std::collections::HashMap;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
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

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(service: &str, settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    use std::io::IsTerminal as _;
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&settings.log_filter))?;
    // Colours only on a terminal: escape codes in a file or a log collector are noise.
    let ansi = std::io::stderr().is_terminal();
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        use opentelemetry_otlp::WithExportConfig as _;
        let protocol = otlp_protocol(
            std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").ok(),
            std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok(),
        )?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    } else {
        None
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_owned())));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::filter_fn(never_secret))
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
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
mod tests {
    use opentelemetry_otlp::Protocol;

    use super::*;

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
