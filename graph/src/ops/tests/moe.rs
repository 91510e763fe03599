//! Unit tests of the MoE family: values by hand (TopK ties and NaN,
//! MoeRoute dropless and under capacity, the grouped matmuls with an empty
//! expert and a dropped tail), shape rules, attributes and errors.
//! Gradient checks are in `graph/tests/grad_ops.rs` and `graph/tests/moe_*.rs`.

use super::*;
use crate::ops::test_util::{parse_err, t, ty};
use crate::ops::{Op, numel};

const F: DType = DType::F64;
const I: DType = DType::I64;

fn ev(op: Moe, inputs: &[&Tensor]) -> std::result::Result<Vec<Tensor>, String> {
    op.eval(inputs, &EvalCx::default())
}

fn ev1(op: Moe, inputs: &[&Tensor]) -> std::result::Result<Tensor, String> {
    ev(op, inputs).map(|mut v| v.remove(0))
}

fn route(ids: &Tensor, experts: usize, capacity_factor: f64) -> Vec<Tensor> {
    let op = Moe::MoeRoute {
        experts,
        capacity_factor,
    };
    ev(op, &[ids]).unwrap()
}

#[test]
fn top_k_values_ties_and_nan() {
    let op = Moe::TopK { k: 2 };
    // Ties go to the lower index; -0 ties with 0.
    let x = t(
        &[3, 4],
        &[
            1.0, 3.0, 3.0, 2.0, 0.5, -1.0, 4.0, 4.0, -0.0, 0.0, -2.0, -3.0,
        ],
    );
    let out = ev1(op, &[&x]).unwrap();
    assert_eq!(out, t(&[3, 2], &[1.0, 2.0, 2.0, 3.0, 0.0, 1.0]));
    // NaN ranks below every number, -inf included; NaNs keep index order.
    let nan = f64::NAN;
    let x = t(&[4], &[nan, f64::NEG_INFINITY, 0.5, nan]);
    let out = ev1(Moe::TopK { k: 4 }, &[&x]).unwrap();
    assert_eq!(out, t(&[4], &[2.0, 1.0, 0.0, 3.0]));
    // k = E is a full descending sort; leading dims are kept.
    let x = t(&[2, 1, 3], &[0.1, 0.3, 0.2, -5.0, 7.0, 7.0]);
    let out = ev1(Moe::TopK { k: 3 }, &[&x]).unwrap();
    assert_eq!(out, t(&[2, 1, 3], &[1.0, 2.0, 0.0, 1.0, 2.0, 0.0]));
}

/// The skewed case of the module tests: 6 tokens, top-2 of 3 experts.
/// Slots (token, choice) in order hold experts
/// 0 1 | 0 2 | 0 1 | 1 0 | 0 2 | 2 0: expert 0 has six slots
/// (0, 2, 4, 7, 8, 11), expert 1 three (1, 5, 6), expert 2 three (3, 9, 10).
fn skewed_ids() -> Tensor {
    t(
        &[6, 2],
        &[0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 0.0],
    )
}

#[test]
fn route_dropless_by_hand() {
    let out = route(&skewed_ids(), 3, 0.0);
    // Rows 0..6: expert 0's slots 0 2 4 7 8 11 (tokens 0..6); rows 6..9:
    // expert 1's slots 1 5 6 (tokens 0 2 3); rows 9..12: expert 2's slots
    // 3 9 10 (tokens 1 4 5).
    let row_token = [0., 1., 2., 3., 4., 5., 0., 2., 3., 1., 4., 5.];
    let slot_row = [0., 6., 1., 9., 2., 7., 8., 3., 4., 10., 11., 5.];
    assert_eq!(out[0], t(&[6, 2], &row_token));
    assert_eq!(out[1], t(&[6, 2], &slot_row));
    assert_eq!(out[2], Tensor::full(&[6, 2], 1.0));
    assert_eq!(out[3], t(&[4], &[0.0, 6.0, 9.0, 12.0]));
    // Every slot's row holds its token.
    for (slot, &row) in slot_row.iter().enumerate() {
        assert_eq!(row_token[row as usize], (slot / 2) as f64);
    }
}

