//! Runs a compiled training graph on a backend.
//!
//! [`Executor::new`] plans memory for the graph ([`adjoint_graph::plan`]),
//! allocates one arena plus the parameter, gradient, input and state
//! buffers, and compiles the program. [`Executor::run`] executes one step:
//! every instruction in order, calling the gradient-ready hook as each
//! gradient bucket completes, so all-reduce can start while backward still
//! runs. Nothing is allocated inside a step.
//!
//! Trainable parameters are laid out in the parameter buffer at the same
//! offsets as their gradients in the gradient buffer (the order backward
//! produces them), so an optimizer updates all of them in one pass over two
//! flat views.
//!
//! State with an update (a BatchNormalization's running statistics) is
//! replaced by its update when the caller commits a run
//! ([`Executor::commit_state`]); a run alone leaves it as it was.

use std::collections::BTreeMap;

use adjoint_graph::plan::{MemoryPlan, PlanOptions, plan_memory};
use adjoint_graph::{Graph, ValueId, init};
use adjoint_kernels::{Backend, ElemType, View};

use crate::collective::Collective;
use crate::data::HostTensor;
use crate::program::{
    Buffers, ExchangeScratch, FuseReport, HostLayout, Instr, Program, StepKey, ValueViews,
};
use crate::{Error, Result};

/// How an executor is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Gradient bytes per all-reduce bucket.
    pub bucket_bytes: usize,
    /// Debug mode: after each node, fill the arena values that die there with
    /// NaN, so a read of a freed buffer shows in the results.
    pub poison_freed: bool,
    /// Apply the fusion rewrites to the compiled program
    /// (`program::fuse`; `ADJOINT_FUSE=0` in the environment turns them
    /// off whatever this says).
    pub fuse: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            bucket_bytes: 25 << 20,
            poison_freed: false,
            fuse: true,
        }
    }
}

/// A contiguous run of the gradient buffer that becomes ready at once: the
/// unit of bucketed all-reduce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GradBucket {
    pub index: usize,
    /// Byte range in the gradient buffer.
    pub offset: usize,
    pub bytes: usize,
    /// The parameters whose gradients it holds, in layout order.
    pub params: Vec<ValueId>,
    /// Index of the instruction after which the bucket is complete
    /// (`usize::MAX`: only at the end of the step).
    ready_after: usize,
}

impl GradBucket {
    /// The instruction after which the bucket is complete.
    pub fn ready_after(&self) -> usize {
        self.ready_after
    }
}

/// A training graph compiled for one backend.
#[derive(Debug)]
pub struct Executor<B: Backend> {
    pub backend: B,
    graph: Graph,
    plan: MemoryPlan,
    layout: HostLayout,
    buffers: Buffers,
    views: ValueViews,
    program: Program,
    buckets: Vec<GradBucket>,
    /// Per instruction: views to poison after it (debug mode only).
    poison: Vec<Vec<View>>,
    /// Copies into gradient slots for gradients the plan could not place.
    grad_copies: Vec<Instr>,
    /// Copies of each state update into its state, in `graph.state` order.
    state_copies: Vec<Instr>,
    /// Host buffers of the collective instructions.
    exchange: ExchangeScratch,
    /// Bytes the collective instructions sent and the time they took, in
    /// the last run.
    exchange_bytes: u64,
    exchange_secs: f64,
    /// Seconds spent in each instruction since profiling was switched on
    /// (empty when off).
    profile: Vec<f64>,
    /// The first instruction of backward (of the first node autodiff
    /// named `bwd/...`; the program's length when there is none), and
    /// when the last run reached it.
    backward_start: usize,
    backward_started: Option<std::time::Instant>,
    /// Armed by [`Executor::time_nodes_next_run`]: when each node's
    /// instructions began and ended in that run.
    node_times: Option<Vec<(std::time::Instant, std::time::Instant)>>,
    /// What the fusion rewrites did.
    fusion: FuseReport,
}

