//! One rank of one job: from an `Assignment` to `JobFinished`.
//!
//! [`run_job`] reads the graph (inline, or a blob in the store), the
//! dataset and any initial weights or checkpoint to resume from, then trains
//! on a blocking thread with [`crate::dist`]: it compiles the joint graph,
//! checks its plan hash against the coordinator's, connects the TCP ring to
//! the peers (world 1 needs none) and runs the steps, checking for an abort
//! between them. Metrics (rank 0, every step) and log lines go out as
//! `WorkerMessage`s as they happen; checkpoints and the final weights are
//! written to the store by rank 0. With an eval split, every rank evaluates
//! its share after every `eval_every` steps and after the last, and rank 0
//! reports the mean with that step's metrics. Checkpoints and the final
//! weights are written to the store by rank 0 (`jobs/<job>/checkpoints/step-<n>.safetensors`
//! every `checkpoint_every` steps, `jobs/<job>/weights.safetensors` at the
//! end). The function never fails: every problem becomes
//! `JobFinished { ok: false, error }`.
//!
//! The training thread does no I/O: it hands checkpoint bytes to the async
//! side, which writes them while training goes on.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use adjoint_graph::{Graph, plan::plan_hash, serialize};
use adjoint_kernels::{Backend, CpuBackend};
use adjoint_proto::v1::{self, job_spec::Model, worker_message::Kind};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};
use tokio::sync::mpsc::{self, UnboundedSender};
use tracing::Instrument;

use super::device::Device;
use super::spec;
use crate::ExecOptions;
use crate::collective::{Collective, LocalGroup, RingCollective, RingOptions};
use crate::data::{Dataset, HostTensor, read_safetensors};
use crate::dist::checkpoint::{Checkpoint, weights_file};
use crate::dist::{DistConfig, DistTrainer, Evaluator, StepMetrics};

/// The artifact every successful job leaves (rank 0 writes it).
pub const WEIGHTS: &str = "weights.safetensors";

/// What a job needs from the worker it runs on.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Blobs, checkpoints and artifacts; keys as the coordinator names them
    /// (`blobs/<sha256>`, `jobs/<job>/...`).
    pub store: Arc<dyn ObjectStore>,
    /// Where ring peers connect to this worker (world > 1 only); a clone is
    /// handed to each job.
    pub ring_listener: Option<Arc<TcpListener>>,
    pub ring: RingOptions,
    pub exec: ExecOptions,
    /// This worker's Prometheus metrics ([`super::metrics`]).
    pub metrics: adjoint_telemetry::metrics::Registry,
    /// Every how many steps a step gets spans ([`super::trace::sampled`]).
    pub trace_steps_every: u64,
    /// The worker's device: GPU jobs (`device = "gpu"`) run on it when it
    /// is CUDA, with NCCL collectives; everything else runs on the CPU.
    pub device: Device,
}

/// Asks a running job to stop between steps; also carries what the
/// coordinator sends a running job besides (rank 0's NCCL id).
#[derive(Debug, Default)]
pub struct AbortSignal {
    flag: Arc<AtomicBool>,
    reason: Mutex<String>,
    nccl_id: Mutex<Option<Vec<u8>>>,
}

