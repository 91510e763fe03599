//! Indexing ops:
//!
//! - `Gather {axis: int = 0}` (data, int indices): picks slices of `data`
//!   along `axis`; the output shape is
//!   `data[..axis] ++ indices.shape ++ data[axis+1..]` (embedding lookup).
//! - `ScatterAdd {axis: int = 0, size: int}` (updates, int indices): the
//!   transpose of Gather. Zeros of shape
//!   `updates[..axis] ++ [size] ++ updates[axis+indices.rank..]`, with each
//!   update slice added at its index, so repeated indices accumulate.
//! - `OneHot {depth: int, dtype: dtype}` (int indices `[...]`): `[..., depth]`
//!   of 0/1 in `dtype`; it has no gradient.
//!
//! Gather and ScatterAdd are linear in their first input and each other's
//! VJP; the indices never get a cotangent. At eval, an index outside
//! `[0, bound)` (negative ones included) is an error naming the index and the
//! bound.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, bytes, expect_arity, numel};
use crate::attr::{Attr, AttrReader};
use crate::interp::{EvalCx, Tensor};
use crate::shape::normalize_axis;
use crate::{Attrs, Error, Result, Shape, TensorType, ValueId};

use crate::DType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// `Gather(data, indices)`: output shape is
    /// `data[..axis] ++ indices ++ data[axis+1..]`.
    Gather { axis: i64 },
    /// `ScatterAdd(updates, indices)`: zeros with `size` along `axis`, and
    /// each update slice added at its index (repeats accumulate).
    ScatterAdd { axis: i64, size: usize },
    /// Int indices `[...]` to `[..., depth]` of 0/1 in `dtype`.
    OneHot { depth: usize, dtype: DType },
}