impl<B: Backend> Executor<B> {
    /// Plans, allocates and compiles `graph` (a bound graph, usually the joint
    /// graph of `autodiff::grad`); `grads` pairs each trainable parameter
    /// with its gradient value.
    pub fn new(
        mut backend: B,
        graph: Graph,
        grads: &[(ValueId, ValueId)],
        opts: ExecOptions,
    ) -> Result<Self> {
        let plan = plan_memory(
            &graph,
            &PlanOptions {
                grads: grads.to_vec(),
                ..PlanOptions::default()
            },
        )?;
        let layout = HostLayout::new(&graph, &plan)?;
        let buffers = Buffers {
            arena: backend.alloc(plan.arena_bytes)?,
            params: backend.alloc(layout.params_bytes)?,
            grads: backend.alloc(plan.grad_bytes)?,
            inputs: backend.alloc(layout.inputs_bytes)?,
            state: backend.alloc(layout.state_bytes)?,
        };
        let views = ValueViews::build(&graph, &plan, &layout, &buffers)?;
        let mut program = Program::compile(&graph, &views)?;
        let fusion = if opts.fuse && !crate::program::fusion_disabled_by_env() {
            let mut kept: Vec<ValueId> = plan.grad_layout.iter().map(|s| s.value).collect();
            kept.extend(grads.iter().map(|g| g.1));
            crate::program::fuse(&graph, &mut program, &kept)
        } else {
            FuseReport::default()
        };
        let grad_copies = grad_copy_instrs(&graph, &plan, &views, &buffers)?;
        let state_copies = state_copy_instrs(&graph, &views)?;
        let backward_start = graph
            .nodes
            .iter()
            .position(|n| n.name.starts_with("bwd/"))
            .map_or(program.instrs.len(), |n| match n {
                0 => 0,
                n => program.node_end[n - 1],
            });
        let buckets = buckets(&graph, &plan, &program, opts.bucket_bytes, &[]);
        let poison = if opts.poison_freed {
            poison_lists(&graph, &plan, &views, &program)?
        } else {
            vec![Vec::new(); program.instrs.len()]
        };
        Ok(Executor {
            backend,
            graph,
            plan,
            layout,
            buffers,
            views,
            program,
            buckets,
            poison,
            grad_copies,
            state_copies,
            exchange: ExchangeScratch::default(),
            exchange_bytes: 0,
            exchange_secs: 0.0,
            profile: Vec::new(),
            backward_start,
            backward_started: None,
            node_times: None,
            fusion,
        })
    }

    /// What the fusion rewrites did to the program (all zero when off).
    pub fn fusion(&self) -> FuseReport {
        self.fusion
    }

    /// Re-forms the gradient buckets so that each parameter of `alone`
    /// has a bucket of its own (expert shards, reduced apart from the
    /// rest).
    pub fn isolate_buckets(&mut self, bucket_bytes: usize, alone: &[ValueId]) {
        self.buckets = buckets(&self.graph, &self.plan, &self.program, bucket_bytes, alone);
    }

    /// Starts timing every instruction of the runs that follow (a clock
    /// read per instruction; off by default).
    pub fn start_profile(&mut self) {
        self.profile = vec![0.0; self.program.instrs.len()];
    }

