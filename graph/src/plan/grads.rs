//! The flat gradient buffer: one aligned slot per parameter, in the order
//! backward produces the gradients, so that a prefix of the buffer is final
//! while backward still runs.

use super::{GradSlot, round_up, value_bytes};
use crate::{Graph, NodeId, ValueId};

/// The gradient buffer's layout, before the rest of the plan.
#[derive(Debug, Clone)]
pub(super) struct GradLayout {
    /// As [`super::MemoryPlan::grad_layout`].
    pub slots: Vec<GradSlot>,
    /// As [`super::MemoryPlan::grad_copies`].
    pub copies: Vec<usize>,
    /// As [`super::MemoryPlan::grad_bytes`].
    pub bytes: usize,
    /// Per value, the slot its producing node writes into, if any.
    pub in_buffer: Vec<Option<usize>>,
}

impl GradLayout {
    /// The values the executor copies into slots at the end of the step.
    pub fn copy_sources(&self) -> Vec<ValueId> {
        self.copies.iter().map(|&k| self.slots[k].value).collect()
    }
}

/// Lays out the slots of `grads`: gradients written in place first, by
/// producing node and output position; then the copied ones in `grads`
/// order. A gradient is written in place when a node produces it and no
/// other pair names the same value.
pub(super) fn layout(
    graph: &Graph,
    producers: &[Option<NodeId>],
    grads: &[(ValueId, ValueId)],
    align: usize,
) -> GradLayout {
    let mut uses = vec![0usize; graph.values.len()];
    for &(_, g) in grads {
        uses[g.index()] += 1;
    }
    let position = |g: ValueId| {
        producers[g.index()]
            .filter(|_| uses[g.index()] == 1)
            .map(|n| {
                let outputs = &graph.node(n).outputs;
                let k = outputs.iter().position(|&o| o == g).unwrap_or(0);
                (n.index(), k)
            })
    };
    let mut direct: Vec<((usize, usize), (ValueId, ValueId))> = grads
        .iter()
        .filter_map(|&pair| position(pair.1).map(|at| (at, pair)))
        .collect();
    direct.sort_by_key(|&(at, _)| at);
    let copied = grads.iter().filter(|&&(_, g)| position(g).is_none());

    let mut out = GradLayout {
        slots: Vec::with_capacity(grads.len()),
        copies: Vec::new(),
        bytes: 0,
        in_buffer: vec![None; graph.values.len()],
    };
    let direct_count = direct.len();
    for (k, &(param, value)) in direct.iter().map(|(_, p)| p).chain(copied).enumerate() {
        let bytes = value_bytes(graph, value);
        out.slots.push(GradSlot {
            param,
            value,
            offset: out.bytes,
            bytes,
        });
        out.bytes += round_up(bytes, align);
        if k < direct_count {
            out.in_buffer[value.index()] = Some(k);
        } else {
            out.copies.push(k);
        }
    }
    out
}
