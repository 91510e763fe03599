//! Unit tests of the nn family. Gradient checks of every op are in the
//! table of `graph/tests/grad_ops.rs`.

use super::*;
use crate::DType;
use crate::ops::test_util::{Arg, assert_close, data, eval, parse_err, run_decomposition, t};
use crate::ops::unary::gelu;

const F: DType = DType::F64;
const NEG_INF: f64 = f64::NEG_INFINITY;
const CX: EvalCx = EvalCx {
    seed: 1,
    step: 2,
    rank: 0,
    exact_float_casts: false,
};

fn ev(op: Nn, inputs: &[&Tensor]) -> Vec<Tensor> {
    op.eval(inputs, &CX).unwrap()
}

fn ty(dims: &[usize]) -> TensorType {
    TensorType::new(F, crate::Shape::of(dims))
}

/// The shape rule's error.
fn ie(op: Nn, inputs: &[&TensorType]) -> String {
    op.infer(inputs).unwrap_err()
}

fn ln_args(d: usize) -> Vec<Arg> {
    let x = data(6 * d, 0.5).iter().map(|v| 2.0 * v + 0.3).collect();
    let (g, b) = (data(d, 1.0), data(d, 2.0));
    vec![(F, vec![2, 3, d], x), (F, vec![d], g), (F, vec![d], b)]
}

#[test]
fn softmax_values_by_hand() {
    let e: Vec<f64> = [1f64, 2.0, 3.0].iter().map(|x| x.exp()).collect();
    let s: f64 = e.iter().sum();
    let y = ev(Nn::Softmax { axis: -1 }, &[&t(&[3], &[1.0, 2.0, 3.0])]);
    assert_close(&y[0], &t(&[3], &[e[0] / s, e[1] / s, e[2] / s]), 1e-15);
    // Axis 0 of [2, 2]; large inputs stay finite.
    let x = t(&[2, 2], &[1000.0, 0.0, 1000.0, 0.0]);
    assert_eq!(ev(Nn::Softmax { axis: 0 }, &[&x])[0], t(&[2, 2], &[0.5; 4]));
    let x = t(&[2, 3], &[1.0, 2.0, 3.0, -1.0, 1000.0, 0.5]);
    let ls = ev(Nn::LogSoftmax { axis: 1 }, &[&x]);
    let sm = ev(Nn::Softmax { axis: 1 }, &[&x]);
    assert!(ls[0].data.iter().all(|v| v.is_finite()));
    assert_close(&ls[0].map(f64::exp), &sm[0], 1e-15);
}

#[test]
fn layer_norm_values_and_decompositions() {
    let (x, gamma) = (
        t(&[1, 4], &[1.0, 2.0, 3.0, 4.0]),
        t(&[4], &[1.0, 1.0, 2.0, 2.0]),
    );
    let y = ev(
        Nn::LayerNorm { eps: 0.0 },
        &[&x, &gamma, &t(&[4], &[0.0, 1.0, 0.0, 1.0])],
    );
    let r = 1.0 / 1.25f64.sqrt();
    let want = t(&[1, 4], &[-1.5 * r, 1.0 - 0.5 * r, r, 1.0 + 3.0 * r]);
    assert_close(&y[0], &want, 1e-15);
    for d in [1, 5] {
        let mut args = ln_args(d);
        let op = Op::Nn(Nn::LayerNorm { eps: 1e-5 });
        let (direct, dec) = (eval(&op, &args), run_decomposition(&op, &args));
        assert_close(&direct[0], &dec[0], 1e-12);
        args[2] = (F, vec![2, 3, d], data(6 * d, 3.0));
        let op = Op::Nn(Nn::LayerNormGrad { eps: 1e-5 });
        let (direct, dec) = (eval(&op, &args), run_decomposition(&op, &args));
        assert_eq!((direct.len(), dec.len()), (3, 3));
        direct
            .iter()
            .zip(&dec)
            .for_each(|(a, b)| assert_close(a, b, 1e-12));
    }
}