    /// Seconds spent in each instruction since [`Executor::start_profile`],
    /// and profiling off again.
    pub fn take_profile(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.profile)
    }

    /// Makes the next run record when each node ran
    /// ([`Executor::node_times`]): a clock read per node, for the steps a
    /// timeline samples.
    pub fn time_nodes_next_run(&mut self) {
        self.node_times = Some(Vec::with_capacity(self.graph.nodes.len()));
    }

    /// Per node of the graph, in order, when its instructions began and
    /// ended in the run [`Executor::time_nodes_next_run`] armed (taken:
    /// the next call returns `None`). Nodes without instructions (reshapes)
    /// take no time.
    pub fn take_node_times(&mut self) -> Option<Vec<(std::time::Instant, std::time::Instant)>> {
        self.node_times.take().filter(|t| !t.is_empty())
    }

    /// When the last run began its backward instructions (`None` for a
    /// program without backward).
    pub fn backward_started(&self) -> Option<std::time::Instant> {
        self.backward_started
    }

    /// Whether the program has collective instructions (expert
    /// parallelism), so it must run with [`Executor::run_with`].
    pub fn has_exchanges(&self) -> bool {
        self.program
            .instrs
            .iter()
            .any(|i| matches!(i, Instr::Exchange(_)))
    }

    /// Bytes the collective instructions sent to other ranks in the last
    /// run, and the seconds they took.
    pub fn exchange_stats(&self) -> (u64, f64) {
        (self.exchange_bytes, self.exchange_secs)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn buckets(&self) -> &[GradBucket] {
        &self.buckets
    }

    /// Bytes of the input buffer (one batch of every graph input).
    pub fn input_bytes(&self) -> usize {
        self.layout.inputs_bytes
    }

    /// Bytes of the state buffer (non-trainable running values).
    pub fn state_bytes(&self) -> usize {
        self.layout.state_bytes
    }

    /// Bytes of the parameter buffer (trainable and frozen).
    pub fn param_bytes(&self) -> usize {
        self.layout.params_bytes
    }

    /// The trainable parameters as one flat f32 view, aligned with
    /// [`Executor::grads_view`].
    pub fn params_view(&self) -> View {
        flat_f32(self.buffers.params, self.plan.grad_bytes)
    }

    /// The whole gradient buffer as one flat f32 view.
    pub fn grads_view(&self) -> View {
        flat_f32(self.buffers.grads, self.plan.grad_bytes)
    }

    /// Sets every parameter and state value from its initializer.
    pub fn init_params(&mut self, seed: u64) -> Result<()> {
        for p in self.graph.params.clone() {
            let t = init::materialize(&self.graph, p.value, &p.init, seed)?;
            self.write_values(p.value, &t.data)?;
        }
        for s in self.graph.state.clone() {
            let t = init::materialize(&self.graph, s.value, &s.init, seed)?;
            self.write_values(s.value, &t.data)?;
        }
        Ok(())
    }

    /// Replaces each state variable that has an update with the update the
    /// last run computed: what a training step does after its run (every
    /// micro-step's, as PyTorch's forward updates BatchNorm's running
    /// statistics). Allocates nothing.
    pub fn commit_state(&mut self) -> Result<()> {
        for copy in &self.state_copies {
            copy.run(&mut self.backend, StepKey::default())?;
        }
        Ok(())
    }

    /// The f32 state variables that have an update, and their views.
    pub fn updated_state(&self) -> Result<Vec<(ValueId, View)>> {
        let mut out = Vec::new();
        for s in self.graph.state.iter().filter(|s| s.update.is_some()) {
            let view = self.views.view(&self.graph, s.value)?;
            if view.elem == ElemType::F32 {
                out.push((s.value, view));
            }
        }
        Ok(out)
    }

    /// Where value `v` lives (an arena offset, a parameter or input
    /// buffer, the gradient buffer).
    pub fn view_of(&self, v: ValueId) -> Result<View> {
        self.views.view(&self.graph, v)
    }

    /// Sets parameters from tensors named as in the graph (others keep
    /// their values); a tensor whose shape or dtype differs is an error.
    pub fn load_params(&mut self, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
        for (v, t) in crate::data::params_by_name(&self.graph, tensors)? {
            let view = self.views.view(&self.graph, v)?;
            self.backend.write(view, &t.bytes)?;
        }
        Ok(())
    }

    /// Writes f64 values into a value of the graph, converted to its dtype.
    pub fn write_values(&mut self, v: ValueId, data: &[f64]) -> Result<()> {
        let view = self.views.view(&self.graph, v)?;
        let bytes = encode(view.elem, data);
        self.write_bytes(v, &bytes)
    }

    /// Writes raw little-endian bytes (in the value's dtype) into a value.
    pub fn write_bytes(&mut self, v: ValueId, bytes: &[u8]) -> Result<()> {
        let view = self.views.view(&self.graph, v)?;
        if bytes.len() != view.bytes() {
            return Err(Error::Data(format!(
                "'{}': expected {} bytes ({} {:?} elements), found {}",
                self.graph.name_of(v),
                view.bytes(),
                view.len,
                view.elem,
                bytes.len()
            )));
        }
        Ok(self.backend.write(view, bytes)?)
    }

    /// A value's elements as f32 (ints and bools converted).
    pub fn read_f32(&self, v: ValueId) -> Result<Vec<f32>> {
        let view = self.views.view(&self.graph, v)?;
        let mut bytes = vec![0u8; view.bytes()];
        self.backend.read(view, &mut bytes)?;
        Ok(decode(view.elem, &bytes))
    }

    /// The gradient of a trainable parameter, from its slot.
    pub fn grad(&self, param: ValueId) -> Result<Vec<f32>> {
        let slot = self
            .plan
            .grad_layout
            .iter()
            .find(|s| s.param == param)
            .ok_or_else(|| {
                Error::Data(format!(
                    "'{}' has no gradient slot",
                    self.graph.name_of(param)
                ))
            })?;
        let view = View {
            buffer: self.buffers.grads,
            offset: slot.offset,
            len: slot.bytes / 4,
            elem: ElemType::F32,
        };
        let mut bytes = vec![0u8; view.bytes()];
        self.backend.read(view, &mut bytes)?;
        Ok(decode(ElemType::F32, &bytes))
    }

    /// The loss after a step (reads four bytes; allocates nothing).
    pub fn loss(&self) -> Result<f32> {
        let loss = self
            .graph
            .loss
            .ok_or_else(|| Error::Data("the graph has no loss".into()))?;
        let view = self.views.view(&self.graph, loss)?;
        if view.elem != ElemType::F32 || view.len != 1 {
            return Err(Error::Data("the loss is not an f32 scalar".into()));
        }
        let mut bytes = [0u8; 4];
        self.backend.read(view, &mut bytes)?;
        Ok(f32::from_le_bytes(bytes))
    }

    /// Runs one step; `on_bucket` is called as each gradient bucket is
    /// complete. A program with collective instructions fails here: run it
    /// with [`Executor::run_with`].
    pub fn run(
        &mut self,
        key: StepKey,
        on_bucket: &mut dyn FnMut(&mut B, &GradBucket),
    ) -> Result<()> {
        self.run_inner(key, None, &mut |backend, bucket, _| {
            on_bucket(backend, bucket)
        })
    }

    /// Runs one step with `coll` carrying the collective instructions;
    /// `on_bucket` is called as each gradient bucket is complete and may
    /// use the collective too.
    pub fn run_with(
        &mut self,
        key: StepKey,
        coll: &mut dyn Collective,
        on_bucket: &mut BucketHook<'_, B>,
    ) -> Result<()> {
        self.run_inner(key, Some(coll), on_bucket)
    }

    fn run_inner(
        &mut self,
        key: StepKey,
        mut coll: Option<&mut dyn Collective>,
        on_bucket: &mut BucketHook<'_, B>,
    ) -> Result<()> {
        let mut next_bucket = 0;
        self.exchange_bytes = 0;
        self.exchange_secs = 0.0;
        let profiling = !self.profile.is_empty();
        self.backward_started = None;
        let mut node = 0;
        let mut node_start = std::time::Instant::now();
        for (i, instr) in self.program.instrs.iter().enumerate() {
            if i == self.backward_start {
                self.backward_started = Some(std::time::Instant::now());
            }
            if let Some(times) = &mut self.node_times {
                // Close the nodes that ended before this instruction.
                while self.program.node_end[node] <= i {
                    let now = std::time::Instant::now();
                    times.push((node_start, now));
                    node_start = now;
                    node += 1;
                }
            }
            let start = profiling.then(std::time::Instant::now);
            match (instr, reborrow(&mut coll)) {
                (Instr::Exchange(x), Some(c)) => {
                    let t0 = std::time::Instant::now();
                    self.exchange_bytes += x.run(&mut self.backend, c, &mut self.exchange)?;
                    self.exchange_secs += t0.elapsed().as_secs_f64();
                }
                _ => instr.run(&mut self.backend, key)?,
            }
            if let Some(start) = start {
                // A device backend runs asynchronously: wait for this
                // instruction so its time is its own, not its launch's.
                self.backend.synchronize()?;
                self.profile[i] += start.elapsed().as_secs_f64();
            }
            for view in &self.poison[i] {
                self.backend.fill(*view, f64::NAN)?;
            }
            while next_bucket < self.buckets.len() && self.buckets[next_bucket].ready_after == i {
                on_bucket(
                    &mut self.backend,
                    &self.buckets[next_bucket],
                    reborrow(&mut coll),
                );
                next_bucket += 1;
            }
        }
        if let Some(times) = &mut self.node_times {
            let now = std::time::Instant::now();
            times.push((node_start, now));
            times.resize(self.graph.nodes.len(), (now, now));
        }
        for copy in &self.grad_copies {
            copy.run(&mut self.backend, key)?;
        }
        for bucket in &self.buckets[next_bucket..] {
            on_bucket(&mut self.backend, bucket, reborrow(&mut coll));
        }
        Ok(())
    }
}

