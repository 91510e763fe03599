//! Reverse mode: `grad(graph, loss, wrt)`.

use std::collections::{BTreeMap, BTreeSet};

use super::{prune, require_static};
use crate::ops::{Op, VjpCx};
use crate::{Builder, Error, Graph, NodeId, Result, ValueId, validate};

/// The joint graph: the original computation plus its gradients. Its
/// outputs are the loss followed by one gradient per `wrt`, in order.
#[derive(Debug, Clone)]
pub struct GradGraph {
    pub graph: Graph,
    pub loss: ValueId,
    /// (primal, gradient) per `wrt`, ids in `graph`.
    pub grads: Vec<(ValueId, ValueId)>,
}

/// Differentiates `loss` with respect to `wrt` (parameters, inputs or any
/// float value of `graph`).
pub fn grad(graph: &Graph, loss: ValueId, wrt: &[ValueId]) -> Result<GradGraph> {
    grad_with_seed(graph, loss, wrt, None)
}

/// As [`grad`], with backward seeded by a new f32 scalar graph input named
/// `seed` instead of 1: the gradients come out multiplied by it, the loss
/// does not (fp16 loss scaling).
pub fn grad_seeded(graph: &Graph, loss: ValueId, wrt: &[ValueId], seed: &str) -> Result<GradGraph> {
    grad_with_seed(graph, loss, wrt, Some(seed))
}

fn grad_with_seed(
    graph: &Graph,
    loss: ValueId,
    wrt: &[ValueId],
    seed: Option<&str>,
) -> Result<GradGraph> {
    require_static(graph, "grad")?;
    let loss_ty = graph.ty(loss);
    if loss_ty.shape.rank() != 0 || !loss_ty.dtype.is_float() {
        return Err(Error::InvalidValue {
            value: graph.name_of(loss).to_owned(),
            message: format!("grad needs a float scalar loss, found {loss_ty}"),
        });
    }
    for &w in wrt {
        if !graph.ty(w).dtype.is_float() {
            return Err(Error::InvalidValue {
                value: graph.name_of(w).to_owned(),
                message: format!(
                    "cannot differentiate with respect to a {} value",
                    graph.ty(w).dtype
                ),
            });
        }
    }
    let needs = needs_cotangent(graph, loss, wrt);
    let active: Vec<NodeId> = (0..graph.nodes.len() as u32)
        .map(NodeId)
        .filter(|&n| graph.node(n).outputs.iter().any(|o| needs[o.index()]))
        .collect();

    let original_values = graph.values.len();
    let mut b = Builder::from_graph(graph.clone());
    let mut cot = BTreeMap::new();
    let one = match seed {
        None => b.scalar_like(1.0, loss)?,
        Some(name) => {
            let s = b.input(
                name,
                crate::DType::F32,
                crate::Shape::scalar(),
                crate::InputRole::Data,
            )?;
            if loss_ty.dtype == crate::DType::F32 {
                s
            } else {
                b.cast(s, loss_ty.dtype)?
            }
        }
    };
    cot.insert(loss, one);
    backprop(&mut b, &active, &mut cot, &|v: ValueId| {
        v.index() < needs.len() && needs[v.index()]
    })?;

    let mut grads = Vec::with_capacity(wrt.len());
    let mut renamed = Vec::new();
    for &w in wrt {
        let g = match cot.get(&w) {
            Some(&g) => g,
            None => b.zeros_like(w)?,
        };
        if g.index() >= original_values && g != one && !renamed.contains(&g) {
            b.rename_unique(g, &format!("grad/{}", graph.name_of(w)));
            renamed.push(g);
        }
        grads.push((w, g));
    }
    let mut joint = b.into_graph();
    joint.outputs = std::iter::once(loss)
        .chain(grads.iter().map(|&(_, g)| g))
        .collect();
    joint.loss = Some(loss);
    let names: Vec<(String, String)> = grads
        .iter()
        .map(|&(w, g)| (joint.name_of(w).to_owned(), joint.name_of(g).to_owned()))
        .collect();
    let joint = prune(&joint);
    validate::validate(&joint)?;
    let find = |n: &str| joint.find(n).expect("pruning keeps outputs");
    let grads = names.iter().map(|(w, g)| (find(w), find(g))).collect();
    Ok(GradGraph {
        loss: find(graph.name_of(loss)),
        graph: joint,
        grads,
    })
}