impl AbortSignal {
    /// Rank 0's NCCL id, forwarded by the coordinator (ranks 1..).
    pub fn set_nccl_id(&self, id: Vec<u8>) {
        *self.nccl_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    /// Waits up to `timeout` for [`AbortSignal::set_nccl_id`]; `None` on
    /// timeout or abort.
    pub fn wait_nccl_id(&self, timeout: std::time::Duration) -> Option<Vec<u8>> {
        let start = std::time::Instant::now();
        loop {
            if let Some(id) = self
                .nccl_id
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                return Some(id);
            }
            if self.is_set() || start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn abort(&self, reason: &str) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_owned();
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The flag itself, for a wait that polls it (the ring rendezvous).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// The error a job stopped by this signal reports.
    pub fn message(&self) -> String {
        let reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "aborted: {}",
            if reason.is_empty() {
                "by the coordinator"
            } else {
                reason.as_str()
            }
        )
    }
}

/// What the training thread hands the async side.
#[derive(Debug)]
enum Event {
    /// A step's metrics, with the eval loss on evaluation steps and the
    /// rows routed to each expert.
    Metrics(StepMetrics, Option<f32>, Vec<u64>),
    Log(String),
    /// Rank 0's NCCL id, for the coordinator to forward.
    NcclId(Vec<u8>),
    Put {
        key: String,
        bytes: Vec<u8>,
    },
}

/// Everything the training thread needs, read before it starts.
struct Prepared {
    job_id: String,
    rank: usize,
    world: usize,
    graph: Graph,
    data: Dataset,
    /// The eval split and how often to evaluate (0: only after the last
    /// step).
    eval: Option<(Dataset, u64)>,
    cfg: DistConfig,
    steps: u64,
    checkpoint_every: u64,
    plan_hash: String,
    init: Option<BTreeMap<String, HostTensor>>,
    resume: Option<Checkpoint>,
    peers: Vec<SocketAddr>,
    listener: Option<TcpListener>,
    ring: RingOptions,
    /// Where the job runs: the worker's GPU for a GPU job, else the CPU.
    device: Device,
    metrics: adjoint_telemetry::metrics::Registry,
    /// The job's span (entered by the training thread) and the step
    /// sampling.
    span: tracing::Span,
    trace_steps_every: u64,
}

/// Runs one rank of `a` to the end and says how it went. Messages for the
/// coordinator (metrics, logs) go to `out` while it runs; the returned
/// `JobFinished` is not sent.
pub async fn run_job(
    a: &v1::Assignment,
    ctx: &JobContext,
    abort: Arc<AbortSignal>,
    out: &UnboundedSender<v1::WorkerMessage>,
) -> v1::JobFinished {
    // A child of the coordinator's schedule span: one trace per job.
    let span = tracing::info_span!("job", job = %a.job_id, rank = a.rank, world = a.world);
    adjoint_telemetry::propagate::set_remote_parent(&span, &a.traceparent);
    run_job_traced(a, ctx, abort, out).instrument(span).await
}

async fn run_job_traced(
    a: &v1::Assignment,
    ctx: &JobContext,
    abort: Arc<AbortSignal>,
    out: &UnboundedSender<v1::WorkerMessage>,
) -> v1::JobFinished {
    let finished = |ok: bool, error: String, artifacts: Vec<String>| v1::JobFinished {
        job_id: a.job_id.clone(),
        rank: a.rank,
        ok,
        error,
        artifacts,
        retryable: false,
    };
    let log = |line: String| {
        tracing::info!(job = %a.job_id, rank = a.rank, "{line}");
        let _ = out.send(v1::WorkerMessage {
            kind: Some(Kind::Log(format!("rank {}: {line}", a.rank))),
        });
    };
    let prepared = match prepare(a, ctx, &log)
        .instrument(tracing::info_span!("prepare"))
        .await
    {
        Ok(p) => p,
        Err(e) => return finished(false, e, Vec::new()),
    };
    let mut prepared = prepared;
    prepared.span = tracing::Span::current();
    let (rank, job) = (prepared.rank, prepared.job_id.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let signal = abort.clone();
    let handle = tokio::task::spawn_blocking(move || match &prepared.device {
        Device::Cpu => CpuBackend::in_context(move || train::<CpuBackend>(prepared, &tx, &signal)),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => train::<adjoint_kernels::cuda::CudaBackend>(prepared, &tx, &signal),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Failure::from("this worker was built without CUDA")),
    });
    // Artifacts written on the way (the event log), by name under the job.
    let mut written = Vec::new();
    let job_prefix = format!("jobs/{job}/");
    while let Some(event) = rx.recv().await {
        match event {
            Event::Metrics(m, eval, load) => {
                let mut m = metrics(&m, rank);
                m.eval_loss = eval.map(f64::from);
                m.expert_rows = load;
                let _ = out.send(v1::WorkerMessage {
                    kind: Some(Kind::Metrics(m)),
                });
            }
            Event::Log(line) => log(line),
            Event::NcclId(id) => {
                let _ = out.send(v1::WorkerMessage {
                    kind: Some(Kind::NcclId(v1::NcclId {
                        job_id: job.clone(),
                        id,
                    })),
                });
            }
            Event::Put { key, bytes } => match put(ctx, &key, bytes).await {
                Ok(()) => {
                    log(format!("wrote {key}"));
                    if let Some(name) = key.strip_prefix(&job_prefix)
                        && name.starts_with("events/")
                    {
                        written.push(name.to_owned());
                    }
                }
                Err(e) => log(format!("could not write {key}: {e}")),
            },
        }
    }
    let result = match handle.await {
        Ok(r) => r,
        Err(e) => Err(Failure::from(format!("the training thread failed: {e}"))),
    };
    match result {
        Ok(Some(weights)) => {
            let key = format!("jobs/{job}/{WEIGHTS}");
            match put(ctx, &key, weights).await {
                Ok(()) => {
                    log(format!("wrote {key}"));
                    written.push(WEIGHTS.to_owned());
                    finished(true, String::new(), written)
                }
                Err(e) => finished(false, format!("could not write {key}: {e}"), Vec::new()),
            }
        }
        Ok(None) => finished(true, String::new(), written),
        Err(_) if abort.is_set() => finished(false, abort.message(), Vec::new()),
        Err(e) => v1::JobFinished {
            retryable: e.retryable,
            ..finished(false, e.message, Vec::new())
        },
    }
}

/// The proto form of a step's metrics.
pub fn metrics(m: &StepMetrics, rank: usize) -> v1::StepMetrics {
    v1::StepMetrics {
        step: m.step,
        rank: rank as u32,
        loss: f64::from(m.loss),
        step_ms: m.step_ms,
        samples_per_sec: m.samples_per_sec,
        allreduce_ms: m.allreduce_ms,
        allreduce_bytes: m.allreduce_bytes,
        eval_loss: None,
        expert_rows: Vec::new(),
        allreduce_bytes_saved: m.allreduce_bytes_saved,
        alltoall_bytes: m.alltoall_bytes,
        alltoall_ms: m.alltoall_ms,
        skipped: m.skipped,
        loss_scale: f64::from(m.loss_scale),
    }
}

async fn get(ctx: &JobContext, key: &str) -> Result<Vec<u8>, String> {
    let path = Path::parse(key).map_err(|e| format!("blob '{key}': {e}"))?;
    let got = ctx
        .store
        .get(&path)
        .await
        .map_err(|e| format!("reading '{key}' from the store: {e}"))?;
    let bytes = got
        .bytes()
        .await
        .map_err(|e| format!("reading '{key}' from the store: {e}"))?;
    Ok(bytes.to_vec())
}

async fn put(ctx: &JobContext, key: &str, bytes: Vec<u8>) -> Result<(), String> {
    let path = Path::parse(key).map_err(|e| format!("'{key}': {e}"))?;
    ctx.store
        .put(&path, PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A graph blob: binary protobuf, or proto3 JSON.
fn decode_graph(bytes: &[u8]) -> Result<Graph, String> {
    match serialize::decode(bytes) {
        Ok(g) => Ok(g),
        Err(e) if bytes.trim_ascii_start().starts_with(b"{") => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("the graph blob is neither protobuf ({e}) nor JSON"))?;
            serialize::from_json(text).map_err(|e| format!("graph (JSON): {e}"))
        }
        Err(e) => Err(format!("graph: {e}")),
    }
}

/// The newest checkpoint of `job` in the store.
/// The newest checkpoint job `job` wrote, if any.
async fn latest_checkpoint(ctx: &JobContext, job: &str) -> Result<Option<Checkpoint>, String> {
    let prefix = Path::from(format!("jobs/{job}/checkpoints"));
    let listing = ctx
        .store
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| format!("listing checkpoints of job {job}: {e}"))?;
    let newest = listing
        .objects
        .iter()
        .filter_map(|o| {
            let name = o.location.filename()?;
            let step: u64 = name
                .strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((step, o.location.to_string()))
        })
        .max();
    let Some((_, key)) = newest else {
        return Ok(None);
    };
    Checkpoint::decode(&get(ctx, &key).await?)
        .map(Some)
        .map_err(|e| format!("checkpoint {key}: {e}"))
}

