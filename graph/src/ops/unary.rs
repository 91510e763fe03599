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
            Unary::Relu => {
                if x > 0.0 {
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

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        match inputs {
            [x] => Ok(vec![x.map(|v| self.apply(v))]),
            _ => Err(format!("expects 1 input(s), found {}", inputs.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::grad;
    use crate::interp::run_outputs;
    use crate::ops::Op;
    use crate::ops::binary::tests::{check_derivatives, feeds};
    use crate::{Dim, InputRole, Shape};

    fn tt(dtype: DType, dims: &[usize]) -> TensorType {
        TensorType::new(dtype, Shape::of(dims))
    }

    fn eval1(op: Unary, data: &[f64]) -> Vec<f64> {
        let x = Tensor::new(vec![data.len()], data.to_vec());
        let out = op.eval(&[&x], &EvalCx::default()).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].shape, vec![data.len()]);
        out[0].data.clone()
    }

    fn assert_close(found: &[f64], want: &[f64], tol: f64) {
        assert_eq!(found.len(), want.len(), "{found:?} vs {want:?}");
        for (f, w) in found.iter().zip(want) {
            assert!(
                (f - w).abs() <= tol * w.abs().max(1.0),
                "{found:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn erf_matches_reference_values() {
        let cases = [
            (0.0, 0.0),
            (1e-5, 1.1283791670579e-05),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (-0.3, -0.3286267594591274),
            (2.9, 0.9999589021219005),
            (3.0, 0.9999779095030014),
            (3.1, 0.9999883513426328),
            (1.49, 0.9648978648432042),
            (1.5, 0.9661051464753108),
            (3.5, 0.9999992569016276),
            (4.0, 0.9999999845827421),
            (5.0, 0.9999999999984626),
            (-6.0, -1.0),
            (f64::INFINITY, 1.0),
        ];
        for (x, want) in cases {
            let got = erf(x);
            assert!(
                (got - want).abs() <= 2e-16 + 4e-16 * want.abs(),
                "erf({x}) = {got}, want {want}"
            );
        }
        assert!(erf(f64::NAN).is_nan());
    }

    #[test]
    fn gelu_forms_and_derivatives() {
        let cases = [
            (1.0, GeluApprox::Erf, 0.8413447460685429),
            (-0.5, GeluApprox::Erf, -0.15426876936299344),
            (1.0, GeluApprox::Tanh, 0.8411919906082768),
            (-0.5, GeluApprox::Tanh, -0.15428599017485606),
        ];
        for (x, a, want) in cases {
            assert!((gelu(x, a) - want).abs() < 1e-15, "gelu({x}, {a:?})");
            assert_close(&eval1(Unary::Gelu(a), &[x]), &[want], 1e-15);
            let h = 1e-6;
            let fd = (gelu(x + h, a) - gelu(x - h, a)) / (2.0 * h);
            assert!((gelu_prime(x, a) - fd).abs() < 1e-8, "gelu'({x}, {a:?})");
        }
    }

    #[test]
    fn eval_values() {
        let e = std::f64::consts::E;
        assert_close(
            &eval1(Unary::Neg, &[1.5, -2.0, 0.0]),
            &[-1.5, 2.0, 0.0],
            0.0,
        );
        assert_close(&eval1(Unary::Exp, &[0.0, 1.0]), &[1.0, e], 1e-15);
        assert_close(&eval1(Unary::Log, &[1.0, e]), &[0.0, 1.0], 1e-15);
        assert_close(&eval1(Unary::Sqrt, &[4.0, 2.25]), &[2.0, 1.5], 0.0);
        assert_close(&eval1(Unary::Rsqrt, &[4.0, 0.25]), &[0.5, 2.0], 0.0);
        assert_close(
            &eval1(Unary::Tanh, &[0.0, 1.0]),
            &[0.0, 0.7615941559557649],
            1e-15,
        );
        assert_close(
            &eval1(Unary::Sigmoid, &[0.0, 2.0]),
            &[0.5, 0.8807970779778823],
            1e-15,
        );
        assert_close(&eval1(Unary::Sigmoid, &[-800.0, 800.0]), &[0.0, 1.0], 0.0);
        assert_close(
            &eval1(Unary::Relu, &[-1.0, 0.0, 2.5]),
            &[0.0, 0.0, 2.5],
            0.0,
        );
        assert_close(&eval1(Unary::Erf, &[0.5]), &[0.5204998778130465], 3e-16);
        assert!(eval1(Unary::Log, &[-1.0])[0].is_nan());
    }

    #[test]
    fn cast_rounds_to_floats_and_truncates_to_ints() {
        let cast = |to, x: &[f64]| eval1(Unary::Cast(to), x);
        assert_eq!(cast(DType::F64, &[0.1]), vec![0.1]);
        assert_eq!(cast(DType::F32, &[0.1]), vec![0.10000000149011612]);
        assert_eq!(cast(DType::F16, &[0.1]), vec![0.0999755859375]);
        // bf16 keeps 8 significant bits: ties round to even.
        assert_eq!(
            cast(DType::BF16, &[1.00390625, 1.01, 1.01171875]),
            vec![1.0, 1.0078125, 1.015625]
        );
        assert_eq!(
            cast(DType::I32, &[2.7, -2.7, 0.5, -0.0]),
            vec![2.0, -2.0, 0.0, 0.0]
        );
        assert_eq!(cast(DType::I64, &[1e12 + 0.9, -3.99]), vec![1e12, -3.0]);
        assert_eq!(cast(DType::Bool, &[0.0, -0.5, 3.0]), vec![0.0, 1.0, 1.0]);
        assert_eq!(
            cast(DType::I32, &[f64::NAN, 1e20]),
            vec![0.0, i32::MAX as f64]
        );
    }

    #[test]
    fn eval_rejects_wrong_arity() {
        let x = Tensor::scalar(1.0);
        assert!(Unary::Exp.eval(&[&x, &x], &EvalCx::default()).is_err());
        assert!(Unary::Exp.eval(&[], &EvalCx::default()).is_err());
    }

    #[test]
    fn infer_types_and_errors() {
        let batch = TensorType::new(DType::BF16, Shape(vec![Dim::Batch, Dim::Fixed(8)]));
        assert_eq!(Unary::Tanh.infer(&[&batch]).unwrap(), vec![batch.clone()]);
        let cast = Unary::Cast(DType::I32).infer(&[&batch]).unwrap();
        assert_eq!(cast, vec![TensorType::new(DType::I32, batch.shape.clone())]);
        let ints = tt(DType::I64, &[3]);
        assert_eq!(
            Unary::Exp.infer(&[&ints]).unwrap_err(),
            "input 0: expected a floating-point dtype, found i64"
        );
        assert!(Unary::Cast(DType::F32).infer(&[&ints]).is_ok());
        let f = tt(DType::F32, &[2]);
        assert_eq!(
            Unary::Neg.infer(&[]).unwrap_err(),
            "expects 1 input(s), found 0"
        );
        assert_eq!(
            Unary::Neg.infer(&[&f, &f]).unwrap_err(),
            "expects 1 input(s), found 2"
        );
    }

    #[test]
    fn attrs_round_trip() {
        let mut ops = vec![
            Unary::Neg,
            Unary::Exp,
            Unary::Log,
            Unary::Sqrt,
            Unary::Rsqrt,
            Unary::Tanh,
            Unary::Sigmoid,
            Unary::Relu,
            Unary::Erf,
            Unary::Gelu(GeluApprox::Erf),
            Unary::Gelu(GeluApprox::Tanh),
        ];
        ops.extend(DType::ALL.map(Unary::Cast));
        for op in ops {
            assert_eq!(Unary::parse(op.name(), &op.attrs()), Some(Ok(op)));
            assert_eq!(Op::parse(op.name(), &op.attrs()), Ok(Some(Op::Unary(op))));
            assert_eq!(op.recompute(), Recompute::Cheap);
        }
        assert_eq!(Unary::parse("MatMul", &Attrs::new()), None);
        assert_eq!(
            Unary::parse("Gelu", &Attrs::new()),
            Some(Ok(Unary::Gelu(GeluApprox::Erf)))
        );
        let mut bad = Attrs::new();
        bad.insert("approximate".into(), Attr::Str("fast".into()));
        let err = Unary::parse("Gelu", &bad).unwrap().unwrap_err();
        assert!(err.contains("approximate") && err.contains("fast"), "{err}");
        let err = Unary::parse("Cast", &Attrs::new()).unwrap().unwrap_err();
        assert_eq!(err, "attribute 'to' is required");
        bad.insert("to".into(), Attr::Str("f32".into()));
        let err = Unary::parse("Exp", &bad).unwrap().unwrap_err();
        assert!(err.contains("unknown attribute"), "{err}");
        let mut to = Attrs::new();
        to.insert("to".into(), Attr::Str("f17".into()));
        assert!(
            Unary::parse("Cast", &to)
                .unwrap()
                .unwrap_err()
                .contains("f17")
        );
    }

    #[test]
    fn cost_counts_elements() {
        let t = TensorType::new(DType::F32, Shape(vec![Dim::Batch, Dim::Fixed(10)]));
        let c = Unary::Exp.cost(&[&t], &[&t]);
        assert_eq!(
            c,
            Cost {
                flops: 10,
                bytes: 80
            }
        );
        let i = tt(DType::I32, &[10]);
        assert_eq!(
            Unary::Cast(DType::I32).cost(&[&t], &[&i]),
            Cost {
                flops: 0,
                bytes: 80
            }
        );
    }

    fn check_unary(op: Unary, xs: &[f64]) {
        let x = Tensor::new(vec![xs.len()], xs.to_vec());
        check_derivatives(&[(DType::F64, x)], |b, v| b.unary(op, v[0]));
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let pos = [0.4, 1.3, 2.2];
        let any = [-1.2, -0.3, 0.5, 1.7];
        check_unary(Unary::Neg, &any);
        check_unary(Unary::Exp, &any);
        check_unary(Unary::Log, &pos);
        check_unary(Unary::Sqrt, &pos);
        check_unary(Unary::Rsqrt, &pos);
        check_unary(Unary::Tanh, &any);
        check_unary(Unary::Sigmoid, &any);
        check_unary(Unary::Relu, &any);
        check_unary(Unary::Erf, &any);
        check_unary(Unary::Cast(DType::F64), &any);
    }

    #[test]
    fn gelu_derivatives_go_through_gelu_grad() {
        for a in [GeluApprox::Erf, GeluApprox::Tanh] {
            check_unary(Unary::Gelu(a), &[-1.2, -0.3, 0.5, 1.7]);
        }
    }

    #[test]
    fn scalar_derivatives_match_finite_differences() {
        // Scalars need only Constant besides the ops under test.
        for op in [Unary::Exp, Unary::Tanh, Unary::Erf, Unary::Rsqrt] {
            check_derivatives(&[(DType::F64, Tensor::scalar(0.8))], |b, v| {
                b.unary(op, v[0])
            });
        }
    }

    #[test]
    fn cast_gradients_cast_back_or_stop() {
        let mut b = Builder::new("cast");
        let x = b
            .input("x", DType::F32, Shape::scalar(), InputRole::Data)
            .unwrap();
        let wide = b.cast(x, DType::F64).unwrap();
        let int = b.cast(x, DType::I32).unwrap();
        let back = b.cast(int, DType::F64).unwrap();
        let loss = b.add(wide, back).unwrap();
        b.loss(loss);
        let graph = b.finish().unwrap();
        let g = grad(&graph, loss, &[x]).unwrap();
        let gx = g.grads[0].1;
        assert_eq!(g.graph.ty(gx), &tt(DType::F32, &[]));
        let fed = feeds(&g.graph, &[("x".into(), Tensor::scalar(2.5))]);
        let outs = run_outputs(&g.graph, &fed, &EvalCx::default()).unwrap();
        assert_eq!(outs[0].data, vec![4.5]);
        assert_eq!(outs[1].data, vec![1.0]);
    }
}
