//! Unit tests of the index family. Gradient checks of every op are in the
//! table of `graph/tests/grad_ops.rs`.

use super::*;
use crate::Dim;
use crate::ops::test_util::{parse_err, t, ty};
use crate::ops::{Op, numel};

const F: DType = DType::F64;
const I: DType = DType::I64;

fn ev(op: Index, inputs: &[&Tensor]) -> std::result::Result<Tensor, String> {
    op.eval(inputs, &EvalCx::default()).map(|mut v| v.remove(0))
}

#[test]
fn gather_values_by_hand() {
    let data = t(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let idx = t(&[2, 2], &[2.0, 0.0, 1.0, 2.0]);
    let out = ev(Index::Gather { axis: 0 }, &[&data, &idx]).unwrap();
    assert_eq!(
        out,
        t(&[2, 2, 2], &[5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    );
    let data = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let out = ev(Index::Gather { axis: -1 }, &[&data, &t(&[2], &[2.0, 2.0])]).unwrap();
    assert_eq!(out, t(&[2, 2], &[3.0, 3.0, 6.0, 6.0]));
    let out = ev(Index::Gather { axis: 1 }, &[&data, &Tensor::scalar(1.0)]).unwrap();
    assert_eq!(out, t(&[2], &[2.0, 5.0]));
}

#[test]
fn out_of_range_indices_are_errors() {
    let data = Tensor::zeros(&[3, 2]);
    for bad in [3.0, -1.0] {
        let e = ev(Index::Gather { axis: 0 }, &[&data, &t(&[2], &[0.0, bad])]).unwrap_err();
        assert!(e.contains(&format!("{bad} is out of range [0, 3)")), "{e}");
        let upd = Tensor::zeros(&[2, 2]);
        let op = Index::ScatterAdd { axis: 0, size: 3 };
        let e = ev(op, &[&upd, &t(&[2], &[bad, 0.0])]).unwrap_err();
        assert!(e.contains(&format!("{bad} is out of range [0, 3)")), "{e}");
        let op = Index::OneHot { depth: 3, dtype: F };
        let e = ev(op, &[&t(&[1], &[bad])]).unwrap_err();
        assert!(e.contains(&format!("{bad} is out of range [0, 3)")), "{e}");
    }
}

#[test]
fn scatter_add_accumulates_repeats() {
    let upd = t(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let op = Index::ScatterAdd { axis: 0, size: 3 };
    let out = ev(op, &[&upd, &t(&[3], &[0.0, 2.0, 0.0])]).unwrap();
    assert_eq!(out, t(&[3, 2], &[6.0, 8.0, 0.0, 0.0, 3.0, 4.0]));
    // Axis 1 with rank-2 indices: [2, (2, 2)] -> [2, 3].
    let upd = t(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let idx = t(&[2, 2], &[1.0, 1.0, 0.0, 2.0]);
    let out = ev(Index::ScatterAdd { axis: -1, size: 3 }, &[&upd, &idx]).unwrap();
    assert_eq!(out, t(&[2, 3], &[3.0, 3.0, 4.0, 7.0, 11.0, 8.0]));
}

#[test]
fn one_hot_values() {
    let op = Index::OneHot { depth: 3, dtype: F };
    let out = ev(op, &[&t(&[2], &[2.0, 0.0])]).unwrap();
    assert_eq!(out, t(&[2, 3], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]));
}

#[test]
fn shape_rules_and_errors() {
    let data = TensorType::new(F, Shape(vec![Dim::Fixed(10), Dim::Fixed(4)]));
    let idx = TensorType::new(I, Shape(vec![Dim::Batch, Dim::Fixed(7)]));
    let out = Index::Gather { axis: 0 }.infer(&[&data, &idx]).unwrap();
    let bt7_4 = Shape(vec![Dim::Batch, Dim::Fixed(7), Dim::Fixed(4)]);
    assert_eq!(out, vec![TensorType::new(F, bt7_4.clone())]);
    let out = Index::Gather { axis: -1 }.infer(&[&data, &idx]).unwrap();
    assert_eq!(
        out[0].shape,
        Shape(vec![Dim::Fixed(10), Dim::Batch, Dim::Fixed(7)])
    );
    let e = Index::Gather { axis: 2 }.infer(&[&data, &idx]).unwrap_err();
    assert!(
        e.contains("attribute 'axis'") && e.contains("rank 2"),
        "{e}"
    );
    let e = Index::Gather { axis: 0 }
        .infer(&[&data, &ty(F, &[3])])
        .unwrap_err();
    assert!(e.contains("input 1") && e.contains("found f64"), "{e}");
    let scatter = Index::ScatterAdd { axis: 0, size: 10 };
    let upd = TensorType::new(F, bt7_4);
    assert_eq!(scatter.infer(&[&upd, &idx]).unwrap(), vec![data.clone()]);
    let e = scatter.infer(&[&ty(F, &[3, 7, 4]), &idx]).unwrap_err();
    assert!(e.contains("input 0") && e.contains("[batch, 7]"), "{e}");
    let e = scatter.infer(&[&ty(F, &[4]), &ty(I, &[2, 2])]).unwrap_err();
    assert!(e.contains("rank"), "{e}");
    assert!(
        scatter
            .infer(&[&ty(DType::Bool, &[2]), &ty(I, &[2])])
            .is_err()
    );
    let oh = Index::OneHot {
        depth: 5,
        dtype: DType::F32,
    };
    let out = oh.infer(&[&idx]).unwrap();
    assert_eq!(
        out[0],
        TensorType::new(
            DType::F32,
            Shape(vec![Dim::Batch, Dim::Fixed(7), Dim::Fixed(5)])
        )
    );
    assert!(oh.infer(&[&data]).unwrap_err().contains("input 0"));
    assert!(oh.infer(&[&idx, &idx]).unwrap_err().contains("expects 1"));
}

#[test]
fn attrs_round_trip_and_parse_errors() {
    let ops = [
        Index::Gather { axis: -2 },
        Index::ScatterAdd { axis: 1, size: 9 },
        Index::OneHot {
            depth: 4,
            dtype: DType::BF16,
        },
    ];
    for op in ops {
        assert_eq!(Index::parse(op.name(), &op.attrs()), Some(Ok(op)));
        assert_eq!(Op::parse(op.name(), &op.attrs()), Ok(Some(Op::Index(op))));
        assert_eq!(op.recompute(), Recompute::Cheap);
    }
    assert_eq!(
        Index::parse("Gather", &Attrs::new()),
        Some(Ok(Index::Gather { axis: 0 }))
    );
    assert_eq!(Index::parse("Softmax", &Attrs::new()), None);
    let parse = parse_err::<Index>;
    assert!(parse("ScatterAdd", &[]).contains("'size' is required"));
    assert!(parse("ScatterAdd", &[("size", Attr::Int(-1))]).contains("'size'"));
    let e = parse(
        "OneHot",
        &[("depth", Attr::Int(0)), ("dtype", Attr::DType(F))],
    );
    assert!(e.contains("'depth'") && e.contains("positive"), "{e}");
    assert!(parse("Gather", &[("axes", Attr::Int(0))]).contains("unknown attribute 'axes'"));
}

#[test]
fn costs() {
    let (data, idx, out) = (ty(F, &[10, 4]), ty(I, &[3]), ty(F, &[3, 4]));
    let c = Index::Gather { axis: 0 }.cost(&[&data, &idx], &[&out]);
    assert_eq!(
        c,
        Cost {
            flops: 0,
            bytes: 24 + 2 * 96
        }
    );
    let c = Index::ScatterAdd { axis: 0, size: 10 }.cost(&[&out, &idx], &[&data]);
    assert_eq!(c.flops, numel(&out));
}
