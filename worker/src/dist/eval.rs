//! Evaluation on a held-out split: the loss of the current weights, forward
//! only, with dropout off.
//!
//! An [`Evaluator`] compiles the model's loss graph (no gradients) for the
//! rank's batch size once. Each [`Evaluator::evaluate`] copies the
//! trainer's parameters in, runs every full batch of this rank's share of
//! the split (sample `i` belongs to rank `i mod world`; a last partial batch
//! is dropped, and said so once) and sums the per-batch losses and the batch
//! count across ranks, so every rank returns the same mean. Every rank must
//! call it at the same steps.
//!
//! Under expert parallelism the loss graph is the rank's sharded one and
//! its forward passes exchange rows with the rank's group, so every rank
//! of a group runs as many passes as the busiest of them; the extra passes
//! of a rank with fewer batches are not counted.

use std::collections::BTreeMap;

use adjoint_graph::ops::nn::Nn;
use adjoint_graph::{Graph, Op, autodiff};
use adjoint_kernels::Backend;

use super::{BatchBuffers, collective_error};
use crate::collective::Collective;
use crate::data::{Dataset, HostTensor};
use crate::{Error, ExecOptions, Executor, Result, StepKey};

/// What one evaluation found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    /// Mean of the per-batch losses over every rank's batches.
    pub loss: f32,
    /// Samples evaluated over all ranks.
    pub samples: usize,
}

/// The loss graph of one rank, compiled for evaluation.
#[derive(Debug)]
pub struct Evaluator<B: Backend> {
    exec: Executor<B>,
    inputs: Vec<adjoint_graph::ValueId>,
    data: Dataset,
    bufs: BatchBuffers,
    /// This rank's samples, in order.
    indices: Vec<u32>,
    batch: usize,
    world: usize,
    /// Forward passes per evaluation: this rank's batches, or under expert
    /// parallelism the most any rank of its group has.
    passes: usize,
}

impl<B: Backend> Evaluator<B> {
    /// Compiles `graph`'s loss for batches of `batch` on `backend`, with
    /// rank `rank` of `world` taking every `world`-th sample of `data`.
    pub fn new(
        backend: B,
        graph: &Graph,
        data: Dataset,
        batch: usize,
        rank: usize,
        world: usize,
        exec: ExecOptions,
    ) -> Result<Self> {
        Self::sharded(backend, graph, data, batch, rank, world, exec, 1)
    }

    /// [`Evaluator::new`] for a job with `expert_parallel` ranks per copy
    /// of the experts (the parameters it is given are the rank's shards).
    #[allow(clippy::too_many_arguments)]
    pub fn sharded(
        backend: B,
        graph: &Graph,
        data: Dataset,
        batch: usize,
        rank: usize,
        world: usize,
        exec: ExecOptions,
        expert_parallel: usize,
    ) -> Result<Self> {
        let sharded;
        let graph = match expert_parallel {
            0 | 1 => graph,
            ep => {
                sharded = adjoint_graph::expert_parallel::shard_experts(graph, ep)?;
                &sharded.graph
            }
        };
        let graph = eval_graph(graph, batch)?;
        let inputs = graph.inputs.iter().map(|i| i.value).collect::<Vec<_>>();
        let exec = Executor::new(backend, graph, &[], exec)?;
        let indices: Vec<u32> = (rank..data.samples())
            .step_by(world.max(1))
            .map(|i| i as u32)
            .collect();
        let bufs = BatchBuffers::new(&data, batch)?;
        let world = world.max(1);
        let batches_of = |r: usize| data.samples().saturating_sub(r).div_ceil(world) / batch;
        let passes = match expert_parallel {
            0 | 1 => batches_of(rank),
            ep => {
                let base = rank / ep * ep;
                (base..base + ep).map(batches_of).max().unwrap_or(0)
            }
        };
        Ok(Evaluator {
            passes,
            exec,
            inputs,
            data,
            bufs,
            indices,
            batch,
            world,
        })
    }

    /// Full batches this rank evaluates.
    pub fn batches(&self) -> usize {
        self.indices.len() / self.batch
    }

    /// Samples of this rank left out because they do not fill a batch.
    pub fn dropped(&self) -> usize {
        self.indices.len() % self.batch
    }

    /// The mean loss of `params` on the split, over all ranks.
    pub fn evaluate(
        &mut self,
        params: &BTreeMap<String, HostTensor>,
        coll: &mut dyn Collective,
    ) -> Result<EvalResult> {
        self.exec.load_params(params)?;
        let mut sums = [0f32, 0f32];
        for b in 0..self.passes {
            let counted = b < self.batches();
            if counted {
                let window = &self.indices[b * self.batch..(b + 1) * self.batch];
                self.bufs.gather(&self.data, window)?;
                for (i, &v) in self.inputs.iter().enumerate() {
                    self.exec.write_bytes(v, self.bufs.input(i))?;
                }
            }
            // Dropout is off in the eval graph, so the key does not matter.
            let key = StepKey {
                seed: 0,
                step: 0,
                rank: 0,
            };
            if self.exec.has_exchanges() {
                self.exec.run_with(key, &mut *coll, &mut |_, _, _| {})?;
            } else {
                self.exec.run(key, &mut |_, _| {})?;
            }
            if counted {
                sums[0] += self.exec.loss()?;
                sums[1] += 1.0;
            }
        }
        coll.all_reduce_sum(&mut sums).map_err(collective_error)?;
        if sums[1] == 0.0 {
            return Err(Error::Data(format!(
                "the eval split fills no batch of {} on any of {} ranks",
                self.batch, self.world
            )));
        }
        Ok(EvalResult {
            loss: sums[0] / sums[1],
            samples: sums[1] as usize * self.batch,
        })
    }
}

/// `graph` bound to `batch`, reduced to what its loss needs, with every
/// dropout's rate set to zero.
fn eval_graph(graph: &Graph, batch: usize) -> Result<Graph> {
    let mut g = if graph.is_static() {
        graph.clone()
    } else {
        graph.bind_batch(batch)
    };
    let loss = g
        .loss
        .ok_or_else(|| Error::Data(format!("graph '{}' has no loss to evaluate", g.name)))?;
    for node in &mut g.nodes {
        if let Op::Nn(Nn::Dropout { p, .. }) = &mut node.op {
            *p = 0.0;
        }
    }
    g.outputs = vec![loss];
    Ok(autodiff::prune(&g))
}