/// Values that lie on a path from some `wrt` to `loss` and are float.
fn needs_cotangent(graph: &Graph, loss: ValueId, wrt: &[ValueId]) -> Vec<bool> {
    let n = graph.values.len();
    let mut from_wrt = vec![false; n];
    for &w in wrt {
        from_wrt[w.index()] = true;
    }
    for node in &graph.nodes {
        if node.inputs.iter().any(|i| from_wrt[i.index()]) {
            for &o in &node.outputs {
                from_wrt[o.index()] = true;
            }
        }
    }
    let mut to_loss = vec![false; n];
    to_loss[loss.index()] = true;
    for node in graph.nodes.iter().rev() {
        if node.outputs.iter().any(|o| to_loss[o.index()]) {
            for &i in &node.inputs {
                to_loss[i.index()] = true;
            }
        }
    }
    (0..n)
        .map(|i| from_wrt[i] && to_loss[i] && graph.values[i].ty.dtype.is_float())
        .collect()
}

/// Runs VJP rules over `nodes` in reverse, accumulating into `cot`.
/// `needs(v)` says whether input `v` wants a cotangent.
pub(crate) fn backprop(
    b: &mut Builder,
    nodes: &[NodeId],
    cot: &mut BTreeMap<ValueId, ValueId>,
    needs: &dyn Fn(ValueId) -> bool,
) -> Result<()> {
    for &n in nodes.iter().rev() {
        let node = b.graph().node(n).clone();
        let cotangents: Vec<Option<ValueId>> =
            node.outputs.iter().map(|o| cot.get(o).copied()).collect();
        if cotangents.iter().all(Option::is_none) {
            continue;
        }
        let wants: Vec<bool> = node.inputs.iter().map(|&i| needs(i)).collect();
        if !wants.contains(&true) {
            continue;
        }
        let saved_provenance = b.provenance().to_owned();
        b.set_provenance(&node.provenance);
        b.push_scope(&format!("bwd/{}", node.name));
        let result = node.op.vjp(&mut VjpCx {
            b,
            inputs: &node.inputs,
            outputs: &node.outputs,
            cotangents: &cotangents,
            wants: &wants,
        });
        let result = result.and_then(|input_cots| {
            accumulate(
                b,
                &node.op,
                &node.name,
                &node.inputs,
                &wants,
                input_cots,
                cot,
            )
        });
        b.pop_scope();
        b.set_provenance(&saved_provenance);
        result?;
    }
    Ok(())
}

/// Adds each input's new cotangent to what it already has.
fn accumulate(
    b: &mut Builder,
    op: &Op,
    node: &str,
    inputs: &[ValueId],
    wants: &[bool],
    input_cots: Vec<Option<ValueId>>,
    cot: &mut BTreeMap<ValueId, ValueId>,
) -> Result<()> {
    if input_cots.len() != inputs.len() {
        return Err(Error::Unsupported(format!(
            "VJP rule of {} at node '{node}' returned {} cotangents for {} inputs",
            op.name(),
            input_cots.len(),
            inputs.len()
        )));
    }
    for ((&input, c), &want) in inputs.iter().zip(input_cots).zip(wants) {
        let Some(c) = c else { continue };
        if !want {
            continue;
        }
        if b.ty(c) != b.ty(input) {
            return Err(Error::Unsupported(format!(
                "VJP rule of {} at node '{node}' gave a {} cotangent for input '{}' of type {}",
                op.name(),
                b.ty(c),
                b.graph().name_of(input),
                b.ty(input)
            )));
        }
        let total = match cot.get(&input) {
            Some(&prev) => b.add(prev, c)?,
            None => c,
        };
        cot.insert(input, total);
    }
    Ok(())
}

/// A VJP rule for fused ops: emit the op's decomposition and differentiate
/// that.
pub fn vjp_by_decomposition(op: &Op, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
    let (outs, nodes) = super::emit_decomposition(op, cx.b, cx.inputs)?;
    let mut cot = BTreeMap::new();
    for (&o, c) in outs.iter().zip(cx.cotangents) {
        if let Some(c) = c {
            cot.insert(o, *c);
        }
    }
    // Every float value the decomposition makes needs a cotangent, and so
    // do the inputs the caller wants.
    let mut needs: BTreeSet<ValueId> = nodes
        .iter()
        .flat_map(|&n| cx.b.graph().node(n).outputs.clone())
        .filter(|&v| cx.b.ty(v).dtype.is_float())
        .collect();
    let inputs = cx.inputs.to_vec();
    let wants = cx.wants.to_vec();
    needs.extend(
        inputs
            .iter()
            .zip(&wants)
            .filter(|(_, w)| **w)
            .map(|(&i, _)| i),
    );
    backprop(cx.b, &nodes, &mut cot, &|v| needs.contains(&v))?;
    Ok(inputs
        .iter()
        .zip(&wants)
        .map(|(i, &w)| if w { cot.get(i).copied() } else { None })
        .collect())
}
