//! Unit tests of the movement family. Gradient checks of every op are in the
//! table of `graph/tests/grad_ops.rs`.

use super::*;
use crate::Op;
use crate::ops::test_util::{parse_err, t};
use Movement::{Broadcast, Concat, Reshape, Transpose};

fn run(op: &Movement, inputs: &[&Tensor]) -> Msg<Tensor> {
    op.eval(inputs, &EvalCx::default()).map(|mut v| v.remove(0))
}
/// Evaluates `op` and checks the result's shape and data.
fn expect(op: Movement, inputs: &[&Tensor], shape: &[usize], data: &[f64]) {
    assert_eq!(run(&op, inputs).unwrap(), t(shape, data), "{op:?}");
}
fn ty(dims: &[Dim]) -> TensorType {
    TensorType::new(DType::F32, Shape(dims.to_vec()))
}
fn infer1(op: Movement, x: &[Dim]) -> Msg<TensorType> {
    op.infer(&[&ty(x)]).map(|mut v| v.remove(0))
}
fn f(n: usize) -> Dim {
    Dim::Fixed(n)
}
const B: Dim = Dim::Batch;
fn slice(axis: i64, start: usize, end: usize) -> Movement {
    Movement::Slice { axis, start, end }
}
fn pad(axis: i64, before: usize, after: usize) -> Movement {
    Movement::Pad {
        axis,
        before,
        after,
    }
}
fn konst(value: f64, dtype: DType) -> Movement {
    Movement::Constant { value, dtype }
}
const X23: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];

#[test]
fn eval_reshape_transpose_broadcast() {
    let x = t(&[2, 3], &X23);
    expect(Reshape(Shape::of(&[3, 2])), &[&x], &[3, 2], &X23);
    let xt = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
    expect(Transpose(vec![1, 0]), &[&x], &[3, 2], &xt);
    expect(
        Transpose(vec![2, 0, 1]),
        &[&t(&[2, 1, 3], &X23)],
        &[3, 2, 1],
        &xt,
    );
    let row = t(&[3], &[1.0, 2.0, 3.0]);
    expect(
        Broadcast(Shape::of(&[2, 3])),
        &[&row],
        &[2, 3],
        &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0],
    );
    let col = t(&[2, 1], &[1.0, 2.0]);
    expect(
        Broadcast(Shape::of(&[2, 3])),
        &[&col],
        &[2, 3],
        &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
    );
    expect(
        Broadcast(Shape::of(&[2])),
        &[&Tensor::scalar(7.0)],
        &[2],
        &[7.0, 7.0],
    );
    assert!(run(&Reshape(Shape::of(&[4])), &[&x]).is_err());
    assert!(run(&Broadcast(Shape::of(&[3, 2])), &[&x]).is_err());
    assert!(run(&Transpose(vec![0]), &[&x]).is_err());
    assert!(run(&Transpose(vec![1, 0]), &[]).is_err());
}

#[test]
fn eval_concat_slice_pad() {
    let (a, b) = (t(&[2, 3], &X23), t(&[2, 1], &[7.0, 8.0]));
    let ab = [1.0, 2.0, 3.0, 7.0, 4.0, 5.0, 6.0, 8.0];
    expect(Concat { axis: -1 }, &[&a, &b], &[2, 4], &ab);
    let aa: Vec<f64> = X23.iter().chain(&X23).copied().collect();
    expect(Concat { axis: 0 }, &[&a, &a], &[4, 3], &aa);
    let err = run(&Concat { axis: 0 }, &[&a, &b]).unwrap_err();
    assert!(err.contains("input 1"), "{err}");
    expect(slice(1, 1, 3), &[&a], &[2, 2], &[2.0, 3.0, 5.0, 6.0]);
    expect(slice(0, 1, 1), &[&a], &[0, 3], &[]);
    assert!(run(&slice(1, 2, 4), &[&a]).is_err());
    let padded = [0.0, 7.0, 0.0, 0.0, 0.0, 8.0, 0.0, 0.0];
    expect(pad(1, 1, 2), &[&b], &[2, 4], &padded);
    expect(pad(0, 0, 1), &[&b], &[3, 1], &[7.0, 8.0, 0.0]);
}

