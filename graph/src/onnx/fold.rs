//! Constant evaluation at import.
//!
//! A node whose inputs are all constants is run once, here: its mapping is
//! emitted into a scratch graph (its constant inputs as frozen parameters)
//! and evaluated with the reference interpreter, so folding follows exactly
//! the semantics of the ops the node maps to. Mappings compute some results
//! directly on constants instead, with the helpers below: the integer
//! arithmetic of shape computations (the IR's arithmetic ops are
//! float-only) and the ops that only move entries (Concat, Gather, Slice),
//! which carry the batch marks of a constant made by `Shape` along.
//!
//! Nothing is folded whose scratch graph would hold more than
//! [`MAX_FOLD_ELEMENTS`] elements or take more than 2^28 FLOPs, or whose
//! result depends on the batch size; such nodes go into the graph.

use std::collections::BTreeMap;

use super::emit::{Consts, Emit};
use super::node::OnnxNode;
use super::ops;
use super::value::{Const, Val};
use crate::interp::{self, EvalCx, broadcast_all, broadcast_map, strides, unravel};
use crate::ops::unary::cast_value;
use crate::{Builder, DType, Result};

/// The most elements a folded computation may hold in all.
pub(crate) const MAX_FOLD_ELEMENTS: usize = 1 << 24;
/// The most FLOPs (by the ops' cost rules) a folded computation may take.
const MAX_FOLD_FLOPS: u64 = 1 << 28;

/// Runs `node` on its constant inputs, if all are constants; `None` when
/// the node must go into the graph.
pub(crate) fn try_fold(node: &OnnxNode<'_>, inputs: &[Val]) -> Result<Option<Vec<Val>>> {
    let all_const = inputs
        .iter()
        .all(|v| matches!(v, Val::Const(_) | Val::Absent));
    // Dropout draws a new mask at every step: never a constant.
    if !all_const || node.op() == "Dropout" {
        return Ok(None);
    }
    let mut b = Builder::new("fold");
    b.set_provenance(&node.name);
    b.push_scope(&node.name);
    let mut consts = Consts::default();
    let scope = Some(node.name.clone());
    let outs = ops::emit(&mut Emit::new(
        &mut b,
        node,
        inputs.to_vec(),
        &mut consts,
        scope,
    ))?;
    let graph = b.into_graph();
    let size: usize = graph
        .values
        .iter()
        .map(|v| v.ty.shape.numel_with_batch(1))
        .sum();
    if !graph.is_static() || size > MAX_FOLD_ELEMENTS || graph.flops() > MAX_FOLD_FLOPS {
        return Ok(None);
    }
    if !outs.iter().any(|v| matches!(v, Val::Value(_))) {
        return Ok(Some(outs));
    }
    let env = interp::run(&graph, &BTreeMap::new(), &EvalCx::default())
        .map_err(|e| node.invalid(format!("constant folding failed: {e}")))?;
    let folded = outs.into_iter().map(|v| match v {
        Val::Value(id) => match env.get(id.index()).cloned().flatten() {
            Some(t) => Ok(Val::Const(Const::from_tensor(graph.ty(id).dtype, t))),
            None => Err(node.invalid("constant folding computed no value for an output")),
        },
        other => Ok(other),
    });
    folded.collect::<Result<Vec<_>>>().map(Some)
}

/// `a op b` elementwise with broadcasting, for Add, Sub, Mul, Div and Pow
/// on constants of any numeric dtype (integer Div truncates toward zero).
pub(crate) fn arith(op: &str, a: &Const, b: &Const) -> std::result::Result<Const, String> {
    if a.dtype != b.dtype && op != "Pow" {
        return Err(format!(
            "input dtypes differ: {} and {}",
            a.type_text(),
            b.type_text()
        ));
    }
    let dtype = a.dtype;
    if dtype == DType::Bool {
        return Err(format!("{op} of bool values"));
    }
    let int = dtype.is_int();
    if int && op == "Div" && b.data.contains(&0.0) {
        return Err("integer division by zero".into());
    }
    let f = |x: &[f64]| match op {
        "Add" => x[0] + x[1],
        "Sub" => x[0] - x[1],
        "Mul" => x[0] * x[1],
        "Div" if int => (x[0] / x[1]).trunc(),
        "Div" => x[0] / x[1],
        _ => x[0].powf(x[1]),
    };
    fits(&broadcast_all(&[&a.shape, &b.shape])?)?;
    let t = broadcast_map(&[&a.tensor(), &b.tensor()], f)?;
    Ok(Const::from_tensor(dtype, t))
}

/// Elements of `c` picked by flat source index into a new shape; batch
/// marks follow their entries.
fn select(c: &Const, shape: Vec<usize>, src: &[usize]) -> Const {
    let data = src.iter().map(|&i| c.data[i]).collect();
    let batch = if c.has_batch() {
        src.iter().map(|&i| c.batch[i]).collect()
    } else {
        Vec::new()
    };
    Const {
        dtype: c.dtype,
        shape,
        data,
        batch,
    }
}

