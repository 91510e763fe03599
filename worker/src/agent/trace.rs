//! A job's spans on a worker: the job span (a child of the coordinator's
//! schedule span, by the Assignment's `traceparent`), and for sampled
//! steps a `step` span with `forward`, `backward`, one `allreduce` per
//! gradient bucket (bytes, peers, when it ran) and `optimizer` children.
//!
//! Step phases are measured by the training loop itself ([`EventLog`]), so
//! their spans are recorded after the step with the measured times; the
//! loop does no tracing work on steps that are not sampled.

use std::time::{Instant, SystemTime};

use adjoint_telemetry::propagate::{otel_context, timed_span};
use opentelemetry::KeyValue;

use crate::dist::{EventLog, StepMetrics};

/// Whether step `step` (1-based) gets spans: the first, the last and every
/// `every`-th (0: only the first and last).
pub fn sampled(step: u64, last: u64, every: u64) -> bool {
    step == 1 || step == last || (every > 0 && step.is_multiple_of(every))
}

/// Records the spans of the step `events` describe under `job`.
pub fn step_spans(job: &tracing::Span, events: &EventLog, m: &StepMetrics, world: usize) {
    let parent = otel_context(job);
    let (Some(start), Some(end)) = (events.start, events.end) else {
        return;
    };
    // Instants to wall-clock times, against one reading of both clocks.
    let (now_i, now_s) = (Instant::now(), SystemTime::now());
    let wall = |t: Instant| now_s - now_i.saturating_duration_since(t);
    let step = timed_span(
        &parent,
        "step",
        wall(start),
        wall(end),
        vec![
            KeyValue::new("step", m.step as i64),
            KeyValue::new("loss", f64::from(m.loss)),
            KeyValue::new("samples_per_sec", m.samples_per_sec),
            KeyValue::new("allreduce_bytes", m.allreduce_bytes as i64),
            KeyValue::new("alltoall_bytes", m.alltoall_bytes as i64),
        ],
    );
    let backward_end = events.backward_end.unwrap_or(end);
    if let Some(b) = events.backward_start {
        timed_span(&step, "forward", wall(start), wall(b), Vec::new());
        timed_span(&step, "backward", wall(b), wall(backward_end), Vec::new());
    }
    let mut last_reduce = backward_end;
    for bucket in &events.buckets {
        timed_span(
            &step,
            "allreduce",
            wall(bucket.start),
            wall(bucket.end),
            vec![
                KeyValue::new("bucket", bucket.bucket as i64),
                KeyValue::new("bytes", bucket.bytes as i64),
                KeyValue::new("peers", world.saturating_sub(1) as i64),
            ],
        );
        last_reduce = last_reduce.max(bucket.end);
    }
    timed_span(&step, "optimizer", wall(last_reduce), wall(end), Vec::new());
}
