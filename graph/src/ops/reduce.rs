//! Reductions over axes: ReduceSum, ReduceMean, ReduceMax
//! ({axes: ints, keep_dims: bool = false}).
//!
//! Sum and Max accept float and int inputs; Mean only floats. ReduceMax's VJP
//! splits the cotangent equally among tied maxima, as JAX does.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, bytes, expect_arity, numel};
use crate::interp::{EvalCx, Tensor, strides, unravel};
use crate::shape::normalize_axis;
use crate::{Attr, AttrReader, Attrs, Dim, Error, Result, Shape, TensorType, ValueId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
}

impl ReduceKind {
    fn name(self) -> &'static str {
        match self {
            ReduceKind::Sum => "ReduceSum",
            ReduceKind::Mean => "ReduceMean",
            ReduceKind::Max => "ReduceMax",
        }
    }
}

/// Reduces `axes` (negative counts from the end) of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reduce {
    pub kind: ReduceKind,
    pub axes: Vec<i64>,
    pub keep_dims: bool,
}

impl Reduce {
    /// For each axis of a rank-`rank` input, whether it is reduced; or a
    /// message for an axis out of range or named twice.
    fn reduced(&self, rank: usize) -> std::result::Result<Vec<bool>, String> {
        let mut reduced = vec![false; rank];
        for &a in &self.axes {
            let i = normalize_axis(a, rank).ok_or_else(|| {
                format!("attribute 'axes': axis {a} is out of range for input 0 of rank {rank}")
            })?;
            if std::mem::replace(&mut reduced[i], true) {
                return Err(format!(
                    "attribute 'axes': axis {i} appears twice in {:?} (rank {rank})",
                    self.axes
                ));
            }
        }
        Ok(reduced)
    }

    /// The input shape with reduced axes set to 1.
    fn keep_shape(shape: &Shape, reduced: &[bool]) -> Shape {
        Shape(
            shape
                .dims()
                .iter()
                .zip(reduced)
                .map(|(&d, &r)| if r { Dim::Fixed(1) } else { d })
                .collect(),
        )
    }

    /// `mask / count`, shaped like `x`: 1/k at each of the k tied maxima of
    /// every reduced slice, 0 elsewhere.
    // `crate::Error` is large; this helper returns the builder's errors as is.
    #[allow(clippy::result_large_err)]
    fn max_weights(&self, b: &mut crate::Builder, x: ValueId, y: ValueId) -> Result<ValueId> {
        let shape = b.shape(x).clone();
        let reduced = self.reduced(shape.rank()).map_err(Error::Unsupported)?;
        let y_keep = b.reshape(y, Self::keep_shape(&shape, &reduced))?;
        let y_full = b.broadcast(y_keep, shape)?;
        let hit = b.equal(x, y_full)?;
        let mask = b.cast(hit, b.dtype(x))?;
        let count = b.sum(mask, &self.axes, true)?;
        b.div(mask, count)
    }

    /// Number of elements each output reduces, for Mean's VJP; the batch
    /// symbol among reduced axes is an error.
    fn count(&self, shape: &Shape, reduced: &[bool]) -> std::result::Result<usize, String> {
        let mut count = 1;
        for (i, (&d, &r)) in shape.dims().iter().zip(reduced).enumerate() {
            match (r, d) {
                (false, _) => {}
                (true, Dim::Fixed(n)) => count *= n,
                (true, Dim::Batch) => {
                    return Err(format!(
                        "ReduceMean VJP: reduced axis {i} of {shape} is the batch dimension; bind the batch first"
                    ));
                }
            }
        }
        Ok(count)
    }
}

