//! Expert parallelism on one rank: which expert weights it holds and how
//! they meet the rest of the job.
//!
//! With `expert_parallel = N` the forward graph is rewritten by
//! [`adjoint_graph::expert_parallel::shard_experts`]: each expert weight
//! `[E, ·, ·]` becomes this rank's shard `[E/N, ·, ·]` (the experts of
//! place `rank % N`), and packed rows travel to their experts' owners and
//! back by all-to-all inside the step. [`ExpertShards`] does the rest:
//!
//! - **Init**: a shard is the slice of the full tensor its initializer
//!   makes, so the weights equal a one-rank job's from the start.
//! - **Gradients**: a shard's gradient already sums the rows of every
//!   place, so it is not all-reduced over the world; the ranks holding the
//!   same place (`world / N` replicas, one per group) sum theirs, and it is
//!   scaled like every other gradient.
//! - **Checkpoints and weights** hold full tensors, experts by global id
//!   (row e of `[E, ·, ·]` is expert e): [`ExpertShards::gather`] sends the
//!   shards of the first group to rank 0, which concatenates them, and
//!   [`ExpertShards::localize`] slices full tensors for this rank on load.
//!   A job can therefore resume with another `expert_parallel`, or none.

use std::collections::BTreeMap;
use std::ops::Range;

use adjoint_graph::expert_parallel::{ShardedParam, shard_range};
use adjoint_graph::{Graph, ValueId, init};

use super::collective_error;
use crate::collective::Collective;
use crate::data::HostTensor;
use crate::program::group_all_reduce;
use crate::{Error, Executor, Result};

/// One sharded expert weight.
#[derive(Debug, Clone)]
struct Shard {
    name: String,
    /// The weight in the rank's (rewritten) graph.
    value: ValueId,
    /// Global expert count.
    experts: usize,
}

/// This rank's expert shards.
#[derive(Debug)]
pub struct ExpertShards {
    /// Ranks one copy of the experts spans (`expert_parallel`).
    ranks: usize,
    rank: usize,
    world: usize,
    shards: Vec<Shard>,
    /// Host buffer of the replica reduction.
    scratch: Vec<f32>,
}

