//! Data-parallel training: one [`DistTrainer`] per rank, the ranks joined
//! by a [`Collective`].
//!
//! Each optimizer step runs `grad_accum` micro-steps of `batch` samples on
//! every rank (the samples come from [`Sampler`]: a shuffled window of
//! `world · grad_accum · batch` samples per step, so the result does not
//! depend on how the window is split into ranks and micro-steps).
//! Gradients of the micro-steps before the last are summed into a flat host
//! accumulation buffer. On the last micro-step, each gradient bucket is
//! all-reduced from inside the executor's bucket hook while backward still
//! runs: the hook reads the bucket into a preallocated host buffer, adds the
//! accumulated gradients, sums it across ranks, scales it by
//! `1 / (world · grad_accum)` and writes it back. Then come optional
//! clipping by global norm, the learning-rate schedule and the optimizer.
//! After warm-up a step allocates nothing in this module.
//!
//! The loss reported is the mean over micro-steps and ranks (one more,
//! one-element all-reduce). An [`EventLog`] records, for the last step, when
//! each bucket became ready, when its all-reduce ran and when backward
//! ended, so tests can see the overlap.
//!
//! State updates (BatchNorm running statistics) are committed after every
//! micro-step's run, as PyTorch's forward updates them; with more than one
//! rank, the updated state is then averaged over the ranks once per step
//! (each rank saw its own batches), so every rank holds the same values.
//!
//! Checkpoints ([`checkpoint`]) hold the parameters and state, the
//! optimizer state per parameter and the step, seed and data position as
//! metadata.

pub mod checkpoint;
mod device_reduce;
mod eval;
mod experts;
mod loss_scale;
mod sampler;
mod schedule;
mod sparse;

use std::collections::BTreeMap;
use std::time::Instant;

use adjoint_graph::checkpoint::Policy;
use adjoint_graph::precision::Precision;
use adjoint_graph::training::{training_graph, training_graph_with};
use adjoint_graph::{Graph, ValueId};
use adjoint_kernels::{Backend, ElemType, View};

use crate::collective::{Collective, CollectiveError};
use crate::data::{Dataset, HostTensor};
use crate::{
    Error, ExecOptions, Executor, GradBucket, Optimizer, OptimizerConfig, Result, StepKey,
};

pub use eval::{EvalResult, Evaluator};
pub use experts::ExpertShards;
pub use loss_scale::{LossScaleConfig, LossScaler, Verdict};
pub use sampler::{BatchBuffers, DataPosition, Sampler, shuffle};
pub use schedule::{LrSchedule, ScheduleKind};
pub use sparse::SparseExperts;

// Gradient buckets are read from and written to the backend through f32
// slices viewed as bytes; backends store little-endian values.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "adjoint assumes a little-endian host"
);

/// How one rank trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistConfig {
    pub rank: usize,
    pub world: usize,
    /// Samples per rank per micro-step.
    pub batch: usize,
    /// Micro-steps per optimizer step (at least 1).
    pub grad_accum: usize,
    pub optimizer: OptimizerConfig,
    pub schedule: LrSchedule,
    /// Clip gradients to this global L2 norm (0: off), after the all-reduce.
    pub clip_grad_norm: f32,
    /// Which activations backward keeps and which it recomputes.
    pub checkpoint: Policy,
    /// All-reduce only the expert gradient slices some rank routed rows to
    /// ([`SparseExperts`]); off, expert gradients go dense like the rest.
    pub sparse_experts: bool,
    /// With `sparse_experts`: experts no rank routed a row to keep their
    /// weights and optimizer state this step (no weight decay, no momentum
    /// drift), like TensorFlow's LazyAdam.
    pub lazy_experts: bool,
    /// Ranks one copy of the experts spans (1: every rank holds every
    /// expert). With N > 1 each rank holds E/N experts and packed rows
    /// travel to them by all-to-all ([`ExpertShards`]); the world must be
    /// a multiple of N. Sparse expert all-reduce is off under it.
    pub expert_parallel: usize,
    /// Every how many steps the event log records when each node ran (the
    /// first step too; 0: never), for per-op timelines.
    pub node_times_every: u64,
    /// What a step whose loss or gradient is NaN or infinite does.
    pub nan_policy: NanPolicy,
    /// Training precision: `f32`, or matmuls in bf16/f16 with f32 master
    /// weights ([`adjoint_graph::precision`]).
    pub precision: Precision,
    /// The dynamic loss scale under fp16.
    pub loss_scale: LossScaleConfig,
    /// Dense gradient buckets all-reduced in bf16 (half the bytes; every
    /// partial sum rounded to bf16) instead of f32. Expert gradients
    /// (sparse or sharded) stay f32.
    pub grad_reduce_bf16: bool,
    /// Seeds the initializers, the data shuffle and random ops.
    pub seed: u64,
    pub exec: ExecOptions,
}

