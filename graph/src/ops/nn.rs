//! Neural-network ops:
//!
//! - `Softmax {axis: int = -1}`, `LogSoftmax {axis: int = -1}`: numerically
//!   stable (the maximum is subtracted first).
//! - `LayerNorm {eps: float = 1e-5}` (x `[..., D]`, gamma `[D]`, beta `[D]`):
//!   normalises the last axis with the biased variance, like PyTorch.
//! - `LayerNormGrad {eps}` (x, gamma, dy) -> (dx, dgamma, dbeta): its fused
//!   backward, recomputing the statistics; dgamma and dbeta are summed over
//!   all leading axes.
//! - `GeluGrad {approximate: "tanh" | "erf" = "erf"}` (x, dy) -> `dy * gelu'(x)`.
//! - `Dropout {p: float, key: int}`: `x * mask / (1 - p)` where the mask is
//!   drawn from the counter-based RNG keyed on (seed, step, rank, key,
//!   element), so a recompute or the backward pass replays the same mask.
//! - `CausalMask {fill: float = -inf}` (`[..., T, T]`): entries with column >
//!   row set to `fill`.
//!
//! LayerNorm, LayerNormGrad and GeluGrad have decompositions into primitive
//! ops; the rules of the fused backward ops (and the JVP of LayerNorm) are
//! taken through them.

use super::{
    Cost, JvpCx, Op, OpRules, Recompute, VjpCx, expect_arity, expect_float, numel, pointwise_cost,
};
use crate::attr::{Attr, AttrReader};
use crate::autodiff::{jvp_by_decomposition, vjp_by_decomposition};
use crate::interp::{EvalCx, Tensor};
use crate::rng::Stream;
use crate::shape::normalize_axis;
use crate::{Attrs, Builder, Dim, Error, Result, TensorType, ValueId};

const DEFAULT_EPS: f64 = 1e-5;
const GELU_CUBIC: f64 = 0.044_715;

/// The two forms of GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluApprox {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
    Tanh,
    /// `x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`
    Erf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nn {
    Softmax {
        axis: i64,
    },
    LogSoftmax {
        axis: i64,
    },
    /// `LayerNorm(x, gamma, beta)` over the last axis.
    LayerNorm {
        eps: f64,
    },
    /// `LayerNormGrad(x, gamma, dy) -> (dx, dgamma, dbeta)`.
    LayerNormGrad {
        eps: f64,
    },
    /// `GeluGrad(x, dy) = dy * gelu_prime(x)`.
    GeluGrad(GeluApprox),
    /// Zeroes each element with probability `p` and scales the rest by
    /// 1/(1-p); the mask is drawn from the counter-based RNG keyed on
    /// (seed, step, rank, `key`, element).
    Dropout {
        p: f64,
        key: u64,
    },
    /// Entries above the diagonal of the last two axes set to `fill`.
    CausalMask {
        fill: f64,
    },
}

impl OpRules for Nn {
    fn name(&self) -> &'static str {
        match self {
            Nn::Softmax { .. } => "Softmax",
            Nn::LogSoftmax { .. } => "LogSoftmax",
            Nn::LayerNorm { .. } => "LayerNorm",
            Nn::LayerNormGrad { .. } => "LayerNormGrad",
            Nn::GeluGrad(_) => "GeluGrad",
            Nn::Dropout { .. } => "Dropout",
            Nn::CausalMask { .. } => "CausalMask",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let mut r = AttrReader::new(attrs);
        let op = match name {
            "Softmax" => r.int("axis", Some(-1)).map(|axis| Nn::Softmax { axis }),
            "LogSoftmax" => r.int("axis", Some(-1)).map(|axis| Nn::LogSoftmax { axis }),
            "LayerNorm" => parse_eps(&mut r).map(|eps| Nn::LayerNorm { eps }),
            "LayerNormGrad" => parse_eps(&mut r).map(|eps| Nn::LayerNormGrad { eps }),
            "GeluGrad" => r
                .string("approximate", Some("erf"))
                .and_then(|s| parse_approx(&s))
                .map(Nn::GeluGrad),
            "Dropout" => parse_dropout(&mut r),
            "CausalMask" => r
                .float("fill", Some(f64::NEG_INFINITY))
                .map(|fill| Nn::CausalMask { fill }),
            _ => return None,
        };
        Some(op.and_then(|op| r.finish().map(|()| op)))
    }

