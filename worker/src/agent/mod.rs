//! The worker agent: registers with the coordinator over the
//! `WorkerControl` stream and runs the jobs it is assigned.
//!
//! [`Agent::new`] binds the ring listener first (so the address it
//! registers is the real one, port 0 included) and opens the object store.
//! [`Agent::run`] then loops forever:
//!
//! 1. connect to the coordinator, retrying with exponential backoff
//!    (100 ms doubling to 5 s) until it answers;
//! 2. open the stream and send `Register` (name, cores, memory, its GPU
//!    if `--device` picked one, ring address, version, and the job still
//!    running, if any);
//! 3. from `Registered` on, send a `Heartbeat` every `heartbeat_ms`;
//! 4. on `Assignment`, run the job ([`job::run_job`]) on its own task, one
//!    job at a time (a second assignment while busy is refused with
//!    `JobFinished { ok: false }`; the same assignment again is ignored);
//!    its metrics, logs and final `JobFinished` go out on the stream;
//! 5. on `Abort` for the running job, stop it between steps (or, on a
//!    GPU, abort its NCCL communicator); on `NcclId`, hand rank 0's NCCL
//!    id to the running job;
//! 6. if the stream ends or fails, go back to 1: a running job keeps
//!    running and what it reports meanwhile is queued until the next
//!    stream.

pub mod device;
pub mod job;
pub mod metrics;
pub mod simulated;
pub mod spec;
pub mod trace;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adjoint_proto::dial::{Authorize, Credentials, error_chain};
use adjoint_proto::v1::{
    self, coordinator_message, worker_control_client::WorkerControlClient, worker_message::Kind,
};
use adjoint_telemetry::propagate::TraceInterceptor;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::ExecOptions;
use crate::collective::RingOptions;
pub use device::{Device, DeviceChoice};
pub use job::{AbortSignal, JobContext, WEIGHTS, run_job};

/// How the agent runs (the `adjoint-worker` flags).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinator's URL, e.g. `http://127.0.0.1:50051`.
    pub coordinator: String,
    /// The root of the local object store.
    pub store: PathBuf,
    pub name: String,
    /// Where the ring listener binds (`127.0.0.1:0` picks a free port).
    pub ring_listen: String,
    /// Cores reported to the coordinator.
    pub cores: u32,
    /// Memory reported to the coordinator (bytes).
    pub memory_bytes: u64,
    pub ring: RingOptions,
    pub exec: ExecOptions,
    /// Where to serve Prometheus metrics (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Every how many steps a job's step gets spans (the first and last
    /// always do; 0: only they).
    pub trace_steps_every: u64,
    /// The ring address peers are told (`host:port`); default: the bound
    /// listener's address, which must then be reachable as is.
    pub ring_advertise: Option<String>,
    /// First reconnect delay; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// The worker token and the CA of the coordinator's certificate.
    pub credentials: Credentials,
    /// The device it trains GPU jobs on (settled by [`Device::resolve`]);
    /// a CUDA device is registered, so GPU jobs come here.
    pub device: Device,
}

impl AgentConfig {
    /// Defaults for everything but the coordinator and the store: the
    /// host's name and process id, a ring listener on a free loopback
    /// port, every core, total memory from `/proc/meminfo`.
    pub fn new(coordinator: impl Into<String>, store: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            coordinator: coordinator.into(),
            store: store.into(),
            name: default_name(),
            ring_listen: "127.0.0.1:0".into(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: total_memory().unwrap_or(0),
            ring: RingOptions::default(),
            exec: ExecOptions::default(),
            metrics_listen: None,
            trace_steps_every: 100,
            ring_advertise: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            credentials: Credentials::none(),
            device: Device::Cpu,
        }
    }
}

/// `<hostname>-<pid>`.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A `WorkerControl` client whose calls carry the worker token.
pub(crate) type ControlClient =
    WorkerControlClient<InterceptedService<Channel, Authorize<TraceInterceptor>>>;

/// A client for the coordinator at `url`, presenting `credentials`.
pub(crate) async fn connect(url: &str, credentials: &Credentials) -> Result<ControlClient, String> {
    let channel = credentials
        .endpoint(url)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| error_chain(&e))?;
    let interceptor = credentials.interceptor(TraceInterceptor)?;
    Ok(WorkerControlClient::with_interceptor(channel, interceptor))
}

/// The job this worker runs now.
#[derive(Debug)]
struct Running {
    job_id: String,
    abort: Arc<AbortSignal>,
}

/// A worker process's connection to the coordinator and its jobs.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    ring_addr: SocketAddr,
    ctx: JobContext,
    running: Option<Running>,
    /// Messages from jobs, sent on whichever stream is open.
    outbox_tx: UnboundedSender<v1::WorkerMessage>,
    outbox_rx: UnboundedReceiver<v1::WorkerMessage>,
    /// Job ids of finished jobs.
    done_tx: UnboundedSender<String>,
    done_rx: UnboundedReceiver<String>,
    /// A message taken from the outbox that a broken stream did not take.
    carry: Option<v1::WorkerMessage>,
    /// Where `/metrics` is served, once [`Agent::run`] started it.
    metrics_addr: Option<SocketAddr>,
}

