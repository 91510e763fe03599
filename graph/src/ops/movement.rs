//! Layout and creation ops: Reshape {shape}, Transpose {perm}, Broadcast
//! {shape}, Concat {axis}, Slice {axis, start, end}, Pad {axis, before,
//! after} (zeros) and Constant {value, dtype} (a scalar).
//!
//! None of them computes anything, so their VJPs and JVPs are layout ops
//! again: Reshape back, the inverse Transpose, `sum_to` for Broadcast, one
//! Slice per Concat input, Pad for Slice and Slice for Pad.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, bytes, expect_arity};
use crate::interp::{EvalCx, Tensor, broadcast_offset, strides, unravel};
use crate::shape::{broadcasts_to, normalize_axis};
use crate::{Attr, AttrReader, Attrs, Dim, Error, Result, TensorType, ValueId};

use crate::{DType, Shape};

/// A result whose error is a message.
type Msg<T> = std::result::Result<T, String>;

#[derive(Debug, Clone, PartialEq)]
pub enum Movement {
    /// Same elements in a new shape; may hold the batch symbol.
    Reshape(Shape),
    /// Output axis `i` is input axis `perm[i]`.
    Transpose(Vec<usize>),
    /// numpy broadcast to `shape`.
    Broadcast(Shape),
    Concat {
        axis: i64,
    },
    /// Elements `start..end` of `axis`.
    Slice {
        axis: i64,
        start: usize,
        end: usize,
    },
    /// Zeros added before and after `axis`.
    Pad {
        axis: i64,
        before: usize,
        after: usize,
    },
    /// A scalar. Int dtypes hold the value truncated toward zero, bool holds
    /// `value != 0`; float dtypes hold it as given (the interpreter keeps
    /// float values in f64, as initializers do).
    Constant {
        value: f64,
        dtype: DType,
    },
}

/// Resolves `axis` against a rank, or names the problem.
fn axis_of(axis: i64, rank: usize) -> Msg<usize> {
    normalize_axis(axis, rank)
        .ok_or_else(|| format!("attribute 'axis': axis {axis} is out of range for rank {rank}"))
}

/// `axis` and two non-negative int attributes (Slice's and Pad's).
fn parse_window(r: &mut AttrReader<'_>, names: [&'static str; 2]) -> Msg<(i64, usize, usize)> {
    let axis = r.int("axis", None)?;
    let mut count = |name: &'static str| {
        let v = r.int(name, None)?;
        usize::try_from(v)
            .map_err(|_| format!("attribute '{name}': expected a non-negative int, found {v}"))
    };
    Ok((axis, count(names[0])?, count(names[1])?))
}

/// The value a constant of `dtype` holds.
fn constant_value(value: f64, dtype: DType) -> f64 {
    match dtype {
        DType::I32 | DType::I64 => value.trunc(),
        DType::Bool => f64::from(u8::from(value != 0.0)),
        DType::F32 | DType::F64 | DType::BF16 | DType::F16 => value,
    }
}

/// The fixed size of `axis` of a builder-side shape, for VJP rules that
/// need numbers.
fn fixed_dim(shape: &Shape, axis: i64, what: &str) -> Msg<usize> {
    let ax = axis_of(axis, shape.rank())?;
    shape.dims()[ax].fixed().ok_or_else(|| {
        format!("{what}: axis {ax} of {shape} is the batch dimension; bind the batch first")
    })
}

/// `(outer, dim, inner)`: the sizes before, at and after `axis`.
fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

impl Movement {
    fn infer_reshape(to: &Shape, x: &TensorType) -> Msg<TensorType> {
        let from = &x.shape;
        if from.batch_count() != to.batch_count() || from.fixed_product() != to.fixed_product() {
            return Err(format!(
                "input 0: cannot reshape {from} to {to}: element counts differ ({} vs {})",
                count_text(from),
                count_text(to)
            ));
        }
        Ok(TensorType::new(x.dtype, to.clone()))
    }

    fn infer_transpose(perm: &[usize], x: &TensorType) -> Msg<TensorType> {
        if perm.len() != x.shape.rank() {
            return Err(format!(
                "input 0: attribute 'perm' {perm:?} has {} entries, but the input shape {} has rank {}",
                perm.len(),
                x.shape,
                x.shape.rank()
            ));
        }
        let dims = perm.iter().map(|&p| x.shape.dims()[p]).collect();
        Ok(TensorType::new(x.dtype, Shape(dims)))
    }