#[test]
fn eval_constant_holds_the_dtype_value() {
    let c = |value, dtype| run(&konst(value, dtype), &[]).unwrap().data[0];
    assert_eq!(
        run(&konst(2.5, DType::F32), &[]).unwrap(),
        Tensor::scalar(2.5)
    );
    assert_eq!(c(-2.7, DType::I64), -2.0);
    assert_eq!(c(2.7, DType::I32), 2.0);
    assert_eq!(c(0.5, DType::Bool), 1.0);
    assert_eq!(c(0.0, DType::Bool), 0.0);
    assert_eq!(c(f64::NEG_INFINITY, DType::F64), f64::NEG_INFINITY);
    assert!(run(&konst(1.0, DType::F32), &[&t(&[1], &[1.0])]).is_err());
}

#[test]
fn infer_reshape_counts_elements_symbolically() {
    let to = Shape(vec![B, f(128), f(4), f(64)]);
    let out = infer1(Reshape(to.clone()), &[B, f(128), f(256)]);
    assert_eq!(out.unwrap().shape, to);
    let err = infer1(Reshape(Shape(vec![B, f(4)])), &[B, f(6)]).unwrap_err();
    assert!(
        err.contains("[batch, 6]") && err.contains("[batch, 4]"),
        "{err}"
    );
    assert!(err.contains("input 0"), "{err}");
    let err = infer1(Reshape(Shape::of(&[6])), &[B, f(6)]).unwrap_err();
    assert!(err.contains("[batch, 6]") && err.contains("[6]"), "{err}");
    assert!(infer1(Reshape(Shape(vec![f(6), B])), &[B, f(2), f(3)]).is_ok());
    assert!(infer1(Reshape(Shape::scalar()), &[f(1), f(1)]).is_ok());
}

#[test]
fn infer_transpose_broadcast_and_errors() {
    let out = infer1(Transpose(vec![0, 2, 1]), &[B, f(3), f(4)]).unwrap();
    assert_eq!(out, ty(&[B, f(4), f(3)]));
    let err = infer1(Transpose(vec![1, 0]), &[B, f(3), f(4)]).unwrap_err();
    assert!(err.contains("perm") && err.contains("rank 3"), "{err}");
    let to = || Broadcast(Shape(vec![B, f(3), f(4)]));
    assert_eq!(
        infer1(to(), &[B, f(1), f(4)]).unwrap(),
        ty(&[B, f(3), f(4)])
    );
    assert!(infer1(to(), &[f(4)]).is_ok());
    let err = infer1(to(), &[f(2), f(4)]).unwrap_err();
    assert!(
        err.contains("input 0") && err.contains("[batch, 3, 4]"),
        "{err}"
    );
    assert!(err.contains("[2, 4]"), "{err}");
    let err = infer1(Broadcast(Shape::of(&[4])), &[B, f(4)]).unwrap_err();
    assert!(err.contains("broadcastable"), "{err}");
    assert!(Transpose(vec![0]).infer(&[]).is_err());
}