    fn attrs(&self) -> Attrs {
        let (k, v): (&[&str], Vec<Attr>) = match *self {
            Nn::Softmax { axis } | Nn::LogSoftmax { axis } => (&["axis"], vec![Attr::Int(axis)]),
            Nn::LayerNorm { eps } | Nn::LayerNormGrad { eps } => (&["eps"], vec![Attr::Float(eps)]),
            Nn::GeluGrad(a) => (&["approximate"], vec![Attr::Str(approx_name(a).into())]),
            // The key is a u64 stored bit for bit in an i64.
            Nn::Dropout { p, key } => (&["p", "key"], vec![Attr::Float(p), Attr::Int(key as i64)]),
            Nn::CausalMask { fill } => (&["fill"], vec![Attr::Float(fill)]),
        };
        k.iter().map(|s| s.to_string()).zip(v).collect()
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        match *self {
            Nn::Softmax { axis } | Nn::LogSoftmax { axis } => {
                expect_arity(inputs, 1)?;
                expect_float(inputs, 0)?;
                let s = &inputs[0].shape;
                normalize_axis(axis, s.rank()).ok_or_else(|| {
                    format!("attribute 'axis': {axis} is out of range for input 0 of shape {s}")
                })?;
                Ok(vec![inputs[0].clone()])
            }
            Nn::LayerNorm { eps } => {
                check_eps(eps)?;
                layer_norm_types(inputs, "beta").map(|(x, _)| vec![x])
            }
            Nn::LayerNormGrad { eps } => {
                check_eps(eps)?;
                let (x, gamma) = layer_norm_types(inputs, "dy")?;
                Ok(vec![x, gamma.clone(), gamma])
            }
            Nn::GeluGrad(_) => {
                expect_arity(inputs, 2)?;
                expect_float(inputs, 0)?;
                same_type(inputs, 1, 0)?;
                Ok(vec![inputs[0].clone()])
            }
            Nn::Dropout { p, .. } => {
                check_p(p)?;
                expect_arity(inputs, 1)?;
                expect_float(inputs, 0)?;
                Ok(vec![inputs[0].clone()])
            }
            Nn::CausalMask { .. } => {
                expect_arity(inputs, 1)?;
                expect_float(inputs, 0)?;
                causal_size(&inputs[0].shape)?;
                Ok(vec![inputs[0].clone()])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        if !cx.wants.contains(&true) {
            return Ok(vec![None; cx.inputs.len()]);
        }
        match *self {
            Nn::LayerNormGrad { .. } | Nn::GeluGrad(_) => vjp_by_decomposition(&Op::Nn(*self), cx),
            Nn::LayerNorm { eps } => {
                let g = cx.cotangent(0)?;
                let (x, gamma) = (cx.inputs[0], cx.inputs[1]);
                let grads =
                    cx.b.node(Op::Nn(Nn::LayerNormGrad { eps }), &[x, gamma, g])?;
                let wanted = grads.into_iter().zip(cx.wants);
                Ok(wanted.map(|(v, &w)| w.then_some(v)).collect())
            }
            _ => {
                let g = cx.cotangent(0)?;
                Ok(vec![Some(self.linearized(cx.b, cx.outputs[0], g, true)?)])
            }
        }
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        if let Nn::LayerNorm { .. } | Nn::LayerNormGrad { .. } | Nn::GeluGrad(_) = self {
            return jvp_by_decomposition(&Op::Nn(*self), cx);
        }
        match cx.tangents.first().copied().flatten() {
            Some(t) => Ok(vec![Some(self.linearized(
                cx.b,
                cx.outputs[0],
                t,
                false,
            )?)]),
            None => Ok(vec![None]),
        }
    }

    /// FLOPs per element of the (first) input: Softmax and LogSoftmax 5 (max,
    /// subtract, exp, sum, divide or log-subtract); LayerNorm 8 (mean,
    /// centre, square, sum, rstd scale, gamma, beta, and the per-row rsqrt
    /// amortised); LayerNormGrad 16 (the statistics again, dy·gamma, two
    /// row means, dx, and the dgamma/dbeta sums); GeluGrad 15 (gelu' plus the
    /// product with dy); Dropout 2 (compare and scale; the RNG is not
    /// counted); CausalMask 0 (a select). Bytes: every input and output
    /// read or written once.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        let per = match self {
            Nn::Softmax { .. } | Nn::LogSoftmax { .. } => 5,
            Nn::LayerNorm { .. } => 8,
            Nn::LayerNormGrad { .. } => 16,
            Nn::GeluGrad(_) => 15,
            Nn::Dropout { .. } => 2,
            Nn::CausalMask { .. } => 0,
        };
        let mut c = pointwise_cost(inputs, outputs, 0);
        c.flops = inputs.first().map_or(0, |t| numel(t)) * per;
        c
    }