/// What a step whose loss or gradient norm is not finite does. Every rank
/// sees the same all-reduced loss and norm, so they all decide alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NanPolicy {
    /// The step fails with an error naming it (and the job with it).
    #[default]
    Fail,
    /// The update is skipped (weights and optimizer state stay as they
    /// were), the step counts, and training goes on with the next batch.
    SkipStep,
}

impl std::str::FromStr for NanPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<NanPolicy, String> {
        match s {
            "" | "fail" => Ok(NanPolicy::Fail),
            "skip_step" => Ok(NanPolicy::SkipStep),
            other => Err(format!("nan_policy '{other}': use fail or skip_step")),
        }
    }
}

impl DistConfig {
    /// Rank `rank` of `world`, `batch` samples per micro-step, no gradient
    /// accumulation, SGD at 0.01, constant rate, no clipping, seed 0.
    pub fn new(rank: usize, world: usize, batch: usize) -> DistConfig {
        DistConfig {
            rank,
            world,
            batch,
            grad_accum: 1,
            optimizer: OptimizerConfig::sgd(0.01),
            schedule: LrSchedule::constant(),
            clip_grad_norm: 0.0,
            checkpoint: Policy::None,
            sparse_experts: true,
            lazy_experts: false,
            expert_parallel: 1,
            node_times_every: 0,
            nan_policy: NanPolicy::Fail,
            precision: Precision::F32,
            loss_scale: LossScaleConfig::default(),
            grad_reduce_bf16: false,
            seed: 0,
            exec: ExecOptions::default(),
        }
    }

    /// Samples per optimizer step over all ranks.
    pub fn global_batch(&self) -> usize {
        self.world * self.grad_accum * self.batch
    }
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMetrics {
    /// Steps completed, counting this one.
    pub step: u64,
    /// Mean loss over the micro-steps and ranks, before the update.
    pub loss: f32,
    /// The learning rate used.
    pub lr: f32,
    /// Global L2 norm of the averaged gradient, before clipping.
    pub grad_norm: f32,
    pub step_ms: f64,
    /// Samples of all ranks per second of this step.
    pub samples_per_sec: f64,
    /// Time in all-reduce calls (buckets and the loss).
    pub allreduce_ms: f64,
    /// Bytes this rank handed to all-reduce.
    pub allreduce_bytes: u64,
    /// Bytes of expert gradients the sparse all-reduce did not send
    /// (experts no rank routed a row to).
    pub allreduce_bytes_saved: u64,
    /// Bytes this rank sent by expert all-to-all (expert parallelism), and
    /// the time those exchanges took, over the step's micro-steps.
    pub alltoall_bytes: u64,
    pub alltoall_ms: f64,
    /// Where the step's samples came from.
    pub position: DataPosition,
    /// The loss or gradient was not finite and the update was skipped
    /// ([`NanPolicy::SkipStep`], or an fp16 overflow).
    pub skipped: bool,
    /// The loss scale this step ran with (0 without fp16 loss scaling).
    pub loss_scale: f32,
}

/// One bucket's all-reduce on the last micro-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketEvent {
    pub bucket: usize,
    /// The instruction after which the bucket was complete
    /// (`usize::MAX`: at the end of the step).
    pub ready_after: usize,
    pub bytes: usize,
    pub start: Instant,
    pub end: Instant,
}

impl BucketEvent {
    /// `bucket`'s all-reduce, from `start` to `end`.
    fn of(bucket: &GradBucket, start: Instant, end: Instant) -> BucketEvent {
        BucketEvent {
            bucket: bucket.index,
            ready_after: bucket.ready_after(),
            bytes: bucket.bytes,
            start,
            end,
        }
    }
}

/// The events of the last step.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    /// The step (0-based) these events belong to.
    pub step: u64,
    /// When the step began and when it ended (after the optimizer).
    pub start: Option<Instant>,
    pub end: Option<Instant>,
    /// Instructions of the program.
    pub instructions: usize,
    /// In the order the all-reduces ran.
    pub buckets: Vec<BucketEvent>,
    /// When the last micro-step's backward began (its forward ended).
    pub backward_start: Option<Instant>,
    /// When the last instruction of the last micro-step had run.
    pub backward_end: Option<Instant>,
    /// On sampled steps ([`DistConfig::node_times_every`]): when each node
    /// of the last micro-step ran.
    pub nodes: Vec<NodeEvent>,
}

/// One node of a sampled step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub name: String,
    /// The op (`MatMul`, `GroupedMatMul`, ...).
    pub op: &'static str,
    pub start: Instant,
    pub end: Instant,
}

impl EventLog {
    /// Buckets whose all-reduce started before backward ended.
    pub fn overlapped(&self) -> usize {
        let Some(end) = self.backward_end else {
            return 0;
        };
        self.buckets.iter().filter(|b| b.start < end).count()
    }

