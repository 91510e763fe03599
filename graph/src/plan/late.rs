//! Reads the program may make later than the graph says: the one rule the
//! planner and its checker share, because it is part of what the plan
//! promises the program rather than how the plan is made.
//!
//! A `GroupedMatMul` whose result only the `GeluGrad` right after it reads
//! (the experts' backward: `dh = dy·W2ᵀ`, then `dh · gelu'(pre)`) may run as
//! one instruction with it, group by group, and so read its inputs while
//! the `GeluGrad` writes: its inputs stay live through the `GeluGrad`, so
//! that node's result never takes their memory.

use crate::ops::{Moe, Nn, Op};
use crate::{Graph, NodeId, ValueId};

/// `(value, node)`: `value` is read as late as node index `node`.
pub(super) fn late_reads(graph: &Graph) -> Vec<(ValueId, usize)> {
    let consumers = graph.consumers();
    let mut out = Vec::new();
    for (n, pair) in graph.nodes.windows(2).enumerate() {
        let (gemm, next) = (&pair[0], &pair[1]);
        let fusable = matches!(gemm.op, Op::Moe(Moe::GroupedMatMul { .. }))
            && matches!(next.op, Op::Nn(Nn::GeluGrad(_)))
            && gemm.outputs.len() == 1
            && next.inputs.get(1) == Some(&gemm.outputs[0])
            && consumers[gemm.outputs[0].index()] == [NodeId(n as u32 + 1)];
        if fusable {
            out.extend(gemm.inputs.iter().map(|&v| (v, n + 1)));
        }
    }
    out
}
