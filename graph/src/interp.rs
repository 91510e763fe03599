//! The f64 reference interpreter: runs any bound graph slowly and exactly.
//!
//! Every value is held as f64 whatever its dtype (integers and booleans
//! exactly; 0.0 is false), so the interpreter is the oracle for gradient
//! checks and for the fast kernels of the backends. Each op's kernel lives
//! beside its rules in `ops/`; this module holds the tensor type, the
//! indexing helpers those kernels share, and the driver.

use std::collections::BTreeMap;

use crate::{Error, Graph, Result, ValueId, init};

/// A dense row-major f64 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn scalar(v: f64) -> Tensor {
        Tensor::new(Vec::new(), vec![v])
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::new(shape.to_vec(), vec![0.0; shape.iter().product()])
    }

    pub fn full(shape: &[usize], v: f64) -> Tensor {
        Tensor::new(shape.to_vec(), vec![v; shape.iter().product()])
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Applies `f` to every element.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Tensor {
        Tensor::new(
            self.shape.clone(),
            self.data.iter().map(|&x| f(x)).collect(),
        )
    }

    /// Sum of elementwise products.
    pub fn dot(&self, other: &Tensor) -> f64 {
        self.data.iter().zip(&other.data).map(|(a, b)| a * b).sum()
    }
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The multi-index of flat position `flat` in `shape`.
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for i in (0..shape.len()).rev() {
        if shape[i] > 0 {
            idx[i] = flat % shape[i];
            flat /= shape[i];
        }
    }
    idx
}

/// The flat position in a tensor of `shape` read when broadcasting it to an
/// output at multi-index `out_idx` (numpy rules, aligned at the right).
pub fn broadcast_offset(out_idx: &[usize], shape: &[usize]) -> usize {
    let lead = out_idx.len() - shape.len();
    let mut off = 0;
    for (i, &d) in shape.iter().enumerate() {
        let j = if d == 1 { 0 } else { out_idx[lead + i] };
        off = off * d + j;
    }
    off
}

/// The numpy broadcast of several shapes, or a message.
pub fn broadcast_all(shapes: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1; rank];
    for s in shapes {
        let lead = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[lead + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    Ok(out)
}

/// Evaluates `f` elementwise over the broadcast of `inputs`.
pub fn broadcast_map(
    inputs: &[&Tensor],
    f: impl Fn(&[f64]) -> f64,
) -> std::result::Result<Tensor, String> {
    let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape.as_slice()).collect();
    let out_shape = broadcast_all(&shapes)?;
    let n: usize = out_shape.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut args = vec![0.0; inputs.len()];
    for flat in 0..n {
        let idx = unravel(flat, &out_shape);
        for (a, t) in args.iter_mut().zip(inputs) {
            *a = t.data[broadcast_offset(&idx, &t.shape)];
        }
        data.push(f(&args));
    }
    Ok(Tensor::new(out_shape, data))
}

/// Where random ops draw from: the counter-based RNG is keyed on
/// (seed, step, rank, node key, element). `exact_float_casts` makes casts
/// between float types exact (no rounding), so a mixed-precision graph
/// computes the function of its f32 original: how the precision rewrite's
/// casts and their VJPs are checked against it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvalCx {
    pub seed: u64,
    pub step: u64,
    pub rank: u32,
    pub exact_float_casts: bool,
}

/// Runs a bound graph. `feeds` gives inputs by value; parameters and state
/// not fed are materialized from their initializers with `cx.seed`.
/// Returns every value computed (`None` for values never produced).
pub fn run(
    graph: &Graph,
    feeds: &BTreeMap<ValueId, Tensor>,
    cx: &EvalCx,
) -> Result<Vec<Option<Tensor>>> {
    if !graph.is_static() {
        return Err(Error::Eval(
            "the graph has an unbound batch dimension; bind it first".into(),
        ));
    }
    let mut env: Vec<Option<Tensor>> = vec![None; graph.values.len()];
    for (&v, t) in feeds {
        let want = graph.static_shape(v);
        if t.shape != want {
            return Err(Error::Eval(format!(
                "feed '{}': expected shape {want:?}, found {:?}",
                graph.name_of(v),
                t.shape
            )));
        }
        env[v.index()] = Some(t.clone());
    }
    for p in &graph.params {
        if env[p.value.index()].is_none() {
            env[p.value.index()] = Some(init::materialize(graph, p.value, &p.init, cx.seed)?);
        }
    }
    for s in &graph.state {
        if env[s.value.index()].is_none() {
            env[s.value.index()] = Some(init::materialize(graph, s.value, &s.init, cx.seed)?);
        }
    }
    for node in &graph.nodes {
        let args: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|&v| {
                env[v.index()].as_ref().ok_or_else(|| {
                    Error::Eval(format!(
                        "node '{}': input '{}' has no value (not fed?)",
                        node.name,
                        graph.name_of(v)
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let outs = node
            .op
            .eval(&args, cx)
            .map_err(|m| Error::Eval(format!("node '{}' ({}): {m}", node.name, node.op.name())))?;
        for (&v, t) in node.outputs.iter().zip(outs) {
            debug_assert_eq!(t.shape, graph.static_shape(v), "node '{}'", node.name);
            env[v.index()] = Some(t);
        }
    }
    Ok(env)
}

/// Runs a bound graph and returns its outputs in order.
pub fn run_outputs(
    graph: &Graph,
    feeds: &BTreeMap<ValueId, Tensor>,
    cx: &EvalCx,
) -> Result<Vec<Tensor>> {
    let env = run(graph, feeds, cx)?;
    graph
        .outputs
        .iter()
        .map(|&v| {
            env[v.index()].clone().ok_or_else(|| {
                Error::Eval(format!("output '{}' was not computed", graph.name_of(v)))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_offsets_follow_numpy() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(broadcast_offset(&[1, 2, 3], &[3, 1]), 2);
        assert_eq!(broadcast_all(&[&[2, 1], &[3]]).unwrap(), vec![2, 3]);
        assert!(broadcast_all(&[&[2], &[3]]).is_err());
    }
}
