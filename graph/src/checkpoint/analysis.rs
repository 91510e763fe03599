//! What the checkpoint rewrite needs to know about a joint graph: which
//! nodes are forward (ancestors of the loss) and which backward (the rest),
//! which forward values backward reads, which must be kept whatever the
//! policy, and the checkpoint boundaries that split the forward pass into
//! segments.
//!
//! A *boundary* is a forward value that backward reads and that is, at the
//! moment it is produced, the only forward value still needed by later
//! forward nodes (leaves and constants aside): everything after it flows
//! through it, so keeping it lets the rest of the forward pass be
//! recomputed from it alone. Boundaries split the forward nodes into
//! segments: segment `s < L` ends with the node producing boundary `s`,
//! segment `L` (the tail) ends with the loss.

use crate::autodiff::GradGraph;
use crate::ops::{Recompute, bytes};
use crate::{Graph, NodeId, ValueId};

/// Forward values this small are always kept (one cache line).
pub const TINY_BYTES: usize = 64;

/// The forward/backward structure of a joint graph.
#[derive(Debug, Clone)]
pub struct Structure {
    /// Per node: an ancestor of the loss (forward), else backward.
    pub forward: Vec<bool>,
    /// Per value: its producing node.
    pub producers: Vec<Option<NodeId>>,
    /// Per value: produced by a forward node.
    pub forward_value: Vec<bool>,
    /// Per value: a forward value some backward node reads.
    pub needed: Vec<bool>,
    /// Per value: a forward value every plan keeps: outputs of
    /// `Recompute::Never` ops, graph outputs, the loss, state updates,
    /// gradients, and values of at most [`TINY_BYTES`].
    pub forced: Vec<bool>,
    /// Per value: the last position of a forward node reading it (its
    /// producer's position when none does).
    pub last_forward_use: Vec<usize>,
    /// Per value: the first position of a backward node reading it
    /// (`usize::MAX` when none does).
    pub first_backward_use: Vec<usize>,
    /// Position of the first backward node (the node count when none).
    pub backward_start: usize,
    /// Checkpoint boundaries in forward order.
    pub boundaries: Vec<ValueId>,
    /// Forward node positions of each segment (`boundaries.len() + 1` of
    /// them), in order.
    pub segments: Vec<Vec<usize>>,
    /// Per value: the segment of its producer, if forward.
    pub segment_of: Vec<Option<usize>>,
}

impl Structure {
    pub fn of(joint: &GradGraph) -> Structure {
        let g = &joint.graph;
        let (nv, nn) = (g.values.len(), g.nodes.len());
        let producers = g.producers();
        let forward = ancestors_of(g, &producers, joint.loss);
        let mut forward_value = vec![false; nv];
        let mut forced = vec![false; nv];
        for (n, node) in g.nodes.iter().enumerate() {
            for &o in &node.outputs {
                forward_value[o.index()] = forward[n];
                forced[o.index()] = forward[n] && node.op.recompute() == Recompute::Never;
            }
        }
        let pinned = g
            .outputs
            .iter()
            .copied()
            .chain(std::iter::once(joint.loss))
            .chain(g.state.iter().filter_map(|s| s.update))
            .chain(joint.grads.iter().map(|&(_, gv)| gv));
        for v in pinned {
            forced[v.index()] |= forward_value[v.index()];
        }
        // Scalars and other tiny values (running loss terms, say) are
        // kept: recomputing them saves nothing, and leaving them out of the
        // frontier lets the big values around them form boundaries.
        for (v, f) in forced.iter_mut().enumerate() {
            if forward_value[v] && bytes(g.ty(ValueId(v as u32))) <= TINY_BYTES as u64 {
                *f = true;
            }
        }
        let mut needed = vec![false; nv];
        let mut last_forward_use: Vec<usize> = producers
            .iter()
            .map(|p| p.map_or(0, NodeId::index))
            .collect();
        let mut first_backward_use = vec![usize::MAX; nv];
        let mut backward_start = nn;
        for (n, node) in g.nodes.iter().enumerate() {
            if !forward[n] {
                backward_start = backward_start.min(n);
            }
            for &i in &node.inputs {
                if !forward_value[i.index()] {
                    continue;
                }
                if forward[n] {
                    last_forward_use[i.index()] = last_forward_use[i.index()].max(n);
                } else {
                    needed[i.index()] = true;
                    first_backward_use[i.index()] = first_backward_use[i.index()].min(n);
                }
            }
        }
        let mut s = Structure {
            forward,
            producers,
            forward_value,
            needed,
            forced,
            last_forward_use,
            first_backward_use,
            backward_start,
            boundaries: Vec::new(),
            segments: Vec::new(),
            segment_of: vec![None; nv],
        };
        s.split(g);
        s
    }

    /// Finds the boundaries and segments with one sweep over the forward
    /// nodes, counting the forward values still awaited by later forward
    /// nodes.
    fn split(&mut self, g: &Graph) {
        let mut open = 0usize;
        let mut closes_at = vec![0usize; g.nodes.len() + 1];
        let mut current = Vec::new();
        for (n, node) in g.nodes.iter().enumerate() {
            if !self.forward[n] {
                continue;
            }
            open -= closes_at[n];
            current.push(n);
            let mut opened = Vec::new();
            for &o in &node.outputs {
                self.segment_of[o.index()] = Some(self.boundaries.len());
                let last = self.last_forward_use[o.index()];
                // Constants are free to remake, and forced values are kept
                // anyway: neither pins a frontier.
                if last > n && !node.inputs.is_empty() && !self.forced[o.index()] {
                    open += 1;
                    closes_at[last] += 1;
                    opened.push(o);
                }
            }
            let cut = open == 1 && opened.len() == 1;
            if cut && self.needed[opened[0].index()] {
                self.boundaries.push(opened[0]);
                self.segments.push(std::mem::take(&mut current));
            }
        }
        self.segments.push(current);
    }

    /// The keep mask of the `none` policy: every forward value.
    pub fn keep_all(&self) -> Vec<bool> {
        self.forward_value.clone()
    }
}

/// Per node, whether it is an ancestor of (or produces) `target`.
fn ancestors_of(g: &Graph, producers: &[Option<NodeId>], target: ValueId) -> Vec<bool> {
    let mut marked = vec![false; g.nodes.len()];
    let mut stack = vec![target];
    let mut seen = vec![false; g.values.len()];
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut seen[v.index()], true) {
            continue;
        }
        if let Some(p) = producers[v.index()]
            && !std::mem::replace(&mut marked[p.index()], true)
        {
            stack.extend(g.node(p).inputs.iter().copied());
        }
    }
    marked
}
