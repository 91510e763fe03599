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
mod tests {
    use super::*;
    use crate::ops::matmul::fd::FdCheck;
    use crate::{DType, Op};

    fn op(kind: ReduceKind, axes: &[i64], keep_dims: bool) -> Reduce {
        Reduce {
            kind,
            axes: axes.to_vec(),
            keep_dims,
        }
    }
    fn run(r: &Reduce, x: &Tensor) -> std::result::Result<Tensor, String> {
        r.eval(&[x], &EvalCx::default()).map(|mut v| v.remove(0))
    }
    fn x23() -> Tensor {
        Tensor::new(vec![2, 3], vec![1.0, 5.0, 3.0, 4.0, 2.0, 6.0])
    }

    #[test]
    fn eval_sum_mean_max() {
        let x = x23();
        let s = run(&op(ReduceKind::Sum, &[1], false), &x).unwrap();
        assert_eq!((s.shape.clone(), s.data), (vec![2], vec![9.0, 12.0]));
        let s = run(&op(ReduceKind::Sum, &[0], true), &x).unwrap();
        assert_eq!((s.shape.clone(), s.data), (vec![1, 3], vec![5.0, 7.0, 9.0]));
        let m = run(&op(ReduceKind::Mean, &[-1], true), &x).unwrap();
        assert_eq!((m.shape.clone(), m.data), (vec![2, 1], vec![3.0, 4.0]));
        let m = run(&op(ReduceKind::Max, &[0, 1], false), &x).unwrap();
        assert_eq!((m.shape.clone(), m.data), (vec![], vec![6.0]));
        let m = run(&op(ReduceKind::Max, &[0], false), &x).unwrap();
        assert_eq!(m.data, vec![4.0, 5.0, 6.0]);
        // No axes: the identity.
        assert_eq!(run(&op(ReduceKind::Sum, &[], false), &x).unwrap(), x);
        // Middle axis of a rank-3 tensor.
        let y = Tensor::new(vec![2, 2, 2], (0..8).map(f64::from).collect());
        assert_eq!(
            run(&op(ReduceKind::Sum, &[1], false), &y).unwrap().data,
            vec![2.0, 4.0, 10.0, 12.0]
        );
    }

    #[test]
    fn eval_max_propagates_nan_and_rejects_empty_axes() {
        let x = Tensor::new(vec![3], vec![1.0, f64::NAN, 2.0]);
        assert!(run(&op(ReduceKind::Max, &[0], false), &x).unwrap().data[0].is_nan());
        let empty = Tensor::zeros(&[2, 0]);
        assert!(
            run(&op(ReduceKind::Max, &[1], false), &empty)
                .unwrap_err()
                .contains("empty")
        );
        assert_eq!(
            run(&op(ReduceKind::Sum, &[1], false), &empty).unwrap().data,
            vec![0.0, 0.0]
        );
        assert!(run(&op(ReduceKind::Sum, &[2], false), &x23()).is_err());
    }

    #[test]
    fn infer_shapes_with_negative_axes_and_batch_symbol() {
        let x = TensorType::new(
            DType::F32,
            Shape(vec![Dim::Batch, Dim::Fixed(4), Dim::Fixed(5)]),
        );
        let out = op(ReduceKind::Mean, &[-1], false).infer(&[&x]).unwrap();
        assert_eq!(out[0].shape, Shape(vec![Dim::Batch, Dim::Fixed(4)]));
        let out = op(ReduceKind::Sum, &[0, 2], true).infer(&[&x]).unwrap();
        assert_eq!(out[0].shape, Shape::of(&[1, 4, 1]));
        let out = op(ReduceKind::Max, &[0, 1, 2], false).infer(&[&x]).unwrap();
        assert_eq!(out[0], TensorType::new(DType::F32, Shape::scalar()));
        let ints = TensorType::new(DType::I64, Shape::of(&[3]));
        assert_eq!(
            op(ReduceKind::Sum, &[0], false).infer(&[&ints]).unwrap()[0].dtype,
            DType::I64
        );
        assert!(op(ReduceKind::Max, &[0], false).infer(&[&ints]).is_ok());
    }

    #[test]
    fn infer_errors_name_the_problem() {
        let x = TensorType::new(DType::F32, Shape::of(&[2, 3]));
        let err = op(ReduceKind::Sum, &[2], false).infer(&[&x]).unwrap_err();
        assert!(
            err.contains("axes") && err.contains("out of range") && err.contains('2'),
            "{err}"
        );
        let err = op(ReduceKind::Sum, &[1, -1], false)
            .infer(&[&x])
            .unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let ints = TensorType::new(DType::I32, Shape::of(&[3]));
        let err = op(ReduceKind::Mean, &[0], false)
            .infer(&[&ints])
            .unwrap_err();
        assert!(err.contains("input 0") && err.contains("i32"), "{err}");
        let bools = TensorType::new(DType::Bool, Shape::of(&[3]));
        assert!(op(ReduceKind::Sum, &[0], false).infer(&[&bools]).is_err());
        assert!(op(ReduceKind::Sum, &[0], false).infer(&[&x, &x]).is_err());
    }