    fn infer_concat(axis: i64, inputs: &[&TensorType]) -> Msg<TensorType> {
        let Some(first) = inputs.first() else {
            return Err("expects at least 1 input, found 0".into());
        };
        let rank = first.shape.rank();
        let ax = axis_of(axis, rank)?;
        let mut dims = first.shape.dims().to_vec();
        for (i, t) in inputs.iter().enumerate().skip(1) {
            if t.dtype != first.dtype {
                return Err(format!(
                    "input {i}: expected dtype {} (as input 0), found {}",
                    first.dtype, t.dtype
                ));
            }
            let same = t.shape.rank() == rank
                && (0..rank).all(|j| j == ax || t.shape.dims()[j] == first.shape.dims()[j]);
            if !same {
                return Err(format!(
                    "input {i}: expected a shape equal to input 0's {} except at axis {ax}, found {}",
                    first.shape, t.shape
                ));
            }
        }
        if inputs.len() > 1 {
            let mut total = 0;
            for (i, t) in inputs.iter().enumerate() {
                let d = t.shape.dims()[ax].fixed().ok_or_else(|| {
                    format!("input {i}: cannot concatenate along axis {ax} of {}: it is the batch dimension", t.shape)
                })?;
                total = usize::checked_add(total, d)
                    .ok_or_else(|| "concatenated dimension overflows".to_owned())?;
            }
            dims[ax] = Dim::Fixed(total);
        }
        Ok(TensorType::new(first.dtype, Shape(dims)))
    }

    /// Output type of Slice and Pad: `axis` of `x` resized by `f(dim)`; a
    /// batch axis may only be left as it is (`f` is the identity).
    fn infer_resize(
        &self,
        x: &TensorType,
        axis: i64,
        f: impl Fn(usize) -> Msg<usize>,
    ) -> Msg<TensorType> {
        let ax = axis_of(axis, x.shape.rank())?;
        let mut dims = x.shape.dims().to_vec();
        dims[ax] = match dims[ax] {
            Dim::Fixed(d) => Dim::Fixed(f(d)?),
            Dim::Batch if matches!(self, Movement::Pad { .. }) && f(0) == Ok(0) => Dim::Batch,
            Dim::Batch => {
                let (shape, name) = (&x.shape, self.name());
                return Err(format!(
                    "input 0: axis {ax} of {shape} is the batch dimension; {name} needs a fixed dimension"
                ));
            }
        };
        Ok(TensorType::new(x.dtype, Shape(dims)))
    }

    /// The VJP of the one-input layout ops: `g` moved back to `shape`.
    // `crate::Error` is large; this helper returns the builder's errors as is.
    #[allow(clippy::result_large_err)]
    fn layout_vjp(
        &self,
        b: &mut crate::Builder,
        g: ValueId,
        shape: Shape,
    ) -> Result<Option<ValueId>> {
        let dx = match self {
            Movement::Reshape(_) => b.reshape(g, shape)?,
            Movement::Transpose(perm) => {
                let mut inverse = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inverse[p] = i;
                }
                b.transpose(g, &inverse)?
            }
            Movement::Broadcast(_) => b.sum_to(g, &shape)?,
            Movement::Slice { axis, start, end } => {
                let d = fixed_dim(&shape, *axis, "Slice VJP").map_err(Error::Unsupported)?;
                b.pad(g, *axis, *start, d.saturating_sub(*end))?
            }
            Movement::Pad { axis, before, .. } => {
                let d = fixed_dim(&shape, *axis, "Pad VJP").map_err(Error::Unsupported)?;
                b.slice(g, *axis, *before, before + d)?
            }
            Movement::Concat { .. } | Movement::Constant { .. } => return Ok(None),
        };
        Ok(Some(dx))
    }
}

/// `batch·6` for `[batch, 2, 3]`, `6` for `[2, 3]`.
fn count_text(s: &Shape) -> String {
    let batch = "batch·".repeat(s.batch_count());
    format!("{batch}{}", s.fixed_product())
}