/// Why a stream ended.
enum StreamEnd {
    Lost(String),
    Shutdown,
}

impl Agent {
    /// Binds the ring listener and opens the store (creating its folder).
    pub fn new(cfg: AgentConfig) -> Result<Agent, String> {
        let listener = TcpListener::bind(&cfg.ring_listen)
            .map_err(|e| format!("ring listener on {}: {e}", cfg.ring_listen))?;
        let ring_addr = listener
            .local_addr()
            .map_err(|e| format!("ring listener: {e}"))?;
        std::fs::create_dir_all(&cfg.store)
            .map_err(|e| format!("store {}: {e}", cfg.store.display()))?;
        let store: Arc<dyn ObjectStore> = Arc::new(
            LocalFileSystem::new_with_prefix(&cfg.store)
                .map_err(|e| format!("store {}: {e}", cfg.store.display()))?,
        );
        let ctx = JobContext {
            store,
            ring_listener: Some(Arc::new(listener)),
            ring: cfg.ring.clone(),
            exec: cfg.exec,
            metrics: metrics::registry(),
            trace_steps_every: cfg.trace_steps_every,
            device: cfg.device.clone(),
        };
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(Agent {
            cfg,
            ring_addr,
            ctx,
            running: None,
            outbox_tx,
            outbox_rx,
            done_tx,
            done_rx,
            carry: None,
            metrics_addr: None,
        })
    }

