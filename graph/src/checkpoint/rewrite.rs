//! The rewrite itself: given which forward values to keep, clone the
//! forward subgraph of every value backward needs but the plan does not
//! keep, right before its first backward use, and rewire backward to the
//! clones.
//!
//! Clones are made once per value and shared by every later backward
//! reader: the first backward use of anything in a recomputed stretch
//! recomputes the stretch (from kept values, leaves and backward values),
//! and each clone then lives until its own last backward use. Cloned nodes
//! keep the op, attributes (a Dropout's key, so the mask replays) and
//! provenance of their original, and are named `remat/{original}`. Value
//! ids of the joint graph are unchanged; clones are appended after them.

use super::analysis::Structure;
use crate::autodiff::GradGraph;
use crate::ops::Recompute;
use crate::{Builder, Error, NodeId, Result, ValueId, validate};

/// A rewritten joint graph and the nodes that recompute.
#[derive(Debug, Clone)]
pub struct Rewritten {
    pub joint: GradGraph,
    /// Positions (in the rewritten graph) of the cloned nodes.
    pub clones: Vec<usize>,
}

/// Rewrites `joint` so that only forward values with `keep[v]` (and forced
/// ones) are read by backward; see the module docs.
pub fn rewrite(joint: &GradGraph, s: &Structure, keep: &[bool]) -> Result<Rewritten> {
    let g = &joint.graph;
    debug_assert_eq!(keep.len(), g.values.len());
    let available =
        |v: ValueId| !s.forward_value[v.index()] || keep[v.index()] || s.forced[v.index()];
    let mut b = Builder::from_graph(g.clone());
    let mut clone_of: Vec<Option<ValueId>> = vec![None; g.values.len()];
    let mut order: Vec<NodeId> = Vec::with_capacity(g.nodes.len());
    let mut rewired: Vec<(usize, Vec<ValueId>)> = Vec::new();
    for (n, node) in g.nodes.iter().enumerate() {
        if s.forward[n] {
            order.push(NodeId(n as u32));
            continue;
        }
        let mut inputs = node.inputs.clone();
        let mut changed = false;
        for x in &mut inputs {
            if available(*x) {
                continue;
            }
            let c = materialize(&mut b, s, &available, &mut clone_of, &mut order, *x)?;
            *x = c;
            changed = true;
        }
        if changed {
            rewired.push((n, inputs));
        }
        order.push(NodeId(n as u32));
    }
    let mut graph = b.into_graph();
    for (n, inputs) in rewired {
        graph.nodes[n].inputs = inputs;
    }
    let mut nodes = Vec::with_capacity(order.len());
    let mut positions = Vec::new();
    for (pos, &id) in order.iter().enumerate() {
        if id.index() >= g.nodes.len() {
            positions.push(pos);
        }
        nodes.push(graph.nodes[id.index()].clone());
    }
    graph.nodes = nodes;
    validate::validate(&graph)?;
    Ok(Rewritten {
        joint: GradGraph {
            graph,
            loss: joint.loss,
            grads: joint.grads.clone(),
        },
        clones: positions,
    })
}

/// The clone of `target`, making it (and the clones it reads, in
/// dependency order) if it does not exist yet.
fn materialize(
    b: &mut Builder,
    s: &Structure,
    available: &dyn Fn(ValueId) -> bool,
    clone_of: &mut [Option<ValueId>],
    order: &mut Vec<NodeId>,
    target: ValueId,
) -> Result<ValueId> {
    // Depth-first, post-order, with an explicit stack: (value, expanded).
    let mut stack = vec![(target, false)];
    while let Some((v, expanded)) = stack.pop() {
        if clone_of[v.index()].is_some() {
            continue;
        }
        let p = s.producers[v.index()].expect("forward values have producers");
        let node = b.graph().node(p).clone();
        if node.op.recompute() == Recompute::Never {
            return Err(Error::Unsupported(format!(
                "checkpoint: '{}' ({}) may never be recomputed, but the plan drops its output '{}'",
                node.name,
                node.op.name(),
                b.graph().name_of(v)
            )));
        }
        let missing: Vec<ValueId> = node
            .inputs
            .iter()
            .copied()
            .filter(|&i| !available(i) && clone_of[i.index()].is_none())
            .collect();
        if !expanded && !missing.is_empty() {
            stack.push((v, true));
            stack.extend(missing.into_iter().map(|i| (i, false)));
            continue;
        }
        debug_assert!(missing.is_empty(), "inputs are cloned before their readers");
        let inputs: Vec<ValueId> = node
            .inputs
            .iter()
            .map(|&i| clone_of[i.index()].unwrap_or(i))
            .collect();
        let saved = b.provenance().to_owned();
        b.set_provenance(&node.provenance);
        let outs = b.named_node(&format!("remat/{}", node.name), node.op.clone(), &inputs);
        b.set_provenance(&saved);
        let outs = outs?;
        for (&o, &c) in node.outputs.iter().zip(&outs) {
            clone_of[o.index()] = Some(c);
        }
        let id = NodeId(b.graph().nodes.len() as u32 - 1);
        order.push(id);
    }
    Ok(clone_of[target.index()].expect("the target was cloned"))
}
