//! Unit tests of the reduce family. Gradient checks of every op are in the
//! table of `graph/tests/grad_ops.rs`.

use super::*;
use crate::autodiff::grad;
use crate::ops::test_util::{self, Arg, graph, parse_err};
use crate::{DType, Op};

fn op(kind: ReduceKind, axes: &[i64], keep_dims: bool) -> Reduce {
    Reduce {
        kind,
        axes: axes.to_vec(),
        keep_dims,
    }
}
fn run(r: &Reduce, x: &Tensor) -> std::result::Result<Tensor, String> {
    r.eval(&[x], &EvalCx::default()).map(|mut v| v.remove(0))
}
fn x23() -> Tensor {
    Tensor::new(vec![2, 3], vec![1.0, 5.0, 3.0, 4.0, 2.0, 6.0])
}

#[test]
fn eval_sum_mean_max() {
    let x = x23();
    let s = run(&op(ReduceKind::Sum, &[1], false), &x).unwrap();
    assert_eq!((s.shape.clone(), s.data), (vec![2], vec![9.0, 12.0]));
    let s = run(&op(ReduceKind::Sum, &[0], true), &x).unwrap();
    assert_eq!((s.shape.clone(), s.data), (vec![1, 3], vec![5.0, 7.0, 9.0]));
    let m = run(&op(ReduceKind::Mean, &[-1], true), &x).unwrap();
    assert_eq!((m.shape.clone(), m.data), (vec![2, 1], vec![3.0, 4.0]));
    let m = run(&op(ReduceKind::Max, &[0, 1], false), &x).unwrap();
    assert_eq!((m.shape.clone(), m.data), (vec![], vec![6.0]));
    let m = run(&op(ReduceKind::Max, &[0], false), &x).unwrap();
    assert_eq!(m.data, vec![4.0, 5.0, 6.0]);
    // No axes: the identity.
    assert_eq!(run(&op(ReduceKind::Sum, &[], false), &x).unwrap(), x);
    // Middle axis of a rank-3 tensor.
    let y = Tensor::new(vec![2, 2, 2], (0..8).map(f64::from).collect());
    assert_eq!(
        run(&op(ReduceKind::Sum, &[1], false), &y).unwrap().data,
        vec![2.0, 4.0, 10.0, 12.0]
    );
}

#[test]
fn eval_max_propagates_nan_and_rejects_empty_axes() {
    let x = Tensor::new(vec![3], vec![1.0, f64::NAN, 2.0]);
    assert!(run(&op(ReduceKind::Max, &[0], false), &x).unwrap().data[0].is_nan());
    let empty = Tensor::zeros(&[2, 0]);
    assert!(
        run(&op(ReduceKind::Max, &[1], false), &empty)
            .unwrap_err()
            .contains("empty")
    );
    assert_eq!(
        run(&op(ReduceKind::Sum, &[1], false), &empty).unwrap().data,
        vec![0.0, 0.0]
    );
    assert!(run(&op(ReduceKind::Sum, &[2], false), &x23()).is_err());
}

#[test]
fn infer_shapes_with_negative_axes_and_batch_symbol() {
    let x = TensorType::new(
        DType::F32,
        Shape(vec![Dim::Batch, Dim::Fixed(4), Dim::Fixed(5)]),
    );
    let out = op(ReduceKind::Mean, &[-1], false).infer(&[&x]).unwrap();
    assert_eq!(out[0].shape, Shape(vec![Dim::Batch, Dim::Fixed(4)]));
    let out = op(ReduceKind::Sum, &[0, 2], true).infer(&[&x]).unwrap();
    assert_eq!(out[0].shape, Shape::of(&[1, 4, 1]));
    let out = op(ReduceKind::Max, &[0, 1, 2], false).infer(&[&x]).unwrap();
    assert_eq!(out[0], TensorType::new(DType::F32, Shape::scalar()));
    let ints = TensorType::new(DType::I64, Shape::of(&[3]));
    assert_eq!(
        op(ReduceKind::Sum, &[0], false).infer(&[&ints]).unwrap()[0].dtype,
        DType::I64
    );
    assert!(op(ReduceKind::Max, &[0], false).infer(&[&ints]).is_ok());
}

