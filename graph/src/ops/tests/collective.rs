//! Unit tests of the collective family: shape rules (symbolic batch
//! included) and their errors, attributes, values at `ranks = 1` by hand,
//! and the interpreter's refusal of more ranks. Gradient checks are in
//! `graph/tests/grad_ops.rs`; the rewrite that uses these ops is tested in
//! `graph/tests/expert_parallel.rs`.

use super::*;
use crate::ops::test_util::{parse_err, t, ty};
use crate::ops::{Op, Recompute};

const F: DType = DType::F64;
const I: DType = DType::I64;

fn a2a(ranks: usize) -> CollectiveOp {
    CollectiveOp::AllToAll { ranks }
}

fn combine(ranks: usize) -> CollectiveOp {
    CollectiveOp::AllToAllCombine { ranks }
}

fn ev(op: CollectiveOp, inputs: &[&Tensor]) -> std::result::Result<Vec<Tensor>, String> {
    op.eval(inputs, &EvalCx::default())
}

/// Asserts that `r` is an error mentioning every piece of `want`.
fn err_has<T: std::fmt::Debug>(r: std::result::Result<T, String>, want: &[&str]) {
    let e = r.unwrap_err();
    for w in want {
        assert!(e.contains(w), "'{w}' not in: {e}");
    }
}

#[test]
fn shape_rules() {
    let typed = |dims: &[Dim], dtype| TensorType::new(dtype, Shape(dims.to_vec()));
    let (b, f) = (Dim::Batch, Dim::Fixed);
    // [T, k, D] rows, 8 experts over 2 ranks: 4 local experts.
    let x = ty(F, &[6, 2, 3]);
    let offsets = ty(I, &[9]);
    let out = a2a(2).infer(&[&x, &offsets]).unwrap();
    assert_eq!(out, vec![ty(F, &[2, 6, 2, 3]), ty(I, &[5]), ty(I, &[2, 4])]);
    let y = ty(F, &[2, 6, 2, 7]);
    let counts = ty(I, &[2, 4]);
    let back = combine(2).infer(&[&y, &offsets, &counts]).unwrap();
    assert_eq!(back, vec![ty(F, &[6, 2, 7])]);
    // A symbolic batch stays symbolic; i32 offsets are fine.
    let xb = typed(&[b, f(2), f(3)], F);
    let out = a2a(4).infer(&[&xb, &ty(DType::I32, &[9])]).unwrap();
    assert_eq!(out[0], typed(&[f(4), b, f(2), f(3)], F));
    assert_eq!(
        (out[1].clone(), out[2].clone()),
        (ty(I, &[3]), ty(I, &[4, 2]))
    );
    let back = combine(4).infer(&[&out[0], &offsets, &out[2]]).unwrap();
    assert_eq!(back, vec![xb.clone()]);
    // One rank: y [1, ...], every expert local.
    let out = a2a(1).infer(&[&x, &offsets]).unwrap();
    assert_eq!(out[0], ty(F, &[1, 6, 2, 3]));
    assert_eq!(
        (out[1].clone(), out[2].clone()),
        (ty(I, &[9]), ty(I, &[1, 8]))
    );
    let reduce = CollectiveOp::AllReduce { ranks: 3 };
    assert_eq!(reduce.infer(&[&xb]).unwrap(), vec![xb.clone()]);
    assert_eq!(reduce.infer(&[&ty(F, &[])]).unwrap(), vec![ty(F, &[])]);
}

#[test]
fn shape_errors_name_the_input() {
    let (x, offsets) = (ty(F, &[6, 3]), ty(I, &[9]));
    // 8 experts do not split over 3 ranks, nor 6 over 4.
    err_has(
        a2a(3).infer(&[&x, &offsets]),
        &["input 1", "8 experts", "3 ranks"],
    );
    err_has(a2a(4).infer(&[&x, &ty(I, &[7])]), &["6 experts", "4 ranks"]);
    err_has(
        combine(3).infer(&[&ty(F, &[3, 6, 3]), &offsets, &ty(I, &[3, 2])]),
        &["input 1", "8 experts", "3 ranks"],
    );
    err_has(
        a2a(2).infer(&[&x, &ty(F, &[9])]),
        &["input 1", "int offsets"],
    );
    err_has(
        a2a(2).infer(&[&x, &ty(I, &[1])]),
        &["input 1", "at least 2"],
    );
    err_has(a2a(2).infer(&[&x, &ty(I, &[3, 3])]), &["input 1"]);
    err_has(a2a(2).infer(&[&ty(F, &[]), &offsets]), &["input 0", "rows"]);
    err_has(a2a(2).infer(&[&ty(I, &[6, 3]), &offsets]), &["input 0"]);
    err_has(a2a(2).infer(&[&x]), &["expects 2 input(s)"]);
    err_has(a2a(0).infer(&[&x, &offsets]), &["'ranks'", "positive"]);
    // Combine: counts must be AllToAll's [ranks, E/ranks] ints.
    let y = ty(F, &[2, 6, 3]);
    for bad in [ty(I, &[2, 3]), ty(I, &[4, 2]), ty(I, &[8]), ty(F, &[2, 4])] {
        err_has(
            combine(2).infer(&[&y, &offsets, &bad]),
            &["input 2", "counts i64[2, 4]"],
        );
    }
    let counts = ty(I, &[2, 4]);
    // y must lead with the rank dim.
    for bad in [ty(F, &[6, 3]), ty(F, &[3, 6, 3]), ty(F, &[2])] {
        err_has(
            combine(2).infer(&[&bad, &offsets, &counts]),
            &["input 0", "[2, ..., H]"],
        );
    }
    err_has(combine(2).infer(&[&y, &offsets]), &["expects 3 input(s)"]);
    let reduce = CollectiveOp::AllReduce { ranks: 2 };
    err_has(reduce.infer(&[&ty(I, &[3])]), &["input 0"]);
}

