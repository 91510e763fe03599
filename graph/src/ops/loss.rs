//! Losses, each a scalar mean:
//!
//! - `SoftmaxCrossEntropy` (logits `[..., C]` float, labels `[...]` int): the
//!   mean over label positions of `logsumexp(row) - row[label]`. A label
//!   outside `[0, C)` is an error at eval.
//! - `SoftmaxCrossEntropyGrad` (logits, labels, dloss scalar) -> dlogits
//!   `= (softmax(logits) - onehot(labels)) * dloss / N`: the fused backward.
//! - `Mse` (pred, target of one float type): `mean((pred - target)^2)`.
//!
//! Both cross-entropy ops decompose into OneHot, (Log)Softmax and primitive
//! arithmetic; their JVPs (and the VJP of the backward op) go through those
//! decompositions. Labels never get a cotangent.

use super::{Cost, JvpCx, Op, OpRules, Recompute, VjpCx, bytes, expect_arity, expect_float, numel};
use crate::attr::AttrReader;
use crate::autodiff::{jvp_by_decomposition, vjp_by_decomposition};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Builder, DType, Dim, Error, Result, Shape, TensorType, ValueId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// `SoftmaxCrossEntropy(logits [..., C], labels [...] int)`: the mean
    /// over all label positions, a scalar.
    SoftmaxCrossEntropy,
    /// `SoftmaxCrossEntropyGrad(logits, labels, dloss) -> dlogits`.
    SoftmaxCrossEntropyGrad,
    /// `Mse(pred, target)`: mean of squared differences, a scalar.
    Mse,
}

impl OpRules for Loss {
    fn name(&self) -> &'static str {
        match self {
            Loss::SoftmaxCrossEntropy => "SoftmaxCrossEntropy",
            Loss::SoftmaxCrossEntropyGrad => "SoftmaxCrossEntropyGrad",
            Loss::Mse => "Mse",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let op = match name {
            "SoftmaxCrossEntropy" => Loss::SoftmaxCrossEntropy,
            "SoftmaxCrossEntropyGrad" => Loss::SoftmaxCrossEntropyGrad,
            "Mse" => Loss::Mse,
            _ => return None,
        };
        Some(AttrReader::new(attrs).finish().map(|()| op))
    }

    fn attrs(&self) -> Attrs {
        Attrs::new()
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        match self {
            Loss::SoftmaxCrossEntropy => {
                expect_arity(inputs, 2)?;
                check_logits_labels(inputs)?;
                Ok(vec![TensorType::new(inputs[0].dtype, Shape::scalar())])
            }
            Loss::SoftmaxCrossEntropyGrad => {
                expect_arity(inputs, 3)?;
                check_logits_labels(inputs)?;
                let want = TensorType::new(inputs[0].dtype, Shape::scalar());
                if inputs[2] != &want {
                    return Err(format!(
                        "input 2 (dloss): expected {want}, found {}",
                        inputs[2]
                    ));
                }
                Ok(vec![inputs[0].clone()])
            }
            Loss::Mse => {
                expect_arity(inputs, 2)?;
                expect_float(inputs, 0)?;
                if inputs[1] != inputs[0] {
                    return Err(format!(
                        "input 1 (target): expected {} (the type of input 0), found {}",
                        inputs[0], inputs[1]
                    ));
                }
                Ok(vec![TensorType::new(inputs[0].dtype, Shape::scalar())])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        match self {
            Loss::SoftmaxCrossEntropy => {
                if !cx.wants[0] {
                    return Ok(vec![None, None]);
                }
                let g = cx.cotangent(0)?;
                let op = Op::Loss(Loss::SoftmaxCrossEntropyGrad);
                let d = cx.b.node1(op, &[cx.inputs[0], cx.inputs[1], g])?;
                Ok(vec![Some(d), None])
            }
            Loss::SoftmaxCrossEntropyGrad => vjp_by_decomposition(&Op::Loss(*self), cx),
            Loss::Mse => {
                if !cx.wants.contains(&true) {
                    return Ok(vec![None, None]);
                }
                let g = cx.cotangent(0)?;
                let (p, t) = (cx.inputs[0], cx.inputs[1]);
                let n = static_count(cx.b.shape(p))?;
                let d = cx.b.sub(p, t)?;
                let gd = cx.b.mul(d, g)?;
                let dp = cx.b.scale(gd, 2.0 / n)?;
                let dt = if cx.wants[1] {
                    Some(cx.b.neg(dp)?)
                } else {
                    None
                };
                Ok(vec![cx.wants[0].then_some(dp), dt])
            }
        }
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        match self {
            Loss::SoftmaxCrossEntropy | Loss::SoftmaxCrossEntropyGrad => {
                jvp_by_decomposition(&Op::Loss(*self), cx)
            }
            Loss::Mse => {
                let (p, t) = (cx.inputs[0], cx.inputs[1]);
                let dt = match (cx.tangents[0], cx.tangents[1]) {
                    (Some(tp), Some(tt)) => cx.b.sub(tp, tt)?,
                    (Some(tp), None) => tp,
                    (None, Some(tt)) => cx.b.neg(tt)?,
                    (None, None) => return Ok(vec![None]),
                };
                let d = cx.b.sub(p, t)?;
                let prod = cx.b.mul(d, dt)?;
                let m = mean_all(cx.b, prod)?;
                Ok(vec![Some(cx.b.scale(m, 2.0)?)])
            }
        }
    }

    /// FLOPs per logit element: SoftmaxCrossEntropy 6 (max, subtract, exp,
    /// sum, the label pick and the mean), SoftmaxCrossEntropyGrad 7 (the
    /// softmax, the one-hot subtraction and the scale); Mse 3 per element
    /// (subtract, square, sum). Bytes: every input and output once.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        let per = match self {
            Loss::SoftmaxCrossEntropy => 6,
            Loss::SoftmaxCrossEntropyGrad => 7,
            Loss::Mse => 3,
        };
        Cost {
            flops: inputs.first().map_or(0, |t| numel(t)) * per,
            bytes: inputs.iter().chain(outputs).map(|t| bytes(t)).sum(),
        }
    }

