//! Unit tests of the loss family. Gradient checks of every op are in the
//! table of `graph/tests/grad_ops.rs`.

use super::*;
use crate::interp::EvalCx;
use crate::ops::test_util::{Arg, assert_close, data, eval, parse_err, run_decomposition, ty};

const F: DType = DType::F64;
const I: DType = DType::I64;

fn sce_args() -> Vec<Arg> {
    vec![
        (
            F,
            vec![2, 3, 4],
            data(24, 0.2).iter().map(|x| 3.0 * x).collect(),
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
    assert_close(&d[0], &Tensor::new(vec![2, 2], want.to_vec()), 1e-15);
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
    assert_close(
        &eval(&op, &args)[0],
        &run_decomposition(&op, &args)[0],
        1e-12,
    );
    let mut args = args;
    args.push((F, vec![], vec![1.7]));
    let op = Op::Loss(Loss::SoftmaxCrossEntropyGrad);
    assert_close(
        &eval(&op, &args)[0],
        &run_decomposition(&op, &args)[0],
        1e-12,
    );
    // Logits of rank 1: a single position.
    let args: Vec<Arg> = vec![(F, vec![3], vec![0.1, 0.5, -0.2]), (I, vec![], vec![2.0])];
    let op = Op::Loss(Loss::SoftmaxCrossEntropy);
    assert_close(
        &eval(&op, &args)[0],
        &run_decomposition(&op, &args)[0],
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
        Tensor::new(vec![2, 5], data(10, 0.4)),
        Tensor::new(vec![2], vec![4.0, 0.0]),
    );
    let feeds = [
        (logits, lg.clone()),
        (labels, lb.clone()),
        (dloss, Tensor::scalar(1.5)),
    ];
    let out = crate::interp::run_outputs(&bound, &feeds.into_iter().collect(), &EvalCx::default())
        .unwrap();
    let want =
        Loss::SoftmaxCrossEntropyGrad.eval(&[&lg, &lb, &Tensor::scalar(1.5)], &EvalCx::default());
    assert_close(&out[0], &want.unwrap()[0], 1e-12);
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
        let err = parse_err::<Loss>(op.name(), &[("axis", crate::Attr::Int(1))]);
        assert!(err.contains("unknown attribute 'axis'"), "{err}");
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
