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

/// Finite-difference checks of VJP, JVP and second-order rules through the
/// interpreter, shared by the tests of the index, nn and loss families.
#[cfg(test)]
pub(crate) mod fd {
    use std::collections::BTreeMap;

    use crate::autodiff::{grad, hvp, jvp};
    use crate::interp::{EvalCx, Tensor, run_outputs};
    use crate::{Builder, DType, Graph, InputRole, Result, Shape, ValueId};

    /// One graph input: dtype, shape and value. Float ones are differentiated.
    pub(crate) type Arg = (DType, Vec<usize>, Vec<f64>);

    /// Deterministic test data in [-1, 1].
    pub(crate) fn data(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| (i as f64 * 0.731 + seed).sin()).collect()
    }

    fn run_named(g: &Graph, feeds: &BTreeMap<String, Tensor>) -> Vec<Tensor> {
        let cx = EvalCx {
            seed: 7,
            step: 3,
            rank: 1,
        };
        let map = (g.inputs.iter())
            .map(|i| (i.value, feeds[g.name_of(i.value)].clone()))
            .collect();
        run_outputs(g, &map, &cx).unwrap()
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
            "{what}: {a} vs finite difference {b}"
        );
    }

    const H: f64 = 1e-5;

    /// Feeds `args` as inputs `x{i}` of a new builder.
    fn inputs(b: &mut Builder, args: &[Arg]) -> (Vec<ValueId>, BTreeMap<String, Tensor>) {
        let mut feeds = BTreeMap::new();
        let mut ids = Vec::new();
        for (i, (dt, shape, v)) in args.iter().enumerate() {
            let name = format!("x{i}");
            let id = b.input(&name, *dt, Shape::of(shape), InputRole::Data);
            ids.push(id.unwrap());
            feeds.insert(name, Tensor::new(shape.clone(), v.clone()));
        }
        (ids, feeds)
    }

    /// A scalar-loss graph, its float inputs (names) and its feeds.
    struct Setup {
        g: Graph,
        loss: ValueId,
        wrt: Vec<ValueId>,
        names: Vec<String>,
        feeds: BTreeMap<String, Tensor>,
    }

    impl Setup {
        /// The feeds moved by `s * dir` (one direction per float input).
        fn shifted(&self, dir: &[Tensor], s: f64) -> BTreeMap<String, Tensor> {
            let mut f = self.feeds.clone();
            for (n, d) in self.names.iter().zip(dir) {
                let t = f.get_mut(n).unwrap();
                t.data
                    .iter_mut()
                    .zip(&d.data)
                    .for_each(|(x, d)| *x += s * d);
            }
            f
        }

        /// Central difference of output `k` of `g` along `dir`.
        fn fd(&self, g: &Graph, dir: &[Tensor], k: usize) -> Tensor {
            let p = run_named(g, &self.shifted(dir, H)).swap_remove(k);
            let m = run_named(g, &self.shifted(dir, -H)).swap_remove(k);
            let d = p.data.iter().zip(&m.data).map(|(p, m)| (p - m) / (2.0 * H));
            Tensor::new(p.shape.clone(), d.collect())
        }
    }

    /// Builds `loss = sum(f(args) * w)` for a fixed `w` and checks the
    /// gradient elementwise, the JVP along a direction, and the
    /// Hessian-vector product, all against central differences.
    pub(crate) fn check(args: &[Arg], f: &dyn Fn(&mut Builder, &[ValueId]) -> Result<ValueId>) {
        let mut b = Builder::new("fd");
        let (ids, mut feeds) = inputs(&mut b, args);
        let y = f(&mut b, &ids).unwrap();
        let ys = b.graph().static_shape(y);
        let w = b
            .input("w", b.dtype(y), Shape::of(&ys), InputRole::Data)
            .unwrap();
        feeds.insert(
            "w".into(),
            Tensor::new(ys.clone(), data(ys.iter().product(), 0.3)),
        );
        let yw = b.mul(y, w).unwrap();
        let loss = if ys.is_empty() {
            yw
        } else {
            b.sum_all(yw).unwrap()
        };
        b.loss(loss);
        let g = b.finish().unwrap();
        let wrt: Vec<ValueId> = ids
            .into_iter()
            .filter(|&v| g.ty(v).dtype.is_float())
            .collect();
        let names = wrt.iter().map(|&v| g.name_of(v).to_owned()).collect();
        let s = Setup {
            g,
            loss,
            wrt,
            names,
            feeds,
        };
        let zeros: Vec<Tensor> = s
            .names
            .iter()
            .map(|n| Tensor::zeros(&s.feeds[n].shape))
            .collect();
        let gg = grad(&s.g, loss, &s.wrt).unwrap();
        let grads = run_named(&gg.graph, &s.feeds);
        for (k, n) in s.names.iter().enumerate() {
            for e in 0..s.feeds[n].numel() {
                let mut dir = zeros.clone();
                dir[k].data[e] = 1.0;
                let fd = s.fd(&s.g, &dir, 0).data[0];
                close(grads[1 + k].data[e], fd, &format!("grad {n}[{e}]"));
            }
        }
        let dir: Vec<Tensor> = (zeros.iter().enumerate())
            .map(|(k, z)| Tensor::new(z.shape.clone(), data(z.numel(), 1.1 + k as f64)))
            .collect();
        check_jvp_and_hvp(&s, &gg.graph, &dir);
    }

    fn check_jvp_and_hvp(s: &Setup, grad_graph: &Graph, dir: &[Tensor]) {
        let j = jvp(&s.g, &s.wrt).unwrap();
        let mut jfeeds = s.feeds.clone();
        for (n, d) in s.names.iter().zip(dir) {
            jfeeds.insert(format!("tangent/{n}"), d.clone());
        }
        let fd = s.fd(&s.g, dir, 0).data[0];
        close(
            run_named(&j.graph, &jfeeds)[1].data[0],
            fd,
            "jvp of the loss",
        );
        // Second order: H·v against the difference of gradients along v.
        let hv = hvp(&s.g, s.loss, &s.wrt).unwrap();
        let mut hfeeds = s.feeds.clone();
        for (&dv, d) in hv.directions.iter().zip(dir) {
            hfeeds.insert(hv.graph.name_of(dv).to_owned(), d.clone());
        }
        let prods = run_named(&hv.graph, &hfeeds);
        for (k, p) in prods.iter().enumerate() {
            let fd = s.fd(grad_graph, dir, 1 + k);
            for (e, (&pe, &fe)) in p.data.iter().zip(&fd.data).enumerate() {
                close(pe, fe, &format!("hvp {}[{e}]", s.names[k]));
            }
        }
    }

    /// Runs `op`'s decomposition on `args` through the interpreter.
    pub(crate) fn run_decomposition(op: &crate::Op, args: &[Arg]) -> Vec<Tensor> {
        let mut b = Builder::new("dec");
        let (ids, feeds) = inputs(&mut b, args);
        for o in op.decompose(&mut b, &ids).unwrap().unwrap() {
            b.output(o);
        }
        run_named(&b.finish().unwrap(), &feeds)
    }

    /// Evaluates `op` directly on `args`.
    pub(crate) fn eval(op: &crate::Op, args: &[Arg]) -> Vec<Tensor> {
        let ts: Vec<Tensor> = args
            .iter()
            .map(|(_, s, v)| Tensor::new(s.clone(), v.clone()))
            .collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        op.eval(
            &refs,
            &EvalCx {
                seed: 7,
                step: 3,
                rank: 1,
            },
        )
        .unwrap()
    }

    /// Elementwise closeness of two tensors.
    pub(crate) fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
        assert_eq!(a.shape, b.shape);
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{:?} vs {:?}",
                a.data,
                b.data
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fd::{self, Arg};
    use super::*;
    use crate::interp::EvalCx;

    const F: DType = DType::F64;
    const I: DType = DType::I64;

    fn ty(dtype: DType, dims: &[usize]) -> TensorType {
        TensorType::new(dtype, Shape::of(dims))
    }

    fn sce_args() -> Vec<Arg> {
        vec![
            (
                F,
                vec![2, 3, 4],
                fd::data(24, 0.2).iter().map(|x| 3.0 * x).collect(),
            ),
            (I, vec![2, 3], vec![0.0, 3.0, 1.0, 1.0, 2.0, 3.0]),
        ]
    }

    #[test]
    fn cross_entropy_values_by_hand() {
        let logits = Tensor::new(vec![2, 2], vec![0.0, 0.0, 0.0, 3f64.ln()]);
        let labels = Tensor::new(vec![2], vec![0.0, 1.0]);
        let cx = EvalCx::default();
        let out = Loss::SoftmaxCrossEntropy
            .eval(&[&logits, &labels], &cx)
            .unwrap();
        let want = (2f64.ln() + (4.0f64 / 3.0).ln()) / 2.0;
        assert!((out[0].data[0] - want).abs() < 1e-15);
        assert!(out[0].shape.is_empty());
        let d = Loss::SoftmaxCrossEntropyGrad
            .eval(&[&logits, &labels, &Tensor::scalar(2.0)], &cx)
            .unwrap();
        // (softmax - onehot) * 2 / 2
        let want = [0.5 - 1.0, 0.5, 0.25, 0.75 - 1.0];
        fd::assert_close(&d[0], &Tensor::new(vec![2, 2], want.to_vec()), 1e-15);
        // Stable for large logits.
        let big = Tensor::new(vec![1, 2], vec![1000.0, 1000.0]);
        let out = Loss::SoftmaxCrossEntropy
            .eval(&[&big, &Tensor::new(vec![1], vec![1.0])], &cx)
            .unwrap();
        assert!((out[0].data[0] - 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn cross_entropy_rejects_out_of_range_labels() {
        let logits = Tensor::zeros(&[2, 3]);
        let cx = EvalCx::default();
        for bad in [3.0, -1.0] {
            let labels = Tensor::new(vec![2], vec![0.0, bad]);
            let e = Loss::SoftmaxCrossEntropy
                .eval(&[&logits, &labels], &cx)
                .unwrap_err();
            assert!(
                e.contains(&format!("label {bad}")) && e.contains("[0, 3)"),
                "{e}"
            );
            let e = Loss::SoftmaxCrossEntropyGrad
                .eval(&[&logits, &labels, &Tensor::scalar(1.0)], &cx)
                .unwrap_err();
            assert!(e.contains(&format!("label {bad}")), "{e}");
        }
    }

    #[test]
    fn cross_entropy_matches_its_decompositions() {
        let args = sce_args();
        let op = Op::Loss(Loss::SoftmaxCrossEntropy);
        fd::assert_close(
            &fd::eval(&op, &args)[0],
            &fd::run_decomposition(&op, &args)[0],
            1e-12,
        );
        let mut args = args;
        args.push((F, vec![], vec![1.7]));
        let op = Op::Loss(Loss::SoftmaxCrossEntropyGrad);
        fd::assert_close(
            &fd::eval(&op, &args)[0],
            &fd::run_decomposition(&op, &args)[0],
            1e-12,
        );
        // Logits of rank 1: a single position.
        let args: Vec<Arg> = vec![(F, vec![3], vec![0.1, 0.5, -0.2]), (I, vec![], vec![2.0])];
        let op = Op::Loss(Loss::SoftmaxCrossEntropy);
        fd::assert_close(
            &fd::eval(&op, &args)[0],
            &fd::run_decomposition(&op, &args)[0],
            1e-12,
        );
    }

    #[test]
    fn decompositions_build_with_an_unbound_batch() {
        let mut b = Builder::new("sym");
        let c = Shape(vec![Dim::Batch, Dim::Fixed(5)]);
        let logits = b
            .input("logits", F, c.clone(), crate::InputRole::Data)
            .unwrap();
        let labels = b
            .input(
                "labels",
                I,
                Shape(vec![Dim::Batch]),
                crate::InputRole::Label,
            )
            .unwrap();
        let dloss = b
            .input("dloss", F, Shape::scalar(), crate::InputRole::Data)
            .unwrap();
        let l = Loss::SoftmaxCrossEntropy.decompose(&mut b, &[logits, labels]);
        assert_eq!(b.ty(l.unwrap().unwrap()[0]), &ty(F, &[]));
        let d = Loss::SoftmaxCrossEntropyGrad.decompose(&mut b, &[logits, labels, dloss]);
        let dv = d.unwrap().unwrap()[0];
        assert_eq!(b.ty(dv), &TensorType::new(F, c));
        assert!(Loss::Mse.decompose(&mut b, &[logits, logits]).is_none());
        b.output(dv);
        let bound = b.into_graph().bind_batch(2);
        crate::validate::validate(&bound).unwrap();
        // The symbolic count of positions gives the same numbers once bound.
        let (lg, lb) = (
            Tensor::new(vec![2, 5], fd::data(10, 0.4)),
            Tensor::new(vec![2], vec![4.0, 0.0]),
        );
        let feeds = [
            (logits, lg.clone()),
            (labels, lb.clone()),
            (dloss, Tensor::scalar(1.5)),
        ];
        let out =
            crate::interp::run_outputs(&bound, &feeds.into_iter().collect(), &EvalCx::default())
                .unwrap();
        let want = Loss::SoftmaxCrossEntropyGrad
            .eval(&[&lg, &lb, &Tensor::scalar(1.5)], &EvalCx::default());
        fd::assert_close(&out[0], &want.unwrap()[0], 1e-12);
    }

    #[test]
    fn mse_values_by_hand() {
        let p = Tensor::new(vec![2], vec![1.0, 2.0]);
        let t = Tensor::new(vec![2], vec![0.0, 4.0]);
        let out = Loss::Mse.eval(&[&p, &t], &EvalCx::default()).unwrap();
        assert_eq!(out, vec![Tensor::scalar(2.5)]);
    }

    #[test]
    fn shape_rules_and_errors() {
        let b = Shape(vec![Dim::Batch, Dim::Fixed(5)]);
        let logits = TensorType::new(F, b.clone());
        let labels = TensorType::new(I, Shape(vec![Dim::Batch]));
        let sce = Loss::SoftmaxCrossEntropy;
        assert_eq!(sce.infer(&[&logits, &labels]).unwrap(), vec![ty(F, &[])]);
        let e = sce.infer(&[&logits, &ty(I, &[4])]).unwrap_err();
        assert!(
            e.contains("input 1") && e.contains("[batch]") && e.contains("[4]"),
            "{e}"
        );
        let e = sce
            .infer(&[&logits, &TensorType::new(F, Shape(vec![Dim::Batch]))])
            .unwrap_err();
        assert!(e.contains("input 1") && e.contains("int"), "{e}");
        let e = sce.infer(&[&ty(I, &[2, 5]), &ty(I, &[2])]).unwrap_err();
        assert!(e.contains("input 0"), "{e}");
        let e = sce
            .infer(&[&TensorType::new(F, Shape(vec![Dim::Batch])), &ty(I, &[])])
            .unwrap_err();
        assert!(e.contains("C a fixed number"), "{e}");
        assert!(sce.infer(&[&logits]).unwrap_err().contains("expects 2"));
        let g = Loss::SoftmaxCrossEntropyGrad;
        assert_eq!(
            g.infer(&[&logits, &labels, &ty(F, &[])]).unwrap(),
            vec![logits.clone()]
        );
        let e = g.infer(&[&logits, &labels, &ty(F, &[1])]).unwrap_err();
        assert!(e.contains("input 2") && e.contains("f64[]"), "{e}");
        let p = TensorType::new(F, b);
        assert_eq!(Loss::Mse.infer(&[&p, &p]).unwrap(), vec![ty(F, &[])]);
        let e = Loss::Mse
            .infer(&[&p, &ty(DType::F32, &[3, 5])])
            .unwrap_err();
        assert!(e.contains("input 1") && e.contains("f32[3, 5]"), "{e}");
        assert!(Loss::Mse.infer(&[&ty(I, &[2]), &ty(I, &[2])]).is_err());
    }

    #[test]
    fn attrs_round_trip() {
        for op in [
            Loss::SoftmaxCrossEntropy,
            Loss::SoftmaxCrossEntropyGrad,
            Loss::Mse,
        ] {
            assert_eq!(Loss::parse(op.name(), &op.attrs()), Some(Ok(op)));
            assert_eq!(Op::parse(op.name(), &op.attrs()), Ok(Some(Op::Loss(op))));
            assert_eq!(op.recompute(), Recompute::Cheap);
            let mut a = Attrs::new();
            a.insert("axis".into(), crate::Attr::Int(1));
            assert!(
                Loss::parse(op.name(), &a)
                    .unwrap()
                    .unwrap_err()
                    .contains("unknown attribute 'axis'")
            );
        }
        assert_eq!(Loss::parse("Softmax", &Attrs::new()), None);
        let c = Loss::SoftmaxCrossEntropy.cost(&[&ty(F, &[2, 4]), &ty(I, &[2])], &[&ty(F, &[])]);
        assert_eq!(
            c,
            Cost {
                flops: 48,
                bytes: 64 + 16 + 8
            }
        );
    }

    #[test]
    fn cross_entropy_derivatives_match_finite_differences() {
        fd::check(&sce_args(), &|b, x| b.softmax_cross_entropy(x[0], x[1]));
        let mut args = sce_args();
        args.push((F, vec![], vec![1.3]));
        fd::check(&args, &|b, x| {
            b.node1(Op::Loss(Loss::SoftmaxCrossEntropyGrad), x)
        });
    }

    #[test]
    fn mse_derivatives_match_finite_differences() {
        let args: Vec<Arg> = vec![
            (F, vec![2, 3], fd::data(6, 0.1)),
            (F, vec![2, 3], fd::data(6, 2.0)),
        ];
        fd::check(&args, &|b, x| b.mse(x[0], x[1]));
    }
}