    fn recompute(&self) -> Recompute {
        Recompute::Cheap
    }

    fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        match (*self, inputs) {
            (Nn::Softmax { axis }, [x]) => map_lanes(x, axis, softmax_lane).map(|t| vec![t]),
            (Nn::LogSoftmax { axis }, [x]) => map_lanes(x, axis, log_softmax_lane).map(|t| vec![t]),
            (Nn::LayerNorm { eps }, [x, gamma, beta]) => {
                layer_norm(x, gamma, beta, eps).map(|t| vec![t])
            }
            (Nn::LayerNormGrad { eps }, [x, gamma, dy]) => layer_norm_grad(x, gamma, dy, eps),
            (Nn::GeluGrad(a), [x, dy]) => {
                if x.shape != dy.shape {
                    return Err(format!(
                        "x {:?} and dy {:?} differ in shape",
                        x.shape, dy.shape
                    ));
                }
                let data = (x.data.iter().zip(&dy.data))
                    .map(|(&x, &d)| d * super::unary::gelu_prime(x, a))
                    .collect();
                Ok(vec![Tensor::new(x.shape.clone(), data)])
            }
            (Nn::Dropout { p, key }, [x]) => dropout(x, p, key, cx).map(|t| vec![t]),
            (Nn::CausalMask { fill }, [x]) => causal_mask(x, fill).map(|t| vec![t]),
            _ => Err(format!(
                "{}: wrong number of inputs ({})",
                self.name(),
                inputs.len()
            )),
        }
    }

    fn decompose(&self, b: &mut Builder, inputs: &[ValueId]) -> Option<Result<Vec<ValueId>>> {
        match (*self, inputs) {
            (Nn::LayerNorm { eps }, &[x, gamma, beta]) => {
                Some(decompose_layer_norm(b, x, gamma, beta, eps))
            }
            (Nn::LayerNormGrad { eps }, &[x, gamma, dy]) => {
                Some(decompose_layer_norm_grad(b, x, gamma, dy, eps))
            }
            (Nn::GeluGrad(a), &[x, dy]) => Some(decompose_gelu_grad(b, x, dy, a)),
            (Nn::LayerNorm { .. } | Nn::LayerNormGrad { .. } | Nn::GeluGrad(_), _) => {
                Some(Err(Error::Unsupported(format!(
                    "{}: wrong number of inputs ({})",
                    self.name(),
                    inputs.len()
                ))))
            }
            _ => None,
        }
    }
}

impl Nn {
    /// For the single-input ops: the derivative at output `y` applied to a
    /// tangent `v` (`vjp == false`), or its transpose applied to a cotangent
    /// (`vjp == true`). Softmax's is self-adjoint: `y * (v - sum(v * y))`;
    /// LogSoftmax's is `v - sum(exp(y) * v)` and its transpose
    /// `v - exp(y) * sum(v)`; Dropout and CausalMask are linear (the mask
    /// replays; the masked entries get 0).
    fn linearized(self, b: &mut Builder, y: ValueId, v: ValueId, vjp: bool) -> Result<ValueId> {
        match self {
            Nn::Softmax { axis } => {
                let vy = b.mul(v, y)?;
                let s = b.sum(vy, &[axis], true)?;
                let d = b.sub(v, s)?;
                b.mul(y, d)
            }
            Nn::LogSoftmax { axis } => {
                let e = b.exp(y)?;
                let s = if vjp {
                    let s = b.sum(v, &[axis], true)?;
                    b.mul(e, s)?
                } else {
                    let ev = b.mul(e, v)?;
                    b.sum(ev, &[axis], true)?
                };
                b.sub(v, s)
            }
            Nn::Dropout { p, key } => b.dropout(v, p, key),
            Nn::CausalMask { .. } => b.causal_mask(v, 0.0),
            _ => Err(Error::Unsupported(format!(
                "{} has no single-input linearization",
                self.name()
            ))),
        }
    }
}

