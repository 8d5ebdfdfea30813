//! Tracing for Sluice processes.
//!
//! [`init`] installs a `tracing` subscriber (text or JSON logs filtered by
//! `log_filter`) and, when `otlp_endpoint` is set, an OpenTelemetry layer
//! exporting spans over OTLP/gRPC. Trace context crosses process boundaries
//! in gRPC metadata as W3C `traceparent`: clients call [`inject_context`]
//! (or use [`inject_interceptor`]) and servers build their per-request span
//! with [`grpc_server_span`], so a produce is one trace from client through
//! broker to store.
//!
//! [`metrics`] holds the Prometheus plumbing every service shares.

pub mod http1;
pub mod metrics;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Telemetry settings, embedded as `[telemetry]` in every service config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `tracing` filter directives, e.g. `info,sluice_broker=debug`.
    /// `RUST_LOG`, when set, wins.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; no export when
    /// unset.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info".to_string(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("cannot build the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and stops span export when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Export failures at exit are not worth more than a log line.
            // `eprintln!` would panic with stderr closed (a log pipe whose
            // reader went away); the line is dropped then.
            if let Err(error) = provider.shutdown() {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "telemetry: span export shutdown failed: {error}"
                );
            }
        }
    }
}

/// Installs the global subscriber for a process named `service_name`.
pub fn init(
    service_name: &str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_environment) if !from_environment.is_empty() => from_environment,
        _ => config.log_filter.clone(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|error| TelemetryError::Filter {
        filter: filter.clone(),
        reason: error.to_string(),
    })?;
    let fmt_layer = match config.log_format {
        // Log lines that cannot be written (stderr is a pipe whose reader
        // went away) are dropped: the subscriber's default reports each
        // failure with `eprintln!`, which panics in the logging task.
        // Colour codes only on a terminal: a log file or a pipe gets
        // plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .log_internal_errors(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .log_internal_errors(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (otel_layer, provider) = match &config.otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|error| TelemetryError::Exporter {
                    endpoint: endpoint.clone(),
                    reason: error.to_string(),
                })?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service_name.to_string())
                        .build(),
                )
                .build();
            let tracer = provider.tracer(service_name.to_string());
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(env_filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// Writes the current span's trace context into outgoing gRPC metadata.
/// A no-op when no OpenTelemetry layer is installed.
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// A tonic interceptor doing [`inject_context`] on every request.
pub fn inject_interceptor(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    inject_context(request.metadata_mut());
    Ok(request)
}

/// The span a server opens for each gRPC request (pass to tonic's
/// `Server::builder().trace_fn(..)`): named after the method and parented
/// to the caller's trace when the request carries one.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc", method = %request.uri().path());
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    // Fails only when no OpenTelemetry layer is installed, where there is
    // nothing to parent.
    let _ = span.set_parent(parent);
    span
}