fn parse_perm(perm: Vec<i64>) -> Msg<Vec<usize>> {
    let n = perm.len();
    let mut seen = vec![false; n];
    let mut out = Vec::with_capacity(n);
    for &p in &perm {
        let i = usize::try_from(p).ok().filter(|&i| i < n);
        match i {
            Some(i) if !std::mem::replace(&mut seen[i], true) => out.push(i),
            _ => {
                return Err(format!(
                    "attribute 'perm': {perm:?} is not a permutation of 0..{n}"
                ));
            }
        }
    }
    Ok(out)
}

impl OpRules for Movement {
    fn name(&self) -> &'static str {
        match self {
            Movement::Reshape(_) => "Reshape",
            Movement::Transpose(_) => "Transpose",
            Movement::Broadcast(_) => "Broadcast",
            Movement::Concat { .. } => "Concat",
            Movement::Slice { .. } => "Slice",
            Movement::Pad { .. } => "Pad",
            Movement::Constant { .. } => "Constant",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<Msg<Self>> {
        let mut r = AttrReader::new(attrs);
        let op = match name {
            "Reshape" => r.shape("shape").map(Movement::Reshape),
            "Transpose" => r
                .ints("perm", None)
                .and_then(parse_perm)
                .map(Movement::Transpose),
            "Broadcast" => r.shape("shape").map(Movement::Broadcast),
            "Concat" => r.int("axis", None).map(|axis| Movement::Concat { axis }),
            "Slice" => parse_window(&mut r, ["start", "end"]).and_then(|(axis, start, end)| {
                if start > end {
                    return Err(format!(
                        "attributes 'start' and 'end': start {start} is after end {end}"
                    ));
                }
                Ok(Movement::Slice { axis, start, end })
            }),
            "Pad" => parse_window(&mut r, ["before", "after"]).map(|(axis, before, after)| {
                Movement::Pad {
                    axis,
                    before,
                    after,
                }
            }),
            "Constant" => r.float("value", None).and_then(|value| {
                let dtype = r.dtype("dtype")?;
                Ok(Movement::Constant { value, dtype })
            }),
            _ => return None,
        };
        Some(op.and_then(|op| r.finish().map(|()| op)))
    }

    fn attrs(&self) -> Attrs {
        let (axis, int) = (
            |a: &i64| ("axis", Attr::Int(*a)),
            |v: &usize| Attr::Int(*v as i64),
        );
        let pairs: Vec<(&str, Attr)> = match self {
            Movement::Reshape(s) | Movement::Broadcast(s) => {
                vec![("shape", Attr::Shape(s.clone()))]
            }
            Movement::Transpose(p) => {
                vec![("perm", Attr::Ints(p.iter().map(|&i| i as i64).collect()))]
            }
            Movement::Concat { axis: a } => vec![axis(a)],
            Movement::Slice {
                axis: a,
                start,
                end,
            } => vec![axis(a), ("start", int(start)), ("end", int(end))],
            Movement::Pad {
                axis: a,
                before: b,
                after: c,
            } => {
                vec![axis(a), ("before", int(b)), ("after", int(c))]
            }
            Movement::Constant { value, dtype } => {
                vec![
                    ("value", Attr::Float(*value)),
                    ("dtype", Attr::DType(*dtype)),
                ]
            }
        };
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn infer(&self, inputs: &[&TensorType]) -> Msg<Vec<TensorType>> {
        fn one<'a>(inputs: &[&'a TensorType]) -> Msg<&'a TensorType> {
            expect_arity(inputs, 1).map(|()| inputs[0])
        }
        let out = match self {
            Movement::Reshape(to) => Self::infer_reshape(to, one(inputs)?)?,
            Movement::Transpose(perm) => Self::infer_transpose(perm, one(inputs)?)?,
            Movement::Broadcast(to) => {
                let x = one(inputs)?;
                if !broadcasts_to(&x.shape, to) {
                    return Err(format!(
                        "input 0: expected a shape broadcastable to {to}, found {}",
                        x.shape
                    ));
                }
                TensorType::new(x.dtype, to.clone())
            }
            Movement::Concat { axis } => Self::infer_concat(*axis, inputs)?,
            Movement::Slice { axis, start, end } => {
                self.infer_resize(one(inputs)?, *axis, |d| {
                    if *start <= *end && *end <= d {
                        Ok(end - start)
                    } else {
                        Err(format!(
                            "input 0: slice {start}..{end} does not fit in a dimension of size {d}"
                        ))
                    }
                })?
            }
            Movement::Pad {
                axis,
                before,
                after,
            } => self.infer_resize(one(inputs)?, *axis, |d| {
                d.checked_add(*before)
                    .and_then(|d| d.checked_add(*after))
                    .ok_or_else(|| format!("pad {before} + {after} overflows the dimension {d}"))
            })?,
            Movement::Constant { dtype, .. } => {
                expect_arity(inputs, 0)?;
                TensorType::new(*dtype, Shape::scalar())
            }
        };
        Ok(vec![out])
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        if let Movement::Constant { .. } = self {
            return Ok(Vec::new());
        }
        if let Movement::Concat { axis } = self {
            return concat_vjp(*axis, cx);
        }
        let x = cx.inputs[0];
        if !cx.wants[0] || !cx.b.dtype(x).is_float() {
            return Ok(vec![None]);
        }
        let shape = cx.b.shape(x).clone();
        let g = cx.cotangent(0)?;
        Ok(vec![self.layout_vjp(cx.b, g, shape)?])
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let out = match self {
            Movement::Constant { .. } => None,
            Movement::Concat { axis } => {
                let mut ts = Vec::with_capacity(cx.inputs.len());
                for i in 0..cx.inputs.len() {
                    ts.push(cx.tangent(i)?);
                }
                Some(cx.b.concat(&ts, *axis)?)
            }
            _ => match cx.tangents.first().copied().flatten() {
                None => None,
                Some(t) => Some(cx.b.node1(crate::Op::Movement(self.clone()), &[t])?),
            },
        };
        Ok(vec![out])
    }

    /// No FLOPs (layout only); bytes: every input read and the output written
    /// once. A Constant writes its one scalar.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        Cost {
            flops: 0,
            bytes: inputs.iter().chain(outputs).map(|t| bytes(t)).sum(),
        }
    }

    fn recompute(&self) -> Recompute {
        Recompute::Cheap
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> Msg<Vec<Tensor>> {
        let want = match self {
            Movement::Constant { .. } => Some(0),
            Movement::Concat { .. } => None,
            _ => Some(1),
        };
        match want {
            Some(n) if inputs.len() != n => {
                return Err(format!("expects {n} input(s), found {}", inputs.len()));
            }
            None if inputs.is_empty() => return Err("expects at least 1 input, found 0".into()),
            _ => {}
        }
        let out = match self {
            Movement::Reshape(to) => eval_reshape(to, inputs[0])?,
            Movement::Transpose(perm) => eval_transpose(perm, inputs[0])?,
            Movement::Broadcast(to) => eval_broadcast(to, inputs[0])?,
            Movement::Concat { axis } => eval_concat(*axis, inputs)?,
            Movement::Slice { axis, start, end } => {
                eval_window(inputs[0], *axis, (*start, Some(*end)), (0, 0))?
            }
            Movement::Pad {
                axis,
                before: b,
                after: a,
            } => eval_window(inputs[0], *axis, (0, None), (*b, *a))?,
            Movement::Constant { value, dtype } => Tensor::scalar(constant_value(*value, *dtype)),
        };
        Ok(vec![out])
    }

    fn bind_batch(&self, batch: usize) -> Self {
        match self {
            Movement::Reshape(s) => Movement::Reshape(s.bind_batch(batch)),
            Movement::Broadcast(s) => Movement::Broadcast(s.bind_batch(batch)),
            other => other.clone(),
        }
    }
}