    fn recompute(&self) -> Recompute {
        Recompute::Cheap
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        match (self, inputs) {
            (Loss::SoftmaxCrossEntropy, [logits, labels]) => {
                let rows = labelled_rows(logits, labels)?;
                let total: f64 = rows
                    .iter()
                    .map(|&(row, label)| {
                        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                        lse - row[label]
                    })
                    .sum();
                Ok(vec![Tensor::scalar(total / rows.len() as f64)])
            }
            (Loss::SoftmaxCrossEntropyGrad, [logits, labels, dloss]) => {
                let rows = labelled_rows(logits, labels)?;
                let scale = dloss
                    .data
                    .first()
                    .copied()
                    .ok_or("dloss must be a scalar")?
                    / rows.len() as f64;
                let mut out = Vec::with_capacity(logits.numel());
                for (row, label) in rows {
                    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = row.iter().map(|x| (x - m).exp()).sum();
                    out.extend(row.iter().enumerate().map(|(c, x)| {
                        let hot = if c == label { 1.0 } else { 0.0 };
                        ((x - m).exp() / s - hot) * scale
                    }));
                }
                Ok(vec![Tensor::new(logits.shape.clone(), out)])
            }
            (Loss::Mse, [pred, target]) => {
                if pred.shape != target.shape {
                    return Err(format!(
                        "pred {:?} and target {:?} differ in shape",
                        pred.shape, target.shape
                    ));
                }
                let total: f64 = pred
                    .data
                    .iter()
                    .zip(&target.data)
                    .map(|(p, t)| (p - t) * (p - t))
                    .sum();
                Ok(vec![Tensor::scalar(total / pred.numel() as f64)])
            }
            _ => Err(format!(
                "{}: wrong number of inputs ({})",
                self.name(),
                inputs.len()
            )),
        }
    }

    fn decompose(&self, b: &mut Builder, inputs: &[ValueId]) -> Option<Result<Vec<ValueId>>> {
        match (self, inputs) {
            (Loss::SoftmaxCrossEntropy, &[logits, labels]) => {
                Some(decompose_sce(b, logits, labels))
            }
            (Loss::SoftmaxCrossEntropyGrad, &[logits, labels, dloss]) => {
                Some(decompose_sce_grad(b, logits, labels, dloss))
            }
            (Loss::Mse, _) => None,
            _ => Some(Err(Error::Unsupported(format!(
                "{}: wrong number of inputs ({})",
                self.name(),
                inputs.len()
            )))),
        }
    }
}

