//! What the adjoint processes tell their operators, beyond their results.
//!
//! - [`metrics`]: a Prometheus registry (counters, gauges, histograms with
//!   labels) rendered in the text exposition format, and a parser of that
//!   format for tests and tools.
//! - [`http`]: the `/metrics` (and `/healthz`) endpoint a coordinator or
//!   worker serves on `--metrics-listen`.

pub mod http;
pub mod metrics;
