//! Autodiff as graph transforms.
//!
//! - [`grad`]: reverse mode. Visits only nodes between `wrt` and the loss,
//!   sums the cotangents of values used more than once, and returns one graph
//!   computing the loss and the gradients. VJP rules reduce broadcasts once,
//!   at the edge where the broadcast happened.
//! - [`jvp`]: forward mode. Returns a graph with one tangent input per
//!   primal and the tangent of every output.
//! - [`hvp`]: Hessian-vector products as `jvp` of `grad`: nothing is
//!   detached, so transforms compose to any order.
//!
//! Both passes emit nodes through a [`crate::Builder`]; fused ops without
//! rules of their own are differentiated through their decomposition
//! ([`vjp_by_decomposition`], [`jvp_by_decomposition`]). Results are pruned
//! of dead nodes and validated.

mod forward;
mod prune;
mod reverse;

pub use forward::{JvpGraph, jvp, jvp_by_decomposition};
pub use prune::prune;
pub use reverse::{GradGraph, grad, grad_seeded, vjp_by_decomposition};

use crate::{Graph, Result, ValueId};

/// A graph computing Hessian-vector products: inputs `direction/{p}` (one
/// per parameter in `wrt`), outputs `H·v` per parameter, in `wrt` order.
#[derive(Debug, Clone)]
pub struct HvpGraph {
    pub graph: Graph,
    pub directions: Vec<ValueId>,
    pub products: Vec<ValueId>,
}

/// Hessian-vector products of `loss` with respect to `wrt`, as forward mode
/// over the reverse-mode gradient graph.
pub fn hvp(graph: &Graph, loss: ValueId, wrt: &[ValueId]) -> Result<HvpGraph> {
    let g = grad(graph, loss, wrt)?;
    let primals: Vec<ValueId> = wrt
        .iter()
        .map(|&w| {
            g.graph
                .find(graph.name_of(w))
                .expect("grad keeps primal names")
        })
        .collect();
    let j = jvp(&g.graph, &primals)?;
    let products = g
        .grads
        .iter()
        .map(|&(_, gv)| {
            let name = g.graph.name_of(gv);
            let in_j = j.graph.find(name).expect("jvp keeps primal names");
            j.tangent_of(in_j)
                .expect("every gradient output has a tangent")
        })
        .collect();
    let mut graph = j.graph.clone();
    graph.outputs = products;
    let graph = prune(&graph);
    let directions = j
        .tangents_in
        .iter()
        .map(|&(_, t)| {
            graph
                .find(j.graph.name_of(t))
                .expect("directions are inputs")
        })
        .collect();
    let products = graph.outputs.clone();
    Ok(HvpGraph {
        graph,
        directions,
        products,
    })
}

/// Appends `op`'s decomposition to the builder; returns its outputs and the
/// nodes it emitted, in order.
fn emit_decomposition(
    op: &crate::Op,
    b: &mut crate::Builder,
    inputs: &[ValueId],
) -> Result<(Vec<ValueId>, Vec<crate::NodeId>)> {
    let start = b.graph().nodes.len() as u32;
    let outs = op.decompose(b, inputs).unwrap_or_else(|| {
        Err(crate::Error::Unsupported(format!(
            "{} has no decomposition",
            op.name()
        )))
    })?;
    let end = b.graph().nodes.len() as u32;
    Ok((outs, (start..end).map(crate::NodeId).collect()))
}

/// Message for transforms that need numbers in every shape.
pub(crate) fn require_static(graph: &Graph, what: &str) -> Result<()> {
    if graph.is_static() {
        Ok(())
    } else {
        Err(crate::Error::Unsupported(format!(
            "{what} needs static shapes: graph '{}' has an unbound batch dimension (bind it with Graph::bind_batch)",
            graph.name
        )))
    }
}
