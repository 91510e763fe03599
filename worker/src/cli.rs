//! The worker's command line, shared by the `adjoint-worker` binary and
//! `adjoint worker`: flags, logging, and running the agent until ctrl-c.
//!
//! ```text
//! adjoint-worker --coordinator http://127.0.0.1:50051 --store ./store \
//!     [--name NAME] [--ring-listen 127.0.0.1:0] [--threads N] [--memory BYTES]
//! ```
//!
//! Logs go to stderr (`RUST_LOG` filters them; default `info`). Ctrl-C (or
//! SIGTERM's default action) stops the worker.

use std::path::PathBuf;
use std::time::Duration;

use adjoint_kernels::CpuBackend;

use crate::agent::{Agent, AgentConfig};

/// An adjoint worker: trains the jobs a coordinator assigns it.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "ADJOINT_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// The folder of the object store shared with the coordinator (blobs,
    /// checkpoints, weights).
    #[arg(long, env = "ADJOINT_STORE")]
    pub store: PathBuf,
    /// This worker's name (default: <hostname>-<pid>).
    #[arg(long, env = "ADJOINT_WORKER_NAME")]
    pub name: Option<String>,
    /// Where the ring listener binds; peers connect here for all-reduce.
    #[arg(long, env = "ADJOINT_RING_LISTEN", default_value = "127.0.0.1:0")]
    pub ring_listen: String,
    /// The ring address peers are told (host:port), when the listener's
    /// own address is not reachable from them (a container binding
    /// 0.0.0.0, behind its pod IP).
    #[arg(long, env = "ADJOINT_RING_ADVERTISE")]
    pub ring_advertise: Option<String>,
    /// Threads for the CPU kernels (default: every core).
    #[arg(long, env = "ADJOINT_THREADS")]
    pub threads: Option<usize>,
    /// Memory to report, in bytes (default: MemTotal of /proc/meminfo).
    #[arg(long, env = "ADJOINT_MEMORY")]
    pub memory: Option<u64>,
    /// Seconds a collective waits for a silent peer before failing the job.
    #[arg(long, env = "ADJOINT_COLLECTIVE_TIMEOUT", default_value_t = 60)]
    pub collective_timeout: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free
    /// port; the worker reports the address to the coordinator). Off when
    /// not given.
    #[arg(long, env = "ADJOINT_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log lines as `text` or `json` (one object per line), on stderr;
    /// `RUST_LOG` filters them. Spans also go out by OTLP when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[arg(long, env = "ADJOINT_LOG_FORMAT", default_value = "text")]
    pub log_format: adjoint_telemetry::LogFormat,
    /// Every how many steps a job's step is traced (forward, backward,
    /// each all-reduce, optimizer); the first and last steps always are.
    #[arg(long, env = "ADJOINT_TRACE_STEPS_EVERY", default_value_t = 100)]
    pub trace_steps_every: u64,
}

/// Runs a worker until ctrl-c; fails only when it cannot start.
pub fn run(args: WorkerArgs) -> Result<(), String> {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return Err(format!("tokio: {e}")),
    };
    let telemetry = {
        let _in_runtime = runtime.enter();
        adjoint_telemetry::init("adjoint-worker", args.log_format)
    };
    if let Some(n) = args.threads {
        CpuBackend::set_threads(n);
    }
    let mut cfg = AgentConfig::new(args.coordinator, args.store);
    if let Some(name) = args.name {
        cfg.name = name;
    }
    cfg.ring_listen = args.ring_listen;
    cfg.ring_advertise = args.ring_advertise;
    cfg.metrics_listen = args.metrics_listen;
    cfg.trace_steps_every = args.trace_steps_every;
    if let Some(n) = args.threads {
        cfg.cores = n as u32;
    }
    if let Some(m) = args.memory {
        cfg.memory_bytes = m;
    }
    cfg.ring.timeout = Duration::from_secs(args.collective_timeout);
    cfg.ring.connect_timeout = Duration::from_secs(args.collective_timeout);
    let agent = match Agent::new(cfg) {
        Ok(a) => a,
        Err(e) => return Err(e.to_string()),
    };
    tracing::info!("ring listener on {}", agent.ring_address());
    runtime.block_on(agent.run(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("interrupted; stopping");
    }));
    // Flushes the last spans while the runtime still runs.
    drop(telemetry);
    // A running job was told to stop at its next step; give it a moment.
    runtime.shutdown_timeout(Duration::from_secs(10));
    Ok(())
}
