//! What the adjoint processes tell their operators, beyond their results.
//!
//! - [`metrics`]: a Prometheus registry (counters, gauges, histograms with
//!   labels) rendered in the text exposition format, and a parser of that
//!   format for tests and tools.
//! - [`http`]: the `/metrics` (and `/healthz`) endpoint a coordinator or
//!   worker serves on `--metrics-listen`.
//! - [`init`]: logs (text or JSON, `RUST_LOG`) and, when the standard
//!   `OTEL_*` variables ask for it, spans exported by OTLP/gRPC.
//! - [`propagate`]: W3C trace context between processes (gRPC metadata and
//!   message fields) and spans with measured start and end times.

pub mod http;
pub mod init;
pub mod metrics;
pub mod propagate;

pub use init::{LogFormat, Telemetry, init, init_with};
