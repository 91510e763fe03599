//! Process-wide logs and traces: one call at start-up, one guard to drop
//! at exit.
//!
//! - Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text
//!   (colored on a terminal) or one JSON object per line.
//! - When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans also go out by
//!   OTLP/gRPC (the standard `OTEL_*` variables apply: `OTEL_SERVICE_NAME`
//!   names the process, `OTEL_BSP_SCHEDULE_DELAY` sets the export period),
//!   and W3C trace context is the propagator. The transport's own crates
//!   (`h2`, `hyper`, `tower`, `tonic`) are kept out of the exported spans,
//!   or the exporter would trace itself.

use std::io::IsTerminal;
use std::str::FromStr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`,
    /// `spans`).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format '{other}': use text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Keeps the trace exporter alive; dropping it flushes and stops it
/// (blocking: drop it outside async code, while the tokio runtime it was
/// made in still runs).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace exporter: {e}");
        }
    }
}

/// The OTLP endpoint from the environment, if one is set.
fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// Installs the process's subscriber: logs in `format`, and spans by OTLP
/// when the environment asks for it, under the service name
/// `OTEL_SERVICE_NAME` or `service`. Call it inside a tokio runtime
/// (`Runtime::enter`) when spans may be exported: the gRPC exporter runs on
/// it. A second call, or a subscriber already set, leaves things as they
/// are.
pub fn init(service: &str, format: LogFormat) -> Telemetry {
    init_with(service, format, "info")
}

/// [`init`] with the log filter `default` when `RUST_LOG` is not set (the
/// CLI logs only warnings by default).
pub fn init_with(service: &str, format: LogFormat, default: &str) -> Telemetry {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let (provider, spans) = match otlp_endpoint() {
        None => (None, None),
        Some(endpoint) => match exporter(service) {
            Ok(provider) => {
                let tracer = provider.tracer("adjoint");
                opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
                opentelemetry::global::set_tracer_provider(provider.clone());
                let quiet = Targets::new()
                    .with_default(LevelFilter::INFO)
                    .with_target("h2", LevelFilter::OFF)
                    .with_target("hyper", LevelFilter::OFF)
                    .with_target("hyper_util", LevelFilter::OFF)
                    .with_target("tower", LevelFilter::OFF)
                    .with_target("tonic", LevelFilter::OFF)
                    .with_target("opentelemetry", LevelFilter::OFF)
                    .with_target("opentelemetry_sdk", LevelFilter::OFF)
                    .with_target("opentelemetry_otlp", LevelFilter::OFF);
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(quiet)
                    .boxed();
                eprintln!("exporting spans by OTLP to {endpoint}");
                (Some(provider), Some(layer))
            }
            Err(e) => {
                eprintln!("not exporting spans to {endpoint}: {e}");
                (None, None)
            }
        },
    };
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

fn exporter(service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
