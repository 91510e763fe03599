//! The worker's command line, shared by the `adjoint-worker` binary and
//! `adjoint worker`: flags, logging, and running the agent until ctrl-c.
//!
//! ```text
//! adjoint-worker --coordinator http://127.0.0.1:50051 --store ./store \
//!     [--name NAME] [--ring-listen 127.0.0.1:0] [--threads N] [--memory BYTES] \
//!     [--device auto|cpu|cuda:N]
//! ```
//!
//! Logs go to stderr (`RUST_LOG` filters them; default `info`). Ctrl-C (or
//! SIGTERM's default action) stops the worker.

use std::path::PathBuf;
use std::time::Duration;

use adjoint_kernels::CpuBackend;

use crate::agent::{Agent, AgentConfig};
use crate::settings::{WorkerFile, WorkerSettings};

/// An adjoint worker: trains the jobs a coordinator assigns it.
///
/// Each setting comes from its flag, else its environment variable, else
/// the config file, else its default.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// A TOML config file with any of the settings below (keys named as
    /// the flags, `_` for `-`).
    #[arg(long, env = "ADJOINT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the settings in effect as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The coordinator's URL [default: http://127.0.0.1:50051].
    #[arg(long, env = "ADJOINT_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The folder of the object store shared with the coordinator (blobs,
    /// checkpoints, weights) (required).
    #[arg(long, env = "ADJOINT_STORE")]
    pub store: Option<PathBuf>,
    /// This worker's name [default: <hostname>-<pid>].
    #[arg(long, env = "ADJOINT_WORKER_NAME")]
    pub name: Option<String>,
    /// Where the ring listener binds; peers connect here for all-reduce
    /// [default: 127.0.0.1:0].
    #[arg(long, env = "ADJOINT_RING_LISTEN")]
    pub ring_listen: Option<String>,
    /// The ring address peers are told (host:port), when the listener's
    /// own address is not reachable from them (a container binding
    /// 0.0.0.0, behind its pod IP).
    #[arg(long, env = "ADJOINT_RING_ADVERTISE")]
    pub ring_advertise: Option<String>,
    /// Threads for the CPU kernels [default: every core].
    #[arg(long, env = "ADJOINT_THREADS")]
    pub threads: Option<usize>,
    /// Memory to report, in bytes [default: MemTotal of /proc/meminfo].
    #[arg(long, env = "ADJOINT_MEMORY")]
    pub memory: Option<u64>,
    /// Seconds a collective waits for a silent peer before failing the job
    /// [default: 60].
    #[arg(long, env = "ADJOINT_COLLECTIVE_TIMEOUT")]
    pub collective_timeout: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free
    /// port; the worker reports the address to the coordinator). Off when
    /// not given.
    #[arg(long, env = "ADJOINT_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log lines as `text` or `json` (one object per line), on stderr;
    /// `RUST_LOG` filters them. Spans also go out by OTLP when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set [default: text].
    #[arg(long, env = "ADJOINT_LOG_FORMAT")]
    pub log_format: Option<adjoint_telemetry::LogFormat>,
    /// Every how many steps a job's step is traced (forward, backward,
    /// each all-reduce, optimizer); the first and last steps always are
    /// [default: 100].
    #[arg(long, env = "ADJOINT_TRACE_STEPS_EVERY")]
    pub trace_steps_every: Option<u64>,
    /// A file holding the worker token, when the coordinator requires one
    /// (the token itself may instead be in ADJOINT_WORKER_TOKEN, which
    /// wins).
    #[arg(long, env = "ADJOINT_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// Speak TLS to the coordinator (an https:// URL), trusting the CA
    /// certificate (PEM) in this file [default: the system's roots].
    #[arg(long, env = "ADJOINT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The name the coordinator's certificate carries, when it is not the
    /// URL's host.
    #[arg(long, env = "ADJOINT_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// The device GPU jobs train on: `auto` (the first GPU, else the CPU),
    /// `cpu`, or `cuda:N` (fails to start without that GPU). A CUDA worker
    /// registers its GPU and runs jobs with `device = "gpu"` on it
    /// [default: auto].
    #[arg(long, env = "ADJOINT_DEVICE")]
    pub device: Option<String>,
}

impl WorkerArgs {
    /// The settings in effect: these flags (and env), over the config file,
    /// over the defaults.
    pub fn settings(&self) -> Result<WorkerSettings, String> {
        let flags = WorkerFile {
            coordinator: self.coordinator.clone(),
            store: self.store.clone(),
            name: self.name.clone(),
            ring_listen: self.ring_listen.clone(),
            ring_advertise: self.ring_advertise.clone(),
            threads: self.threads,
            memory: self.memory,
            collective_timeout: self.collective_timeout,
            metrics_listen: self.metrics_listen,
            log_format: self.log_format.map(|f| f.to_string()),
            trace_steps_every: self.trace_steps_every,
            worker_token_file: self.worker_token_file.clone(),
            ca_file: self.ca_file.clone(),
            tls_domain: self.tls_domain.clone(),
            device: self.device.clone(),
        };
        let file = match &self.config {
            Some(path) => WorkerFile::read(path)?,
            None => WorkerFile::default(),
        };
        WorkerSettings::resolve(flags.or(file))
    }
}

/// Runs a worker until ctrl-c; fails only when it cannot start.
pub fn run(args: WorkerArgs) -> Result<(), String> {
    let s = args.settings()?;
    if args.print_config {
        print!("{}", s.to_toml());
        return Ok(());
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return Err(format!("tokio: {e}")),
    };
    let telemetry = {
        let _in_runtime = runtime.enter();
        adjoint_telemetry::init("adjoint-worker", s.log_format())
    };
    if let Some(n) = s.threads {
        CpuBackend::set_threads(n);
    }
    let device = crate::agent::Device::resolve(s.device_choice(), &mut |line| {
        tracing::info!("{line}");
    })?;
    tracing::info!("device: {device}");
    let credentials = s.credentials()?;
    let mut cfg = AgentConfig::new(s.coordinator, s.store);
    cfg.credentials = credentials;
    cfg.name = s.name;
    cfg.ring_listen = s.ring_listen;
    cfg.ring_advertise = s.ring_advertise;
    cfg.metrics_listen = s.metrics_listen;
    cfg.trace_steps_every = s.trace_steps_every;
    cfg.device = device;
    if let Some(n) = s.threads {
        cfg.cores = n as u32;
    }
    if let Some(m) = s.memory {
        cfg.memory_bytes = m;
    }
    cfg.ring.timeout = Duration::from_secs(s.collective_timeout);
    cfg.ring.connect_timeout = Duration::from_secs(s.collective_timeout);
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