#[test]
fn infer_concat() {
    let (a, b) = (ty(&[B, f(3)]), ty(&[B, f(5)]));
    let cat = Concat { axis: -1 };
    assert_eq!(cat.infer(&[&a, &b]).unwrap()[0], ty(&[B, f(8)]));
    assert_eq!(cat.infer(&[&a]).unwrap()[0], a);
    let err = Concat { axis: 0 }.infer(&[&a, &a]).unwrap_err();
    assert!(err.contains("batch"), "{err}");
    assert!(Concat { axis: 0 }.infer(&[&a]).is_ok());
    let err = cat.infer(&[&a, &ty(&[f(2), f(5)])]).unwrap_err();
    assert!(err.contains("input 1") && err.contains("[2, 5]"), "{err}");
    let ints = TensorType::new(DType::I32, Shape(vec![B, f(5)]));
    assert!(cat.infer(&[&a, &ints]).unwrap_err().contains("dtype"));
    assert!(cat.infer(&[]).is_err());
    let err = Concat { axis: 2 }.infer(&[&a]).unwrap_err();
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn infer_slice_pad_constant() {
    let x = [B, f(3)];
    assert_eq!(infer1(slice(1, 1, 3), &x).unwrap(), ty(&[B, f(2)]));
    let err = infer1(slice(1, 1, 4), &x).unwrap_err();
    assert!(err.contains("1..4") && err.contains('3'), "{err}");
    let err = infer1(slice(0, 0, 1), &x).unwrap_err();
    assert!(err.contains("batch"), "{err}");
    assert_eq!(infer1(pad(-1, 2, 1), &x).unwrap(), ty(&[B, f(6)]));
    assert!(infer1(pad(0, 1, 0), &x).is_err());
    assert!(infer1(pad(0, 0, 0), &x).is_ok());
    let k = konst(1.0, DType::I64);
    let scalar = TensorType::new(DType::I64, Shape::scalar());
    assert_eq!(k.infer(&[]).unwrap()[0], scalar);
    assert!(k.infer(&[&scalar]).is_err());
}

fn all_ops() -> Vec<Movement> {
    vec![
        Reshape(Shape(vec![B, f(4)])),
        Transpose(vec![2, 0, 1]),
        Broadcast(Shape(vec![B, f(3), f(1)])),
        Concat { axis: -2 },
        slice(1, 2, 5),
        pad(-1, 0, 3),
        konst(-0.25, DType::BF16),
    ]
}

#[test]
fn attrs_round_trip() {
    for op in all_ops() {
        let attrs = op.attrs();
        assert_eq!(Movement::parse(op.name(), &attrs), Some(Ok(op.clone())));
        assert_eq!(Op::parse(op.name(), &attrs), Ok(Some(Op::Movement(op))));
    }
    assert!(Movement::parse("MatMul", &Attrs::new()).is_none());
}

#[test]
fn parse_errors_name_the_attribute() {
    let parse = parse_err::<Movement>;
    let ints = |v: &[i64]| Attr::Ints(v.to_vec());
    assert!(parse("Transpose", &[("perm", ints(&[0, 0]))]).contains("permutation"));
    assert!(parse("Transpose", &[("perm", ints(&[0, 2]))]).contains("perm"));
    let slice = |start| {
        [
            ("axis", Attr::Int(0)),
            ("start", Attr::Int(start)),
            ("end", Attr::Int(1)),
        ]
    };
    assert!(parse("Slice", &slice(3)).contains("start"));
    assert!(parse("Slice", &slice(-1)).contains("'start'"));
    let pad = [("axis", Attr::Int(0)), ("before", Attr::Int(1))];
    assert!(parse("Pad", &pad).contains("'after'"));
    assert!(parse("Reshape", &[]).contains("'shape'"));
    let concat = [("axis", Attr::Int(0)), ("dim", Attr::Int(0))];
    assert!(parse("Concat", &concat).contains("'dim'"));
    assert!(parse("Constant", &[("value", Attr::Float(1.0))]).contains("'dtype'"));
}

#[test]
fn bind_batch_replaces_the_symbol_in_shapes() {
    let bound: Vec<Movement> = all_ops().iter().map(|o| o.bind_batch(8)).collect();
    assert_eq!(bound[0], Reshape(Shape::of(&[8, 4])));
    assert_eq!(bound[2], Broadcast(Shape::of(&[8, 3, 1])));
    assert_eq!(bound[1..2], all_ops()[1..2]);
    assert_eq!(bound[3..], all_ops()[3..]);
}

#[test]
fn cost_is_bytes_only() {
    let x = TensorType::new(DType::F32, Shape::of(&[2, 3]));
    let op = Transpose(vec![1, 0]);
    let y = op.infer(&[&x]).unwrap().remove(0);
    assert_eq!(
        op.cost(&[&x], &[&y]),
        Cost {
            flops: 0,
            bytes: 48
        }
    );
    assert_eq!(op.recompute(), Recompute::Cheap);
}

#[test]
fn constant_has_no_cotangents_and_a_zero_tangent() {
    let mut b = crate::Builder::new("c");
    let c = b.scalar(1.0, DType::F32).unwrap();
    let (op, outputs) = (konst(1.0, DType::F32), [c]);
    let mut cx = VjpCx {
        b: &mut b,
        inputs: &[],
        outputs: &outputs,
        cotangents: &[Some(c)],
        wants: &[],
    };
    assert!(op.vjp(&mut cx).unwrap().is_empty());
    let mut cx = JvpCx {
        b: &mut b,
        inputs: &[],
        outputs: &outputs,
        tangents: &[],
    };
    assert_eq!(op.jvp(&mut cx).unwrap(), vec![None]);
}
