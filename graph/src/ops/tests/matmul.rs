//! Unit tests of the matmul family. Gradient checks of every op are in the
//! table of `graph/tests/grad_ops.rs`.

use super::*;
use crate::ops::test_util::{parse_err, t};
use crate::{DType, Op};

fn ty(dims: &[Dim]) -> TensorType {
    TensorType::new(DType::F32, Shape(dims.to_vec()))
}
fn f(n: usize) -> Dim {
    Dim::Fixed(n)
}
fn run(op: MatMul, a: &Tensor, b: &Tensor) -> Tensor {
    op.eval(&[a, b], &EvalCx::default()).unwrap().remove(0)
}

#[test]
fn eval_all_flag_combinations() {
    let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let b = t(&[2, 2], &[5.0, 6.0, 7.0, 8.0]);
    let cases = [
        ((false, false), [19.0, 22.0, 43.0, 50.0]), // A·B
        ((false, true), [17.0, 23.0, 39.0, 53.0]),  // A·Bᵀ
        ((true, false), [26.0, 30.0, 38.0, 44.0]),  // Aᵀ·B
        ((true, true), [23.0, 31.0, 34.0, 46.0]),   // Aᵀ·Bᵀ = (B·A)ᵀ
    ];
    for ((ta, tb), want) in cases {
        let c = run(MatMul::with(ta, tb), &a, &b);
        assert_eq!(c.data, want, "trans_a {ta}, trans_b {tb}");
    }
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
    let parse = parse_err::<MatMul>;
    assert!(parse("MatMul", &[("transpose", Attr::Bool(true))]).contains("transpose"));
    assert!(parse("MatMul", &[("trans_a", Attr::Int(1))]).contains("trans_a"));
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