/// What [`Executor::run_with`] calls as each gradient bucket is complete:
/// the backend, the bucket and the collective.
pub type BucketHook<'a, B> = dyn FnMut(&mut B, &GradBucket, Option<&mut dyn Collective>) + 'a;

/// A shorter borrow of an optional collective (the object's lifetime
/// shortens with it, which `Option::as_deref_mut` cannot do).
fn reborrow<'s>(coll: &'s mut Option<&mut dyn Collective>) -> Option<&'s mut dyn Collective> {
    match coll {
        Some(c) => Some(&mut **c),
        None => None,
    }
}

fn flat_f32(buffer: adjoint_kernels::BufferId, bytes: usize) -> View {
    View {
        buffer,
        offset: 0,
        len: bytes / 4,
        elem: ElemType::F32,
    }
}

/// Copies of gradients that are not written in place by their producer.
fn grad_copy_instrs(
    graph: &Graph,
    plan: &MemoryPlan,
    views: &ValueViews,
    buffers: &Buffers,
) -> Result<Vec<Instr>> {
    plan.grad_copies
        .iter()
        .map(|&i| {
            let slot = &plan.grad_layout[i];
            let src = views.view(graph, slot.value)?;
            let dst = View {
                buffer: buffers.grads,
                offset: slot.offset,
                len: src.len,
                elem: src.elem,
            };
            Ok(Instr::Copy { src, dst })
        })
        .collect()
}

