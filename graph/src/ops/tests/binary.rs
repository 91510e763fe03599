//! Unit tests of the binary family. Gradient checks of every op are in the
//! table of `graph/tests/grad_ops.rs`.

use super::*;
use crate::autodiff::{grad, hvp};
use crate::interp::run_outputs;
use crate::ops::Op;
use crate::ops::test_util::{Arg, check_gradients, feeds, graph, run, t, ty};
use crate::{Dim, Shape};

fn eval(op: Binary, inputs: &[&Tensor]) -> Tensor {
    let mut out = op.eval(inputs, &EvalCx::default()).unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn arithmetic_broadcasts_like_numpy() {
    let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let row = t(&[3], &[10.0, 20.0, 30.0]);
    let col = t(&[2, 1], &[2.0, 4.0]);
    let add = eval(Binary::Add, &[&a, &row]);
    assert_eq!(add, t(&[2, 3], &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]));
    let sub = eval(Binary::Sub, &[&row, &a]);
    assert_eq!(sub.data, vec![9.0, 18.0, 27.0, 6.0, 15.0, 24.0]);
    let mul = eval(Binary::Mul, &[&a, &col]);
    assert_eq!(mul.data, vec![2.0, 4.0, 6.0, 16.0, 20.0, 24.0]);
    let div = eval(Binary::Div, &[&a, &col]);
    assert_eq!(div.data, vec![0.5, 1.0, 1.5, 1.0, 1.25, 1.5]);
    let outer = eval(Binary::Mul, &[&col, &row]);
    assert_eq!(outer, t(&[2, 3], &[20.0, 40.0, 60.0, 40.0, 80.0, 120.0]));
    let pow = eval(Binary::Pow, &[&col, &Tensor::scalar(3.0)]);
    assert_eq!(pow, t(&[2, 1], &[8.0, 64.0]));
    let sqrt = eval(Binary::Pow, &[&t(&[2], &[4.0, 0.0]), &Tensor::scalar(0.5)]);
    assert_eq!(sqrt.data, vec![2.0, 0.0]);
}

#[test]
fn comparisons_and_where() {
    let a = t(&[2, 2], &[1.0, 2.0, 3.0, 2.0]);
    let b = t(&[2], &[2.0, 2.0]);
    assert_eq!(
        eval(Binary::Equal, &[&a, &b]).data,
        vec![0.0, 1.0, 0.0, 1.0]
    );
    assert_eq!(
        eval(Binary::Greater, &[&a, &b]).data,
        vec![0.0, 0.0, 1.0, 0.0]
    );
    assert_eq!(
        eval(Binary::Greater, &[&b, &a]).data,
        vec![1.0, 0.0, 0.0, 0.0]
    );
    let nan = Tensor::scalar(f64::NAN);
    assert_eq!(eval(Binary::Equal, &[&nan, &nan]).data, vec![0.0]);
    let cond = t(&[2, 1], &[1.0, 0.0]);
    let x = t(&[3], &[1.0, 2.0, 3.0]);
    let out = eval(Binary::Where, &[&cond, &x, &Tensor::scalar(-1.0)]);
    assert_eq!(out, t(&[2, 3], &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0]));
    assert!(
        Binary::Where
            .eval(&[&cond, &x], &EvalCx::default())
            .is_err()
    );
    assert!(Binary::Add.eval(&[&a, &x], &EvalCx::default()).is_err());
}

#[test]
fn infer_broadcasts_and_checks_dtypes() {
    let f = |dims: &[usize]| ty(DType::F32, dims);
    assert_eq!(
        Binary::Add.infer(&[&f(&[2, 1]), &f(&[3])]).unwrap(),
        vec![f(&[2, 3])]
    );
    assert_eq!(
        Binary::Mul.infer(&[&f(&[]), &f(&[4])]).unwrap(),
        vec![f(&[4])]
    );
    let cmp = Binary::Greater.infer(&[&f(&[2]), &f(&[2])]).unwrap();
    assert_eq!(cmp, vec![ty(DType::Bool, &[2])]);
    let ints = ty(DType::I32, &[2]);
    assert_eq!(
        Binary::Equal.infer(&[&ints, &ints]).unwrap(),
        vec![ty(DType::Bool, &[2])]
    );
    assert_eq!(
        Binary::Add.infer(&[&ints, &ints]).unwrap_err(),
        "input 0: expected a floating-point dtype, found i32"
    );
    let d = ty(DType::F64, &[2]);
    assert_eq!(
        Binary::Sub.infer(&[&f(&[2]), &d]).unwrap_err(),
        "input 1: expected dtype f32 (the dtype of input 0), found f64"
    );
    assert!(
        Binary::Equal
            .infer(&[&ints, &d])
            .unwrap_err()
            .contains("found f64")
    );
    assert_eq!(
        Binary::Div.infer(&[&f(&[2, 3]), &f(&[2])]).unwrap_err(),
        "input 1: expected shape broadcastable with [2, 3], found [2]"
    );
    assert_eq!(
        Binary::Pow.infer(&[&f(&[2])]).unwrap_err(),
        "expects 2 input(s), found 1"
    );
    let c = ty(DType::Bool, &[2, 1]);
    let w = Binary::Where.infer(&[&c, &f(&[3]), &f(&[])]).unwrap();
    assert_eq!(w, vec![f(&[2, 3])]);
    assert_eq!(
        Binary::Where
            .infer(&[&f(&[2]), &f(&[2]), &f(&[2])])
            .unwrap_err(),
        "input 0: expected dtype bool (the condition), found f32"
    );
    assert!(
        Binary::Where
            .infer(&[&c, &f(&[2]), &d])
            .unwrap_err()
            .contains("input 2")
    );
    assert_eq!(
        Binary::Where.infer(&[&c, &f(&[3]), &f(&[4])]).unwrap_err(),
        "input 2: expected shape broadcastable with [2, 3], found [4]"
    );
    assert_eq!(
        Binary::Where.infer(&[&c, &f(&[2])]).unwrap_err(),
        "expects 3 input(s), found 2"
    );
}

