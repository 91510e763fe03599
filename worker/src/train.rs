//! The training loop: forward and backward as one program, then the
//! optimizer, over in-memory batches. Each step also commits the state
//! updates (running statistics) its run computed.

use adjoint_graph::checkpoint::Policy;
use adjoint_graph::precision::Precision;
use adjoint_graph::training::training_graph_with;
use adjoint_graph::{Graph, ValueId};
use adjoint_kernels::Backend;

use crate::data::Dataset;
use crate::{Error, ExecOptions, Executor, Optimizer, OptimizerConfig, Result, StepKey};

/// What one step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Steps completed, counting this one.
    pub step: u64,
    /// The loss before this step's update.
    pub loss: f32,
}

/// A model being trained in one process.
#[derive(Debug)]
pub struct Trainer<B: Backend> {
    exec: Executor<B>,
    optimizer: Optimizer,
    /// The joint graph's inputs, in the forward graph's input order.
    inputs: Vec<ValueId>,
    steps: u64,
    seed: u64,
    /// FLOPs a step spends recomputing checkpointed activations.
    recompute_flops: u64,
}

impl<B: Backend> Trainer<B> {
    /// Differentiates `graph` (bound, with a loss) with respect to its
    /// trainable parameters, compiles the joint graph and initialises the
    /// parameters from their initializers with `seed`.
    pub fn new(
        backend: B,
        graph: &Graph,
        optimizer: OptimizerConfig,
        opts: ExecOptions,
        seed: u64,
    ) -> Result<Self> {
        Self::with_checkpoint(backend, graph, optimizer, opts, seed, &Policy::None)
    }

    /// [`Trainer::new`], with activations kept or recomputed as `policy`
    /// says.
    pub fn with_checkpoint(
        backend: B,
        graph: &Graph,
        optimizer: OptimizerConfig,
        opts: ExecOptions,
        seed: u64,
        policy: &Policy,
    ) -> Result<Self> {
        Self::with_precision(
            backend,
            graph,
            optimizer,
            opts,
            seed,
            policy,
            Precision::F32,
        )
    }

    /// [`Trainer::with_checkpoint`] in `precision` (`f32` or `bf16`: fp16
    /// needs the loss scaling of [`crate::dist::DistTrainer`]).
    pub fn with_precision(
        backend: B,
        graph: &Graph,
        optimizer: OptimizerConfig,
        opts: ExecOptions,
        seed: u64,
        policy: &Policy,
        precision: Precision,
    ) -> Result<Self> {
        if precision.needs_loss_scale() {
            return Err(Error::Data(format!(
                "precision {precision} needs a dynamic loss scale: train it as a job"
            )));
        }
        if !graph.is_static() {
            return Err(Error::Data(format!(
                "graph '{}' has a symbolic batch; bind it first",
                graph.name
            )));
        }
        let batch = graph
            .inputs
            .first()
            .and_then(|i| graph.static_shape(i.value).first().copied())
            .unwrap_or(1);
        let t = training_graph_with(graph, batch, policy, precision)?;
        let recompute_flops = t.checkpoint.recompute_flops;
        let (joint, inputs) = (t.joint, t.inputs);
        let mut exec = Executor::new(backend, joint.graph, &joint.grads, opts)?;
        exec.init_params(seed)?;
        let elements = exec.grads_view().len;
        let optimizer = Optimizer::new(&mut exec.backend, optimizer, elements)?;
        Ok(Trainer {
            exec,
            optimizer,
            inputs,
            steps: 0,
            seed,
            recompute_flops,
        })
    }

    /// FLOPs a step spends recomputing activations (0 without
    /// checkpointing).
    pub fn recompute_flops(&self) -> u64 {
        self.recompute_flops
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

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One step on a batch given as raw bytes per input, in the forward
    /// graph's input order.
    pub fn step(&mut self, batch: &[&[u8]]) -> Result<StepReport> {
        if batch.len() != self.inputs.len() {
            return Err(Error::Data(format!(
                "a batch has {} tensors, the graph {} inputs",
                batch.len(),
                self.inputs.len()
            )));
        }
        for (&v, bytes) in self.inputs.iter().zip(batch) {
            self.exec.write_bytes(v, bytes)?;
        }
        let key = StepKey {
            seed: self.seed,
            step: self.steps,
            rank: 0,
        };
        self.exec.run(key, &mut |_, _| {})?;
        self.exec.commit_state()?;
        let loss = self.exec.loss()?;
        let (params, grads) = (self.exec.params_view(), self.exec.grads_view());
        self.optimizer.step(&mut self.exec.backend, params, grads)?;
        self.steps += 1;
        Ok(StepReport {
            step: self.steps,
            loss,
        })
    }

    /// `steps` steps over consecutive batches of `batch` samples, wrapping
    /// around the dataset (a trailing partial batch is skipped), run in the
    /// backend's execution context ([`Backend::in_context`]).
    pub fn train(
        &mut self,
        data: &Dataset,
        batch: usize,
        steps: u64,
        on_step: &mut (dyn FnMut(&StepReport) + Send),
    ) -> Result<()>
    where
        B: Send,
    {
        B::in_context(|| self.train_here(data, batch, steps, on_step))
    }

    fn train_here(
        &mut self,
        data: &Dataset,
        batch: usize,
        steps: u64,
        on_step: &mut (dyn FnMut(&StepReport) + Send),
    ) -> Result<()> {
        let per_epoch = data.samples() / batch.max(1);
        if per_epoch == 0 {
            return Err(Error::Data(format!(
                "the dataset has {} samples, fewer than one batch of {batch}",
                data.samples()
            )));
        }
        let mut rows: [&[u8]; 16] = [&[]; 16];
        let n = self.inputs.len();
        if n > rows.len() {
            return Err(Error::Data(format!(
                "{n} inputs: at most {} are supported",
                rows.len()
            )));
        }
        for s in 0..steps {
            let start = (s as usize % per_epoch) * batch;
            for (i, slot) in rows.iter_mut().enumerate().take(n) {
                *slot = data.rows(i, start, batch)?;
            }
            let report = self.step(&rows[..n])?;
            on_step(&report);
        }
        Ok(())
    }
}