/// Copies of each state update into its state (none where the update is
/// the state itself).
fn state_copy_instrs(graph: &Graph, views: &ValueViews) -> Result<Vec<Instr>> {
    graph
        .state
        .iter()
        .filter_map(|s| Some((s.value, s.update?)))
        .filter(|(value, update)| value != update)
        .map(|(value, update)| {
            let src = views.view(graph, update)?;
            let dst = views.view(graph, value)?;
            Ok(Instr::Copy { src, dst })
        })
        .collect()
}

/// Gradient buckets of about `bucket_bytes`, in layout order, each ready
/// after the instruction that writes its last gradient.
fn buckets(
    graph: &Graph,
    plan: &MemoryPlan,
    program: &Program,
    bucket_bytes: usize,
    alone: &[ValueId],
) -> Vec<GradBucket> {
    let producers = graph.producers();
    let ready_after = |value: ValueId| -> usize {
        if plan
            .grad_copies
            .iter()
            .any(|&c| plan.grad_layout[c].value == value)
        {
            return usize::MAX;
        }
        producers[value.index()].map_or(usize::MAX, |n| {
            program.node_end[n.index()].saturating_sub(1)
        })
    };
    let mut out: Vec<GradBucket> = Vec::new();
    for slot in &plan.grad_layout {
        let own = alone.contains(&slot.param);
        let start_new = out.last().is_none_or(|b| {
            own || b.bytes >= bucket_bytes
                || b.ready_after == usize::MAX
                || b.params.first().is_some_and(|p| alone.contains(p))
        });
        if start_new {
            out.push(GradBucket {
                index: out.len(),
                offset: slot.offset,
                bytes: 0,
                params: Vec::new(),
                ready_after: 0,
            });
        }
        let b = out.last_mut().expect("pushed above");
        b.bytes = slot.offset + slot.bytes - b.offset;
        b.params.push(slot.param);
        b.ready_after = b.ready_after.max(ready_after(slot.value));
    }
    out.sort_by_key(|b| (b.ready_after, b.index));
    out
}

/// For each instruction, the arena views that die after its node.
fn poison_lists(
    graph: &Graph,
    plan: &MemoryPlan,
    views: &ValueViews,
    program: &Program,
) -> Result<Vec<Vec<View>>> {
    let mut lists = vec![Vec::new(); program.instrs.len()];
    for (n, dying) in plan.frees_after.iter().enumerate() {
        let Some(last) = program.node_end[n].checked_sub(1) else {
            continue;
        };
        for &v in dying {
            let view = views.view(graph, v)?;
            if view.elem == ElemType::F32 {
                lists[last].push(view);
            }
        }
    }
    Ok(lists)
}

/// f64 values as little-endian bytes of `elem`.
pub fn encode(elem: ElemType, data: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * elem.size());
    for &x in data {
        match elem {
            ElemType::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            ElemType::BF16 => out.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
            ElemType::F16 => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            ElemType::I32 => out.extend_from_slice(&(x as i32).to_le_bytes()),
            ElemType::I64 => out.extend_from_slice(&(x as i64).to_le_bytes()),
            ElemType::U8 => out.push(u8::from(x != 0.0)),
        }
    }
    out
}

/// Little-endian bytes of `elem` as f32.
pub fn decode(elem: ElemType, bytes: &[u8]) -> Vec<f32> {
    match elem {
        ElemType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        ElemType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        ElemType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        ElemType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        ElemType::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        ElemType::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
    }
}