/// Reads the job's inputs and settles its settings.
async fn prepare(
    a: &v1::Assignment,
    ctx: &JobContext,
    log: &(dyn Fn(String) + Sync),
) -> Result<Prepared, String> {
    let spec = a.spec.as_ref().ok_or("the assignment has no job spec")?;
    let (rank, world) = (a.rank as usize, a.world as usize);
    if world == 0 || rank >= world {
        return Err(format!("rank {rank} of world {world}"));
    }
    if world > 1 && a.peers.len() != world {
        return Err(format!(
            "{} peer addresses for world {world}",
            a.peers.len()
        ));
    }
    if spec.batch_size == 0 {
        return Err("the job spec has no batch_size".into());
    }
    let device = match (&ctx.device, spec.device.as_str()) {
        (Device::Cuda(_), "gpu" | "cuda") => ctx.device.clone(),
        (Device::Cpu, "gpu" | "cuda") => {
            log("this worker has no GPU; training on the CPU".into());
            Device::Cpu
        }
        _ => Device::Cpu,
    };
    let graph = match &spec.model {
        Some(Model::Graph(g)) => serialize::from_proto(g).map_err(|e| format!("graph: {e}"))?,
        Some(Model::GraphBlob(key)) => decode_graph(&get(ctx, key).await?)?,
        None => return Err("the job spec has no graph".into()),
    };
    if spec.dataset_blob.is_empty() {
        return Err("the job spec has no dataset_blob".into());
    }
    let tensors = read_safetensors(&get(ctx, &spec.dataset_blob).await?)
        .map_err(|e| format!("dataset: {e}"))?;
    let data = Dataset::new(&graph, tensors).map_err(|e| format!("dataset: {e}"))?;
    let eval = match spec.eval_blob.as_str() {
        "" => {
            if spec.eval_every > 0 {
                log(format!(
                    "eval_every is {} but the job has no eval split; not evaluating",
                    spec.eval_every
                ));
            }
            None
        }
        key => {
            let tensors =
                read_safetensors(&get(ctx, key).await?).map_err(|e| format!("eval split: {e}"))?;
            let split = Dataset::new(&graph, tensors).map_err(|e| format!("eval split: {e}"))?;
            Some((split, spec.eval_every))
        }
    };
    let init = match spec.init_blob.as_str() {
        "" => None,
        key => Some(
            read_safetensors(&get(ctx, key).await?).map_err(|e| format!("init weights: {e}"))?,
        ),
    };
    // A restart resumes from the job's own newest checkpoint; without one,
    // from where the job itself started.
    let own = match a.resume_job.as_str() {
        "" => None,
        job => latest_checkpoint(ctx, job).await?,
    };
    let resume = match (own, spec.resume_from_job.as_str()) {
        (Some(c), _) => Some(c),
        (None, "") => None,
        (None, job) => Some(
            latest_checkpoint(ctx, job)
                .await?
                .ok_or_else(|| format!("job {job} has no checkpoint to resume from"))?,
        ),
    };

    let mut cfg = DistConfig::new(rank, world, spec.batch_size as usize);
    cfg.grad_accum = spec.grad_accum.max(1) as usize;
    cfg.optimizer = spec::optimizer(spec.optimizer.as_ref())?;
    cfg.clip_grad_norm = spec.clip_grad_norm as f32;
    cfg.checkpoint = spec::checkpoint(&spec.checkpoint)?;
    cfg.lazy_experts = spec.lazy_experts;
    cfg.expert_parallel = spec.expert_parallel.max(1) as usize;
    cfg.nan_policy = spec.nan_policy.parse()?;
    cfg.precision = adjoint_graph::precision::Precision::parse(&spec.precision)?;
    cfg.grad_reduce_bf16 = match spec.grad_reduce.as_str() {
        "" | "f32" => false,
        "bf16" => true,
        other => return Err(format!("grad_reduce '{other}': use f32 or bf16")),
    };
    if spec.loss_scale > 0.0 {
        cfg.loss_scale.init = spec.loss_scale as f32;
    }
    // The timeline's per-op spans follow the trace's step sampling.
    cfg.node_times_every = ctx.trace_steps_every;
    cfg.seed = spec.seed;
    cfg.exec = ctx.exec;
    if spec.bucket_mb > 0.0 {
        if !spec.bucket_mb.is_finite() || spec.bucket_mb > 1e6 {
            return Err(format!("bucket_mb {} is not a size in MiB", spec.bucket_mb));
        }
        cfg.exec.bucket_bytes = ((spec.bucket_mb * (1 << 20) as f64) as usize).max(4);
    }
    let steps_per_epoch = (data.samples() / cfg.global_batch()) as u64;
    if steps_per_epoch == 0 {
        return Err(format!(
            "the dataset has {} samples, fewer than one step takes ({} = world {world} × grad_accum {} × batch {})",
            data.samples(),
            cfg.global_batch(),
            cfg.grad_accum,
            cfg.batch
        ));
    }
    let steps = spec::total_steps(spec, steps_per_epoch);
    cfg.schedule = spec::schedule(spec.schedule.as_ref(), steps)?;

    let (peers, listener) = if world > 1 && !device.is_cuda() {
        let peers = a
            .peers
            .iter()
            .map(|p| {
                p.to_socket_addrs()
                    .ok()
                    .and_then(|mut it| it.next())
                    .ok_or_else(|| format!("peer address '{p}' does not resolve"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let listener = ctx
            .ring_listener
            .as_ref()
            .ok_or("this worker has no ring listener")?
            .try_clone()
            .map_err(|e| format!("ring listener: {e}"))?;
        (peers, Some(listener))
    } else {
        (Vec::new(), None)
    };
    log(format!(
        "job '{}': {} samples, {steps} steps of {} samples ({steps_per_epoch} per epoch), optimizer {:?}",
        spec.name,
        data.samples(),
        cfg.global_batch(),
        cfg.optimizer
    ));
    Ok(Prepared {
        job_id: a.job_id.clone(),
        rank,
        world,
        graph,
        data,
        eval,
        cfg,
        steps,
        checkpoint_every: spec.checkpoint_every,
        plan_hash: a.plan_hash.clone(),
        init,
        resume,
        peers,
        listener,
        ring: RingOptions {
            token: a.job_id.clone(),
            ..ctx.ring.clone()
        },
        device,
        metrics: ctx.metrics.clone(),
        span: tracing::Span::none(),
        trace_steps_every: ctx.trace_steps_every,
    })
}

/// Why a rank stopped: the message for the job's reason, and whether the
/// other ranks (a lost or silent peer), not the job, were at fault.
#[derive(Debug)]
struct Failure {
    message: String,
    retryable: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            retryable: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_owned())
    }
}

impl Failure {
    /// A worker error, retryable when a collective failed; `context`
    /// prefixes the message.
    fn of(context: &str, e: crate::Error) -> Failure {
        Failure {
            retryable: matches!(e, crate::Error::Collective(_)),
            message: format!("{context}{e}"),
        }
    }
}

/// The training thread: returns the weights file on rank 0, `None` on the
/// others. Whatever happens, the steps' events go to the store as
/// `jobs/<job>/events/rank-<r>.jsonl`, one JSON object per step
/// ([`crate::dist::EventLog::to_json`]).
fn train<B: JobBackend>(
    p: Prepared,
    tx: &UnboundedSender<Event>,
    abort: &AbortSignal,
) -> Result<Option<Vec<u8>>, Failure> {
    let key = format!("jobs/{}/events/rank-{}.jsonl", p.job_id, p.rank);
    let mut events = Vec::new();
    let metrics = p.metrics.clone();
    let span = p.span.clone();
    let _job = span.enter();
    let result = train_steps::<B>(p, tx, abort, &mut events);
    super::metrics::ended(&metrics);
    if !events.is_empty() {
        let _ = tx.send(Event::Put { key, bytes: events });
    }
    result
}

fn train_steps<B: JobBackend>(
    p: Prepared,
    tx: &UnboundedSender<Event>,
    abort: &AbortSignal,
    events: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, Failure> {
    let origin = std::time::Instant::now();
    let log = |line: String| {
        let _ = tx.send(Event::Log(line));
    };
    let backend = B::open(&p.device)?;
    let mut t = DistTrainer::new(backend, &p.graph, p.data, p.cfg).map_err(|e| e.to_string())?;
    let ours = plan_hash(t.executor().graph(), t.executor().plan());
    if p.plan_hash.is_empty() {
        log(format!(
            "the assignment carries no plan hash; this worker's is {ours}"
        ));
    } else if ours != p.plan_hash {
        return Err(format!(
            "plan hash mismatch: the coordinator planned {}, this worker computed {ours}",
            p.plan_hash
        )
        .into());
    }
    let exec = t.executor();
    log(format!(
        "compiled on {}: {} instructions, {} gradient buckets, arena {} bytes, parameters {} bytes, plan {}",
        exec.backend.name(),
        exec.program().instrs.len(),
        exec.buckets().len(),
        exec.plan().arena_bytes,
        exec.param_bytes(),
        &ours[..12.min(ours.len())]
    ));
    super::metrics::compiled(&p.metrics, &p.job_id, exec.plan().arena_bytes);
    if let Some(init) = &p.init {
        t.load_params(init)
            .map_err(|e| format!("init weights: {e}"))?;
    }
    if let Some(ckpt) = &p.resume {
        t.restore(ckpt).map_err(|e| format!("resume: {e}"))?;
        log(format!("resumed at step {}", ckpt.meta.step));
    }
    let nccl = t
        .executor()
        .backend
        .collective((p.rank, p.world), &p.ring, tx, abort, &log)?;
    let mut coll: Box<dyn Collective> = match (nccl, p.listener) {
        (Some(c), _) => c,
        (None, listener) => match listener {
            Some(listener) => Box::new(
                RingCollective::connect(
                    p.rank,
                    p.world,
                    listener,
                    &p.peers,
                    RingOptions {
                        // An Abort (a peer rejected or lost) ends the wait.
                        cancel: Some(abort.flag()),
                        ..p.ring
                    },
                )
                .map_err(|e| Failure {
                    message: format!("ring: {e}"),
                    retryable: true,
                })?,
            ),
            // A group of one: every all-reduce is the identity.
            None => Box::new(LocalGroup::new(1).pop().ok_or("no local collective")?),
        },
    };
    let mut eval = match p.eval {
        Some((split, every)) => {
            let e = Evaluator::sharded(
                t.executor().backend.another(&p.device)?,
                &p.graph,
                split,
                p.cfg.batch,
                p.rank,
                p.world,
                p.cfg.exec,
                p.cfg.expert_parallel,
            )
            .map_err(|e| format!("eval split: {e}"))?;
            if e.dropped() > 0 {
                log(format!(
                    "eval: {} batches of {} on this rank; the last {} samples do not fill a batch and are left out",
                    e.batches(),
                    p.cfg.batch,
                    e.dropped()
                ));
            }
            Some((e, every))
        }
        None => None,
    };
    while t.steps() < p.steps {
        if abort.is_set() {
            return Err(abort.message().into());
        }
        let m = t.step(coll.as_mut()).map_err(|e| Failure::of("", e))?;
        super::metrics::record_step(&p.metrics, &p.job_id, &m);
        if super::trace::sampled(m.step, p.steps, p.trace_steps_every) {
            super::trace::step_spans(&p.span, t.events(), &m, p.world);
        }
        let line = t.events().to_json(origin);
        events.extend_from_slice(line.to_string().as_bytes());
        events.push(b'\n');
        for line in t.take_logs() {
            log(line);
        }
        let eval_loss = match &mut eval {
            Some((e, every)) if (*every > 0 && m.step % *every == 0) || m.step == p.steps => {
                let _span = tracing::info_span!("eval", step = m.step).entered();
                let params = t.params().map_err(|e| e.to_string())?;
                let r = e
                    .evaluate(&params, coll.as_mut())
                    .map_err(|e| Failure::of(&format!("eval at step {}: ", m.step), e))?;
                Some(r.loss)
            }
            _ => None,
        };
        if p.rank == 0 {
            let _ = tx.send(Event::Metrics(m, eval_loss, t.expert_load().to_vec()));
        }
        if p.checkpoint_every > 0 && m.step % p.checkpoint_every == 0 {
            let _span = tracing::info_span!("checkpoint", step = m.step).entered();
            // Every rank takes part: expert shards travel to rank 0.
            if let Some(bytes) = t
                .gather_checkpoint(coll.as_mut())
                .map_err(|e| Failure::of("checkpoint: ", e))?
            {
                let key = format!("jobs/{}/checkpoints/step-{}.safetensors", p.job_id, m.step);
                let _ = tx.send(Event::Put { key, bytes });
            }
        }
    }
    let Some(params) = t
        .full_params(coll.as_mut())
        .map_err(|e| Failure::of("weights: ", e))?
    else {
        return Ok(None);
    };
    let weights = weights_file(&params).map_err(|e| e.to_string())?;
    Ok(Some(weights))
}

/// A backend a job can train on: how it opens, makes an evaluation twin,
/// and which collective it brings (NCCL on CUDA; the CPU uses the ring).
trait JobBackend: Backend + Sized + 'static {
    fn open(device: &Device) -> Result<Self, Failure>;

    /// A second backend on the same device (for the eval split).
    fn another(&self, device: &Device) -> Result<Self, Failure> {
        Self::open(device)
    }

    /// The collective this backend's jobs use, or `None` for the default
    /// (the TCP ring, or a group of one).
    fn collective(
        &self,
        rank_world: (usize, usize),
        ring: &RingOptions,
        tx: &UnboundedSender<Event>,
        abort: &AbortSignal,
        log: &dyn Fn(String),
    ) -> Result<Option<Box<dyn Collective>>, Failure>;
}

impl JobBackend for CpuBackend {
    fn open(_: &Device) -> Result<Self, Failure> {
        Ok(CpuBackend::new())
    }

    fn collective(
        &self,
        _: (usize, usize),
        _: &RingOptions,
        _: &UnboundedSender<Event>,
        _: &AbortSignal,
        _: &dyn Fn(String),
    ) -> Result<Option<Box<dyn Collective>>, Failure> {
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
impl JobBackend for adjoint_kernels::cuda::CudaBackend {
    fn open(device: &Device) -> Result<Self, Failure> {
        let Device::Cuda(gpu) = device else {
            return Err("the CUDA backend needs a CUDA device".into());
        };
        adjoint_kernels::cuda::CudaBackend::new(gpu.ordinal)
            .map_err(|e| Failure::from(format!("cuda:{}: {e}", gpu.ordinal)))
    }

    /// NCCL on the backend's communication stream: rank 0 makes the id and
    /// sends it up; the other ranks wait for the coordinator to forward it.
    /// A job of one rank without NCCL falls back to a group of one.
    fn collective(
        &self,
        (rank, world): (usize, usize),
        ring: &RingOptions,
        tx: &UnboundedSender<Event>,
        abort: &AbortSignal,
        log: &dyn Fn(String),
    ) -> Result<Option<Box<dyn Collective>>, Failure> {
        use crate::collective::{NcclCollective, NcclId, NcclOptions};
        if world == 1 && !adjoint_kernels::cuda::nccl_available() {
            log("NCCL cannot be loaded (libnccl.so); one rank needs no collective".into());
            return Ok(None);
        }
        let timeout = ring.connect_timeout;
        let id = if rank == 0 {
            let id = NcclId::new().map_err(|e| format!("nccl: {e}"))?;
            if world > 1 {
                let _ = tx.send(Event::NcclId(id.bytes().to_vec()));
            }
            id
        } else {
            let bytes = abort.wait_nccl_id(timeout).ok_or_else(|| Failure {
                message: format!(
                    "nccl: rank 0's NCCL id did not come within {timeout:?} (rank 0 lost or without NCCL)"
                ),
                retryable: true,
            })?;
            NcclId::from_bytes(&bytes).map_err(|e| format!("nccl: {e}"))?
        };
        let coll = NcclCollective::new(
            self.comm_stream().clone(),
            rank,
            world,
            id,
            NcclOptions {
                timeout: ring.timeout.max(timeout),
                cancel: Some(abort.flag()),
            },
        )
        .map_err(|e| Failure {
            message: format!("nccl: {e}"),
            retryable: true,
        })?;
        log(format!(
            "NCCL communicator: rank {} of {} on {}",
            rank,
            world,
            self.name()
        ));
        Ok(Some(Box::new(coll)))
    }
}
