//! Elementwise unary ops: Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu,
//! Gelu (tanh and erf forms), Erf, and Cast between dtypes.
//!
//! Every op but Cast needs a floating-point input and keeps its type; Cast
//! accepts any dtype. The f64 kernels compute in full precision whatever the
//! dtype; only Cast rounds (to f32/bf16/f16) or truncates (to ints).
//!
//! Also exports the scalar functions [`erf`], [`gelu`] and [`gelu_prime`],
//! which the GeluGrad kernel reuses.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, expect_arity, expect_float, pointwise_cost};
use crate::interp::{EvalCx, Tensor};
use crate::{Attr, AttrReader, Attrs, Builder, Result, TensorType, ValueId};

use super::GeluApprox;
use super::{Nn, Op};
use crate::DType;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    Gelu(GeluApprox),
    Erf,
    /// Converts to another dtype; float-to-float casts pass gradients.
    Cast(DType),
}

/// `2 / sqrt(pi)`.
const TWO_OVER_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;
/// `sqrt(2 / pi)`, the constant of the tanh form of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh form of GELU.
const GELU_CUBIC: f64 = 0.044_715;

/// The error function, accurate to a few ulp (about 6e-16 absolute) for
/// every `x`.
///
/// For `|x| < 1.5` it evaluates the everywhere-positive series
/// `erf(x) = 2/sqrt(pi) e^{-x^2} x sum_n (2x^2)^n / (3 5 ... (2n+1))` in
/// nested form (no cancellation); beyond, the continued fraction of `erfc`
/// evaluated backwards, and `erf = 1 - erfc`. `e^{-x^2}` is taken with the
/// rounding error of `x^2` corrected.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let v = if a < 1.5 {
        erf_series(a)
    } else if a < 6.5 {
        1.0 - erfc_continued_fraction(a)
    } else {
        1.0
    };
    if x < 0.0 { -v } else { v }
}

/// `e^{-x^2}`, with `x^2` split into its rounded value and rounding error.
fn exp_minus_square(x: f64) -> f64 {
    let hi = x * x;
    let lo = x.mul_add(x, -hi);
    (-hi).exp() * (1.0 - lo)
}

/// The series for `0 <= x < 1.5`: 60 nested terms leave a truncation error
/// far below 1e-17.
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let mut s = 1.0;
    for n in (1..=60).rev() {
        s = 1.0 + s * (2.0 * x2 / f64::from(2 * n + 1));
    }
    TWO_OVER_SQRT_PI * exp_minus_square(x) * x * s
}

/// `erfc(x) = e^{-x^2}/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))`
/// for `x >= 1.5`, evaluated from depth 120 backwards (converged to the last
/// bit by depth 80 at `x = 1.5`).
fn erfc_continued_fraction(x: f64) -> f64 {
    let mut f = x;
    for k in (1..=120).rev() {
        f = x + (f64::from(k) / 2.0) / f;
    }
    exp_minus_square(x) / (std::f64::consts::PI.sqrt() * f)
}

/// GELU in the given form.
pub fn gelu(x: f64, approx: GeluApprox) -> f64 {
    match approx {
        GeluApprox::Erf => 0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2)),
        GeluApprox::Tanh => {
            let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
            0.5 * x * (1.0 + u.tanh())
        }
    }
}

/// The derivative of [`gelu`] with respect to `x`.
pub fn gelu_prime(x: f64, approx: GeluApprox) -> f64 {
    match approx {
        GeluApprox::Erf => {
            let cdf = 0.5 * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        }
        GeluApprox::Tanh => {
            let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
            let t = u.tanh();
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
        }
    }
}