/// Checks logits `[..., C]` (float, C fixed and positive) and int labels
/// `[...]` (inputs 0 and 1).
fn check_logits_labels(inputs: &[&TensorType]) -> std::result::Result<(), String> {
    expect_float(inputs, 0)?;
    let logits = &inputs[0].shape;
    match logits.dims().last() {
        Some(Dim::Fixed(c)) if *c > 0 => {}
        _ => {
            return Err(format!(
                "input 0 (logits): expected [..., C] with C a fixed number of classes > 0, found {logits}"
            ));
        }
    }
    if !inputs[1].dtype.is_int() {
        return Err(format!(
            "input 1 (labels): expected an int dtype (i32 or i64), found {}",
            inputs[1].dtype
        ));
    }
    let want = Shape(logits.dims()[..logits.rank() - 1].to_vec());
    if inputs[1].shape != want {
        return Err(format!(
            "input 1 (labels): expected shape {want} (the logits' shape without its last axis), found {}",
            inputs[1].shape
        ));
    }
    Ok(())
}

/// Each logits row with its checked label.
fn labelled_rows<'a>(
    logits: &'a Tensor,
    labels: &Tensor,
) -> std::result::Result<Vec<(&'a [f64], usize)>, String> {
    let c = logits.shape.last().copied().unwrap_or(0);
    if c == 0 || logits.numel() != labels.numel() * c {
        return Err(format!(
            "logits {:?} do not match labels {:?}",
            logits.shape, labels.shape
        ));
    }
    (logits.data.chunks_exact(c).zip(&labels.data).enumerate())
        .map(|(pos, (row, &l))| {
            if l >= 0.0 && l < c as f64 && l.fract() == 0.0 {
                Ok((row, l as usize))
            } else {
                Err(format!(
                    "label {l} at position {pos} is out of range [0, {c})"
                ))
            }
        })
        .collect()
}

/// The element count of a static shape, as f64 (autodiff rules run on
/// bound graphs only).
fn static_count(s: &Shape) -> Result<f64> {
    s.numel()
        .map(|n| n as f64)
        .ok_or_else(|| Error::Unsupported(format!("a loss rule needs a static shape, found {s}")))
}

/// Mean over every axis, to a scalar (a scalar is its own mean).
fn mean_all(b: &mut Builder, x: ValueId) -> Result<ValueId> {
    let rank = b.shape(x).rank() as i64;
    if rank == 0 {
        return Ok(x);
    }
    let axes: Vec<i64> = (0..rank).collect();
    b.mean(x, &axes, false)
}

/// The number of classes and the one-hot labels in the logits' dtype.
fn one_hot_labels(b: &mut Builder, logits: ValueId, labels: ValueId) -> Result<ValueId> {
    let dtype: DType = b.dtype(logits);
    let c = match b.shape(logits).dims().last() {
        Some(Dim::Fixed(c)) => *c,
        _ => {
            return Err(Error::Unsupported(format!(
                "softmax cross-entropy needs a fixed class axis, found {}",
                b.shape(logits)
            )));
        }
    };
    b.one_hot(labels, c, dtype)
}

/// `-mean over positions of sum(onehot(labels) * log_softmax(logits), -1)`.
fn decompose_sce(b: &mut Builder, logits: ValueId, labels: ValueId) -> Result<Vec<ValueId>> {
    let ls = b.log_softmax(logits, -1)?;
    let oh = one_hot_labels(b, logits, labels)?;
    let picked = b.mul(oh, ls)?;
    let per_position = b.sum(picked, &[-1], false)?;
    let m = mean_all(b, per_position)?;
    Ok(vec![b.neg(m)?])
}

/// `(softmax(logits) - onehot(labels)) * dloss / N`.
fn decompose_sce_grad(
    b: &mut Builder,
    logits: ValueId,
    labels: ValueId,
    dloss: ValueId,
) -> Result<Vec<ValueId>> {
    let sm = b.softmax(logits, -1)?;
    let oh = one_hot_labels(b, logits, labels)?;
    let diff = b.sub(sm, oh)?;
    let labels_shape = b.shape(labels).clone();
    let per = match labels_shape.numel() {
        Some(n) => b.scale(dloss, 1.0 / n as f64)?,
        None => {
            // Unbound batch: count the positions in the graph.
            let one = b.scalar_like(1.0, logits)?;
            let ones = b.broadcast(one, labels_shape)?;
            let n = b.sum_all(ones)?;
            b.div(dloss, n)?
        }
    };
    Ok(vec![b.mul(diff, per)?])
}

#[cfg(test)]
#[path = "tests/loss.rs"]
mod tests;
