//! Unit tests of the unary family. Gradient checks of every op are in the
//! table of `graph/tests/grad_ops.rs`.

use super::*;
use crate::autodiff::grad;
use crate::ops::Op;
use crate::ops::test_util::{Arg, graph, parse_err, run, ty};
use crate::{Dim, Shape};

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
    let ints = ty(DType::I64, &[3]);
    assert_eq!(
        Unary::Exp.infer(&[&ints]).unwrap_err(),
        "input 0: expected a floating-point dtype, found i64"
    );
    assert!(Unary::Cast(DType::F32).infer(&[&ints]).is_ok());
    let f = ty(DType::F32, &[2]);
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
    let parse = parse_err::<Unary>;
    let fast = || ("approximate", Attr::Str("fast".into()));
    let err = parse("Gelu", &[fast()]);
    assert!(err.contains("approximate") && err.contains("fast"), "{err}");
    assert_eq!(parse("Cast", &[]), "attribute 'to' is required");
    let err = parse("Exp", &[fast(), ("to", Attr::Str("f32".into()))]);
    assert!(err.contains("unknown attribute"), "{err}");
    assert!(parse("Cast", &[("to", Attr::Str("f17".into()))]).contains("f17"));
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
    let i = ty(DType::I32, &[10]);
    assert_eq!(
        Unary::Cast(DType::I32).cost(&[&t], &[&i]),
        Cost {
            flops: 0,
            bytes: 80
        }
    );
}

#[test]
fn cast_gradients_cast_back_or_stop() {
    let args: [Arg; 1] = [(DType::F32, vec![], vec![2.5])];
    let (g, x, loss) = graph(&args, |b, x| {
        let wide = b.cast(x[0], DType::F64)?;
        let int = b.cast(x[0], DType::I32)?;
        let back = b.cast(int, DType::F64)?;
        b.add(wide, back)
    });
    let g = grad(&g, loss, &x).unwrap();
    let gx = g.grads[0].1;
    assert_eq!(g.graph.ty(gx), &ty(DType::F32, &[]));
    let outs = run(&g.graph, &args);
    assert_eq!(outs[0].data, vec![4.5]);
    assert_eq!(outs[1].data, vec![1.0]);
}