#[test]
fn gelu_grad_matches_decomposition_and_gelu() {
    let xs = [-3.0, -1.0, -0.2, 0.0, 0.4, 1.5, 4.0];
    let dy = [1.0, 2.0, -1.0, 0.5, 1.0, 3.0, 1.0];
    for a in [GeluApprox::Tanh, GeluApprox::Erf] {
        let op = Op::Nn(Nn::GeluGrad(a));
        let args: Vec<Arg> = vec![(F, vec![7], xs.to_vec()), (F, vec![7], dy.to_vec())];
        let direct = eval(&op, &args);
        assert_close(&direct[0], &run_decomposition(&op, &args)[0], 1e-12);
        for (i, &v) in xs.iter().enumerate() {
            let fd = (gelu(v + 1e-6, a) - gelu(v - 1e-6, a)) / 2e-6;
            assert!(
                (direct[0].data[i] - dy[i] * fd).abs() < 1e-8,
                "{a:?} at {v}"
            );
        }
    }
}

#[test]
fn dropout_replays_its_mask() {
    let x = t(&[1000], &data(1000, 0.1));
    assert_eq!(ev(Nn::Dropout { p: 0.0, key: 5 }, &[&x])[0], x);
    let op = Nn::Dropout { p: 0.25, key: 5 };
    let y = ev(op, &[&x]);
    assert_eq!(y, ev(op, &[&x]));
    let pairs = y[0].data.iter().zip(&x.data);
    let kept = pairs
        .filter(|(y, x)| **y != 0.0 && (**y - **x / 0.75).abs() < 1e-15)
        .count();
    let dropped = y[0].data.iter().filter(|y| **y == 0.0).count();
    assert_eq!(kept + dropped, 1000);
    assert!((150..350).contains(&dropped), "{dropped}");
    assert_ne!(y, op.eval(&[&x], &EvalCx { step: 3, ..CX }).unwrap());
    assert_ne!(y, ev(Nn::Dropout { p: 0.25, key: 6 }, &[&x]));
    assert!(Nn::Dropout { p: 1.0, key: 0 }.eval(&[&x], &CX).is_err());
}

