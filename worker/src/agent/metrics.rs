//! A worker's Prometheus metrics, served on `--metrics-listen`: what each
//! of its ranks did per step (every rank, not only rank 0), the planned
//! arena of the job it runs, and whether it runs one.

use std::net::SocketAddr;
use std::sync::Arc;

use adjoint_telemetry::http::{self, Collect};
use adjoint_telemetry::metrics::{Registry, SECONDS_BUCKETS};
use tokio::task::JoinHandle;

use crate::dist::StepMetrics;

/// A registry with the worker's families declared.
pub fn registry() -> Registry {
    let r = Registry::new();
    r.gauge(
        "adjoint_worker_jobs_running",
        "1 while this worker runs a job.",
    );
    r.gauge(
        "adjoint_worker_arena_bytes",
        "Planned activation arena of the job's training step.",
    );
    r.histogram(
        "adjoint_worker_step_seconds",
        "Optimizer step time on this rank.",
        SECONDS_BUCKETS,
    );
    r.counter(
        "adjoint_worker_steps_total",
        "Optimizer steps this rank ran.",
    );
    r.gauge(
        "adjoint_worker_samples_per_second",
        "Samples per second of the last step, all ranks.",
    );
    r.gauge(
        "adjoint_worker_loss",
        "Loss of the last step (mean over ranks).",
    );
    r.counter(
        "adjoint_worker_allreduce_seconds_total",
        "Time spent in gradient all-reduce.",
    );
    r.counter(
        "adjoint_worker_allreduce_bytes_total",
        "Gradient bytes handed to all-reduce (dense and sparse).",
    );
    r.counter(
        "adjoint_worker_allreduce_saved_bytes_total",
        "Expert-gradient bytes the sparse all-reduce did not send.",
    );
    r.counter(
        "adjoint_worker_alltoall_bytes_total",
        "Bytes sent to other ranks' experts (expert parallelism).",
    );
    r.set("adjoint_worker_jobs_running", &[], 0.0);
    r
}

/// A job compiled: its arena, and the worker busy.
pub fn compiled(r: &Registry, job: &str, arena_bytes: usize) {
    r.set(
        "adjoint_worker_arena_bytes",
        &[("job", job)],
        arena_bytes as f64,
    );
    r.set("adjoint_worker_jobs_running", &[], 1.0);
}

/// A job's rank ended, however it ended.
pub fn ended(r: &Registry) {
    r.set("adjoint_worker_jobs_running", &[], 0.0);
}

/// One step of this rank.
pub fn record_step(r: &Registry, job: &str, m: &StepMetrics) {
    let l = [("job", job)];
    r.observe("adjoint_worker_step_seconds", &l, m.step_ms / 1e3);
    r.inc("adjoint_worker_steps_total", &l, 1.0);
    r.set("adjoint_worker_samples_per_second", &l, m.samples_per_sec);
    r.set("adjoint_worker_loss", &l, f64::from(m.loss));
    r.inc(
        "adjoint_worker_allreduce_seconds_total",
        &l,
        m.allreduce_ms / 1e3,
    );
    r.inc(
        "adjoint_worker_allreduce_bytes_total",
        &l,
        m.allreduce_bytes as f64,
    );
    r.inc(
        "adjoint_worker_allreduce_saved_bytes_total",
        &l,
        m.allreduce_bytes_saved as f64,
    );
    r.inc(
        "adjoint_worker_alltoall_bytes_total",
        &l,
        m.alltoall_bytes as f64,
    );
}

/// Serves `r` at `http://at/metrics`; returns the bound address.
pub async fn serve(at: SocketAddr, r: Registry) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let collect: Collect = Arc::new(move || {
        let r = r.clone();
        Box::pin(async move { r.render() })
    });
    http::bind(at, collect).await
}

/// Aborts the task when dropped (the endpoint lives as long as the agent
/// runs).
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
