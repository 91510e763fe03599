//! W3C trace context across processes: a span's context as a
//! `traceparent` string (for gRPC metadata and for the `traceparent`
//! fields of the coordinator's messages to workers), a remote parent for a
//! span from such a string, a tonic interceptor that sends the current
//! span's context with every call, and spans with explicit start and end
//! times for phases measured before they are reported.

use std::collections::HashMap;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header and field name.
pub const TRACEPARENT: &str = "traceparent";

/// `span`'s context as a `traceparent` value; empty when it has none (no
/// exporter, or a span that is off).
pub fn traceparent_of(span: &tracing::Span) -> String {
    inject(&span.context())
}

/// The current span's `traceparent` (empty when there is none).
pub fn current_traceparent() -> String {
    traceparent_of(&tracing::Span::current())
}

fn inject(cx: &Context) -> String {
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut map);
    map.remove(TRACEPARENT).unwrap_or_default()
}

/// The context a `traceparent` value carries (an empty context for an
/// empty or malformed value).
pub fn context_from(traceparent: &str) -> Context {
    let map = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&map)
}

/// Makes the remote span of `traceparent` the parent of `span`; call it
/// before the span is first entered. Nothing happens for an empty value.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let _ = span.set_parent(context_from(traceparent));
}

/// The `traceparent` header of an HTTP request, if any.
pub fn header_traceparent(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(TRACEPARENT).and_then(|v| v.to_str().ok())
}

/// Sends the current span's trace context as `traceparent` metadata with
/// every call of a tonic client.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let tp = current_traceparent();
        if !tp.is_empty()
            && let Ok(v) = tp.parse()
        {
            request.metadata_mut().insert(TRACEPARENT, v);
        }
        Ok(request)
    }
}

/// The OpenTelemetry context of a tracing span (for [`timed_span`]).
pub fn otel_context(span: &tracing::Span) -> Context {
    span.context()
}

/// Records a finished span `name` from `start` to `end` under `parent`
/// (which a no-op context makes a no-op); returns the context of the new
/// span, for its children.
pub fn timed_span(
    parent: &Context,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) -> Context {
    if !parent.span().span_context().is_valid() {
        return parent.clone();
    }
    let tracer = opentelemetry::global::tracer("adjoint");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, parent);
    span.end_with_timestamp(end);
    parent.with_remote_span_context(span.span_context().clone())
}