    #[test]
    fn attrs_round_trip_and_parse_errors() {
        for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
            let r = op(kind, &[0, -1], true);
            assert_eq!(Reduce::parse(r.name(), &r.attrs()), Some(Ok(r.clone())));
            assert_eq!(Op::parse(r.name(), &r.attrs()), Ok(Some(Op::Reduce(r))));
        }
        assert!(Reduce::parse("Reduce", &Attrs::new()).is_none());
        let err = Reduce::parse("ReduceSum", &Attrs::new())
            .unwrap()
            .unwrap_err();
        assert!(err.contains("axes") && err.contains("required"), "{err}");
        let mut a = Attrs::new();
        a.insert("axes".into(), Attr::Ints(vec![1, 1]));
        assert!(
            Reduce::parse("ReduceSum", &a)
                .unwrap()
                .unwrap_err()
                .contains("twice")
        );
        a.insert("axes".into(), Attr::Int(1));
        assert_eq!(
            Reduce::parse("ReduceMax", &a),
            Some(Ok(op(ReduceKind::Max, &[1], false)))
        );
        a.insert("keepdims".into(), Attr::Bool(true));
        assert!(
            Reduce::parse("ReduceMax", &a)
                .unwrap()
                .unwrap_err()
                .contains("keepdims")
        );
    }

    #[test]
    fn cost_counts_input_elements() {
        let x = TensorType::new(DType::F32, Shape::of(&[4, 8]));
        let r = op(ReduceKind::Mean, &[1], false);
        let y = r.infer(&[&x]).unwrap().remove(0);
        assert_eq!(
            r.cost(&[&x], &[&y]),
            Cost {
                flops: 36,
                bytes: 4 * 36
            }
        );
        assert_eq!(r.recompute(), Recompute::Cheap);
    }

    #[test]
    fn sum_vjp_and_jvp_match_finite_differences() {
        for keep in [false, true] {
            let check = FdCheck::new(&[&[2, 3, 4]], move |b, x| {
                b.sum(x[0], &[0, -1], keep).unwrap()
            });
            check.vjp(&[0]);
            check.jvp(&[0]);
        }
    }

    #[test]
    fn mean_vjp_and_jvp_match_finite_differences() {
        let check = FdCheck::new(&[&[2, 3, 4]], |b, x| b.mean(x[0], &[1], false).unwrap());
        check.vjp(&[0]);
        check.jvp(&[0]);
        check.hvp(&[0]);
    }

    #[test]
    fn max_vjp_and_jvp_match_finite_differences() {
        for keep in [false, true] {
            let check = FdCheck::new(&[&[3, 4]], move |b, x| b.max(x[0], &[1], keep).unwrap());
            check.vjp(&[0]);
            check.jvp(&[0]);
            check.hvp(&[0]);
        }
    }

    #[test]
    fn max_vjp_splits_ties_equally() {
        use crate::autodiff::grad;
        use crate::interp::run_outputs;
        use crate::{Builder, InputRole};
        let mut b = Builder::new("ties");
        let x = b
            .input("x", DType::F64, Shape::of(&[2, 3]), InputRole::Data)
            .unwrap();
        let m = b.max(x, &[1], false).unwrap();
        let l = b.sum_all(m).unwrap();
        b.loss(l);
        let g = b.finish().unwrap();
        let gg = grad(&g, l, &[x]).unwrap();
        let feed = Tensor::new(vec![2, 3], vec![1.0, 3.0, 3.0, 2.0, 2.0, 2.0]);
        let xs = gg.graph.find("x").unwrap();
        let out = run_outputs(&gg.graph, &[(xs, feed)].into(), &EvalCx::default()).unwrap();
        let third = 1.0 / 3.0;
        assert_eq!(out[1].data, vec![0.0, 0.5, 0.5, third, third, third]);
    }

    #[test]
    fn mean_vjp_over_the_batch_symbol_is_a_clear_error() {
        let r = op(ReduceKind::Mean, &[0], false);
        let shape = Shape(vec![Dim::Batch, Dim::Fixed(3)]);
        let err = r.count(&shape, &[true, false]).unwrap_err();
        assert!(err.contains("batch"), "{err}");
        assert_eq!(r.count(&Shape::of(&[4, 3]), &[true, true]).unwrap(), 12);
    }
}
