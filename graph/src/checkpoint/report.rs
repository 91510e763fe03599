//! What a checkpoint plan means for a user: which forward values backward
//! keeps and their bytes, the planned peak, and the recompute FLOPs and
//! their share of the step ([`Checkpointed`]), with a rendering of the kept
//! values, one per line.

use std::fmt::Write as _;

use super::analysis::Structure;
use super::policy::{Policy, format_bytes};
use crate::ValueId;
use crate::autodiff::GradGraph;
use crate::plan::MemoryPlan;

/// A forward value the plan keeps for backward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptValue {
    /// Id in [`Checkpointed::joint`].
    pub value: ValueId,
    pub name: String,
    /// The op that produces it.
    pub op: &'static str,
    /// The producing node's provenance (source layer), possibly empty.
    pub provenance: String,
    /// Its size (unrounded).
    pub bytes: usize,
}

/// A checkpointed joint graph and what it costs.
#[derive(Debug, Clone)]
pub struct Checkpointed {
    /// The policy that chose the plan; `None` for an explicit keep set.
    pub policy: Option<Policy>,
    /// The rewritten joint graph: same outputs, loss and gradient pairs
    /// (by id and name) as the input.
    pub joint: GradGraph,
    /// The memory plan of `joint` with the caller's options.
    pub plan: MemoryPlan,
    /// Forward values read after the forward pass (by backward or by a
    /// recompute), in forward order.
    pub kept: Vec<KeptValue>,
    /// Sum of `kept` bytes.
    pub kept_bytes: usize,
    /// FLOPs of the cloned (recomputing) nodes.
    pub recompute_flops: u64,
    /// FLOPs of the whole rewritten step, recompute included.
    pub step_flops: u64,
    /// Number of cloned nodes.
    pub recomputed_nodes: usize,
}

impl Checkpointed {
    /// The planned arena peak ([`MemoryPlan::arena_bytes`]).
    pub fn peak_bytes(&self) -> usize {
        self.plan.arena_bytes
    }

    /// Recompute FLOPs as a share of the step's FLOPs (0 to 1).
    pub fn recompute_share(&self) -> f64 {
        if self.step_flops == 0 {
            0.0
        } else {
            self.recompute_flops as f64 / self.step_flops as f64
        }
    }

    /// One line of totals: policy, kept values, planned peak, recompute.
    pub fn summary(&self) -> String {
        let policy = self
            .policy
            .map_or_else(|| "explicit keep set".to_owned(), |p| p.to_string());
        format!(
            "checkpoint {policy}: keeps {} values ({}), planned peak {} ({} B), \
             recomputes {} nodes, {} FLOPs ({:.1}% of the step)",
            self.kept.len(),
            format_bytes(self.kept_bytes),
            format_bytes(self.peak_bytes()),
            self.peak_bytes(),
            self.recomputed_nodes,
            self.recompute_flops,
            100.0 * self.recompute_share()
        )
    }

    /// The summary, then one kept value per line: name, op, size and
    /// provenance.
    pub fn render_kept(&self) -> String {
        let mut out = self.summary();
        out.push('\n');
        let width = self.kept.iter().map(|k| k.name.len()).max().unwrap_or(0);
        for k in &self.kept {
            let _ = write!(
                out,
                "  keep {:<width$}  {:<12} {:>10}",
                k.name,
                k.op,
                format_bytes(k.bytes)
            );
            if !k.provenance.is_empty() {
                let _ = write!(out, "  from '{}'", k.provenance);
            }
            out.push('\n');
        }
        out
    }
}

/// The forward values of `joint` (rewritten) read after the forward pass.
pub(super) fn kept_values(joint: &GradGraph, s: &Structure) -> Vec<KeptValue> {
    let g = &joint.graph;
    let producers = g.producers();
    let mut read_late = vec![false; g.values.len()];
    // A node is forward when it produces an original forward value; clones
    // and backward nodes read the values kept for later.
    for node in &g.nodes {
        let is_forward = node
            .outputs
            .first()
            .is_some_and(|o| o.index() < s.forward_value.len() && s.forward_value[o.index()]);
        if is_forward {
            continue;
        }
        for &i in &node.inputs {
            if i.index() < s.forward_value.len() && s.forward_value[i.index()] {
                read_late[i.index()] = true;
            }
        }
    }
    let mut kept: Vec<(usize, KeptValue)> = (0..g.values.len())
        .filter(|&v| read_late[v])
        .map(|v| {
            let id = ValueId(v as u32);
            let p = producers[v].expect("forward values have producers");
            let ty = g.ty(id);
            let bytes = ty.shape.numel().unwrap_or(0) * ty.dtype.size_bytes();
            let kv = KeptValue {
                value: id,
                name: g.name_of(id).to_owned(),
                op: g.node(p).op.name(),
                provenance: g.node(p).provenance.clone(),
                bytes,
            };
            (p.index(), kv)
        })
        .collect();
    kept.sort_by_key(|(p, k)| (*p, k.value));
    kept.into_iter().map(|(_, k)| k).collect()
}
