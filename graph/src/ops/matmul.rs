//! Batched matrix multiplication with broadcast batch dimensions and
//! transpose flags (so VJPs need no explicit transposes).
//!
//! Ops: MatMul {trans_a, trans_b}.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, bytes, expect_arity, expect_float};
use crate::interp::{EvalCx, Tensor, broadcast_all, broadcast_offset, unravel};
use crate::shape::broadcast_shapes;
use crate::{Attr, AttrReader, Attrs, Builder, Dim, Result, Shape, TensorType, ValueId};

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

/// The gradient of a weight shared across a batch (`[k, n]` against
/// operands `[..., m, k]`) as ONE product with the batch folded into the
/// contraction, `Σ_batch op(x)·op(y)` = `x'ᵀ·y'` with `x'`, `y'` the
/// operands reshaped to `[batch·m, ·]`, instead of a batched product and a
/// sum. Applies when both operands carry the same full batch and contract
/// over their second-to-last axis (`trans_a` and not `trans_b`), so the
/// reshape is free.
fn folded_batch_product(
    b: &mut Builder,
    x: ValueId,
    y: ValueId,
    op: MatMul,
    target: &Shape,
) -> Result<Option<ValueId>> {
    let (sx, sy) = (b.shape(x).clone(), b.shape(y).clone());
    let batch_rank = sx.rank().saturating_sub(2);
    if target.rank() != 2 || batch_rank == 0 || !op.trans_a || op.trans_b || sx.rank() != sy.rank()
    {
        return Ok(None);
    }
    if sx.dims()[..batch_rank] != sy.dims()[..batch_rank] || !sx.is_static() || !sy.is_static() {
        return Ok(None);
    }
    let flat = |s: &Shape| -> Shape {
        let d = s.to_static().unwrap_or_default();
        let rows: usize = d[..d.len() - 1].iter().product();
        Shape::of(&[rows, d[d.len() - 1]])
    };
    let x2 = b.reshape(x, flat(&sx))?;
    let y2 = b.reshape(y, flat(&sy))?;
    let d = b.matmul_t(x2, y2, true, false)?;
    if b.shape(d) != target {
        return Ok(None);
    }
    Ok(Some(d))
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
            let shape = cx.b.shape(input).clone();
            if let Some(d) = folded_batch_product(cx.b, x, y, op, &shape)? {
                out[i] = Some(d);
                continue;
            }
            let d = cx.b.matmul_t(x, y, op.trans_a, op.trans_b)?;
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

#[cfg(test)]
#[path = "tests/matmul.rs"]
mod tests;
