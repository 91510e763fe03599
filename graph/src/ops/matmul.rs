//! Batched matrix multiplication with broadcast batch dimensions and
//! transpose flags (so VJPs need no explicit transposes).
//!
//! Ops: MatMul {trans_a, trans_b}.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, bytes, expect_arity, expect_float};
use crate::interp::{EvalCx, Tensor, broadcast_all, broadcast_offset, unravel};
use crate::shape::broadcast_shapes;
use crate::{Attr, AttrReader, Attrs, Dim, Result, Shape, TensorType, ValueId};

/// `op(a) · op(b)` over the last two axes, where `op` transposes them when
/// the flag is set; leading (batch) axes broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatMul {
    pub trans_a: bool,
    pub trans_b: bool,
}

/// The (rows, cols) of `op(x)` for the last two dims `[r, c]` of `x`.
fn op_dims<T: Copy>(r: T, c: T, trans: bool) -> (T, T) {
    if trans { (c, r) } else { (r, c) }
}

impl MatMul {
    fn with(trans_a: bool, trans_b: bool) -> MatMul {
        MatMul { trans_a, trans_b }
    }

    /// The flags and operand order of the products giving `dA` and `dB`
    /// (`true` in the order slot means "cotangent first").
    fn vjp_plan(&self) -> ((MatMul, bool), (MatMul, bool)) {
        let w = MatMul::with;
        match (self.trans_a, self.trans_b) {
            // C = A·B: dA = g·Bᵀ, dB = Aᵀ·g
            (false, false) => ((w(false, true), true), (w(true, false), false)),
            // C = A·Bᵀ: dA = g·B, dB = gᵀ·A
            (false, true) => ((w(false, false), true), (w(true, false), true)),
            // C = Aᵀ·B: dA = B·gᵀ, dB = A·g
            (true, false) => ((w(false, true), false), (w(false, false), false)),
            // C = Aᵀ·Bᵀ: dA = Bᵀ·gᵀ, dB = gᵀ·Aᵀ
            (true, true) => ((w(true, true), false), (w(true, true), true)),
        }
    }
}

/// Checks one operand's rank and returns its (batch dims, rows, cols).
fn split_matrix(t: &TensorType, i: usize) -> std::result::Result<(Shape, Dim, Dim), String> {
    let d = t.shape.dims();
    if d.len() < 2 {
        return Err(format!(
            "input {i}: MatMul needs rank >= 2, found shape {} (reshape a vector to [1, n] or [n, 1] first)",
            t.shape
        ));
    }
    let n = d.len();
    Ok((Shape(d[..n - 2].to_vec()), d[n - 2], d[n - 1]))
}