// ----- attributes -----

fn approx_name(a: GeluApprox) -> &'static str {
    match a {
        GeluApprox::Tanh => "tanh",
        GeluApprox::Erf => "erf",
    }
}

fn parse_approx(s: &str) -> std::result::Result<GeluApprox, String> {
    match s {
        "tanh" => Ok(GeluApprox::Tanh),
        "erf" => Ok(GeluApprox::Erf),
        other => Err(format!(
            "attribute 'approximate': expected \"tanh\" or \"erf\", found \"{other}\""
        )),
    }
}

fn check_eps(eps: f64) -> std::result::Result<(), String> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(format!(
            "attribute 'eps': expected a finite value >= 0, found {eps}"
        ))
    }
}

fn parse_eps(r: &mut AttrReader<'_>) -> std::result::Result<f64, String> {
    let eps = r.float("eps", Some(DEFAULT_EPS))?;
    check_eps(eps)?;
    Ok(eps)
}

fn check_p(p: f64) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!(
            "attribute 'p': expected a probability in [0, 1), found {p}"
        ))
    }
}

fn parse_dropout(r: &mut AttrReader<'_>) -> std::result::Result<Nn, String> {
    let p = r.float("p", None)?;
    let key = r.int("key", None)?;
    check_p(p)?;
    Ok(Nn::Dropout { p, key: key as u64 })
}

// ----- shape rules -----

/// Input `i` must have exactly the type of input `j`.
fn same_type(inputs: &[&TensorType], i: usize, j: usize) -> std::result::Result<(), String> {
    if inputs[i] == inputs[j] {
        Ok(())
    } else {
        Err(format!(
            "input {i}: expected {} (the type of input {j}), found {}",
            inputs[j], inputs[i]
        ))
    }
}

/// Checks `(x [..., D], gamma [D], third)` where `third` (beta or dy) has
/// the type of gamma (beta) or of x (dy); returns the types of x and gamma.
fn layer_norm_types(
    inputs: &[&TensorType],
    third: &str,
) -> std::result::Result<(TensorType, TensorType), String> {
    expect_arity(inputs, 3)?;
    expect_float(inputs, 0)?;
    let x = inputs[0];
    let Some(&d) = x.shape.dims().last() else {
        return Err(format!(
            "input 0: expected rank >= 1 ([..., D]), found {}",
            x.shape
        ));
    };
    let gamma = TensorType::new(x.dtype, crate::Shape(vec![d]));
    if inputs[1] != &gamma {
        return Err(format!(
            "input 1 (gamma): expected {gamma}, found {}",
            inputs[1]
        ));
    }
    let want = if third == "dy" { x } else { &gamma };
    if inputs[2] != want {
        return Err(format!(
            "input 2 ({third}): expected {want}, found {}",
            inputs[2]
        ));
    }
    Ok((x.clone(), gamma))
}

/// `T` of a `[..., T, T]` shape with `T` fixed.
fn causal_size(s: &crate::Shape) -> std::result::Result<usize, String> {
    match s.dims() {
        [.., Dim::Fixed(a), Dim::Fixed(b)] if a == b => Ok(*a),
        _ => Err(format!(
            "input 0: expected [..., T, T] with the last two dims fixed and equal, found {s}"
        )),
    }
}

// ----- reference kernels -----

/// Applies `f` to every lane of `x` along `axis` (in place on a copy).
fn map_lanes(x: &Tensor, axis: i64, f: fn(&mut [f64])) -> std::result::Result<Tensor, String> {
    let ax = normalize_axis(axis, x.rank())
        .ok_or_else(|| format!("axis {axis} is out of range for rank {}", x.rank()))?;
    let n = x.shape[ax];
    let inner: usize = x.shape[ax + 1..].iter().product();
    let outer: usize = x.shape[..ax].iter().product();
    let mut out = x.data.clone();
    let mut lane = vec![0.0; n];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * n + k) * inner + i;
            for (k, v) in lane.iter_mut().enumerate() {
                *v = x.data[at(k)];
            }
            f(&mut lane);
            for (k, v) in lane.iter().enumerate() {
                out[at(k)] = *v;
            }
        }
    }
    Ok(Tensor::new(x.shape.clone(), out))
}