    /// `addr` as others can reach it: a listener bound to every interface
    /// (0.0.0.0) is reported under the host of `--ring-advertise`, else
    /// this machine's host name.
    fn reachable(&self, addr: SocketAddr) -> String {
        if !addr.ip().is_unspecified() {
            return addr.to_string();
        }
        let host = self
            .cfg
            .ring_advertise
            .as_deref()
            .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_owned()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| addr.ip().to_string());
        format!("{host}:{}", addr.port())
    }

    /// The address ring peers connect to (what `Register` reports).
    pub fn ring_address(&self) -> SocketAddr {
        self.ring_addr
    }

    fn register(&self) -> v1::WorkerMessage {
        v1::WorkerMessage {
            kind: Some(Kind::Register(v1::Register {
                name: self.cfg.name.clone(),
                cores: self.cfg.cores,
                memory_bytes: self.cfg.memory_bytes,
                devices: self.cfg.device.registered(),
                ring_address: self
                    .cfg
                    .ring_advertise
                    .clone()
                    .unwrap_or_else(|| self.ring_addr.to_string()),
                metrics_address: self
                    .metrics_addr
                    .map(|a| self.reachable(a))
                    .unwrap_or_default(),
                version: env!("CARGO_PKG_VERSION").into(),
                running_job: self
                    .running
                    .as_ref()
                    .map(|r| r.job_id.clone())
                    .unwrap_or_default(),
            })),
        }
    }

    /// Serves the coordinator until `shutdown` completes, reconnecting
    /// whenever the stream is lost.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let _metrics_task = match self.cfg.metrics_listen {
            Some(at) => match metrics::serve(at, self.ctx.metrics.clone()).await {
                Ok((bound, task)) => {
                    tracing::info!("metrics on {bound}");
                    self.metrics_addr = Some(bound);
                    Some(metrics::AbortOnDrop(task))
                }
                Err(e) => {
                    tracing::error!("metrics on {at}: {e}; not serving metrics");
                    None
                }
            },
            None => None,
        };
        let mut backoff = self.cfg.min_backoff;
        let mut attempts = 0u64;
        loop {
            let client = tokio::select! {
                c = connect(&self.cfg.coordinator, &self.cfg.credentials) => c,
                () = &mut shutdown => return,
            };
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    if attempts.is_multiple_of(20) {
                        tracing::info!(
                            "waiting for the coordinator at {}: {e}",
                            self.cfg.coordinator
                        );
                    } else {
                        tracing::debug!("coordinator unreachable: {e}; retrying in {backoff:?}");
                    }
                    attempts += 1;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => return,
                    }
                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                    continue;
                }
            };
            attempts = 0;
            let started = Instant::now();
            match self.serve(client, &mut shutdown).await {
                StreamEnd::Shutdown => return,
                StreamEnd::Lost(why) => tracing::warn!("lost the coordinator: {why}; reconnecting"),
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = self.cfg.min_backoff;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = &mut shutdown => return,
            }
            backoff = (backoff * 2).min(self.cfg.max_backoff);
        }
    }

    /// One stream: register, then relay until it ends.
    async fn serve(
        &mut self,
        mut client: ControlClient,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> StreamEnd {
        let (tx, rx) = mpsc::channel::<v1::WorkerMessage>(256);
        if tx.send(self.register()).await.is_err() {
            return StreamEnd::Lost("the request stream closed".into());
        }
        let mut inbound = match client.connect(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return StreamEnd::Lost(format!("Connect: {status}")),
        };
        tracing::info!(
            "connected to {} as '{}' (ring {})",
            self.cfg.coordinator,
            self.cfg.name,
            self.ring_addr
        );
        if let Some(m) = self.carry.take()
            && tx.send(m).await.is_err()
        {
            return StreamEnd::Lost("the request stream closed".into());
        }
        let mut heartbeat: Option<tokio::time::Interval> = None;
        loop {
            let tick = async {
                match heartbeat.as_mut() {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Some(every) = self.handle(m) {
                            let mut i = tokio::time::interval(every);
                            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            heartbeat = Some(i);
                        }
                    }
                    Ok(None) => return StreamEnd::Lost("the coordinator closed the stream".into()),
                    Err(status) => return StreamEnd::Lost(status.to_string()),
                },
                () = tick => {
                    let beat = v1::WorkerMessage { kind: Some(Kind::Heartbeat(v1::Heartbeat { unix_ms: unix_ms() })) };
                    if tx.send(beat).await.is_err() {
                        return StreamEnd::Lost("the request stream closed".into());
                    }
                }
                Some(m) = self.outbox_rx.recv() => {
                    // Once the coordinator reads this rank's JobFinished it
                    // may assign the next job at once: the worker must be
                    // free by then, not only when `done_rx` is read.
                    if let Some(Kind::Finished(f)) = &m.kind
                        && self.running.as_ref().is_some_and(|r| r.job_id == f.job_id)
                    {
                        self.running = None;
                    }
                    if let Err(e) = tx.send(m).await {
                        self.carry = Some(e.0);
                        return StreamEnd::Lost("the request stream closed".into());
                    }
                }
                Some(job) = self.done_rx.recv() => {
                    if self.running.as_ref().is_some_and(|r| r.job_id == job) {
                        self.running = None;
                    }
                }
                () = &mut *shutdown => {
                    if let Some(r) = &self.running {
                        r.abort.abort("the worker is shutting down");
                    }
                    return StreamEnd::Shutdown;
                }
            }
        }
    }

    /// Handles one coordinator message; returns the heartbeat period when
    /// it is `Registered`.
    fn handle(&mut self, m: v1::CoordinatorMessage) -> Option<Duration> {
        match m.kind? {
            coordinator_message::Kind::Registered(r) => {
                tracing::info!(
                    "registered as {} (heartbeat every {} ms)",
                    r.worker_id,
                    r.heartbeat_ms
                );
                Some(Duration::from_millis(r.heartbeat_ms.max(50)))
            }
            coordinator_message::Kind::Assignment(a) => {
                self.assign(a);
                None
            }
            coordinator_message::Kind::NcclId(id) => {
                match &self.running {
                    Some(r) if r.job_id == id.job_id => r.abort.set_nccl_id(id.id),
                    _ => tracing::debug!(job = %id.job_id, "NCCL id for a job not running here"),
                }
                None
            }
            coordinator_message::Kind::Abort(a) => {
                match &self.running {
                    Some(r) if r.job_id == a.job_id => {
                        tracing::info!(job = %a.job_id, "abort: {}", a.reason);
                        r.abort.abort(&a.reason);
                    }
                    _ => tracing::debug!(job = %a.job_id, "abort for a job not running here"),
                }
                None
            }
        }
    }

    fn assign(&mut self, a: v1::Assignment) {
        if let Some(r) = &self.running {
            if r.job_id == a.job_id {
                tracing::debug!(job = %a.job_id, "assignment repeated; the job is running");
            } else {
                let _ = self.outbox_tx.send(v1::WorkerMessage {
                    kind: Some(Kind::Finished(v1::JobFinished {
                        job_id: a.job_id.clone(),
                        rank: a.rank,
                        ok: false,
                        error: format!("worker '{}' is busy with job {}", self.cfg.name, r.job_id),
                        artifacts: Vec::new(),
                        retryable: true,
                    })),
                });
            }
            return;
        }
        tracing::info!(job = %a.job_id, rank = a.rank, world = a.world, "assignment");
        let abort = Arc::new(AbortSignal::default());
        self.running = Some(Running {
            job_id: a.job_id.clone(),
            abort: abort.clone(),
        });
        let (ctx, out, done) = (
            self.ctx.clone(),
            self.outbox_tx.clone(),
            self.done_tx.clone(),
        );
        tokio::spawn(async move {
            let finished = run_job(&a, &ctx, abort.clone(), &out).await;
            if finished.ok {
                tracing::info!(job = %a.job_id, "finished");
            } else if abort.is_set() {
                tracing::info!(job = %a.job_id, "stopped: {}", finished.error);
            } else {
                tracing::warn!(job = %a.job_id, "failed: {}", finished.error);
            }
            let _ = out.send(v1::WorkerMessage {
                kind: Some(Kind::Finished(finished)),
            });
            let _ = done.send(a.job_id);
        });
    }
}