impl OpRules for MatMul {
    fn name(&self) -> &'static str {
        "MatMul"
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        if name != "MatMul" {
            return None;
        }
        let parse = || {
            let mut r = AttrReader::new(attrs);
            let trans_a = r.boolean("trans_a", Some(false))?;
            let trans_b = r.boolean("trans_b", Some(false))?;
            r.finish()?;
            Ok(MatMul { trans_a, trans_b })
        };
        Some(parse())
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("trans_a".into(), Attr::Bool(self.trans_a));
        a.insert("trans_b".into(), Attr::Bool(self.trans_b));
        a
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        expect_arity(inputs, 2)?;
        expect_float(inputs, 0)?;
        expect_float(inputs, 1)?;
        let (ta, tb) = (inputs[0], inputs[1]);
        if ta.dtype != tb.dtype {
            return Err(format!(
                "input 1: expected dtype {} (the dtype of input 0), found {}",
                ta.dtype, tb.dtype
            ));
        }
        let (batch_a, ra, ca) = split_matrix(ta, 0)?;
        let (batch_b, rb, cb) = split_matrix(tb, 1)?;
        let (m, ka) = op_dims(ra, ca, self.trans_a);
        let (kb, n) = op_dims(rb, cb, self.trans_b);
        if ka != kb {
            return Err(format!(
                "input 1: expected a contraction dim of {ka} (from input 0 shape {}, trans_a={}), found {kb} in shape {} (trans_b={})",
                ta.shape, self.trans_a, tb.shape, self.trans_b
            ));
        }
        let mut out = broadcast_shapes(&batch_a, &batch_b).ok_or_else(|| {
            format!(
                "input 1: expected batch dims broadcastable with {batch_a} (from input 0 shape {}), found {batch_b} in shape {}",
                ta.shape, tb.shape
            )
        })?;
        out.0.push(m);
        out.0.push(n);
        Ok(vec![TensorType::new(ta.dtype, out)])
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let (a, b) = (cx.inputs[0], cx.inputs[1]);
        let g = cx.cotangent(0)?;
        let ((op_a, g_first_a), (op_b, g_first_b)) = self.vjp_plan();
        let mut out = vec![None, None];
        // dA pairs g with B; dB pairs g with A.
        for (i, (op, g_first, other)) in [(op_a, g_first_a, b), (op_b, g_first_b, a)]
            .into_iter()
            .enumerate()
        {
            let input = cx.inputs[i];
            if !cx.wants[i] || !cx.b.dtype(input).is_float() {
                continue;
            }
            let (x, y) = if g_first { (g, other) } else { (other, g) };
            let d = cx.b.matmul_t(x, y, op.trans_a, op.trans_b)?;
            let shape = cx.b.shape(input).clone();
            out[i] = Some(cx.b.sum_to(d, &shape)?);
        }
        Ok(out)
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let (a, b) = (cx.inputs[0], cx.inputs[1]);
        let (ta, tb) = (self.trans_a, self.trans_b);
        let left = match cx.tangents[0] {
            Some(t) => Some(cx.b.matmul_t(t, b, ta, tb)?),
            None => None,
        };
        let right = match cx.tangents[1] {
            Some(t) => Some(cx.b.matmul_t(a, t, ta, tb)?),
            None => None,
        };
        let sum = match (left, right) {
            (Some(l), Some(r)) => Some(cx.b.add(l, r)?),
            (l, r) => l.or(r),
        };
        Ok(vec![sum])
    }

    /// FLOPs: 2·M·N·K per batch entry (a multiply and an add per term), the
    /// batch symbol counting as 1. Bytes: both operands read and the result
    /// written once.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        let (Some(a), Some(out)) = (inputs.first(), outputs.first()) else {
            return Cost::default();
        };
        let dims = a.shape.dims();
        let k = match dims.len() {
            n if n >= 2 => {
                let (_, k) = op_dims(dims[n - 2], dims[n - 1], self.trans_a);
                k.fixed().unwrap_or(1) as u64
            }
            _ => 1,
        };
        Cost {
            flops: 2 * super::numel(out) * k,
            bytes: inputs.iter().chain(outputs).map(|t| bytes(t)).sum(),
        }
    }

    fn recompute(&self) -> Recompute {
        Recompute::Expensive
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        let [a, b] = inputs else {
            return Err(format!("expects 2 inputs, found {}", inputs.len()));
        };
        for (i, t) in [a, b].iter().enumerate() {
            if t.rank() < 2 {
                return Err(format!(
                    "input {i}: MatMul needs rank >= 2, found shape {:?}",
                    t.shape
                ));
            }
        }
        let (na, nb) = (a.rank(), b.rank());
        let (ra, ca) = (a.shape[na - 2], a.shape[na - 1]);
        let (rb, cb) = (b.shape[nb - 2], b.shape[nb - 1]);
        let (m, k) = op_dims(ra, ca, self.trans_a);
        let (kb, n) = op_dims(rb, cb, self.trans_b);
        if k != kb {
            return Err(format!(
                "contraction dims differ: {k} (input 0 shape {:?}) vs {kb} (input 1 shape {:?})",
                a.shape, b.shape
            ));
        }
        let (batch_a, batch_b) = (&a.shape[..na - 2], &b.shape[..nb - 2]);
        let batch = broadcast_all(&[batch_a, batch_b])?;
        let batches: usize = batch.iter().product();
        let mut data = Vec::with_capacity(batches * m * n);
        for bi in 0..batches {
            let idx = unravel(bi, &batch);
            let base_a = broadcast_offset(&idx, batch_a) * ra * ca;
            let base_b = broadcast_offset(&idx, batch_b) * rb * cb;
            // Element (i, p) of op(a) and (p, j) of op(b).
            let at_a = |i: usize, p: usize| {
                if self.trans_a {
                    a.data[base_a + p * ca + i]
                } else {
                    a.data[base_a + i * ca + p]
                }
            };
            let at_b = |p: usize, j: usize| {
                if self.trans_b {
                    b.data[base_b + j * cb + p]
                } else {
                    b.data[base_b + p * cb + j]
                }
            };
            for i in 0..m {
                for j in 0..n {
                    data.push((0..k).map(|p| at_a(i, p) * at_b(p, j)).sum());
                }
            }
        }
        let mut shape = batch;
        shape.extend([m, n]);
        Ok(vec![Tensor::new(shape, data)])
    }
}