    /// The step as one JSON object, times in microseconds since `origin`:
    /// `{"step", "start_us", "backward_end_us", "end_us", "instructions",
    /// "overlapped", "buckets": [{"bucket", "ready_after", "bytes",
    /// "start_us", "end_us"}]}` (`ready_after` is null for a bucket
    /// completed at the end of the step), with `"backward_start_us"` and,
    /// on sampled steps, `"nodes": [{"node", "op", "start_us", "end_us"}]`.
    pub fn to_json(&self, origin: Instant) -> serde_json::Value {
        let us =
            |t: Option<Instant>| t.map(|t| t.saturating_duration_since(origin).as_micros() as u64);
        let buckets: Vec<serde_json::Value> = self
            .buckets
            .iter()
            .map(|b| {
                serde_json::json!({
                    "bucket": b.bucket,
                    "ready_after": (b.ready_after != usize::MAX).then_some(b.ready_after),
                    "bytes": b.bytes,
                    "start_us": us(Some(b.start)),
                    "end_us": us(Some(b.end)),
                })
            })
            .collect();
        let mut step = serde_json::json!({
            "step": self.step,
            "start_us": us(self.start),
            "backward_start_us": us(self.backward_start),
            "backward_end_us": us(self.backward_end),
            "end_us": us(self.end),
            "instructions": self.instructions,
            "overlapped": self.overlapped(),
            "buckets": buckets,
        });
        if !self.nodes.is_empty() {
            step["nodes"] = self
                .nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "node": n.name,
                        "op": n.op,
                        "start_us": us(Some(n.start)),
                        "end_us": us(Some(n.end)),
                    })
                })
                .collect();
        }
        step
    }
}

/// Which micro-step a bucket hook serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first of several: the accumulator takes the gradient.
    First,
    /// Neither first nor last: the accumulator adds the gradient.
    Middle,
    /// The last: accumulate, all-reduce, scale, write back.
    Last,
}

/// Per-step totals the bucket hook adds to.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    allreduce_secs: f64,
    allreduce_bytes: u64,
    allreduce_saved: u64,
    sumsq: f64,
    /// Squared norm of this rank's expert shards' gradients.
    shard_sumsq: f64,
    alltoall_bytes: u64,
    alltoall_secs: f64,
}

/// One rank of a data-parallel training job.
#[derive(Debug)]
pub struct DistTrainer<B: Backend> {
    exec: Executor<B>,
    optimizer: Optimizer,
    /// The joint graph's inputs, in the forward graph's input order.
    inputs: Vec<ValueId>,
    cfg: DistConfig,
    base_lr: f32,
    steps: u64,
    data: Dataset,
    sampler: Sampler,
    batch_bufs: BatchBuffers,
    /// Host mirror of the gradient buffer.
    host: Vec<f32>,
    /// Gradients summed over the micro-steps so far (empty without
    /// accumulation).
    accum: Vec<f32>,
    events: EventLog,
    logs: Vec<String>,
    sparse: SparseExperts,
    /// Expert shards under expert parallelism.
    shards: Option<ExpertShards>,
    /// The f32 state with updates, averaged over the ranks after each step
    /// (empty with one rank), and its host mirror.
    state_sync: Vec<View>,
    state_host: Vec<f32>,
    /// Under fp16: the loss-scale input and its scaler.
    scaler: Option<(ValueId, LossScaler)>,
    /// Gradient buckets reduced on the device (made at the first step, on a
    /// device backend whose collective reduces device memory).
    device: Option<device_reduce::DeviceReduce>,
    device_checked: bool,
}