/// Concat's VJP: the slice of the cotangent that each input filled.
#[allow(clippy::result_large_err)] // returns the builder's (large) errors as is
fn concat_vjp(axis: i64, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
    let g = cx.cotangent(0)?;
    let mut out = Vec::with_capacity(cx.inputs.len());
    let mut offset = 0;
    for (i, &x) in cx.inputs.iter().enumerate() {
        let shape = cx.b.shape(x).clone();
        let d = match cx.inputs.len() {
            1 => 0,
            _ => fixed_dim(&shape, axis, "Concat VJP").map_err(Error::Unsupported)?,
        };
        let wanted = cx.wants[i] && cx.b.dtype(x).is_float();
        out.push(match (wanted, cx.inputs.len()) {
            (false, _) => None,
            (true, 1) => Some(g),
            (true, _) => Some(cx.b.slice(g, axis, offset, offset + d)?),
        });
        offset += d;
    }
    Ok(out)
}

fn static_target(to: &Shape) -> Msg<Vec<usize>> {
    to.to_static()
        .ok_or_else(|| format!("target shape {to} holds the batch symbol; bind the batch first"))
}

fn eval_reshape(to: &Shape, x: &Tensor) -> Msg<Tensor> {
    let shape = static_target(to)?;
    if shape.iter().product::<usize>() != x.numel() {
        return Err(format!(
            "cannot reshape {:?} to {shape:?}: element counts differ",
            x.shape
        ));
    }
    Ok(Tensor::new(shape, x.data.clone()))
}