/// `x` as stored in `to`: rounded for narrower floats, truncated toward zero
/// (saturating, NaN to 0) for ints, `x != 0` for bool.
pub fn cast_value(x: f64, to: DType) -> f64 {
    match to {
        DType::F64 => x,
        DType::F32 => x as f32 as f64,
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::F16 => half::f16::from_f64(x).to_f64(),
        DType::I32 => x as i32 as f64,
        DType::I64 => x as i64 as f64,
        DType::Bool => {
            if x != 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl Unary {
    /// The scalar function of an op other than Cast.
    fn apply(&self, x: f64) -> f64 {
        match self {
            Unary::Neg => -x,
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Sqrt => x.sqrt(),
            Unary::Rsqrt => 1.0 / x.sqrt(),
            Unary::Tanh => x.tanh(),
            Unary::Sigmoid => sigmoid(x),
            // NaN passes through, as in PyTorch, so a diverged run shows.
            Unary::Relu => {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            Unary::Gelu(a) => gelu(x, *a),
            Unary::Erf => erf(x),
            Unary::Cast(to) => cast_value(x, *to),
        }
    }

    /// Emits `v * f'(x)` for an op other than Cast, where `y = f(x)` and `v`
    /// has the type of `x` (a cotangent or a tangent).
    fn times_derivative(
        &self,
        b: &mut Builder,
        x: ValueId,
        y: ValueId,
        v: ValueId,
    ) -> Result<ValueId> {
        match self {
            Unary::Neg => b.neg(v),
            Unary::Exp => b.mul(v, y),
            Unary::Log => b.div(v, x),
            Unary::Sqrt => {
                let half = b.scale(v, 0.5)?;
                b.div(half, y)
            }
            Unary::Rsqrt => {
                let y2 = b.mul(y, y)?;
                let y3 = b.mul(y2, y)?;
                let s = b.scale(v, -0.5)?;
                b.mul(s, y3)
            }
            Unary::Tanh => {
                let one = b.scalar_like(1.0, y)?;
                let y2 = b.mul(y, y)?;
                let d = b.sub(one, y2)?;
                b.mul(v, d)
            }
            Unary::Sigmoid => {
                let one = b.scalar_like(1.0, y)?;
                let rest = b.sub(one, y)?;
                let d = b.mul(y, rest)?;
                b.mul(v, d)
            }
            Unary::Relu => {
                let zero = b.scalar_like(0.0, x)?;
                let positive = b.greater(x, zero)?;
                b.select(positive, v, zero)
            }
            Unary::Erf => {
                let x2 = b.mul(x, x)?;
                let minus = b.neg(x2)?;
                let e = b.exp(minus)?;
                let d = b.scale(e, TWO_OVER_SQRT_PI)?;
                b.mul(v, d)
            }
            Unary::Gelu(a) => b.node1(Op::Nn(Nn::GeluGrad(*a)), &[x, v]),
            Unary::Cast(to) => b.cast(v, *to),
        }
    }

    /// FLOPs per element: each arithmetic operation and each call of a
    /// transcendental function (exp, log, sqrt, tanh, erf) counts as one;
    /// a cast counts as none.
    fn flops_per_element(&self) -> u64 {
        match self {
            Unary::Neg | Unary::Exp | Unary::Log | Unary::Sqrt | Unary::Tanh => 1,
            Unary::Relu | Unary::Erf => 1,
            Unary::Rsqrt => 2,
            // exp(-x), +1, reciprocal, negation
            Unary::Sigmoid => 4,
            // x/sqrt2, erf, +1, *x, *0.5
            Unary::Gelu(GeluApprox::Erf) => 5,
            // x^3 (2), *c, +x, *k, tanh, +1, *x, *0.5
            Unary::Gelu(GeluApprox::Tanh) => 9,
            Unary::Cast(_) => 0,
        }
    }
}

fn approx_name(a: GeluApprox) -> &'static str {
    match a {
        GeluApprox::Tanh => "tanh",
        GeluApprox::Erf => "erf",
    }
}

fn parse_approx(r: &mut AttrReader<'_>) -> std::result::Result<GeluApprox, String> {
    match r.string("approximate", Some("erf"))?.as_str() {
        "erf" => Ok(GeluApprox::Erf),
        "tanh" => Ok(GeluApprox::Tanh),
        other => Err(format!(
            "attribute 'approximate': expected \"tanh\" or \"erf\", found \"{other}\""
        )),
    }
}

impl OpRules for Unary {
    fn name(&self) -> &'static str {
        match self {
            Unary::Neg => "Neg",
            Unary::Exp => "Exp",
            Unary::Log => "Log",
            Unary::Sqrt => "Sqrt",
            Unary::Rsqrt => "Rsqrt",
            Unary::Tanh => "Tanh",
            Unary::Sigmoid => "Sigmoid",
            Unary::Relu => "Relu",
            Unary::Gelu(_) => "Gelu",
            Unary::Erf => "Erf",
            Unary::Cast(_) => "Cast",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let plain = match name {
            "Neg" => Unary::Neg,
            "Exp" => Unary::Exp,
            "Log" => Unary::Log,
            "Sqrt" => Unary::Sqrt,
            "Rsqrt" => Unary::Rsqrt,
            "Tanh" => Unary::Tanh,
            "Sigmoid" => Unary::Sigmoid,
            "Relu" => Unary::Relu,
            "Erf" => Unary::Erf,
            "Gelu" | "Cast" => {
                let mut r = AttrReader::new(attrs);
                let op = if name == "Gelu" {
                    parse_approx(&mut r).map(Unary::Gelu)
                } else {
                    r.dtype("to").map(Unary::Cast)
                };
                return Some(op.and_then(|op| r.finish().map(|()| op)));
            }
            _ => return None,
        };
        Some(AttrReader::new(attrs).finish().map(|()| plain))
    }

    fn attrs(&self) -> Attrs {
        let mut attrs = Attrs::new();
        match self {
            Unary::Gelu(a) => {
                attrs.insert("approximate".into(), Attr::Str(approx_name(*a).into()));
            }
            Unary::Cast(to) => {
                attrs.insert("to".into(), Attr::DType(*to));
            }
            _ => {}
        }
        attrs
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        expect_arity(inputs, 1)?;
        match self {
            Unary::Cast(to) => Ok(vec![TensorType::new(*to, inputs[0].shape.clone())]),
            _ => {
                expect_float(inputs, 0)?;
                Ok(vec![inputs[0].clone()])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let (x, y) = (cx.inputs[0], cx.outputs[0]);
        let float_in = cx.b.dtype(x).is_float();
        if !cx.wants[0] || !float_in {
            return Ok(vec![None]);
        }
        if let Unary::Cast(_) = self {
            if !cx.b.dtype(y).is_float() {
                return Ok(vec![None]);
            }
            let g = cx.cotangent(0)?;
            let back = cx.b.dtype(x);
            return Ok(vec![Some(cx.b.cast(g, back)?)]);
        }
        let g = cx.cotangent(0)?;
        Ok(vec![Some(self.times_derivative(cx.b, x, y, g)?)])
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let (x, y) = (cx.inputs[0], cx.outputs[0]);
        if !cx.b.dtype(x).is_float() || !cx.b.dtype(y).is_float() || cx.tangents[0].is_none() {
            return Ok(vec![None]);
        }
        let t = cx.tangent(0)?;
        Ok(vec![Some(self.times_derivative(cx.b, x, y, t)?)])
    }

    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        pointwise_cost(inputs, outputs, self.flops_per_element())
    }

    fn recompute(&self) -> Recompute {
        Recompute::Cheap
    }

    fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        match inputs {
            [x] if cx.exact_float_casts && matches!(self, Unary::Cast(to) if to.is_float()) => {
                Ok(vec![(*x).clone()])
            }
            [x] => Ok(vec![x.map(|v| self.apply(v))]),
            _ => Err(format!("expects 1 input(s), found {}", inputs.len())),
        }
    }
}

#[cfg(test)]
#[path = "tests/unary.rs"]
mod tests;