impl<B: Backend> DistTrainer<B> {
    /// Binds `graph`'s batch dimension to `cfg.batch` (if symbolic),
    /// differentiates it with respect to its trainable parameters, compiles
    /// the joint graph, initialises the parameters from their initializers
    /// with `cfg.seed` (the same on every rank) and prepares the data.
    pub fn new(backend: B, graph: &Graph, data: Dataset, cfg: DistConfig) -> Result<Self> {
        if cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(Error::Data(format!(
                "rank {} of world {}",
                cfg.rank, cfg.world
            )));
        }
        if cfg.batch == 0 || cfg.grad_accum == 0 {
            return Err(Error::Data(
                "batch and grad_accum must be at least 1".into(),
            ));
        }
        let sharded = shard_for(graph, &cfg)?;
        let t = training_graph_with(
            sharded.as_ref().map_or(graph, |s| &s.graph),
            cfg.batch,
            &cfg.checkpoint,
            cfg.precision,
        )?;
        let scaler = t.loss_scale.map(|v| (v, LossScaler::new(cfg.loss_scale)));
        let mut logs = Vec::new();
        if cfg.checkpoint != Policy::None {
            logs.push(t.checkpoint.summary());
        }
        let inputs = t.inputs;
        let experts = if cfg.sparse_experts && sharded.is_none() {
            t.expert_grads
        } else {
            Vec::new()
        };
        let mut exec = Executor::new(backend, t.joint.graph, &t.joint.grads, cfg.exec)?;
        let largest_bucket = exec
            .buckets()
            .iter()
            .map(|b| b.bytes / 4)
            .max()
            .unwrap_or(0);
        let sparse = SparseExperts::new(&exec, &experts, largest_bucket)?;
        exec.init_params(cfg.seed)?;
        let shards = match &sharded {
            Some(s) => {
                let shards = ExpertShards::new(
                    exec.graph(),
                    &s.params,
                    cfg.expert_parallel,
                    cfg.rank,
                    cfg.world,
                )?;
                exec.isolate_buckets(cfg.exec.bucket_bytes, &shards.values());
                shards.init(&mut exec, graph, cfg.seed)?;
                logs.push(format!(
                    "expert parallel over {} ranks: this rank holds experts {:?} of {} weight(s); {} replica(s) of each",
                    cfg.expert_parallel,
                    s.params.first().map(|p| adjoint_graph::expert_parallel::shard_range(
                        p.experts,
                        cfg.expert_parallel,
                        cfg.rank
                    )),
                    s.params.len(),
                    shards.replicas()
                ));
                Some(shards)
            }
            None => None,
        };
        let elements = exec.grads_view().len;
        let optimizer = Optimizer::new(&mut exec.backend, cfg.optimizer, elements)?;
        let sampler = Sampler::new(data.samples(), cfg.global_batch(), cfg.seed)?;
        let batch_bufs = BatchBuffers::new(&data, cfg.batch)?;
        if sampler.dropped_per_epoch() > 0 {
            logs.push(format!(
                "the last {} of {} samples of each epoch are dropped (a step takes {} = world {} × grad_accum {} × batch {})",
                sampler.dropped_per_epoch(),
                data.samples(),
                cfg.global_batch(),
                cfg.world,
                cfg.grad_accum,
                cfg.batch
            ));
        }
        let buckets = exec.buckets().len();
        let state_sync: Vec<View> = if cfg.world > 1 {
            exec.updated_state()?.into_iter().map(|(_, v)| v).collect()
        } else {
            Vec::new()
        };
        let state_host = vec![0.0; state_sync.iter().map(|v| v.len).sum()];
        Ok(DistTrainer {
            base_lr: optimizer.lr(),
            host: vec![0.0; elements],
            accum: if cfg.grad_accum > 1 {
                vec![0.0; elements]
            } else {
                Vec::new()
            },
            events: EventLog {
                instructions: exec.program().instrs.len(),
                buckets: Vec::with_capacity(buckets),
                ..EventLog::default()
            },
            exec,
            optimizer,
            inputs,
            cfg,
            steps: 0,
            data,
            sampler,
            batch_bufs,
            logs,
            sparse,
            shards,
            state_sync,
            state_host,
            scaler,
            device: None,
            device_checked: false,
        })
    }

    pub fn config(&self) -> &DistConfig {
        &self.cfg
    }

    /// The fp16 loss scaler, if the job has one.
    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref().map(|(_, s)| s)
    }

    /// Resumes the fp16 loss scaler (no-op without one).
    pub fn set_loss_scaler(&mut self, scale: f32, good_steps: u64) {
        if let Some((_, s)) = &mut self.scaler {
            s.resume(scale, good_steps);
        }
    }

    pub fn executor(&self) -> &Executor<B> {
        &self.exec
    }

    pub fn executor_mut(&mut self) -> &mut Executor<B> {
        &mut self.exec
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Optimizer steps completed.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sets the steps completed (resuming): the next step reads the data
    /// window of step `steps` and uses its learning rate.
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
        self.optimizer.set_steps(steps);
    }

    /// Sets the updates the optimizer has applied (resuming; see
    /// [`checkpoint::CheckpointMeta::optimizer_steps`]).
    pub fn set_optimizer_steps(&mut self, steps: u64) {
        self.optimizer.set_steps(steps);
    }

    /// Full optimizer steps per epoch of the dataset.
    pub fn steps_per_epoch(&self) -> u64 {
        self.sampler.steps_per_epoch()
    }

    /// Where the next step reads.
    pub fn position(&self) -> DataPosition {
        self.sampler.position(self.steps)
    }

    /// The events of the last step.
    /// Rows routed to each expert in the last step, summed over the MoE
    /// layers and micro-steps of this rank (empty without experts or with
    /// sparse all-reduce off).
    pub fn expert_load(&self) -> &[u64] {
        self.sparse.load()
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Messages for the job's log since the last call.
    pub fn take_logs(&mut self) -> Vec<String> {
        std::mem::take(&mut self.logs)
    }

    /// Sets parameters from tensors named as in the graph (others keep
    /// their initial values). Expert weights may come full (`[E, ...]`)
    /// or as this rank's shard.
    pub fn load_params(&mut self, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
        match &self.shards {
            Some(s) => {
                let local = s.localize(tensors)?;
                self.exec.load_params(&local)
            }
            None => self.exec.load_params(tensors),
        }
    }

    /// The expert shards, under expert parallelism.
    pub fn expert_shards(&self) -> Option<&ExpertShards> {
        self.shards.as_ref()
    }

    /// Every parameter with expert weights whole, on rank 0 (`None` on the
    /// others); every rank must call it. Without expert parallelism it is
    /// [`DistTrainer::params`] on rank 0 and talks to no one.
    pub fn full_params(
        &self,
        coll: &mut dyn Collective,
    ) -> Result<Option<BTreeMap<String, HostTensor>>> {
        let mut params = self.params()?;
        if let Some(s) = &self.shards {
            s.gather(coll, &mut params)?;
        }
        Ok((self.cfg.rank == 0).then_some(params))
    }

    /// Every parameter (trainable or not) and state variable (running
    /// statistics), named as in the graph; expert weights under expert
    /// parallelism are this rank's shards.
    pub fn params(&self) -> Result<BTreeMap<String, HostTensor>> {
        let g = self.exec.graph();
        let mut out = BTreeMap::new();
        let values = g.params.iter().map(|p| p.value);
        for v in values.chain(g.state.iter().map(|s| s.value)) {
            let data = self.exec.read_f32(v)?;
            out.insert(
                g.name_of(v).to_owned(),
                HostTensor::from_f32(g.static_shape(v), &data),
            );
        }
        Ok(out)
    }

    /// The optimizer state per trainable parameter, named
    /// `optim.<state>.<parameter>` (`optim.exp_avg.fc1.weight`).
    pub fn optimizer_state(&self) -> Result<BTreeMap<String, HostTensor>> {
        let mut out = BTreeMap::new();
        let g = self.exec.graph();
        for (name, view) in self
            .optimizer
            .state_names()
            .iter()
            .zip(self.optimizer.state_views())
        {
            let mut flat = vec![0f32; view.len];
            self.exec
                .backend
                .read(view, bytemuck::cast_slice_mut(&mut flat))?;
            for slot in &self.exec.plan().grad_layout {
                let at = slot.offset / 4;
                out.insert(
                    format!("optim.{name}.{}", g.name_of(slot.param)),
                    HostTensor::from_f32(
                        g.static_shape(slot.param),
                        &flat[at..at + slot.bytes / 4],
                    ),
                );
            }
        }
        Ok(out)
    }

    /// Restores optimizer state written by [`DistTrainer::optimizer_state`];
    /// every tensor must be present (expert weights' state full or as this
    /// rank's shard).
    pub fn load_optimizer_state(&mut self, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
        let localized;
        let tensors = match &self.shards {
            Some(s) => {
                localized = s.localize(tensors)?;
                &localized
            }
            None => tensors,
        };
        let names = self.optimizer.state_names();
        let views = self.optimizer.state_views();
        let g = self.exec.graph();
        let mut writes = Vec::new();
        for (name, view) in names.iter().zip(views) {
            for slot in &self.exec.plan().grad_layout {
                let key = format!("optim.{name}.{}", g.name_of(slot.param));
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| Error::Data(format!("the checkpoint has no tensor '{key}'")))?;
                if t.dtype != adjoint_graph::DType::F32 || t.bytes.len() != slot.bytes {
                    return Err(Error::Data(format!(
                        "checkpoint tensor '{key}': {} bytes of {}, expected {} bytes of f32",
                        t.bytes.len(),
                        t.dtype,
                        slot.bytes
                    )));
                }
                writes.push((view.sub(slot.offset / 4, slot.bytes / 4), &t.bytes));
            }
        }
        for (view, bytes) in writes {
            self.exec.backend.write(view, bytes)?;
        }
        Ok(())
    }

    /// Runs `steps` optimizer steps (fewer if `on_step` returns false).
    /// Returns the steps run.
    pub fn train(
        &mut self,
        coll: &mut dyn Collective,
        steps: u64,
        on_step: &mut dyn FnMut(&StepMetrics) -> bool,
    ) -> Result<u64> {
        for done in 0..steps {
            let m = self.step(coll)?;
            if !on_step(&m) {
                return Ok(done + 1);
            }
        }
        Ok(steps)
    }

    /// One optimizer step: `grad_accum` micro-steps, the gradient
    /// all-reduce overlapped with the last backward, clipping, the schedule
    /// and the update. Every rank must call it the same number of times.
    pub fn step(&mut self, coll: &mut dyn Collective) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let DistTrainer {
            exec,
            optimizer,
            inputs,
            cfg,
            base_lr,
            steps,
            data,
            sampler,
            batch_bufs,
            host,
            accum,
            events,
            sparse,
            shards,
            logs,
            state_sync,
            state_host,
            scaler,
            device,
            device_checked,
            ..
        } = self;
        let step = *steps;
        let lr = cfg.schedule.lr(*base_lr, step);
        optimizer.set_lr(lr);
        events.step = step;
        events.start = Some(t0);
        events.end = None;
        events.buckets.clear();
        events.nodes.clear();
        events.backward_start = None;
        events.backward_end = None;
        let position = sampler.position(step);
        let window = sampler.window(step);
        let grads = exec.grads_view();
        let last_instr = exec.program().instrs.len().saturating_sub(1);
        let loss_scale = scaler.as_ref().map_or(1.0, |(_, s)| s.scale());
        // Averages over ranks and micro-steps and undoes the loss scale.
        let scale = 1.0 / ((cfg.world * cfg.grad_accum) as f32 * loss_scale);
        let mut totals = Totals::default();
        let mut loss_sum = 0f64;
        if !*device_checked {
            let buckets = exec.buckets().len();
            *device = device_reduce::DeviceReduce::new(
                &mut exec.backend,
                &*coll,
                grads,
                buckets,
                cfg.grad_accum > 1,
                cfg.grad_reduce_bf16,
            )?;
            *device_checked = true;
        }
        if let Some(d) = device.as_mut() {
            d.begin_step(&mut exec.backend, scale)?;
        }
        sparse.begin_step();
        for m in 0..cfg.grad_accum {
            let start = (m * cfg.world + cfg.rank) * cfg.batch;
            batch_bufs.gather(data, &window[start..start + cfg.batch])?;
            for (i, &v) in inputs.iter().enumerate() {
                exec.write_bytes(v, batch_bufs.input(i))?;
            }
            if let Some((v, _)) = scaler {
                exec.write_bytes(*v, &loss_scale.to_le_bytes())?;
            }
            let phase = match m {
                _ if m + 1 == cfg.grad_accum => Phase::Last,
                0 => Phase::First,
                _ => Phase::Middle,
            };
            let key = StepKey {
                seed: cfg.seed,
                step: step * cfg.grad_accum as u64 + m as u64,
                rank: cfg.rank as u32,
            };
            let time_nodes = phase == Phase::Last
                && cfg.node_times_every > 0
                && (step == 0 || (step + 1).is_multiple_of(cfg.node_times_every));
            if time_nodes {
                exec.time_nodes_next_run();
            }
            let mut failed: Option<Error> = None;
            exec.run_with(key, &mut *coll, &mut |backend, bucket, coll| {
                if failed.is_some() {
                    return;
                }
                let Some(coll) = coll else {
                    failed = Some(Error::Data("a bucket came without the collective".into()));
                    return;
                };
                if phase == Phase::Last
                    && events.backward_end.is_none()
                    && bucket.ready_after() >= last_instr
                {
                    events.backward_end = Some(Instant::now());
                }
                let hook = BucketHook {
                    bf16: cfg.grad_reduce_bf16,
                    grads,
                    host: host.as_mut_slice(),
                    accum: accum.as_mut_slice(),
                    scale,
                    sparse: &mut *sparse,
                    shards: shards.as_mut(),
                    device: device.as_mut(),
                };
                match hook.run(backend, bucket, phase, coll, &mut totals) {
                    Ok(Some(event)) => events.buckets.push(event),
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            exec.commit_state()?;
            if phase == Phase::Last {
                events.backward_start = exec.backward_started();
                if let Some(times) = exec.take_node_times() {
                    let g = exec.graph();
                    events.nodes = g
                        .nodes
                        .iter()
                        .zip(times)
                        .filter(|(_, (s, e))| e > s)
                        .map(|(n, (start, end))| NodeEvent {
                            name: n.name.clone(),
                            op: n.op.name(),
                            start,
                            end,
                        })
                        .collect();
                }
            }
            let (sent, secs) = exec.exchange_stats();
            totals.alltoall_bytes += sent;
            totals.alltoall_secs += secs;
            if phase != Phase::Last && !sparse.is_empty() {
                sparse.observe(&mut exec.backend)?;
            }
            loss_sum += f64::from(exec.loss()?);
        }
        if events.backward_end.is_none() {
            events.backward_end = Some(Instant::now());
        }
        if let Some(d) = device.as_mut() {
            let sumsq = d.finish(&mut exec.backend, coll, &mut totals)?;
            totals.sumsq += sumsq;
        }
        if !state_sync.is_empty() {
            let t = Instant::now();
            let world = cfg.world;
            average_state(&mut exec.backend, state_sync, state_host, world, coll)?;
            totals.allreduce_secs += t.elapsed().as_secs_f64();
            totals.allreduce_bytes += 4 * state_host.len() as u64;
        }

        // The loss and, under expert parallelism, the shards' squared
        // gradient norm (each place counted once per replica).
        let mut sums = [
            (loss_sum / cfg.grad_accum as f64) as f32,
            totals.shard_sumsq as f32,
        ];
        let n = if shards.is_some() { 2 } else { 1 };
        let t = Instant::now();
        coll.all_reduce_sum(&mut sums[..n])
            .map_err(collective_error)?;
        totals.allreduce_secs += t.elapsed().as_secs_f64();
        totals.allreduce_bytes += 4 * n as u64;
        let loss = sums[0] / cfg.world as f32;
        let shard_sumsq = match shards {
            Some(s) => f64::from(sums[1]) / s.replicas() as f64,
            None => 0.0,
        };

        let grad_norm = (totals.sumsq + shard_sumsq).sqrt() as f32;
        let skipped = !(loss.is_finite() && grad_norm.is_finite());
        let verdict = match scaler {
            Some((_, s)) => s.update(!skipped),
            None => Verdict::NotFinite,
        };
        if let Verdict::Overflow { next } = verdict {
            logs.push(format!(
                "step {}: gradient overflow at loss scale {loss_scale}; the update is skipped and the scale is now {next}",
                step + 1
            ));
        } else if skipped {
            let what = if loss.is_finite() {
                format!("the gradient norm is {grad_norm} (a NaN or infinite gradient)")
            } else {
                format!("the loss is {loss}")
            };
            match cfg.nan_policy {
                NanPolicy::Fail => {
                    return Err(Error::Data(format!(
                        "step {}: {what} (nan_policy = fail; skip_step skips such steps)",
                        step + 1
                    )));
                }
                NanPolicy::SkipStep => {
                    logs.push(format!("step {}: {what}; the update is skipped", step + 1));
                }
            }
        }
        if !skipped && cfg.clip_grad_norm > 0.0 {
            // PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6)
            // when that is below 1.
            let coef = cfg.clip_grad_norm / (grad_norm + 1e-6);
            if coef < 1.0 {
                match device.as_mut().filter(|d| d.used()) {
                    // Some buckets never came to the host: scale them all there.
                    Some(d) => d.clip(&mut exec.backend, coef)?,
                    None => {
                        for x in host.iter_mut() {
                            *x *= coef;
                        }
                        exec.backend
                            .write(grads, bytemuck::cast_slice(host.as_slice()))?;
                    }
                }
            }
        }
        let params = exec.params_view();
        if skipped {
            // Nothing to update.
        } else if cfg.lazy_experts && !sparse.agree_pending() && !sparse.is_empty() {
            optimizer.step_ranges(&mut exec.backend, params, grads, sparse.kept())?;
        } else {
            optimizer.step(&mut exec.backend, params, grads)?;
        }
        *steps += 1;
        events.end = Some(Instant::now());

        let secs = t0.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: *steps,
            loss,
            lr,
            grad_norm,
            step_ms: secs * 1e3,
            samples_per_sec: cfg.global_batch() as f64 / secs.max(1e-9),
            allreduce_ms: totals.allreduce_secs * 1e3,
            allreduce_bytes: totals.allreduce_bytes,
            allreduce_bytes_saved: totals.allreduce_saved,
            alltoall_bytes: totals.alltoall_bytes,
            alltoall_ms: totals.alltoall_secs * 1e3,
            position,
            skipped,
            loss_scale: if scaler.is_some() { loss_scale } else { 0.0 },
        })
    }
}