fn softmax_lane(v: &mut [f64]) {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    for x in v.iter_mut() {
        *x /= s;
    }
}

fn log_softmax_lane(v: &mut [f64]) {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    for x in v.iter_mut() {
        *x -= lse;
    }
}

/// The normalised row `(x - mean) * rstd` and `rstd`.
fn normalize_row(row: &[f64], eps: f64) -> (Vec<f64>, f64) {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    (row.iter().map(|x| (x - mean) * rstd).collect(), rstd)
}

/// The row length D, checking gamma (and, for the backward, dy).
fn row_len(
    x: &Tensor,
    gamma: &Tensor,
    other: &Tensor,
    other_shape: &[usize],
) -> std::result::Result<usize, String> {
    let d = x.shape.last().copied().ok_or("x must have rank >= 1")?;
    if gamma.shape != [d] || other.shape != other_shape {
        return Err(format!(
            "shapes x {:?}, gamma {:?}, third input {:?} do not match",
            x.shape, gamma.shape, other.shape
        ));
    }
    Ok(d)
}

fn layer_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> std::result::Result<Tensor, String> {
    let d = row_len(x, gamma, beta, &gamma.shape)?;
    let mut out = Vec::with_capacity(x.numel());
    if d > 0 {
        for row in x.data.chunks_exact(d) {
            let (xhat, _) = normalize_row(row, eps);
            out.extend((0..d).map(|k| xhat[k] * gamma.data[k] + beta.data[k]));
        }
    }
    Ok(Tensor::new(x.shape.clone(), out))
}