#[test]
fn route_with_capacity_drops_late_slots() {
    // R = 12 slots, E = 3, factor 0.5: C = ceil(0.5 * 12 / 3) = 2 per expert.
    assert_eq!(capacity(0.5, 12, 3), 2);
    let out = route(&skewed_ids(), 3, 0.5);
    // Expert 0 keeps slots 0 2 and drops 4 7 8 11; expert 1 keeps 1 5 and
    // drops 6; expert 2 keeps 3 9 and drops 10: 6 drops. Kept rows 0..6 by
    // expert (slots 0 2 | 1 5 | 3 9), then the dropped slots 4 6 7 8 10 11
    // in slot order in rows 6..12.
    let keep = [1., 1., 1., 1., 0., 1., 0., 0., 0., 1., 0., 0.];
    assert_eq!(out[2], t(&[6, 2], &keep));
    assert_eq!(keep.iter().filter(|&&k| k == 0.0).count(), 6);
    let row_token = [0., 1., 0., 2., 1., 4., 2., 3., 3., 4., 5., 5.];
    let slot_row = [0., 2., 1., 4., 6., 3., 7., 8., 9., 5., 10., 11.];
    assert_eq!(out[0], t(&[6, 2], &row_token));
    assert_eq!(out[1], t(&[6, 2], &slot_row));
    assert_eq!(out[3], t(&[4], &[0.0, 2.0, 4.0, 6.0]));
    for (slot, &row) in slot_row.iter().enumerate() {
        assert_eq!(row_token[row as usize], (slot / 2) as f64);
        assert_eq!(keep[slot] == 1.0, row < 6.0, "slot {slot}");
    }
}

#[test]
fn route_with_room_for_every_slot_equals_dropless() {
    let dropless = route(&skewed_ids(), 3, 0.0);
    // 1.5 gives C = 6, exactly expert 0's load; 3.0 gives C = 12.
    for factor in [1.5, 3.0, 100.0] {
        assert_eq!(route(&skewed_ids(), 3, factor), dropless, "{factor}");
    }
    // One expert less room and one slot drops.
    let tight = route(&skewed_ids(), 3, 1.25);
    assert_eq!(capacity(1.25, 12, 3), 5);
    assert_eq!(tight[2].data.iter().filter(|&&k| k == 0.0).count(), 1);
    assert_eq!(tight[2].data[11], 0.0);
    assert_eq!(tight[3], t(&[4], &[0.0, 5.0, 8.0, 11.0]));
}

#[test]
fn route_rejects_out_of_range_ids() {
    for (bad, at) in [(3.0, 1), (-1.0, 1), (1.5, 1), (f64::NAN, 1)] {
        let ids = t(&[1, 2], &[0.0, bad]);
        let op = Moe::MoeRoute {
            experts: 3,
            capacity_factor: 0.0,
        };
        let e = ev(op, &[&ids]).unwrap_err();
        assert!(
            e.contains(&format!("expert id {bad} at slot {at}")) && e.contains("[0, 3)"),
            "{e}"
        );
    }
}