/// What the bucket hook works on.
struct BucketHook<'a> {
    grads: View,
    host: &'a mut [f32],
    accum: &'a mut [f32],
    scale: f32,
    /// Dense buckets go through the bf16 all-reduce.
    bf16: bool,
    sparse: &'a mut SparseExperts,
    shards: Option<&'a mut ExpertShards>,
    device: Option<&'a mut device_reduce::DeviceReduce>,
}

impl BucketHook<'_> {
    /// Handles one ready bucket; on the last micro-step returns its event.
    fn run<B: Backend>(
        self,
        backend: &mut B,
        bucket: &GradBucket,
        phase: Phase,
        coll: &mut dyn Collective,
        totals: &mut Totals,
    ) -> Result<Option<BucketEvent>> {
        let (start, len) = (bucket.offset / 4, bucket.bytes / 4);
        let host_rows = self.sparse.overlaps(start, len)
            || self
                .shards
                .as_ref()
                .is_some_and(|s| s.holds(&bucket.params));
        if let Some(device) = self.device.filter(|_| !host_rows) {
            return device.bucket(backend, bucket, phase, coll, totals);
        }
        let view = View {
            buffer: self.grads.buffer,
            offset: self.grads.offset + bucket.offset,
            len,
            elem: ElemType::F32,
        };
        let host = &mut self.host[start..start + len];
        backend.read(view, bytemuck::cast_slice_mut(host))?;
        match phase {
            Phase::First => {
                self.accum[start..start + len].copy_from_slice(host);
                Ok(None)
            }
            Phase::Middle => {
                for (a, &g) in self.accum[start..start + len].iter_mut().zip(host.iter()) {
                    *a += g;
                }
                Ok(None)
            }
            Phase::Last => {
                if !self.accum.is_empty() {
                    for (g, &a) in host.iter_mut().zip(&self.accum[start..start + len]) {
                        *g += a;
                    }
                }
                let t0 = Instant::now();
                let mut shard = self.shards.filter(|s| s.holds(&bucket.params));
                // What was sent, and what the dense all-reduce would have sent.
                let (sent, dense) = if let Some(s) = shard.as_deref_mut() {
                    // Already summed over every place's rows: only the
                    // replicas of this place add theirs.
                    (s.reduce(coll, host)?, bucket.bytes as u64)
                } else if self.sparse.overlaps(start, len) {
                    // The marks of this (last) micro-step are read once, when
                    // the first expert bucket comes; every rank gets here at
                    // the same bucket.
                    let mut sent = 0;
                    if self.sparse.agree_pending() {
                        self.sparse.observe(backend)?;
                        sent += self.sparse.agree(coll)?;
                    }
                    let sent = sent + self.sparse.all_reduce(host, start, coll)?;
                    (sent, bucket.bytes as u64)
                } else if self.bf16 {
                    coll.all_reduce_sum_bf16(host).map_err(collective_error)?;
                    (bucket.bytes as u64 / 2, bucket.bytes as u64 / 2)
                } else {
                    coll.all_reduce_sum(host).map_err(collective_error)?;
                    (bucket.bytes as u64, bucket.bytes as u64)
                };
                let t1 = Instant::now();
                let mut sumsq = 0f64;
                for g in host.iter_mut() {
                    *g *= self.scale;
                    sumsq += f64::from(*g) * f64::from(*g);
                }
                backend.write(view, bytemuck::cast_slice(host))?;
                if shard.is_some() {
                    totals.shard_sumsq += sumsq;
                    sumsq = 0.0;
                }
                totals.allreduce_secs += (t1 - t0).as_secs_f64();
                totals.allreduce_bytes += sent;
                totals.allreduce_saved += dense.saturating_sub(sent);
                totals.sumsq += sumsq;
                Ok(Some(BucketEvent::of(bucket, t0, t1)))
            }
        }
    }
}