fn layer_norm_grad(
    x: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> std::result::Result<Vec<Tensor>, String> {
    let d = row_len(x, gamma, dy, &x.shape)?;
    let mut dx = Vec::with_capacity(x.numel());
    let mut dgamma = vec![0.0; d];
    let mut dbeta = vec![0.0; d];
    if d > 0 {
        for (row, dyr) in x.data.chunks_exact(d).zip(dy.data.chunks_exact(d)) {
            let (xhat, rstd) = normalize_row(row, eps);
            let dyg: Vec<f64> = (0..d).map(|k| dyr[k] * gamma.data[k]).collect();
            let m1 = dyg.iter().sum::<f64>() / d as f64;
            let m2 = (0..d).map(|k| dyg[k] * xhat[k]).sum::<f64>() / d as f64;
            dx.extend((0..d).map(|k| rstd * (dyg[k] - m1 - xhat[k] * m2)));
            for k in 0..d {
                dgamma[k] += dyr[k] * xhat[k];
                dbeta[k] += dyr[k];
            }
        }
    }
    Ok(vec![
        Tensor::new(x.shape.clone(), dx),
        Tensor::new(vec![d], dgamma),
        Tensor::new(vec![d], dbeta),
    ])
}

fn dropout(x: &Tensor, p: f64, key: u64, cx: &EvalCx) -> std::result::Result<Tensor, String> {
    check_p(p)?;
    if p == 0.0 {
        return Ok(x.clone());
    }
    let stream = Stream {
        seed: cx.seed,
        step: cx.step,
        rank: cx.rank,
        site: key,
    };
    let scale = 1.0 / (1.0 - p);
    let data = (x.data.iter().enumerate())
        .map(|(e, &v)| {
            if stream.uniform(e as u64) >= p {
                v * scale
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::new(x.shape.clone(), data))
}

fn causal_mask(x: &Tensor, fill: f64) -> std::result::Result<Tensor, String> {
    let t = match x.shape[..] {
        [.., a, b] if a == b => a,
        _ => return Err(format!("expected [..., T, T], found {:?}", x.shape)),
    };
    let data = (x.data.iter().enumerate())
        .map(|(e, &v)| if e % t > (e / t) % t { fill } else { v })
        .collect();
    Ok(Tensor::new(x.shape.clone(), data))
}

// ----- decompositions -----

/// `x * c` for a constant `c`, and `x + c`.
fn add_const(b: &mut Builder, x: ValueId, c: f64) -> Result<ValueId> {
    let k = b.scalar_like(c, x)?;
    b.add(x, k)
}

/// `(xhat, rstd)` of the last axis: `xhat = (x - mean) * rstd` with
/// `rstd = rsqrt(mean((x - mean)^2) + eps)`, kept dims.
fn ln_normalize(b: &mut Builder, x: ValueId, eps: f64) -> Result<(ValueId, ValueId)> {
    let mean = b.mean(x, &[-1], true)?;
    let c = b.sub(x, mean)?;
    let c2 = b.mul(c, c)?;
    let var = b.mean(c2, &[-1], true)?;
    let ve = add_const(b, var, eps)?;
    let rstd = b.rsqrt(ve)?;
    let xhat = b.mul(c, rstd)?;
    Ok((xhat, rstd))
}

fn decompose_layer_norm(
    b: &mut Builder,
    x: ValueId,
    gamma: ValueId,
    beta: ValueId,
    eps: f64,
) -> Result<Vec<ValueId>> {
    let (xhat, _) = ln_normalize(b, x, eps)?;
    let scaled = b.mul(xhat, gamma)?;
    Ok(vec![b.add(scaled, beta)?])
}

fn decompose_layer_norm_grad(
    b: &mut Builder,
    x: ValueId,
    gamma: ValueId,
    dy: ValueId,
    eps: f64,
) -> Result<Vec<ValueId>> {
    let (xhat, rstd) = ln_normalize(b, x, eps)?;
    let dyg = b.mul(dy, gamma)?;
    let m1 = b.mean(dyg, &[-1], true)?;
    let dyg_xhat = b.mul(dyg, xhat)?;
    let m2 = b.mean(dyg_xhat, &[-1], true)?;
    let centred = b.sub(dyg, m1)?;
    let proj = b.mul(xhat, m2)?;
    let inner = b.sub(centred, proj)?;
    let dx = b.mul(rstd, inner)?;
    let lead: Vec<i64> = (0..b.shape(x).rank() as i64 - 1).collect();
    let dy_xhat = b.mul(dy, xhat)?;
    let (dgamma, dbeta) = if lead.is_empty() {
        (dy_xhat, dy)
    } else {
        (b.sum(dy_xhat, &lead, false)?, b.sum(dy, &lead, false)?)
    };
    Ok(vec![dx, dgamma, dbeta])
}

fn decompose_gelu_grad(
    b: &mut Builder,
    x: ValueId,
    dy: ValueId,
    approx: GeluApprox,
) -> Result<Vec<ValueId>> {
    use std::f64::consts::{FRAC_1_SQRT_2, PI};
    let x2 = b.mul(x, x)?;
    let d = match approx {
        GeluApprox::Tanh => {
            let c = (2.0 / PI).sqrt();
            let x3 = b.mul(x2, x)?;
            let cubic = b.scale(x3, GELU_CUBIC)?;
            let inner = b.add(x, cubic)?;
            let u = b.scale(inner, c)?;
            let th = b.tanh(u)?;
            let one_th = add_const(b, th, 1.0)?;
            let first = b.scale(one_th, 0.5)?;
            let th2 = b.mul(th, th)?;
            let neg_th2 = b.neg(th2)?;
            let sech2 = add_const(b, neg_th2, 1.0)?;
            let poly_x2 = b.scale(x2, 3.0 * GELU_CUBIC)?;
            let poly = add_const(b, poly_x2, 1.0)?;
            let hx = b.scale(x, 0.5 * c)?;
            let hs = b.mul(hx, sech2)?;
            let second = b.mul(hs, poly)?;
            b.add(first, second)?
        }
        GeluApprox::Erf => {
            let xs = b.scale(x, FRAC_1_SQRT_2)?;
            let e = b.erf(xs)?;
            let one_e = add_const(b, e, 1.0)?;
            let cdf = b.scale(one_e, 0.5)?;
            let h = b.scale(x2, -0.5)?;
            let ex = b.exp(h)?;
            let pdf = b.scale(ex, 1.0 / (2.0 * PI).sqrt())?;
            let xpdf = b.mul(x, pdf)?;
            b.add(cdf, xpdf)?
        }
    };
    Ok(vec![b.mul(d, dy)?])
}

#[cfg(test)]
#[path = "tests/nn.rs"]
mod tests;