#[test]
fn infer_errors_name_the_problem() {
    let x = TensorType::new(DType::F32, Shape::of(&[2, 3]));
    let err = op(ReduceKind::Sum, &[2], false).infer(&[&x]).unwrap_err();
    assert!(
        err.contains("axes") && err.contains("out of range") && err.contains('2'),
        "{err}"
    );
    let err = op(ReduceKind::Sum, &[1, -1], false)
        .infer(&[&x])
        .unwrap_err();
    assert!(err.contains("twice"), "{err}");
    let ints = TensorType::new(DType::I32, Shape::of(&[3]));
    let err = op(ReduceKind::Mean, &[0], false)
        .infer(&[&ints])
        .unwrap_err();
    assert!(err.contains("input 0") && err.contains("i32"), "{err}");
    let bools = TensorType::new(DType::Bool, Shape::of(&[3]));
    assert!(op(ReduceKind::Sum, &[0], false).infer(&[&bools]).is_err());
    assert!(op(ReduceKind::Sum, &[0], false).infer(&[&x, &x]).is_err());
}

#[test]
fn attrs_round_trip_and_parse_errors() {
    for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
        let r = op(kind, &[0, -1], true);
        assert_eq!(Reduce::parse(r.name(), &r.attrs()), Some(Ok(r.clone())));
        assert_eq!(Op::parse(r.name(), &r.attrs()), Ok(Some(Op::Reduce(r))));
    }
    assert!(Reduce::parse("Reduce", &Attrs::new()).is_none());
    let parse = parse_err::<Reduce>;
    let err = parse("ReduceSum", &[]);
    assert!(err.contains("axes") && err.contains("required"), "{err}");
    assert!(parse("ReduceSum", &[("axes", Attr::Ints(vec![1, 1]))]).contains("twice"));
    let mut a = Attrs::new();
    a.insert("axes".into(), Attr::Int(1));
    assert_eq!(
        Reduce::parse("ReduceMax", &a),
        Some(Ok(op(ReduceKind::Max, &[1], false)))
    );
    let kv = [("axes", Attr::Int(1)), ("keepdims", Attr::Bool(true))];
    assert!(parse("ReduceMax", &kv).contains("keepdims"));
}

#[test]
fn cost_counts_input_elements() {
    let x = TensorType::new(DType::F32, Shape::of(&[4, 8]));
    let r = op(ReduceKind::Mean, &[1], false);
    let y = r.infer(&[&x]).unwrap().remove(0);
    assert_eq!(
        r.cost(&[&x], &[&y]),
        Cost {
            flops: 36,
            bytes: 4 * 36
        }
    );
    assert_eq!(r.recompute(), Recompute::Cheap);
}

#[test]
fn max_vjp_splits_ties_equally() {
    let args: [Arg; 1] = [(DType::F64, vec![2, 3], vec![1.0, 3.0, 3.0, 2.0, 2.0, 2.0])];
    let (g, x, l) = graph(&args, |b, x| {
        let m = b.max(x[0], &[1], false)?;
        b.sum_all(m)
    });
    let gg = grad(&g, l, &x).unwrap();
    let out = test_util::run(&gg.graph, &args);
    let third = 1.0 / 3.0;
    assert_eq!(out[1].data, vec![0.0, 0.5, 0.5, third, third, third]);
}

#[test]
fn mean_vjp_over_the_batch_symbol_is_a_clear_error() {
    let r = op(ReduceKind::Mean, &[0], false);
    let shape = Shape(vec![Dim::Batch, Dim::Fixed(3)]);
    let err = r.count(&shape, &[true, false]).unwrap_err();
    assert!(err.contains("batch"), "{err}");
    assert_eq!(r.count(&Shape::of(&[4, 3]), &[true, true]).unwrap(), 12);
}