/// The plan hash of training `graph` with `batch` samples per micro-step
/// under checkpoint `policy`: [`adjoint_graph::training::TrainingGraph::plan_hash`]
/// of [`training_graph`], exactly as the coordinator computes it from the job
/// spec.
pub fn plan_hash(graph: &Graph, batch: usize, policy: &Policy) -> Result<String> {
    Ok(training_graph(graph, batch, policy)?.plan_hash())
}

/// [`plan_hash`] under `precision`.
pub fn plan_hash_with(
    graph: &Graph,
    batch: usize,
    policy: &Policy,
    precision: Precision,
) -> Result<String> {
    Ok(training_graph_with(graph, batch, policy, precision)?.plan_hash())
}

/// The forward graph with its experts sharded, under expert parallelism.
fn shard_for(
    graph: &Graph,
    cfg: &DistConfig,
) -> Result<Option<adjoint_graph::expert_parallel::ShardedExperts>> {
    let ep = cfg.expert_parallel;
    if ep <= 1 {
        return Ok(None);
    }
    if !cfg.world.is_multiple_of(ep) {
        return Err(Error::Data(format!(
            "expert_parallel = {ep} needs a world that is a multiple of {ep}; this job has {} ranks",
            cfg.world
        )));
    }
    Ok(Some(adjoint_graph::expert_parallel::shard_experts(
        graph, ep,
    )?))
}

/// Replaces each view of `views` (f32 state) by its mean over the `world`
/// ranks, through `host` (their lengths summed).
fn average_state<B: Backend>(
    backend: &mut B,
    views: &[View],
    host: &mut [f32],
    world: usize,
    coll: &mut dyn Collective,
) -> Result<()> {
    let mut at = 0;
    for v in views {
        backend.read(*v, bytemuck::cast_slice_mut(&mut host[at..at + v.len]))?;
        at += v.len;
    }
    coll.all_reduce_sum(host).map_err(collective_error)?;
    let scale = 1.0 / world as f32;
    at = 0;
    for v in views {
        let part = &mut host[at..at + v.len];
        for x in part.iter_mut() {
            *x *= scale;
        }
        backend.write(*v, bytemuck::cast_slice(part))?;
        at += v.len;
    }
    Ok(())
}

/// Collective failures surface as data errors naming the rank, peer and
/// call.
fn collective_error(e: CollectiveError) -> Error {
    Error::Collective(format!("all-reduce: {e}"))
}
