//! Forward mode: `jvp(graph, wrt)`.

use std::collections::BTreeMap;

use super::{prune, require_static};
use crate::ops::{JvpCx, Op};
use crate::{Builder, Error, Graph, InputRole, NodeId, Result, ValueId, validate};

/// A graph computing the original outputs and their tangents. For each
/// primal in `wrt` it has an input `tangent/{primal}` (role `Direction`);
/// its outputs are the original outputs followed by `tangent/{output}` for
/// each float output.
#[derive(Debug, Clone)]
pub struct JvpGraph {
    pub graph: Graph,
    /// (primal, tangent input) per `wrt`.
    pub tangents_in: Vec<(ValueId, ValueId)>,
    /// (output, its tangent) per float output of the original graph.
    pub tangents_out: Vec<(ValueId, ValueId)>,
}

impl JvpGraph {
    /// The tangent of an original output.
    pub fn tangent_of(&self, output: ValueId) -> Option<ValueId> {
        self.tangents_out
            .iter()
            .find(|(o, _)| *o == output)
            .map(|&(_, t)| t)
    }
}

/// Pushes tangents of `wrt` forward through `graph`.
pub fn jvp(graph: &Graph, wrt: &[ValueId]) -> Result<JvpGraph> {
    require_static(graph, "jvp")?;
    let mut b = Builder::from_graph(graph.clone());
    let mut tan = BTreeMap::new();
    let mut tangents_in = Vec::with_capacity(wrt.len());
    for &w in wrt {
        let ty = graph.ty(w).clone();
        if !ty.dtype.is_float() {
            return Err(Error::InvalidValue {
                value: graph.name_of(w).to_owned(),
                message: format!("cannot take a tangent of a {} value", ty.dtype),
            });
        }
        let name = b.fresh_name(&format!("tangent/{}", graph.name_of(w)));
        let t = b.input(&name, ty.dtype, ty.shape, InputRole::Direction)?;
        tan.insert(w, t);
        tangents_in.push((w, t));
    }
    let nodes: Vec<NodeId> = (0..graph.nodes.len() as u32).map(NodeId).collect();
    push_forward(&mut b, &nodes, &mut tan)?;

    let mut tangents_out = Vec::new();
    for &o in &graph.outputs {
        if !graph.ty(o).dtype.is_float() {
            continue;
        }
        let t = match tan.get(&o) {
            Some(&t) => t,
            None => b.zeros_like(o)?,
        };
        let t = if t.index() < graph.values.len() || tangents_out.iter().any(|&(_, x)| x == t) {
            t
        } else {
            b.rename_unique(t, &format!("tangent/{}", graph.name_of(o)));
            t
        };
        tangents_out.push((o, t));
    }
    let mut g = b.into_graph();
    g.outputs = graph
        .outputs
        .iter()
        .copied()
        .chain(tangents_out.iter().map(|&(_, t)| t))
        .collect();
    let names = |g: &Graph, pairs: &[(ValueId, ValueId)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(a, t)| (g.name_of(a).to_owned(), g.name_of(t).to_owned()))
            .collect()
    };
    let in_names = names(&g, &tangents_in);
    let out_names = names(&g, &tangents_out);
    let g = prune(&g);
    validate::validate(&g)?;
    let find = |pairs: Vec<(String, String)>| -> Vec<(ValueId, ValueId)> {
        pairs
            .iter()
            .map(|(a, t)| (g.find(a).expect("kept"), g.find(t).expect("kept")))
            .collect()
    };
    Ok(JvpGraph {
        tangents_in: find(in_names),
        tangents_out: find(out_names),
        graph: g.clone(),
    })
}

/// Runs JVP rules over `nodes` in order, filling `tan`.
pub(crate) fn push_forward(
    b: &mut Builder,
    nodes: &[NodeId],
    tan: &mut BTreeMap<ValueId, ValueId>,
) -> Result<()> {
    for &n in nodes {
        let node = b.graph().node(n).clone();
        let tangents: Vec<Option<ValueId>> = node
            .inputs
            .iter()
            .map(|i| tan.get(i).copied().filter(|_| b.ty(*i).dtype.is_float()))
            .collect();
        if tangents.iter().all(Option::is_none) {
            continue;
        }
        let saved = b.provenance().to_owned();
        b.set_provenance(&node.provenance);
        b.push_scope(&format!("fwd/{}", node.name));
        let result = node.op.jvp(&mut JvpCx {
            b,
            inputs: &node.inputs,
            outputs: &node.outputs,
            tangents: &tangents,
        });
        b.pop_scope();
        b.set_provenance(&saved);
        let outs = result?;
        if outs.len() != node.outputs.len() {
            return Err(Error::Unsupported(format!(
                "JVP rule of {} at node '{}' returned {} tangents for {} outputs",
                node.op.name(),
                node.name,
                outs.len(),
                node.outputs.len()
            )));
        }
        for (&o, t) in node.outputs.iter().zip(outs) {
            let Some(t) = t else { continue };
            if b.ty(t) != b.ty(o) {
                return Err(Error::Unsupported(format!(
                    "JVP rule of {} at node '{}' gave a {} tangent for output of type {}",
                    node.op.name(),
                    node.name,
                    b.ty(t),
                    b.ty(o)
                )));
            }
            tan.insert(o, t);
        }
    }
    Ok(())
}

/// A JVP rule for fused ops: emit the op's decomposition and push tangents
/// through it.
pub fn jvp_by_decomposition(op: &Op, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
    let (outs, nodes) = super::emit_decomposition(op, cx.b, cx.inputs)?;
    let mut tan = BTreeMap::new();
    for (&i, t) in cx.inputs.iter().zip(cx.tangents) {
        if let Some(t) = t {
            tan.insert(i, *t);
        }
    }
    push_forward(cx.b, &nodes, &mut tan)?;
    Ok(outs.iter().map(|o| tan.get(o).copied()).collect())
}