/// `(outer, dim, inner)`: the sizes before, at and after `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// ONNX Gather on a constant: `indices` (in range, non-negative) of shape
/// `index_shape` pick slices along `axis`.
pub(crate) fn gather(
    c: &Const,
    indices: &[usize],
    index_shape: &[usize],
    axis: usize,
) -> std::result::Result<Const, String> {
    let (outer, d, inner) = around(&c.shape, axis);
    let mut shape = c.shape[..axis].to_vec();
    shape.extend_from_slice(index_shape);
    shape.extend_from_slice(&c.shape[axis + 1..]);
    fits(&shape)?;
    let mut src = Vec::with_capacity(outer * indices.len() * inner);
    for o in 0..outer {
        for &j in indices {
            src.extend((0..inner).map(|k| (o * d + j) * inner + k));
        }
    }
    Ok(select(c, shape, &src))
}

/// Checks that a constant of `shape` is small enough to fold.
fn fits(shape: &[usize]) -> std::result::Result<(), String> {
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_FOLD_ELEMENTS);
    match n {
        Some(_) => Ok(()),
        None => Err(format!(
            "a constant of shape {shape:?} is too large to fold (over {MAX_FOLD_ELEMENTS} elements)"
        )),
    }
}

/// One axis of a slice: elements `start, start + step, ...`, `count` of
/// them (indices already clamped into range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub axis: usize,
    pub start: i64,
    pub step: i64,
    pub count: usize,
}

/// ONNX Slice on a constant, any steps.
pub(crate) fn slice(c: &Const, windows: &[Window]) -> Const {
    let mut shape = c.shape.clone();
    for w in windows {
        shape[w.axis] = w.count;
    }
    let in_strides = strides(&c.shape);
    let n: usize = shape.iter().product();
    let src: Vec<usize> = (0..n)
        .map(|flat| {
            let mut idx: Vec<i64> = unravel(flat, &shape).iter().map(|&i| i as i64).collect();
            for w in windows {
                idx[w.axis] = w.start + w.step * idx[w.axis];
            }
            idx.iter()
                .zip(&in_strides)
                .map(|(&i, &s)| i as usize * s)
                .sum()
        })
        .collect();
    select(c, shape, &src)
}

/// ONNX Concat of constants along `axis`.
pub(crate) fn concat(parts: &[&Const], axis: usize) -> std::result::Result<Const, String> {
    let first = parts.first().ok_or("no inputs")?;
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for (i, c) in parts.iter().enumerate() {
        let fits = c.dtype == first.dtype
            && c.shape.len() == first.shape.len()
            && (0..shape.len()).all(|j| j == axis || c.shape[j] == first.shape[j]);
        if !fits {
            return Err(format!(
                "input {i}: expected {} like input 0 except at axis {axis}, found {}",
                first.type_text(),
                c.type_text()
            ));
        }
        shape[axis] += c.shape[axis];
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Const {
        dtype: first.dtype,
        shape: Vec::new(),
        data: Vec::new(),
        batch: Vec::new(),
    };
    let any_batch = parts.iter().any(|c| c.has_batch());
    for o in 0..outer {
        for c in parts {
            let run = c.shape[axis] * inner;
            for k in o * run..(o + 1) * run {
                out.data.push(c.data[k]);
                if any_batch {
                    out.batch.push(c.is_batch(k));
                }
            }
        }
    }
    out.shape = shape;
    Ok(out)
}

/// `c` converted to `to` (entries standing for the batch stay so).
pub(crate) fn cast(c: &Const, to: DType) -> Const {
    Const {
        dtype: to,
        shape: c.shape.clone(),
        data: c.data.iter().map(|&x| cast_value(x, to)).collect(),
        batch: c.batch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_arithmetic_truncates_and_refuses_division_by_zero() {
        let a = Const::ints(&[7, -7, 6]);
        let b = Const::ints(&[2]);
        assert_eq!(arith("Div", &a, &b).unwrap().data, [3.0, -3.0, 3.0]);
        assert_eq!(arith("Mul", &a, &b).unwrap().data, [14.0, -14.0, 12.0]);
        assert!(arith("Div", &a, &Const::ints(&[0])).is_err());
        let f = Const::scalar(DType::F32, 0.5);
        assert!(arith("Add", &a, &f).unwrap_err().contains("differ"));
    }

    #[test]
    fn moving_ops_carry_the_batch_marks() {
        let shape = Const::of_dims(&[crate::Dim::Batch, crate::Dim::Fixed(3)]);
        let first = gather(&shape, &[0], &[], 0).unwrap();
        assert!(first.shape.is_empty() && first.is_batch(0));
        let tail = Const::ints(&[-1]);
        let joined = concat(&[&first_as_vector(&first), &tail], 0).unwrap();
        assert_eq!(joined.to_dims(), [None, Some(-1)]);
        let w = Window {
            axis: 0,
            start: 1,
            step: -1,
            count: 2,
        };
        assert_eq!(slice(&joined, &[w]).to_dims(), [Some(-1), None]);
        assert_eq!(cast(&joined, DType::I32).to_dims(), [None, Some(-1)]);
    }

    fn first_as_vector(c: &Const) -> Const {
        let mut v = c.clone();
        v.shape = vec![1];
        v
    }
}
