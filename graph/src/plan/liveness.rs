//! Storage classes and lifetimes of the planner (the checker derives its
//! own, in `check.rs`).

use super::grads::GradLayout;
use super::{Lifetime, Storage, value_bytes};
use crate::ops::{Movement, Op};
use crate::{Graph, NodeId, ValueId};

/// Whether a node only reinterprets its input's bytes.
pub(super) fn is_alias_op(op: &Op) -> bool {
    matches!(op, Op::Movement(Movement::Reshape(_)))
}

/// The storage class of every value; arena offsets are left at 0 for the
/// assigner to fill.
pub(super) fn classify(graph: &Graph, grads: &GradLayout) -> Vec<Storage> {
    let mut storage = vec![Storage::Unused; graph.values.len()];
    for (i, input) in graph.inputs.iter().enumerate() {
        storage[input.value.index()] = Storage::Input(i);
    }
    for (i, param) in graph.params.iter().enumerate() {
        storage[param.value.index()] = Storage::Param(i);
    }
    for (i, state) in graph.state.iter().enumerate() {
        storage[state.value.index()] = Storage::State(i);
    }
    for node in &graph.nodes {
        for &out in &node.outputs {
            storage[out.index()] = if let Some(k) = grads.in_buffer[out.index()] {
                let slot = &grads.slots[k];
                Storage::Grad {
                    offset: slot.offset,
                    bytes: slot.bytes,
                }
            } else if is_alias_op(&node.op) {
                let input = node.inputs[0];
                let of = match storage[input.index()] {
                    Storage::Alias { of } => of,
                    _ => input,
                };
                Storage::Alias { of }
            } else {
                Storage::Arena {
                    offset: 0,
                    bytes: value_bytes(graph, out),
                }
            };
        }
    }
    storage
}

/// The lifetime of every value a node produces. `keep` lists values read
/// at the end of the step besides outputs, the loss and state updates
/// (the sources of gradient copies).
pub(super) fn lifetimes(
    graph: &Graph,
    producers: &[Option<NodeId>],
    storage: &[Storage],
    keep: &[ValueId],
) -> Vec<Option<Lifetime>> {
    let end = graph.nodes.len();
    let mut life: Vec<Option<Lifetime>> = producers
        .iter()
        .map(|p| {
            p.map(|n| Lifetime {
                first: n.index(),
                last: n.index(),
            })
        })
        .collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        for &x in &node.inputs {
            if let Some(l) = &mut life[x.index()] {
                l.last = l.last.max(i);
            }
        }
    }
    for (v, node) in super::late::late_reads(graph) {
        if let Some(l) = &mut life[v.index()] {
            l.last = l.last.max(node);
        }
    }
    let at_end = graph
        .outputs
        .iter()
        .copied()
        .chain(graph.loss)
        .chain(graph.state.iter().filter_map(|s| s.update))
        .chain(keep.iter().copied());
    for v in at_end {
        if let Some(l) = &mut life[v.index()] {
            l.last = end;
        }
    }
    // Every alias names its root directly, so one pass extends each root
    // over all its aliases.
    for (v, s) in storage.iter().enumerate() {
        if let (Storage::Alias { of }, Some(alias)) = (s, life[v])
            && let Some(root) = &mut life[of.index()]
        {
            root.last = root.last.max(alias.last);
        }
    }
    life
}
