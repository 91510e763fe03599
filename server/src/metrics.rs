//! The coordinator's Prometheus metrics, served on `--metrics-listen`:
//! jobs and workers by state (counted at each scrape), and per job what
//! rank 0 reports each step (step time, samples/s, loss, all-reduce time
//! and bytes, all-to-all bytes).

use std::sync::Arc;

use adjoint_proto::v1::{JobState, StepMetrics};
use adjoint_telemetry::http::Collect;
use adjoint_telemetry::metrics::{Registry, SECONDS_BUCKETS};

use crate::coordinator::Coordinator;
use crate::workers::WorkerStatus;

/// Declares the coordinator's metric families in `r`.
pub fn declare(r: &Registry) {
    r.gauge("adjoint_jobs", "Jobs by state.");
    r.gauge("adjoint_workers", "Registered workers by state.");
    r.histogram(
        "adjoint_step_seconds",
        "Optimizer step time reported by rank 0.",
        SECONDS_BUCKETS,
    );
    r.counter("adjoint_steps_total", "Optimizer steps completed.");
    r.gauge(
        "adjoint_samples_per_second",
        "Samples per second of the last step, all ranks.",
    );
    r.gauge("adjoint_loss", "Loss of the last step (mean over ranks).");
    r.gauge("adjoint_eval_loss", "Held-out loss of the last evaluation.");
    r.counter(
        "adjoint_allreduce_seconds_total",
        "Time rank 0 spent in gradient all-reduce.",
    );
    r.counter(
        "adjoint_allreduce_bytes_total",
        "Gradient bytes rank 0 handed to all-reduce (dense and sparse).",
    );
    r.counter(
        "adjoint_allreduce_saved_bytes_total",
        "Expert-gradient bytes the sparse all-reduce did not send.",
    );
    r.counter(
        "adjoint_alltoall_bytes_total",
        "Bytes rank 0 sent to other ranks' experts (expert parallelism).",
    );
}

/// Records one step rank 0 reported for `job`.
pub fn record_step(r: &Registry, job: &str, m: &StepMetrics) {
    let l = [("job", job)];
    r.observe("adjoint_step_seconds", &l, m.step_ms / 1e3);
    r.inc("adjoint_steps_total", &l, 1.0);
    r.set("adjoint_samples_per_second", &l, m.samples_per_sec);
    r.set("adjoint_loss", &l, m.loss);
    if let Some(e) = m.eval_loss {
        r.set("adjoint_eval_loss", &l, e);
    }
    r.inc("adjoint_allreduce_seconds_total", &l, m.allreduce_ms / 1e3);
    r.inc(
        "adjoint_allreduce_bytes_total",
        &l,
        m.allreduce_bytes as f64,
    );
    r.inc(
        "adjoint_allreduce_saved_bytes_total",
        &l,
        m.allreduce_bytes_saved as f64,
    );
    r.inc("adjoint_alltoall_bytes_total", &l, m.alltoall_bytes as f64);
}

fn state_name(s: JobState) -> String {
    s.as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_ascii_lowercase()
}

/// The scrape: gauges counted now, then every family.
pub fn collect(core: Coordinator) -> Collect {
    Arc::new(move || {
        let core = core.clone();
        Box::pin(async move {
            let r = core.metrics_registry();
            r.clear("adjoint_jobs");
            match core.inner.db.count_by_state().await {
                Ok(counts) => {
                    for (state, n) in counts {
                        r.set("adjoint_jobs", &[("state", &state_name(state))], n as f64);
                    }
                }
                Err(e) => tracing::warn!("metrics: counting jobs: {e}"),
            }
            r.clear("adjoint_workers");
            let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
            for w in &core.inner.state.lock().await.workers {
                let s = match w.status {
                    WorkerStatus::Idle => "idle",
                    WorkerStatus::Busy { .. } => "busy",
                    WorkerStatus::Draining { .. } => "draining",
                    WorkerStatus::Lost => "lost",
                };
                *by_state.entry(s).or_default() += 1;
            }
            for (s, n) in by_state {
                r.set("adjoint_workers", &[("state", s)], n as f64);
            }
            r.render()
        })
    })
}