impl ExpertShards {
    /// The shards of `params` in the compiled `graph`, for `rank` of
    /// `world`.
    pub fn new(
        graph: &Graph,
        params: &[ShardedParam],
        ranks: usize,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        let shards = params
            .iter()
            .map(|p| {
                let value = graph.find(&p.name).ok_or_else(|| {
                    Error::Data(format!("expert weight '{}' is not in the graph", p.name))
                })?;
                Ok(Shard {
                    name: p.name.clone(),
                    value,
                    experts: p.experts,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ExpertShards {
            ranks,
            rank,
            world,
            shards,
            scratch: Vec::new(),
        })
    }

    /// The sharded weights' values, for gradient buckets of their own.
    pub fn values(&self) -> Vec<ValueId> {
        self.shards.iter().map(|s| s.value).collect()
    }

    /// Whether a gradient bucket holds sharded weights (they have buckets
    /// of their own, so one param decides).
    pub fn holds(&self, params: &[ValueId]) -> bool {
        params
            .first()
            .is_some_and(|p| self.shards.iter().any(|s| s.value == *p))
    }

    /// Copies of the experts over the world: the replicas that sum a
    /// shard's gradient.
    pub fn replicas(&self) -> usize {
        self.world / self.ranks
    }

    fn rows(&self, s: &Shard) -> Range<usize> {
        shard_range(s.experts, self.ranks, self.rank)
    }

    /// Overwrites each shard with its slice of the full tensor its
    /// initializer makes on the unsharded `graph`.
    pub fn init<B: adjoint_kernels::Backend>(
        &self,
        exec: &mut Executor<B>,
        graph: &Graph,
        seed: u64,
    ) -> Result<()> {
        for s in &self.shards {
            let (full_value, param) = graph
                .find(&s.name)
                .and_then(|v| graph.param(v).map(|p| (v, p)))
                .ok_or_else(|| {
                    Error::Data(format!("expert weight '{}' is not a parameter", s.name))
                })?;
            let full = init::materialize(graph, full_value, &param.init, seed)?;
            let row = full.numel() / s.experts.max(1);
            let rows = self.rows(s);
            exec.write_values(s.value, &full.data[rows.start * row..rows.end * row])?;
        }
        Ok(())
    }

    /// Sums a sharded gradient bucket over the replicas of this rank's
    /// place; returns the bytes sent.
    pub fn reduce(&mut self, coll: &mut dyn Collective, data: &mut [f32]) -> Result<u64> {
        let place = self.rank % self.ranks;
        let members = (place..self.world).step_by(self.ranks);
        group_all_reduce(coll, data, members, &mut self.scratch)
    }

    /// The full tensor name of a sharded one (`optim.exp_avg.moe.w1` →
    /// the shard `moe.w1`), if `name` is a sharded weight or its state.
    fn shard_of(&self, name: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| {
            name == s.name
                || name
                    .strip_prefix("optim.")
                    .and_then(|rest| rest.split_once('.'))
                    .is_some_and(|(_, param)| param == s.name)
        })
    }

    /// `tensors` (full tensors, as a checkpoint or weights file holds them)
    /// with every sharded weight and its optimizer state sliced to this
    /// rank's experts. Tensors already of the shard's shape pass as they
    /// are.
    pub fn localize(
        &self,
        tensors: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>> {
        let mut out = tensors.clone();
        for (name, t) in out.iter_mut() {
            let Some(s) = self.shard_of(name) else {
                continue;
            };
            if t.shape.first() != Some(&s.experts) {
                continue;
            }
            let rows = self.rows(s);
            let row_bytes = t.bytes.len() / s.experts;
            let mut shape = t.shape.clone();
            shape[0] = rows.len();
            *t = HostTensor {
                dtype: t.dtype,
                shape,
                bytes: t.bytes[rows.start * row_bytes..rows.end * row_bytes].to_vec(),
            };
        }
        Ok(out)
    }

    /// Replaces the sharded tensors of `tensors` (this rank's shards, named
    /// as the full ones) by full tensors on rank 0; every rank must call it
    /// with the same names. Other ranks' maps are left as they were.
    pub fn gather(
        &self,
        coll: &mut dyn Collective,
        tensors: &mut BTreeMap<String, HostTensor>,
    ) -> Result<()> {
        let names: Vec<String> = tensors
            .keys()
            .filter(|k| self.shard_of(k).is_some())
            .cloned()
            .collect();
        let mut local = Vec::new();
        for name in &names {
            local.extend(tensors[name].to_f32()?);
        }
        let world = self.world;
        let mut send_counts = vec![0usize; world];
        let mut recv_counts = vec![0usize; world];
        // The first group (ranks 0..N) holds every place once.
        if self.rank < self.ranks {
            send_counts[0] = local.len();
        }
        if self.rank == 0 {
            recv_counts[..self.ranks].fill(local.len());
        }
        let mut recv = vec![0f32; recv_counts.iter().sum()];
        let send = if self.rank < self.ranks {
            &local[..]
        } else {
            &[]
        };
        coll.all_to_all(send, &send_counts, &mut recv, &recv_counts)
            .map_err(collective_error)?;
        if self.rank != 0 {
            return Ok(());
        }
        let block = local.len();
        let mut at = 0;
        for name in &names {
            let t = &tensors[name];
            let n = t.numel();
            let mut data = Vec::with_capacity(n * self.ranks);
            for p in 0..self.ranks {
                data.extend_from_slice(&recv[p * block + at..p * block + at + n]);
            }
            at += n;
            let mut shape = t.shape.clone();
            shape[0] *= self.ranks;
            tensors.insert(name.clone(), HostTensor::from_f32(shape, &data));
        }
        Ok(())
    }
}
