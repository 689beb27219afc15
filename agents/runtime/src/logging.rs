//! Log set-up shared by every agent: human-readable by default, JSON lines on request, and
//! spans sent to an OpenTelemetry collector (OTLP over HTTP) when one is configured.

use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging flags every agent takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text for people, json for log pipelines.
    #[arg(long, env = "INFRACREW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// An OpenTelemetry collector's OTLP/HTTP address (http://collector:4318): each message's
    /// handling is sent there as a span of its plan's trace. Unset, spans stay in the logs.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Keeps the span exporter running; dropping it sends what is still buffered.
#[derive(Debug)]
#[must_use = "spans are sent until this is dropped"]
pub struct Telemetry {
    spans: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(spans) = self.spans.take()
            && let Err(error) = spans.shutdown()
        {
            eprintln!("the last spans were not sent to the collector: {error}");
        }
    }
}

/// Installs the global subscriber for `service`; the level comes from `RUST_LOG` (default
/// `info`). A collector address that cannot be used is said, and logging goes on without it.
pub fn init(args: &LogArgs, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = match args.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let (spans, unusable) = match args
        .otlp_endpoint
        .as_deref()
        .map(|base| exporter(base, service))
    {
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    let exported = spans
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("infracrew")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(exported)
        .try_init();
    if let Some(error) = unusable {
        tracing::error!(%error, "spans are not sent to the OpenTelemetry collector");
    }
    Telemetry { spans }
}

fn exporter(base: &str, service: &str) -> Result<SdkTracerProvider, String> {
    let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(&endpoint)
        .build()
        .map_err(|error| format!("{endpoint}: {error}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}