impl OpRules for Index {
    fn name(&self) -> &'static str {
        match self {
            Index::Gather { .. } => "Gather",
            Index::ScatterAdd { .. } => "ScatterAdd",
            Index::OneHot { .. } => "OneHot",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let mut r = AttrReader::new(attrs);
        let op = match name {
            "Gather" => r.int("axis", Some(0)).map(|axis| Index::Gather { axis }),
            "ScatterAdd" => parse_scatter(&mut r),
            "OneHot" => parse_one_hot(&mut r),
            _ => return None,
        };
        Some(op.and_then(|op| r.finish().map(|()| op)))
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        match *self {
            Index::Gather { axis } => {
                a.insert("axis".into(), Attr::Int(axis));
            }
            Index::ScatterAdd { axis, size } => {
                a.insert("axis".into(), Attr::Int(axis));
                a.insert("size".into(), Attr::Int(size as i64));
            }
            Index::OneHot { depth, dtype } => {
                a.insert("depth".into(), Attr::Int(depth as i64));
                a.insert("dtype".into(), Attr::DType(dtype));
            }
        }
        a
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        match *self {
            Index::Gather { axis } => {
                expect_arity(inputs, 2)?;
                expect_int(inputs, 1)?;
                let (data, idx) = (&inputs[0].shape, &inputs[1].shape);
                let ax =
                    normalize_axis(axis, data.rank()).ok_or_else(|| axis_error(axis, 0, data))?;
                let mut dims = data.dims()[..ax].to_vec();
                dims.extend_from_slice(idx.dims());
                dims.extend_from_slice(&data.dims()[ax + 1..]);
                Ok(vec![TensorType::new(inputs[0].dtype, Shape(dims))])
            }
            Index::ScatterAdd { axis, size } => {
                expect_arity(inputs, 2)?;
                expect_int(inputs, 1)?;
                if inputs[0].dtype == DType::Bool {
                    return Err("input 0: expected a numeric dtype, found bool".into());
                }
                let (upd, idx) = (&inputs[0].shape, &inputs[1].shape);
                let ax = scatter_axis(axis, upd.rank(), idx.rank())?;
                let window = &upd.dims()[ax..ax + idx.rank()];
                if window != idx.dims() {
                    return Err(format!(
                        "input 0: expected dims {ax}..{} to equal the indices shape {idx}, found {upd}",
                        ax + idx.rank()
                    ));
                }
                let mut dims = upd.dims()[..ax].to_vec();
                dims.push(crate::Dim::Fixed(size));
                dims.extend_from_slice(&upd.dims()[ax + idx.rank()..]);
                Ok(vec![TensorType::new(inputs[0].dtype, Shape(dims))])
            }
            Index::OneHot { depth, dtype } => {
                expect_arity(inputs, 1)?;
                expect_int(inputs, 0)?;
                let mut dims = inputs[0].shape.dims().to_vec();
                dims.push(crate::Dim::Fixed(depth));
                Ok(vec![TensorType::new(dtype, Shape(dims))])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let (x, indices) = match cx.inputs {
            [x, i] => (*x, *i),
            _ => return Ok(vec![None; cx.inputs.len()]),
        };
        if !cx.wants[0] || !cx.b.dtype(x).is_float() {
            return Ok(vec![None, None]);
        }
        let g = cx.cotangent(0)?;
        let c = match *self {
            Index::Gather { axis } => {
                let shape = cx.b.shape(x).clone();
                let ax = normalize_axis(axis, shape.rank())
                    .ok_or_else(|| Error::Unsupported(axis_error(axis, 0, &shape)))?;
                let size = shape.dims()[ax].fixed().ok_or_else(|| {
                    Error::Unsupported(format!(
                        "the VJP of Gather needs a fixed size along axis {ax} of {shape}"
                    ))
                })?;
                cx.b.scatter_add(g, indices, ax as i64, size)?
            }
            Index::ScatterAdd { axis, .. } => cx.b.gather(g, indices, axis)?,
            Index::OneHot { .. } => return Ok(vec![None; cx.inputs.len()]),
        };
        Ok(vec![Some(c), None])
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let t = match (self, cx.tangents.first().copied().flatten()) {
            (Index::OneHot { .. }, _) | (_, None) => return Ok(vec![None]),
            (_, Some(t)) => t,
        };
        let indices = cx.inputs[1];
        let out = match *self {
            Index::Gather { axis } => cx.b.gather(t, indices, axis)?,
            Index::ScatterAdd { axis, size } => cx.b.scatter_add(t, indices, axis, size)?,
            Index::OneHot { .. } => return Ok(vec![None]),
        };
        Ok(vec![Some(out)])
    }

    /// Gather: no FLOPs; bytes are the indices read plus the gathered rows
    /// read and written (2 × output bytes). ScatterAdd: one add per update
    /// element; every input and the output touched once. OneHot: no FLOPs,
    /// the indices read and the output written.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        let out_bytes: u64 = outputs.iter().map(|t| bytes(t)).sum();
        let in_bytes: u64 = inputs.iter().map(|t| bytes(t)).sum();
        match self {
            Index::Gather { .. } => Cost {
                flops: 0,
                bytes: inputs.get(1).map_or(0, |t| bytes(t)) + 2 * out_bytes,
            },
            Index::ScatterAdd { .. } => Cost {
                flops: inputs.first().map_or(0, |t| numel(t)),
                bytes: in_bytes + out_bytes,
            },
            Index::OneHot { .. } => Cost {
                flops: 0,
                bytes: in_bytes + out_bytes,
            },
        }
    }

    fn recompute(&self) -> Recompute {
        Recompute::Cheap
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        match (*self, inputs) {
            (Index::Gather { axis }, [data, idx]) => gather(axis, data, idx).map(|t| vec![t]),
            (Index::ScatterAdd { axis, size }, [upd, idx]) => {
                scatter_add(axis, size, upd, idx).map(|t| vec![t])
            }
            (Index::OneHot { depth, .. }, [idx]) => one_hot(depth, idx).map(|t| vec![t]),
            _ => Err(format!(
                "{}: wrong number of inputs ({})",
                self.name(),
                inputs.len()
            )),
        }
    }
}

fn parse_scatter(r: &mut AttrReader<'_>) -> std::result::Result<Index, String> {
    let axis = r.int("axis", Some(0))?;
    let size = r.int("size", None)?;
    let size = usize::try_from(size)
        .map_err(|_| format!("attribute 'size': expected a non-negative int, found {size}"))?;
    Ok(Index::ScatterAdd { axis, size })
}

fn parse_one_hot(r: &mut AttrReader<'_>) -> std::result::Result<Index, String> {
    let depth = r.int("depth", None)?;
    let dtype = r.dtype("dtype")?;
    let depth = usize::try_from(depth)
        .ok()
        .filter(|&d| d > 0)
        .ok_or_else(|| format!("attribute 'depth': expected a positive int, found {depth}"))?;
    Ok(Index::OneHot { depth, dtype })
}

/// Checks that input `i` has an integer dtype.
fn expect_int(inputs: &[&TensorType], i: usize) -> std::result::Result<(), String> {
    if inputs[i].dtype.is_int() {
        Ok(())
    } else {
        Err(format!(
            "input {i}: expected an int dtype (i32 or i64), found {}",
            inputs[i].dtype
        ))
    }
}

fn axis_error(axis: i64, input: usize, shape: &Shape) -> String {
    format!(
        "attribute 'axis': {axis} is out of range for input {input} of shape {shape} (rank {})",
        shape.rank()
    )
}

/// The output axis of a ScatterAdd: resolved against the output rank
/// `updates.rank - indices.rank + 1`.
fn scatter_axis(axis: i64, upd_rank: usize, idx_rank: usize) -> std::result::Result<usize, String> {
    if upd_rank < idx_rank {
        return Err(format!(
            "input 0: expected rank >= {idx_rank} (the rank of the indices), found rank {upd_rank}"
        ));
    }
    let out_rank = upd_rank - idx_rank + 1;
    let ax = normalize_axis(axis, out_rank).ok_or_else(|| {
        format!("attribute 'axis': {axis} is out of range for an output of rank {out_rank}")
    })?;
    Ok(ax)
}

/// An index value as a position in `[0, bound)`, or a message naming both.
fn check_index(v: f64, bound: usize, what: &str) -> std::result::Result<usize, String> {
    if v >= 0.0 && v < bound as f64 && v.fract() == 0.0 {
        Ok(v as usize)
    } else {
        Err(format!("{what} {v} is out of range [0, {bound})"))
    }
}

fn gather(axis: i64, data: &Tensor, idx: &Tensor) -> std::result::Result<Tensor, String> {
    let ax = normalize_axis(axis, data.rank()).ok_or_else(|| {
        format!(
            "axis {axis} is out of range for data of rank {}",
            data.rank()
        )
    })?;
    let n = data.shape[ax];
    let outer: usize = data.shape[..ax].iter().product();
    let inner: usize = data.shape[ax + 1..].iter().product();
    let what = format!("index along axis {ax}:");
    let rows: Vec<usize> = idx
        .data
        .iter()
        .map(|&v| check_index(v, n, &what))
        .collect::<std::result::Result<_, _>>()?;
    let mut out = Vec::with_capacity(outer * rows.len() * inner);
    for o in 0..outer {
        for &r in &rows {
            let base = (o * n + r) * inner;
            out.extend_from_slice(&data.data[base..base + inner]);
        }
    }
    let mut shape = data.shape[..ax].to_vec();
    shape.extend_from_slice(&idx.shape);
    shape.extend_from_slice(&data.shape[ax + 1..]);
    Ok(Tensor::new(shape, out))
}

fn scatter_add(
    axis: i64,
    size: usize,
    upd: &Tensor,
    idx: &Tensor,
) -> std::result::Result<Tensor, String> {
    let ax = scatter_axis(axis, upd.rank(), idx.rank())?;
    if upd.shape[ax..ax + idx.rank()] != idx.shape[..] {
        return Err(format!(
            "updates of shape {:?} do not hold indices of shape {:?} at axis {ax}",
            upd.shape, idx.shape
        ));
    }
    let outer: usize = upd.shape[..ax].iter().product();
    let inner: usize = upd.shape[ax + idx.rank()..].iter().product();
    let k = idx.numel();
    let what = format!("index along axis {ax}:");
    let rows: Vec<usize> = idx
        .data
        .iter()
        .map(|&v| check_index(v, size, &what))
        .collect::<std::result::Result<_, _>>()?;
    let mut out = vec![0.0; outer * size * inner];
    for o in 0..outer {
        for (j, &r) in rows.iter().enumerate() {
            let src = (o * k + j) * inner;
            let dst = (o * size + r) * inner;
            for i in 0..inner {
                out[dst + i] += upd.data[src + i];
            }
        }
    }
    let mut shape = upd.shape[..ax].to_vec();
    shape.push(size);
    shape.extend_from_slice(&upd.shape[ax + idx.rank()..]);
    Ok(Tensor::new(shape, out))
}

fn one_hot(depth: usize, idx: &Tensor) -> std::result::Result<Tensor, String> {
    let mut out = vec![0.0; idx.numel() * depth];
    for (j, &v) in idx.data.iter().enumerate() {
        let c = check_index(v, depth, "one-hot index")?;
        out[j * depth + c] = 1.0;
    }
    let mut shape = idx.shape.clone();
    shape.push(depth);
    Ok(Tensor::new(shape, out))
}

#[cfg(test)]
#[path = "tests/index.rs"]
mod tests;