#[test]
fn attrs_round_trip_and_parse_errors() {
    for op in [
        a2a(1),
        a2a(4),
        combine(2),
        CollectiveOp::AllReduce { ranks: 8 },
    ] {
        assert_eq!(CollectiveOp::parse(op.name(), &op.attrs()), Some(Ok(op)));
        assert_eq!(
            Op::parse(op.name(), &op.attrs()),
            Ok(Some(Op::Collective(op)))
        );
        assert_eq!(op.attrs()["ranks"], Attr::Int(op.ranks() as i64));
    }
    assert_eq!(CollectiveOp::parse("AllGather", &Attrs::new()), None);
    let e = parse_err::<CollectiveOp>;
    assert!(e("AllToAll", &[]).contains("attribute 'ranks' is required"));
    for bad in [0, -2] {
        let msg = e("AllToAllCombine", &[("ranks", Attr::Int(bad))]);
        assert!(
            msg.contains("attribute 'ranks'") && msg.contains("positive"),
            "{msg}"
        );
    }
    let msg = e("AllReduce", &[("ranks", Attr::Float(2.0))]);
    assert!(msg.contains("'ranks'"), "{msg}");
    let msg = e(
        "AllToAll",
        &[("ranks", Attr::Int(2)), ("experts", Attr::Int(4))],
    );
    assert!(msg.contains("unknown attribute 'experts'"), "{msg}");
}

/// Rows `[5, 2]`, 3 experts over the first 4 rows (expert 1 empty): row 4
/// is a dropped slot.
fn case() -> (Tensor, Tensor) {
    let x = t(&[5, 2], &[1., 2., 3., 4., 5., 6., 7., 8., 9., 10.]);
    (x, t(&[4], &[0., 2., 2., 4.]))
}

#[test]
fn one_rank_values_by_hand() {
    let (x, offsets) = case();
    let out = ev(a2a(1), &[&x, &offsets]).unwrap();
    let kept = [1., 2., 3., 4., 5., 6., 7., 8., 0., 0.];
    assert_eq!(out[0], t(&[1, 5, 2], &kept));
    assert_eq!(out[1], offsets);
    assert_eq!(out[2], t(&[1, 3], &[2., 0., 2.]));
    let back = ev(combine(1), &[&out[0], &offsets, &out[2]]).unwrap();
    assert_eq!(back, vec![t(&[5, 2], &kept)]);
    // Combine zeroes the dropped rows of its input too.
    let y = t(&[1, 5, 2], &x.data);
    let back = ev(combine(1), &[&y, &offsets, &out[2]]).unwrap();
    assert_eq!(back, vec![t(&[5, 2], &kept)]);
    let reduce = CollectiveOp::AllReduce { ranks: 1 };
    assert_eq!(ev(reduce, &[&x]).unwrap(), vec![x.clone()]);
}

#[test]
fn more_ranks_are_an_interpreter_error() {
    let (x, offsets) = case();
    let y = t(&[2, 5, 2], &[0.0; 20]);
    let counts = t(&[2, 1], &[0., 0.]);
    let two = t(&[3], &[0., 2., 4.]);
    let cases = [
        (a2a(2), vec![&x, &two]),
        (combine(2), vec![&y, &two, &counts]),
        (CollectiveOp::AllReduce { ranks: 2 }, vec![&x]),
    ];
    for (op, inputs) in cases {
        let e = ev(op, &inputs).unwrap_err();
        assert!(
            e.contains(op.name()) && e.contains("2 ranks") && e.contains("one rank"),
            "{e}"
        );
    }
    // Bad offsets and shapes are errors, not panics.
    let bad = t(&[4], &[0., 3., 2., 4.]);
    err_has(ev(a2a(1), &[&x, &bad]), &["offsets"]);
    err_has(ev(a2a(1), &[&x, &t(&[2], &[0., 6.])]), &["5 rows"]);
    err_has(ev(a2a(1), &[&t(&[], &[1.]), &offsets]), &["scalar"]);
    err_has(ev(combine(1), &[&x, &offsets, &counts]), &["[1, ..., H]"]);
    err_has(ev(a2a(1), &[&x]), &["unexpected number of inputs"]);
}

#[test]
fn never_recomputed_and_costs() {
    for op in [a2a(2), combine(2), CollectiveOp::AllReduce { ranks: 2 }] {
        assert_eq!(op.recompute(), Recompute::Never);
    }
    let (x, offsets) = (ty(F, &[6, 3]), ty(I, &[5]));
    let outs = a2a(2).infer(&[&x, &offsets]).unwrap();
    let refs: Vec<&TensorType> = outs.iter().collect();
    let c = a2a(2).cost(&[&x, &offsets], &refs);
    assert_eq!((c.flops, c.bytes), (0, 8 * (18 + 36)));
    let c = CollectiveOp::AllReduce { ranks: 4 }.cost(&[&x], &[&x]);
    assert_eq!((c.flops, c.bytes), (18 * 3, 8 * 36));
}