#[test]
fn batch_symbol_broadcasts_with_itself_and_one() {
    let bt = |dims: Vec<Dim>| TensorType::new(DType::F32, Shape(dims));
    let x = bt(vec![Dim::Batch, Dim::Fixed(4)]);
    let out = Binary::Add.infer(&[&x, &ty(DType::F32, &[1, 4])]).unwrap();
    assert_eq!(out, vec![x.clone()]);
    let col = bt(vec![Dim::Batch, Dim::Fixed(1)]);
    assert_eq!(Binary::Mul.infer(&[&col, &x]).unwrap(), vec![x.clone()]);
    assert_eq!(
        Binary::Add
            .infer(&[&x, &ty(DType::F32, &[3, 4])])
            .unwrap_err(),
        "input 1: expected shape broadcastable with [batch, 4], found [3, 4]"
    );
    let c = TensorType::new(DType::Bool, Shape(vec![Dim::Batch, Dim::Fixed(1)]));
    assert_eq!(
        Binary::Where
            .infer(&[&c, &x, &ty(DType::F32, &[])])
            .unwrap(),
        vec![x]
    );
}

#[test]
fn attrs_round_trip() {
    for op in Binary::ALL {
        assert!(op.attrs().is_empty());
        assert_eq!(Binary::parse(op.name(), &op.attrs()), Some(Ok(op)));
        assert_eq!(Op::parse(op.name(), &op.attrs()), Ok(Some(Op::Binary(op))));
        assert_eq!(op.recompute(), Recompute::Cheap);
    }
    assert_eq!(Binary::parse("Exp", &Attrs::new()), None);
    let mut extra = Attrs::new();
    extra.insert("axis".into(), crate::Attr::Int(0));
    assert_eq!(
        Binary::parse("Add", &extra),
        Some(Err("unknown attribute 'axis'".into()))
    );
}

#[test]
fn cost_counts_output_elements_and_operand_bytes() {
    let a = ty(DType::F32, &[4, 8]);
    let row = ty(DType::F32, &[8]);
    assert_eq!(
        Binary::Add.cost(&[&a, &row], &[&a]),
        Cost {
            flops: 32,
            bytes: 288
        }
    );
}

#[test]
fn comparisons_pass_no_gradient() {
    let x: Arg = (DType::F64, vec![3], vec![0.5, -1.0, 2.0]);
    // d/dx [x * (x > 0) + (x == 0)] = (x > 0): the comparisons (on float
    // operands) and the casts of their results contribute nothing.
    check_gradients(&[x], |bl, v| {
        let zero = bl.scalar_like(0.0, v[0])?;
        let pos = bl.greater(v[0], zero)?;
        let mask = bl.cast(pos, DType::F64)?;
        let eq = bl.equal(v[0], zero)?;
        let eq = bl.cast(eq, DType::F64)?;
        let m = bl.mul(v[0], mask)?;
        bl.add(m, eq)
    });
}

/// Two f64 scalar inputs `x0`, `x1`.
fn scalars(x0: f64, x1: f64) -> [Arg; 2] {
    [
        (DType::F64, vec![], vec![x0]),
        (DType::F64, vec![], vec![x1]),
    ]
}

#[test]
fn pow_gradient_is_finite_at_a_zero_base() {
    let args = scalars(0.0, 2.0);
    let (g, x, y) = graph(&args, |b, x| b.pow(x[0], x[1]));
    let g = grad(&g, y, &x).unwrap();
    let outs = run(&g.graph, &args);
    assert_eq!((outs[1].data[0], outs[2].data[0]), (0.0, 0.0));
}

#[test]
fn second_order_through_mul_and_div() {
    // loss = x0 * x0 / x1: H = [[2/x1, -2x0/x1^2], [-2x0/x1^2, 2x0^2/x1^3]].
    let args = scalars(3.0, 2.0);
    let (g, x, loss) = graph(&args, |b, x| {
        let sq = b.mul(x[0], x[0])?;
        b.div(sq, x[1])
    });
    let h = hvp(&g, loss, &x).unwrap();
    let mut fed = feeds(&h.graph, &args);
    fed.insert(h.directions[0], Tensor::scalar(1.0));
    fed.insert(h.directions[1], Tensor::scalar(0.5));
    let outs = run_outputs(&h.graph, &fed, &EvalCx::default()).unwrap();
    let (h00, h01, h11) = (1.0, -1.5, 2.25);
    assert!((outs[0].data[0] - (h00 + 0.5 * h01)).abs() < 1e-12);
    assert!((outs[1].data[0] - (h01 + 0.5 * h11)).abs() < 1e-12);
}