#[test]
fn causal_mask_values() {
    let x = t(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let y = ev(Nn::CausalMask { fill: -9.0 }, &[&x]);
    assert_eq!(
        y[0],
        t(&[2, 2, 2], &[1.0, -9.0, 3.0, 4.0, 5.0, -9.0, 7.0, 8.0])
    );
    let y = ev(Nn::CausalMask { fill: NEG_INF }, &[&t(&[3, 3], &[1.0; 9])]);
    let want = [1.0, NEG_INF, NEG_INF, 1.0, 1.0, NEG_INF, 1.0, 1.0, 1.0];
    assert_eq!(y[0].data, want);
}

#[test]
fn shape_rules_and_errors() {
    let bx = TensorType::new(F, crate::Shape(vec![Dim::Batch, Dim::Fixed(4)]));
    let (d4, d5) = (ty(&[4]), ty(&[5]));
    let ln = Nn::LayerNorm { eps: 1e-5 };
    assert_eq!(ln.infer(&[&bx, &d4, &d4]).unwrap(), vec![bx.clone()]);
    let e = ie(ln, &[&bx, &d5, &d4]);
    assert!(
        e.contains("input 1") && e.contains("f64[4]") && e.contains("f64[5]"),
        "{e}"
    );
    assert!(ie(ln, &[&bx, &d4, &ty(&[1, 4])]).contains("input 2"));
    assert!(ie(ln, &[&ty(&[]), &ty(&[1]), &ty(&[1])]).contains("rank >= 1"));
    let lg = Nn::LayerNormGrad { eps: 1e-5 };
    let out = lg.infer(&[&bx, &d4, &bx]).unwrap();
    assert_eq!(out, vec![bx.clone(), d4.clone(), d4.clone()]);
    assert!(ie(lg, &[&bx, &d4, &d4]).contains("input 2"));
    let e = ie(Nn::Softmax { axis: 2 }, &[&bx]);
    assert!(e.contains("'axis'") && e.contains("[batch, 4]"), "{e}");
    let int = TensorType::new(DType::I32, crate::Shape::of(&[2]));
    assert!(ie(Nn::LogSoftmax { axis: 0 }, &[&int]).contains("floating"));
    let cm = Nn::CausalMask { fill: 0.0 };
    assert_eq!(cm.infer(&[&ty(&[2, 3, 3])]).unwrap(), vec![ty(&[2, 3, 3])]);
    for bad in [ty(&[3, 4]), ty(&[3]), bx.clone()] {
        assert!(ie(cm, &[&bad]).contains("[..., T, T]"));
    }
    assert!(ie(Nn::GeluGrad(GeluApprox::Erf), &[&d4, &ty(&[1])]).contains("input 1"));
    assert!(ie(Nn::Dropout { p: 1.5, key: 0 }, &[&bx]).contains("'p'"));
    assert!(ie(Nn::Dropout { p: 0.5, key: 0 }, &[&bx, &bx]).contains("expects 1"));
}

#[test]
fn attrs_round_trip_and_parse_errors() {
    let ops = [
        Nn::Softmax { axis: 0 },
        Nn::LogSoftmax { axis: -1 },
        Nn::LayerNorm { eps: 1e-6 },
        Nn::LayerNormGrad { eps: 0.0 },
        Nn::GeluGrad(GeluApprox::Tanh),
        Nn::GeluGrad(GeluApprox::Erf),
        Nn::Dropout {
            p: 0.1,
            key: u64::MAX - 3,
        },
        Nn::CausalMask { fill: NEG_INF },
    ];
    for op in ops {
        assert_eq!(Nn::parse(op.name(), &op.attrs()), Some(Ok(op)));
        assert_eq!(Op::parse(op.name(), &op.attrs()), Ok(Some(Op::Nn(op))));
        assert_eq!(op.recompute(), Recompute::Cheap);
    }
    let defaults = [
        ("Softmax", Nn::Softmax { axis: -1 }),
        ("LogSoftmax", Nn::LogSoftmax { axis: -1 }),
        ("LayerNorm", Nn::LayerNorm { eps: 1e-5 }),
        ("GeluGrad", Nn::GeluGrad(GeluApprox::Erf)),
        ("CausalMask", Nn::CausalMask { fill: NEG_INF }),
    ];
    for (name, op) in defaults {
        assert_eq!(Nn::parse(name, &Attrs::new()), Some(Ok(op)));
    }
    assert_eq!(Nn::parse("Gather", &Attrs::new()), None);
    let parse = parse_err::<Nn>;
    for p in [1.0, -0.1, f64::NAN] {
        let kv = [("p", Attr::Float(p)), ("key", Attr::Int(1))];
        assert!(parse("Dropout", &kv).contains("'p'"));
    }
    assert!(parse("Dropout", &[("p", Attr::Float(0.1))]).contains("'key' is required"));
    assert!(parse("LayerNorm", &[("eps", Attr::Float(-1.0))]).contains("'eps'"));
    let bad = [("approximate", Attr::Str("none".into()))];
    assert!(parse("GeluGrad", &bad).contains("\"none\""));
    assert!(parse("Softmax", &[("axes", Attr::Int(0))]).contains("unknown attribute 'axes'"));
}

#[test]
fn costs() {
    let (x, d) = (ty(&[2, 8]), ty(&[8]));
    let c = Nn::Softmax { axis: -1 }.cost(&[&x], &[&x]);
    assert_eq!((c.flops, c.bytes), (80, 256));
    let c = Nn::LayerNorm { eps: 1e-5 }.cost(&[&x, &d, &d], &[&x]);
    assert_eq!((c.flops, c.bytes), (128, 128 * 2 + 128));
}