fn eval_transpose(perm: &[usize], x: &Tensor) -> Msg<Tensor> {
    if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank()) {
        return Err(format!(
            "perm {perm:?} does not fit input shape {:?}",
            x.shape
        ));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let in_strides = strides(&x.shape);
    let data = (0..x.numel())
        .map(|flat| {
            let idx = unravel(flat, &shape);
            let off: usize = perm
                .iter()
                .zip(&idx)
                .map(|(&p, &i)| i * in_strides[p])
                .sum();
            x.data[off]
        })
        .collect();
    Ok(Tensor::new(shape, data))
}

fn eval_broadcast(to: &Shape, x: &Tensor) -> Msg<Tensor> {
    let shape = static_target(to)?;
    let lead = shape.len().checked_sub(x.rank());
    let fits = lead.is_some_and(|lead| {
        x.shape
            .iter()
            .enumerate()
            .all(|(i, &d)| d == 1 || d == shape[lead + i])
    });
    if !fits {
        return Err(format!("cannot broadcast {:?} to {shape:?}", x.shape));
    }
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|flat| x.data[broadcast_offset(&unravel(flat, &shape), &x.shape)])
        .collect();
    Ok(Tensor::new(shape, data))
}

fn eval_concat(axis: i64, inputs: &[&Tensor]) -> Msg<Tensor> {
    let first = inputs[0];
    let ax = axis_of(axis, first.rank())?;
    let mut shape = first.shape.clone();
    shape[ax] = 0;
    for (i, t) in inputs.iter().enumerate() {
        let same = t.rank() == first.rank()
            && (0..t.rank()).all(|j| j == ax || t.shape[j] == first.shape[j]);
        if !same {
            return Err(format!(
                "input {i}: shape {:?} does not match input 0's {:?}",
                t.shape, first.shape
            ));
        }
        shape[ax] += t.shape[ax];
    }
    let (outer, _, _) = split(&shape, ax);
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for t in inputs {
            let (_, d, inner) = split(&t.shape, ax);
            data.extend_from_slice(&t.data[o * d * inner..(o + 1) * d * inner]);
        }
    }
    Ok(Tensor::new(shape, data))
}

/// Slice and Pad: `before` zeros, elements `start..end` of `axis`, `after` zeros.
fn eval_window(
    x: &Tensor,
    axis: i64,
    range: (usize, Option<usize>),
    pads: (usize, usize),
) -> Msg<Tensor> {
    let ax = axis_of(axis, x.rank())?;
    let (outer, d, inner) = split(&x.shape, ax);
    let (start, end) = (range.0, range.1.unwrap_or(d));
    if start > end || end > d {
        return Err(format!(
            "slice {start}..{end} does not fit axis {ax} of size {d}"
        ));
    }
    let (before, after) = pads;
    let mut shape = x.shape.clone();
    shape[ax] = before + (end - start) + after;
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        data.extend(std::iter::repeat_n(0.0, before * inner));
        data.extend_from_slice(&x.data[(o * d + start) * inner..(o * d + end) * inner]);
        data.extend(std::iter::repeat_n(0.0, after * inner));
    }
    Ok(Tensor::new(shape, data))
}

#[cfg(test)]
#[path = "tests/movement.rs"]
mod tests;