impl OpRules for Reduce {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let kind = [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max]
            .into_iter()
            .find(|k| k.name() == name)?;
        let parse = || {
            let mut r = AttrReader::new(attrs);
            let axes = r.ints("axes", None)?;
            let keep_dims = r.boolean("keep_dims", Some(false))?;
            r.finish()?;
            for (i, a) in axes.iter().enumerate() {
                if axes[..i].contains(a) {
                    return Err(format!(
                        "attribute 'axes': axis {a} appears twice in {axes:?}"
                    ));
                }
            }
            Ok(Reduce {
                kind,
                axes,
                keep_dims,
            })
        };
        Some(parse())
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axes".into(), Attr::Ints(self.axes.clone()));
        a.insert("keep_dims".into(), Attr::Bool(self.keep_dims));
        a
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        let ok = match self.kind {
            ReduceKind::Mean => x.dtype.is_float(),
            ReduceKind::Sum | ReduceKind::Max => x.dtype.is_float() || x.dtype.is_int(),
        };
        if !ok {
            let want = match self.kind {
                ReduceKind::Mean => "a floating-point dtype",
                _ => "a floating-point or integer dtype",
            };
            return Err(format!("input 0: expected {want}, found {}", x.dtype));
        }
        let reduced = self.reduced(x.shape.rank())?;
        let dims = x.shape.dims().iter().zip(&reduced);
        let out = if self.keep_dims {
            Self::keep_shape(&x.shape, &reduced)
        } else {
            Shape(dims.filter(|(_, r)| !**r).map(|(d, _)| *d).collect())
        };
        Ok(vec![TensorType::new(x.dtype, out)])
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let x = cx.inputs[0];
        if !cx.wants[0] || !cx.b.dtype(x).is_float() {
            return Ok(vec![None]);
        }
        let shape = cx.b.shape(x).clone();
        let reduced = self.reduced(shape.rank()).map_err(Error::Unsupported)?;
        let g = cx.cotangent(0)?;
        let g = cx.b.reshape(g, Self::keep_shape(&shape, &reduced))?;
        let dx = match self.kind {
            ReduceKind::Sum => cx.b.broadcast(g, shape)?,
            ReduceKind::Mean => {
                let count = self.count(&shape, &reduced).map_err(Error::Unsupported)?;
                let g = cx.b.scale(g, 1.0 / count as f64)?;
                cx.b.broadcast(g, shape)?
            }
            ReduceKind::Max => {
                let w = self.max_weights(cx.b, x, cx.outputs[0])?;
                cx.b.mul(w, g)?
            }
        };
        Ok(vec![Some(dx)])
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let Some(t) = cx.tangents[0] else {
            return Ok(vec![None]);
        };
        let out = match self.kind {
            ReduceKind::Sum | ReduceKind::Mean => {
                cx.b.reduce(self.kind, t, &self.axes, self.keep_dims)?
            }
            ReduceKind::Max => {
                let w = self.max_weights(cx.b, cx.inputs[0], cx.outputs[0])?;
                let tw = cx.b.mul(t, w)?;
                cx.b.sum(tw, &self.axes, self.keep_dims)?
            }
        };
        Ok(vec![Some(out)])
    }

    /// FLOPs: one add or compare per input element (plus one divide per
    /// output for Mean). Bytes: the input read and the output written once.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        let ins: u64 = inputs.iter().map(|t| numel(t)).sum();
        let outs: u64 = outputs.iter().map(|t| numel(t)).sum();
        let flops = match self.kind {
            ReduceKind::Mean => ins + outs,
            ReduceKind::Sum | ReduceKind::Max => ins,
        };
        Cost {
            flops,
            bytes: inputs.iter().chain(outputs).map(|t| bytes(t)).sum(),
        }
    }

    fn recompute(&self) -> Recompute {
        Recompute::Cheap
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        let [x] = inputs else {
            return Err(format!("expects 1 input, found {}", inputs.len()));
        };
        let reduced = self.reduced(x.rank())?;
        let keep: Vec<usize> = x
            .shape
            .iter()
            .zip(&reduced)
            .map(|(&d, &r)| if r { 1 } else { d })
            .collect();
        let keep_strides = strides(&keep);
        let n_out: usize = keep.iter().product();
        let count = x.numel().checked_div(n_out).unwrap_or(0);
        if self.kind == ReduceKind::Max && count == 0 && n_out > 0 {
            return Err(format!(
                "ReduceMax over an empty axis of shape {:?}",
                x.shape
            ));
        }
        let init = match self.kind {
            ReduceKind::Max => f64::NEG_INFINITY,
            ReduceKind::Sum | ReduceKind::Mean => 0.0,
        };
        let mut acc = vec![init; n_out];
        for (flat, &v) in x.data.iter().enumerate() {
            let idx = unravel(flat, &x.shape);
            let o: usize = idx
                .iter()
                .zip(&reduced)
                .zip(&keep_strides)
                .map(|((&i, &r), &s)| if r { 0 } else { i * s })
                .sum();
            let a = &mut acc[o];
            match self.kind {
                ReduceKind::Sum | ReduceKind::Mean => *a += v,
                // NaN propagates, as in numpy.
                ReduceKind::Max if !a.is_nan() && (v.is_nan() || v > *a) => *a = v,
                ReduceKind::Max => {}
            }
        }
        if self.kind == ReduceKind::Mean {
            acc.iter_mut().for_each(|a| *a /= count as f64);
        }
        let shape = if self.keep_dims {
            keep
        } else {
            x.shape
                .iter()
                .zip(&reduced)
                .filter(|(_, r)| !**r)
                .map(|(d, _)| *d)
                .collect()
        };
        Ok(vec![Tensor::new(shape, acc)])
    }
}

#[cfg(test)]
#[path = "tests/reduce.rs"]
mod tests;