/// Finite-difference checks of VJP and JVP rules through the interpreter,
/// shared by the unit tests of the matmul, reduce and movement families.
#[cfg(test)]
pub(crate) mod fd {
    use std::collections::BTreeMap;

    use crate::autodiff::{grad, hvp, jvp};
    use crate::interp::{EvalCx, Tensor, run_outputs};
    use crate::{Builder, DType, Graph, InputRole, Shape, ValueId};

    /// `loss = Σ f(x0, x1, ...) ⊙ w` for fixed pseudo-random `w`, built only
    /// from Reshape and MatMul so that it needs no other family.
    pub(crate) struct FdCheck {
        graph: Graph,
        loss: ValueId,
        inputs: Vec<ValueId>,
        pub(crate) values: Vec<Tensor>,
        weights: Tensor,
    }

    fn wobble(n: usize, salt: usize) -> Vec<f64> {
        (0..n)
            .map(|j| (j as f64 * 1.7 + salt as f64 * 3.1 + 0.3).sin() * 2.0)
            .collect()
    }

    impl FdCheck {
        pub(crate) fn new(
            shapes: &[&[usize]],
            f: impl Fn(&mut Builder, &[ValueId]) -> ValueId,
        ) -> FdCheck {
            let mut b = Builder::new("fd");
            let inputs: Vec<ValueId> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    b.input(&format!("x{i}"), DType::F64, Shape::of(s), InputRole::Data)
                        .unwrap()
                })
                .collect();
            let y = f(&mut b, &inputs);
            let n = b.shape(y).numel().unwrap();
            let flat = b.reshape(y, Shape::of(&[1, n])).unwrap();
            let w = b
                .input("w", DType::F64, Shape::of(&[n, 1]), InputRole::Data)
                .unwrap();
            let l = b.matmul(flat, w).unwrap();
            let loss = b.reshape(l, Shape::scalar()).unwrap();
            b.loss(loss);
            let values = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| Tensor::new(s.to_vec(), wobble(s.iter().product(), i + 1)))
                .collect();
            FdCheck {
                graph: b.finish().unwrap(),
                loss,
                inputs,
                values,
                weights: Tensor::new(vec![n, 1], wobble(n, 97)),
            }
        }

        fn feeds(&self, g: &Graph, values: &[Tensor]) -> BTreeMap<ValueId, Tensor> {
            let mut feeds: BTreeMap<ValueId, Tensor> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (g.find(&format!("x{i}")).unwrap(), v.clone()))
                .collect();
            feeds.insert(g.find("w").unwrap(), self.weights.clone());
            feeds
        }

        fn loss_at(&self, values: &[Tensor]) -> f64 {
            let out = run_outputs(
                &self.graph,
                &self.feeds(&self.graph, values),
                &EvalCx::default(),
            )
            .unwrap();
            out[0].data[0]
        }

        /// `(f(x + eps·v) - f(x - eps·v)) / 2eps` along `dirs` (one per input).
        fn directional(&self, dirs: &[Option<Tensor>]) -> f64 {
            let eps = 1e-6;
            let moved = |sign: f64| -> Vec<Tensor> {
                self.values
                    .iter()
                    .zip(dirs)
                    .map(|(x, d)| match d {
                        Some(d) => Tensor::new(
                            x.shape.clone(),
                            x.data
                                .iter()
                                .zip(&d.data)
                                .map(|(a, b)| a + sign * eps * b)
                                .collect(),
                        ),
                        None => x.clone(),
                    })
                    .collect()
            };
            (self.loss_at(&moved(1.0)) - self.loss_at(&moved(-1.0))) / (2.0 * eps)
        }

        fn close(what: &str, got: f64, want: f64) {
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{what}: autodiff {got}, finite differences {want}"
            );
        }

        /// Checks the gradients wrt the inputs `wrt` element by element.
        pub(crate) fn vjp(&self, wrt: &[usize]) {
            let ids: Vec<ValueId> = wrt.iter().map(|&i| self.inputs[i]).collect();
            let gg = grad(&self.graph, self.loss, &ids).unwrap();
            let out = run_outputs(
                &gg.graph,
                &self.feeds(&gg.graph, &self.values),
                &EvalCx::default(),
            )
            .unwrap();
            Self::close("loss", out[0].data[0], self.loss_at(&self.values));
            for (k, &i) in wrt.iter().enumerate() {
                let g = &out[1 + k];
                assert_eq!(g.shape, self.values[i].shape, "gradient shape of x{i}");
                for j in 0..g.numel() {
                    let mut dirs: Vec<Option<Tensor>> = vec![None; self.values.len()];
                    let mut e = Tensor::zeros(&self.values[i].shape);
                    e.data[j] = 1.0;
                    dirs[i] = Some(e);
                    Self::close(
                        &format!("d loss / d x{i}[{j}]"),
                        g.data[j],
                        self.directional(&dirs),
                    );
                }
            }
        }

        /// Checks the tangent of the loss along pseudo-random directions of `wrt`.
        pub(crate) fn jvp(&self, wrt: &[usize]) {
            let ids: Vec<ValueId> = wrt.iter().map(|&i| self.inputs[i]).collect();
            let jg = jvp(&self.graph, &ids).unwrap();
            let mut feeds = self.feeds(&jg.graph, &self.values);
            let mut dirs: Vec<Option<Tensor>> = vec![None; self.values.len()];
            for (k, &i) in wrt.iter().enumerate() {
                let d = Tensor::new(
                    self.values[i].shape.clone(),
                    wobble(self.values[i].numel(), 50 + i),
                );
                feeds.insert(jg.tangents_in[k].1, d.clone());
                dirs[i] = Some(d);
            }
            let out = run_outputs(&jg.graph, &feeds, &EvalCx::default()).unwrap();
            Self::close(
                "tangent of the loss",
                out[1].data[0],
                self.directional(&dirs),
            );
        }

        /// Checks Hessian-vector products (forward over reverse) of the loss
        /// wrt `wrt` against finite differences of the gradient.
        pub(crate) fn hvp(&self, wrt: &[usize]) {
            let ids: Vec<ValueId> = wrt.iter().map(|&i| self.inputs[i]).collect();
            let hg = hvp(&self.graph, self.loss, &ids).unwrap();
            let gg = grad(&self.graph, self.loss, &ids).unwrap();
            let mut feeds = self.feeds(&hg.graph, &self.values);
            let dirs: Vec<Tensor> = wrt
                .iter()
                .map(|&i| {
                    Tensor::new(
                        self.values[i].shape.clone(),
                        wobble(self.values[i].numel(), 70 + i),
                    )
                })
                .collect();
            for (k, d) in dirs.iter().enumerate() {
                feeds.insert(hg.directions[k], d.clone());
            }
            let hv = run_outputs(&hg.graph, &feeds, &EvalCx::default()).unwrap();
            let eps = 1e-5;
            let grads_at = |sign: f64| {
                let mut values = self.values.clone();
                for (&i, d) in wrt.iter().zip(&dirs) {
                    values[i]
                        .data
                        .iter_mut()
                        .zip(&d.data)
                        .for_each(|(x, v)| *x += sign * eps * v);
                }
                run_outputs(
                    &gg.graph,
                    &self.feeds(&gg.graph, &values),
                    &EvalCx::default(),
                )
                .unwrap()
            };
            let (plus, minus) = (grads_at(1.0), grads_at(-1.0));
            for (k, &i) in wrt.iter().enumerate() {
                for j in 0..hv[k].numel() {
                    let fd = (plus[1 + k].data[j] - minus[1 + k].data[j]) / (2.0 * eps);
                    Self::close(&format!("(H·v) of x{i}[{j}]"), hv[k].data[j], fd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fd::FdCheck;
    use super::*;
    use crate::{DType, Op};

    fn ty(dims: &[Dim]) -> TensorType {
        TensorType::new(DType::F32, Shape(dims.to_vec()))
    }
    fn f(n: usize) -> Dim {
        Dim::Fixed(n)
    }
    fn t(shape: &[usize], data: &[f64]) -> Tensor {
        Tensor::new(shape.to_vec(), data.to_vec())
    }
    fn run(op: MatMul, a: &Tensor, b: &Tensor) -> Tensor {
        op.eval(&[a, b], &EvalCx::default()).unwrap().remove(0)
    }

    #[test]
    fn eval_all_flag_combinations() {
        let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = t(&[2, 2], &[5.0, 6.0, 7.0, 8.0]);
        assert_eq!(
            run(MatMul::with(false, false), &a, &b).data,
            vec![19.0, 22.0, 43.0, 50.0]
        );
        // A·Bᵀ
        assert_eq!(
            run(MatMul::with(false, true), &a, &b).data,
            vec![17.0, 23.0, 39.0, 53.0]
        );
        // Aᵀ·B
        assert_eq!(
            run(MatMul::with(true, false), &a, &b).data,
            vec![26.0, 30.0, 38.0, 44.0]
        );
        // Aᵀ·Bᵀ = (B·A)ᵀ
        assert_eq!(
            run(MatMul::with(true, true), &a, &b).data,
            vec![23.0, 31.0, 34.0, 46.0]
        );
    }

    #[test]
    fn eval_broadcasts_batch_dims_and_rectangular_shapes() {
        // a: [2, 1, 3] (two row vectors), b: [3, 2] shared.
        let a = t(&[2, 1, 3], &[1.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        let b = t(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let c = run(MatMul::default(), &a, &b);
        assert_eq!(c.shape, vec![2, 1, 2]);
        assert_eq!(c.data, vec![1.0, 2.0, 8.0, 10.0]);
        let err = MatMul::default().eval(&[&t(&[3], &[0.0; 3]), &b], &EvalCx::default());
        assert!(err.unwrap_err().contains("rank >= 2"));
    }

    #[test]
    fn infer_shapes_flags_and_batch_symbol() {
        let mm = MatMul::default();
        let a = ty(&[Dim::Batch, f(1), f(3), f(4)]);
        let b = ty(&[f(7), f(4), f(5)]);
        let out = mm.infer(&[&a, &b]).unwrap();
        assert_eq!(out[0], ty(&[Dim::Batch, f(7), f(3), f(5)]));
        let bt = ty(&[f(5), f(4)]);
        assert_eq!(
            MatMul::with(false, true).infer(&[&a, &bt]).unwrap()[0],
            ty(&[Dim::Batch, f(1), f(3), f(5)])
        );
        let at = ty(&[f(4), f(3)]);
        assert_eq!(
            MatMul::with(true, true).infer(&[&at, &bt]).unwrap()[0],
            ty(&[f(3), f(5)])
        );
        // Contraction over the batch symbol matches only itself.
        let xb = ty(&[f(2), Dim::Batch]);
        assert_eq!(
            MatMul::with(false, true).infer(&[&xb, &xb]).unwrap()[0],
            ty(&[f(2), f(2)])
        );
    }

    #[test]
    fn infer_errors_name_the_problem() {
        let mm = MatMul::default();
        let err = mm
            .infer(&[&ty(&[f(3), f(4)]), &ty(&[f(5), f(6)])])
            .unwrap_err();
        assert!(
            err.contains("input 1") && err.contains("contraction") && err.contains("[5, 6]"),
            "{err}"
        );
        let err = mm.infer(&[&ty(&[f(4)]), &ty(&[f(4), f(6)])]).unwrap_err();
        assert!(
            err.contains("input 0") && err.contains("rank >= 2") && err.contains("Reshape")
                || err.contains("reshape"),
            "{err}"
        );
        let err = mm
            .infer(&[&ty(&[f(2), f(3), f(4)]), &ty(&[f(5), f(4), f(6)])])
            .unwrap_err();
        assert!(err.contains("broadcastable"), "{err}");
        let err = mm
            .infer(&[&ty(&[Dim::Batch, f(3), f(4)]), &ty(&[f(5), f(4), f(6)])])
            .unwrap_err();
        assert!(err.contains("broadcastable"), "{err}");
        let int = TensorType::new(DType::I32, Shape::of(&[2, 2]));
        assert!(
            mm.infer(&[&int, &int])
                .unwrap_err()
                .contains("floating-point")
        );
        let f64t = TensorType::new(DType::F64, Shape::of(&[2, 2]));
        assert!(
            mm.infer(&[&ty(&[f(2), f(2)]), &f64t])
                .unwrap_err()
                .contains("dtype")
        );
        assert!(mm.infer(&[&f64t]).is_err());
    }

    #[test]
    fn attrs_round_trip_and_parse_errors() {
        for (a, b) in [(false, false), (false, true), (true, false), (true, true)] {
            let op = MatMul::with(a, b);
            assert_eq!(MatMul::parse("MatMul", &op.attrs()), Some(Ok(op)));
            assert_eq!(Op::parse("MatMul", &op.attrs()), Ok(Some(Op::MatMul(op))));
        }
        assert_eq!(
            MatMul::parse("MatMul", &Attrs::new()),
            Some(Ok(MatMul::default()))
        );
        assert!(MatMul::parse("Add", &Attrs::new()).is_none());
        let mut bad = Attrs::new();
        bad.insert("transpose".into(), Attr::Bool(true));
        assert!(
            MatMul::parse("MatMul", &bad)
                .unwrap()
                .unwrap_err()
                .contains("transpose")
        );
        let mut bad = Attrs::new();
        bad.insert("trans_a".into(), Attr::Int(1));
        assert!(
            MatMul::parse("MatMul", &bad)
                .unwrap()
                .unwrap_err()
                .contains("trans_a")
        );
    }

    #[test]
    fn cost_counts_two_mnk_per_batch_entry() {
        let a = ty(&[Dim::Batch, f(3), f(4)]);
        let b = ty(&[f(4), f(5)]);
        let out = MatMul::default().infer(&[&a, &b]).unwrap();
        let c = MatMul::default().cost(&[&a, &b], &[&out[0]]);
        assert_eq!(c.flops, 2 * 3 * 4 * 5);
        assert_eq!(c.bytes, 4 * (12 + 20 + 15));
        assert_eq!(MatMul::default().recompute(), Recompute::Expensive);
    }

    #[test]
    fn vjp_matches_finite_differences_for_every_flag_combination() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            // a: [2, 3, 4] batched, b: [4, 5] or its transpose, shared (broadcast).
            let a_shape = if ta { [2, 4, 3] } else { [2, 3, 4] };
            let b_shape = if tb { [5, 4] } else { [4, 5] };
            let check = FdCheck::new(&[&a_shape, &b_shape], move |b, xs| {
                b.matmul_t(xs[0], xs[1], ta, tb).unwrap()
            });
            check.vjp(&[0, 1]);
            check.jvp(&[0]);
            check.jvp(&[1]);
            check.jvp(&[0, 1]);
            check.hvp(&[0, 1]);
        }
    }
}