/// x [4, 2]; experts 0 (rows 0, 1), 1 (empty), 2 (row 2); row 3 dropped.
fn grouped_case() -> (Tensor, Tensor, Tensor) {
    let x = t(&[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let mut w = vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
    w.extend([9.0; 6]);
    w.extend([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let offsets = t(&[4], &[0.0, 2.0, 2.0, 3.0]);
    (x, t(&[3, 2, 3], &w), offsets)
}

/// `[E, A, B]` to `[E, B, A]`.
fn transpose_experts(w: &Tensor) -> Tensor {
    let (e, a, b) = (w.shape[0], w.shape[1], w.shape[2]);
    let mut out = vec![0.0; e * a * b];
    for x in 0..e {
        for i in 0..a {
            for j in 0..b {
                out[x * a * b + j * a + i] = w.data[x * a * b + i * b + j];
            }
        }
    }
    Tensor::new(vec![e, b, a], out)
}

#[test]
fn grouped_matmul_by_hand() {
    let (x, w, offsets) = grouped_case();
    // Row 0, 1 by [[1, 0, 1], [0, 1, 1]]; row 2 by [[1, 2, 3], [4, 5, 6]];
    // row 3 is past offsets[E]: zero. Expert 1's 9s are never read.
    let want = t(
        &[4, 3],
        &[
            1.0, 2.0, 3.0, 3.0, 4.0, 7.0, 29.0, 40.0, 51.0, 0.0, 0.0, 0.0,
        ],
    );
    let op = Moe::GroupedMatMul { transpose_w: false };
    assert_eq!(ev1(op, &[&x, &w, &offsets]).unwrap(), want);
    let op = Moe::GroupedMatMul { transpose_w: true };
    let wt = transpose_experts(&w);
    assert_eq!(ev1(op, &[&x, &wt, &offsets]).unwrap(), want);
    // Leading dims [2, 2] are 4 rows.
    let x4 = Tensor::new(vec![2, 2, 2], x.data.clone());
    let op = Moe::GroupedMatMul { transpose_w: false };
    let out = ev1(op, &[&x4, &w, &offsets]).unwrap();
    assert_eq!(out, Tensor::new(vec![2, 2, 3], want.data));
}

#[test]
fn grouped_matmul_grad_w_by_hand() {
    let (x, _, offsets) = grouped_case();
    let dy = t(
        &[4, 3],
        &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0],
    );
    // dw0 = [1, 2]ᵀ[1, 0, 0] + [3, 4]ᵀ[0, 1, 0]; dw1 = 0 (no rows);
    // dw2 = [5, 6]ᵀ[1, 1, 1]; row 3 (dropped) contributes nothing.
    let mut want = vec![1.0, 3.0, 0.0, 2.0, 4.0, 0.0];
    want.extend([0.0; 6]);
    want.extend([5.0, 5.0, 5.0, 6.0, 6.0, 6.0]);
    let want = t(&[3, 2, 3], &want);
    let op = Moe::GroupedMatMulGradW { transpose: false };
    assert_eq!(ev1(op, &[&x, &dy, &offsets]).unwrap(), want);
    let op = Moe::GroupedMatMulGradW { transpose: true };
    let got = ev1(op, &[&x, &dy, &offsets]).unwrap();
    assert_eq!(got, transpose_experts(&want));
    // All rows dropped: every expert's gradient is zero.
    let none = t(&[4], &[0.0, 0.0, 0.0, 0.0]);
    let op = Moe::GroupedMatMulGradW { transpose: false };
    let got = ev1(op, &[&x, &dy, &none]).unwrap();
    assert_eq!(got, Tensor::zeros(&[3, 2, 3]));
}

#[test]
fn bad_offsets_are_errors() {
    let (x, w, _) = grouped_case();
    let dy = Tensor::zeros(&[4, 3]);
    for (offsets, why) in [
        ([1.0, 2.0, 2.0, 3.0], "must start at 0"),
        ([0.0, 3.0, 2.0, 3.0], "non-decreasing"),
        ([0.0, 2.0, 2.0, 5.0], "at most the row count"),
        ([0.0, 0.5, 2.0, 3.0], "whole"),
    ] {
        let offsets = t(&[4], &offsets);
        let op = Moe::GroupedMatMul { transpose_w: false };
        let e = ev1(op, &[&x, &w, &offsets]).unwrap_err();
        assert!(e.contains(why) && e.contains("rows: 4"), "{e}");
        let op = Moe::GroupedMatMulGradW { transpose: false };
        let e = ev1(op, &[&x, &dy, &offsets]).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn shape_rules() {
    let batch = |dims: &[Dim], dtype| TensorType::new(dtype, Shape(dims.to_vec()));
    let (b, f) = (Dim::Batch, Dim::Fixed);
    let logits = batch(&[b, f(5)], F);
    let out = Moe::TopK { k: 2 }.infer(&[&logits]).unwrap();
    assert_eq!(out, vec![batch(&[b, f(2)], I)]);
    let ids = batch(&[b, f(2)], I);
    let route = Moe::MoeRoute {
        experts: 4,
        capacity_factor: 1.0,
    };
    let out = route.infer(&[&ids]).unwrap();
    assert_eq!(
        out,
        vec![
            ids.clone(),
            ids.clone(),
            batch(&[b, f(2)], DType::F32),
            ty(I, &[5]),
        ]
    );
    let (x, offsets) = (batch(&[b, f(2), f(3)], F), ty(I, &[5]));
    let gmm = Moe::GroupedMatMul { transpose_w: false };
    let out = gmm.infer(&[&x, &ty(F, &[4, 3, 7]), &offsets]).unwrap();
    assert_eq!(out, vec![batch(&[b, f(2), f(7)], F)]);
    let gmm_t = Moe::GroupedMatMul { transpose_w: true };
    let out = gmm_t.infer(&[&x, &ty(F, &[4, 7, 3]), &offsets]).unwrap();
    assert_eq!(out, vec![batch(&[b, f(2), f(7)], F)]);
    let dy = batch(&[b, f(2), f(7)], F);
    let gw = Moe::GroupedMatMulGradW { transpose: false };
    assert_eq!(
        gw.infer(&[&x, &dy, &offsets]).unwrap(),
        vec![ty(F, &[4, 3, 7])]
    );
    let gw_t = Moe::GroupedMatMulGradW { transpose: true };
    assert_eq!(
        gw_t.infer(&[&x, &dy, &offsets]).unwrap(),
        vec![ty(F, &[4, 7, 3])]
    );
}

/// Asserts that `r` is an error mentioning every piece of `want`.
fn err_has(r: std::result::Result<Vec<TensorType>, String>, want: &[&str]) {
    let e = r.unwrap_err();
    for w in want {
        assert!(e.contains(w), "'{w}' not in: {e}");
    }
}

#[test]
fn shape_errors_name_the_input_or_attribute() {
    let top = Moe::TopK { k: 6 };
    err_has(
        top.infer(&[&ty(F, &[3, 5])]),
        &["attribute 'k'", "6", "input 0"],
    );
    err_has(
        Moe::TopK { k: 0 }.infer(&[&ty(F, &[3, 5])]),
        &["attribute 'k'"],
    );
    err_has(
        Moe::TopK { k: 1 }.infer(&[&ty(I, &[3, 5])]),
        &["input 0", "i64"],
    );
    err_has(Moe::TopK { k: 1 }.infer(&[&ty(F, &[])]), &["input 0"]);
    let route = |experts, capacity_factor| Moe::MoeRoute {
        experts,
        capacity_factor,
    };
    err_has(route(4, 0.0).infer(&[&ty(F, &[3, 2])]), &["input 0", "int"]);
    err_has(route(4, 0.0).infer(&[&ty(I, &[])]), &["input 0"]);
    err_has(
        route(0, 0.0).infer(&[&ty(I, &[3, 2])]),
        &["attribute 'experts'"],
    );
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        err_has(
            route(4, bad).infer(&[&ty(I, &[3, 2])]),
            &["attribute 'capacity_factor'"],
        );
    }
    let gmm = Moe::GroupedMatMul { transpose_w: false };
    let (x, off) = (ty(F, &[6, 3]), ty(I, &[5]));
    let check = |w: TensorType, off: &TensorType, want: &[&str]| {
        err_has(gmm.infer(&[&x, &w, off]), want);
    };
    check(ty(F, &[3, 3, 7]), &off, &["input 1", "3 experts", "4"]);
    check(ty(F, &[4, 2, 7]), &off, &["input 1", "expected 3 rows"]);
    check(ty(F, &[4, 3]), &off, &["input 1", "[experts, in, out]"]);
    check(ty(DType::F32, &[4, 3, 7]), &off, &["input 1", "f32"]);
    check(ty(F, &[4, 3, 7]), &ty(F, &[5]), &["input 2", "int"]);
    check(ty(F, &[4, 3, 7]), &ty(I, &[1]), &["input 2", "experts + 1"]);
    check(ty(F, &[4, 3, 7]), &ty(I, &[5, 1]), &["input 2"]);
    let gmm_t = Moe::GroupedMatMul { transpose_w: true };
    err_has(
        gmm_t.infer(&[&x, &ty(F, &[4, 3, 7]), &off]),
        &["input 1", "transpose_w"],
    );
    err_has(
        gmm.infer(&[&x, &ty(F, &[4, 3, 7])]),
        &["expects 3 input(s)"],
    );
    let gw = Moe::GroupedMatMulGradW { transpose: false };
    err_has(
        gw.infer(&[&x, &ty(F, &[5, 7]), &off]),
        &["input 1", "leading dims of input 0"],
    );
    err_has(
        gw.infer(&[&x, &ty(F, &[2, 3, 7]), &off]),
        &["input 1", "leading dims"],
    );
    // Scalars are an error, not a panic.
    err_has(gw.infer(&[&ty(F, &[]), &ty(F, &[]), &off]), &["input 0"]);
    err_has(gw.infer(&[&x, &ty(I, &[6, 7]), &off]), &["input 1"]);
}

#[test]
fn attrs_round_trip_and_parse_errors() {
    let ops = [
        Moe::TopK { k: 2 },
        Moe::MoeRoute {
            experts: 8,
            capacity_factor: 0.0,
        },
        Moe::MoeRoute {
            experts: 3,
            capacity_factor: 1.25,
        },
        Moe::GroupedMatMul { transpose_w: false },
        Moe::GroupedMatMul { transpose_w: true },
        Moe::GroupedMatMulGradW { transpose: false },
        Moe::GroupedMatMulGradW { transpose: true },
        Moe::GatherRows,
        Moe::ScatterAddRows {
            leading: Shape(vec![Dim::Batch, Dim::Fixed(3)]),
        },
    ];
    for op in ops {
        assert_eq!(Moe::parse(op.name(), &op.attrs()), Some(Ok(op.clone())));
        assert_eq!(Op::parse(op.name(), &op.attrs()), Ok(Some(Op::Moe(op))));
    }
    let parse = |name, kv: &[(&str, Attr)]| {
        let attrs: Attrs = kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Moe::parse(name, &attrs)
    };
    // Defaults: dropless routing, untransposed weights.
    let experts = [("experts", Attr::Int(4))];
    assert_eq!(
        parse("MoeRoute", &experts),
        Some(Ok(Moe::MoeRoute {
            experts: 4,
            capacity_factor: 0.0
        }))
    );
    assert_eq!(
        parse("GroupedMatMul", &[]),
        Some(Ok(Moe::GroupedMatMul { transpose_w: false }))
    );
    assert_eq!(
        parse("GroupedMatMulGradW", &[]),
        Some(Ok(Moe::GroupedMatMulGradW { transpose: false }))
    );
    assert_eq!(parse("Gather", &[]), None);
    let e = parse_err::<Moe>;
    assert!(e("TopK", &[]).contains("attribute 'k' is required"));
    let k0 = e("TopK", &[("k", Attr::Int(0))]);
    assert!(
        k0.contains("attribute 'k'") && k0.contains("positive"),
        "{k0}"
    );
    assert!(e("MoeRoute", &[]).contains("attribute 'experts' is required"));
    assert!(e("MoeRoute", &[("experts", Attr::Int(-2))]).contains("attribute 'experts'"));
    for bad in [-0.5, f64::NAN] {
        let kv = [
            ("experts", Attr::Int(4)),
            ("capacity_factor", Attr::Float(bad)),
        ];
        let msg = e("MoeRoute", &kv);
        assert!(msg.contains("attribute 'capacity_factor'"), "{msg}");
    }
    let msg = e("GroupedMatMul", &[("transpose", Attr::Bool(true))]);
    assert!(msg.contains("unknown attribute 'transpose'"), "{msg}");
    let msg = e("GroupedMatMulGradW", &[("transpose", Attr::Int(1))]);
    assert!(msg.contains("'transpose'"), "{msg}");
}

#[test]
fn recompute_classes_and_costs() {
    assert_eq!(Moe::TopK { k: 2 }.recompute(), Recompute::Never);
    let route = Moe::MoeRoute {
        experts: 4,
        capacity_factor: 0.0,
    };
    assert_eq!(route.recompute(), Recompute::Never);
    let gmm = Moe::GroupedMatMul { transpose_w: false };
    assert_eq!(gmm.recompute(), Recompute::Expensive);
    let gw = Moe::GroupedMatMulGradW { transpose: true };
    assert_eq!(gw.recompute(), Recompute::Expensive);
    // R = 6 rows, D = 3, H = 7: 2·R·D·H FLOPs both ways.
    let (x, w, off, y) = (
        ty(F, &[6, 3]),
        ty(F, &[4, 3, 7]),
        ty(I, &[5]),
        ty(F, &[6, 7]),
    );
    let c = gmm.cost(&[&x, &w, &off], &[&y]);
    assert_eq!(c.flops, 2 * 6 * 3 * 7);
    assert_eq!(c.bytes, 8 * (18 + 84 + 5 + 42));
    let dw = ty(F, &[4, 7, 3]);
    assert_eq!(gw.cost(&[&x, &y, &off], &[&dw]).flops, 2 * 6 * 3 * 7);
    let logits = ty(F, &[6, 4]);
    let c = Moe::TopK { k: 2 }.cost(&[&logits], &[&ty(I, &[6, 2])]);
    assert_eq!(c.flops, numel(&logits) * 2);
}

#[test]
fn gather_and_scatter_rows_by_hand() {
    // x [2, 2, 2]: rows 0..4 of width 2.
    let x = t(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let idx = t(&[3], &[3.0, 0.0, 3.0]);
    let g = ev1(Moe::GatherRows, &[&x, &idx]).unwrap();
    assert_eq!(g, t(&[3, 2], &[7.0, 8.0, 1.0, 2.0, 7.0, 8.0]));
    let leading = Shape(vec![Dim::Fixed(2), Dim::Fixed(2)]);
    let s = ev1(Moe::ScatterAddRows { leading }, &[&g, &idx]).unwrap();
    assert_eq!(
        s,
        t(&[2, 2, 2], &[1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 14.0, 16.0])
    );
    let bad = Moe::GatherRows
        .eval(&[&x, &t(&[1], &[4.0])], &EvalCx::default())
        .unwrap_err();
    assert!(bad.contains("row index 4 is out of range [0, 4)"), "{bad}");
    // A symbolic batch stays symbolic, and binds.
    let rows = Moe::GatherRows
        .infer(&[&ty(F, &[]), &ty(I, &[3])])
        .unwrap_err();
    assert!(rows.contains("input 0"), "{rows}");
    let op = Moe::ScatterAddRows {
        leading: Shape(vec![Dim::Batch, Dim::Fixed(4)]),
    };
    let out = op.infer(&[&ty(F, &[5, 2]), &ty(I, &[5])]).unwrap();
    assert_eq!(
        out[0].shape,
        Shape(vec![Dim::Batch, Dim::Fixed(4), Dim::Fixed(2)])
    );
    let bound = op.bind_batch(3);
    let out = bound.infer(&[&ty(F, &[5, 2]), &ty(I, &[5])]).unwrap();
    assert_eq!(out[0].shape, Shape::of(&[3, 4, 2]));
}
