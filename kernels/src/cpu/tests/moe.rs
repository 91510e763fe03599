//! Tests of top-k, routing and the grouped matmuls against naive loops.

use super::*;
use crate::backend::GroupedMatMulDims;
use crate::cpu::grouped::{grouped_matmul, grouped_matmul_grad_w};

/// A tiny LCG.
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "{what}[{i}] = {g}, want {w}"
        );
    }
}

// ----- top_k -----

/// Indices of `row` sorted best first by the documented order.
fn naive_top_k(row: &[f32], k: usize) -> Vec<i64> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| {
        use std::cmp::Ordering;
        let (x, y) = (row[a], row[b]);
        let by_value = match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => y.partial_cmp(&x).unwrap(),
        };
        by_value.then(a.cmp(&b))
    });
    idx[..k].iter().map(|&i| i as i64).collect()
}

#[test]
fn top_k_matches_naive_with_many_ties() {
    let mut rng = Lcg(5);
    // (rows, n): tiny, typical router widths, and above the parallel
    // threshold.
    for &(rows, n) in &[(1, 1), (3, 4), (17, 8), (5, 64), (700, 64), (40, 1000)] {
        // Values on a coarse grid, so most rows hold ties.
        let x: Vec<f32> = (0..rows * n)
            .map(|_| (rng.f32() * 4.0).round() / 4.0)
            .collect();
        for k in [1, n.min(2), n.min(3), n] {
            let mut ids = vec![-1i64; rows * k];
            top_k(&x, &mut ids, rows, n, k).unwrap();
            let want: Vec<i64> = x.chunks(n).flat_map(|r| naive_top_k(r, k)).collect();
            assert_eq!(ids, want, "rows {rows}, n {n}, k {k}");
        }
    }
}

#[test]
fn top_k_ties_go_to_the_lower_index_and_nan_ranks_last() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let x = [1.0, 3.0, 3.0, nan, -inf, 3.0, nan, -0.0, 0.0, inf];
    let mut ids = vec![0i64; 10];
    top_k(&x, &mut ids, 1, 10, 10).unwrap();
    // -0.0 and 0.0 are equal values: a tie, lower index first.
    assert_eq!(ids, [9, 1, 2, 5, 0, 7, 8, 4, 3, 6]);
    let mut two = vec![0i64; 2];
    top_k(&x, &mut two, 1, 10, 2).unwrap();
    assert_eq!(two, [9, 1]);
    let mut all_nan = vec![0i64; 2];
    top_k(&[nan, nan, nan], &mut all_nan, 1, 3, 2).unwrap();
    assert_eq!(all_nan, [0, 1]);
}

#[test]
fn top_k_rejects_k_above_the_row_length() {
    let err = top_k(&[1.0, 2.0], &mut [0; 3], 1, 2, 3).unwrap_err();
    assert!(err.to_string().contains("k = 3"), "{err}");
    top_k(&[], &mut [], 0, 4, 2).unwrap();
}

// ----- moe_route -----

/// Outputs of a routing, owned.
#[derive(Debug, PartialEq)]
struct Routed {
    row_token: Vec<i64>,
    slot_row: Vec<i64>,
    slot_keep: Vec<f32>,
    offsets: Vec<i64>,
}

fn route<I: IndexElem>(ids: &[I], k: usize, experts: usize, cap: Option<usize>) -> Result<Routed> {
    let r = ids.len();
    // Poisoned outputs: every element must be written.
    let mut out = Routed {
        row_token: vec![-7; r],
        slot_row: vec![-7; r],
        slot_keep: vec![f32::NAN; r],
        offsets: vec![-7; experts + 1],
    };
    let views = Route {
        row_token: &mut out.row_token,
        slot_row: &mut out.slot_row,
        slot_keep: &mut out.slot_keep,
        offsets: &mut out.offsets,
    };
    moe_route(ids, k, experts, cap, views)?;
    Ok(out)
}

/// The routing spelled out: per-expert lists in slot order, capacity by
/// position, dropped slots after the kept ones.
fn naive_route(ids: &[i64], k: usize, experts: usize, cap: Option<usize>) -> Routed {
    let r = ids.len();
    let cap = cap.unwrap_or(usize::MAX);
    let mut groups = vec![Vec::new(); experts];
    let mut dropped = Vec::new();
    for (s, &e) in ids.iter().enumerate() {
        let g = &mut groups[e as usize];
        if g.len() < cap {
            g.push(s);
        } else {
            dropped.push(s);
        }
    }
    let mut out = Routed {
        row_token: vec![0; r],
        slot_row: vec![0; r],
        slot_keep: vec![0.0; r],
        offsets: vec![0],
    };
    let mut row = 0;
    for g in &groups {
        for &s in g {
            out.row_token[row] = (s / k) as i64;
            out.slot_row[s] = row as i64;
            out.slot_keep[s] = 1.0;
            row += 1;
        }
        out.offsets.push(row as i64);
    }
    for &s in &dropped {
        out.row_token[row] = (s / k) as i64;
        out.slot_row[s] = row as i64;
        row += 1;
    }
    out
}

#[test]
fn route_drops_by_position_over_capacity() {
    // T = 6, k = 2, E = 3, capacity factor 0.5: C = ceil(0.5·12/3) = 2.
    // Expert 0 gets slots 0, 2, 4, 7, 8 (keeps 0, 2); expert 1 gets 1, 5,
    // 6, 10 (keeps 1, 5); expert 2 gets 3, 9, 11 (keeps 3, 9).
    let ids: [i64; 12] = [0, 1, 0, 2, 0, 1, 1, 0, 0, 2, 1, 2];
    let got = route(&ids, 2, 3, Some(2)).unwrap();
    assert_eq!(got.offsets, [0, 2, 4, 6]);
    // Rows: s0 s2 | s1 s5 | s3 s9 | dropped s4 s6 s7 s8 s10 s11.
    assert_eq!(got.slot_row, [0, 2, 1, 4, 6, 3, 7, 8, 9, 5, 10, 11]);
    assert_eq!(got.row_token, [0, 1, 0, 2, 1, 4, 2, 3, 3, 4, 5, 5]);
    assert_eq!(
        got.slot_keep,
        [1., 1., 1., 1., 0., 1., 0., 0., 0., 1., 0., 0.]
    );
    assert_eq!(got, naive_route(&ids, 2, 3, Some(2)));
    // Dropless keeps every slot in the same grouped order.
    let all = route(&ids, 2, 3, None).unwrap();
    assert_eq!(all.offsets, [0, 5, 9, 12]);
    assert_eq!(all.row_token, [0, 1, 2, 3, 4, 0, 2, 3, 5, 1, 4, 5]);
    assert!(all.slot_keep.iter().all(|&k| k == 1.0));
}

#[test]
fn route_matches_naive_on_skewed_ids_with_empty_experts() {
    let mut rng = Lcg(9);
    let cases: [(usize, usize, usize); 5] =
        [(1, 1, 1), (5, 1, 4), (6, 2, 3), (33, 2, 8), (257, 4, 16)];
    for (tokens, k, experts) in cases {
        // Skewed: expert e is drawn with weight about 2^-e, so the last
        // experts are usually empty.
        let ids: Vec<i64> = (0..tokens * k)
            .map(|_| (rng.next_u32().leading_zeros() as usize).min(experts - 1) as i64)
            .collect();
        let r = tokens * k;
        for cap in [None, Some(1), Some(r.div_ceil(experts)), Some(r)] {
            let want = naive_route(&ids, k, experts, cap);
            assert_eq!(route(&ids, k, experts, cap).unwrap(), want, "cap {cap:?}");
            let ids32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            assert_eq!(route(&ids32, k, experts, cap).unwrap(), want);
            // Each row holds exactly one slot.
            let mut seen = vec![false; r];
            for &row in &want.slot_row {
                assert!(!std::mem::replace(&mut seen[row as usize], true));
            }
        }
        let empty = (0..experts).filter(|&e| !ids.contains(&(e as i64))).count();
        let got = route(&ids, k, experts, None).unwrap();
        let zero_groups = got.offsets.windows(2).filter(|w| w[0] == w[1]).count();
        assert_eq!(zero_groups, empty);
    }
}

#[test]
fn route_rejects_out_of_range_ids() {
    for bad in [3i64, -1] {
        let err = route(&[0, bad, 1, 2], 2, 3, None).unwrap_err();
        assert_eq!(
            err,
            Error::IndexOutOfRange {
                what: "moe_route expert id",
                index: bad,
                bound: 3,
            }
        );
    }
    assert!(route(&[0i64, 1, 2], 2, 3, None).is_err()); // not whole tokens
}

// ----- grouped matmuls -----

fn dims(experts: usize, rows: usize, d: usize, h: usize, transpose: bool) -> GroupedMatMulDims {
    GroupedMatMulDims {
        experts,
        rows,
        d,
        h,
        transpose,
    }
}

/// Offsets from per-expert row counts.
fn offsets_of(counts: &[usize]) -> Vec<i64> {
    let mut out = vec![0i64];
    for &c in counts {
        out.push(out.last().unwrap() + c as i64);
    }
    out
}

/// Element (i, j) of expert e's `[d, h]` matrix in `w`.
fn weight(w: &[f32], e: usize, i: usize, j: usize, dm: &GroupedMatMulDims) -> f64 {
    let entry = dm.d * dm.h;
    let at = if dm.transpose {
        j * dm.d + i
    } else {
        i * dm.h + j
    };
    f64::from(w[e * entry + at])
}

fn naive_grouped(x: &[f32], w: &[f32], offsets: &[i64], dm: &GroupedMatMulDims) -> Vec<f64> {
    let mut y = vec![0.0; dm.rows * dm.h];
    for e in 0..dm.experts {
        for r in offsets[e] as usize..offsets[e + 1] as usize {
            for j in 0..dm.h {
                y[r * dm.h + j] = (0..dm.d)
                    .map(|i| f64::from(x[r * dm.d + i]) * weight(w, e, i, j, dm))
                    .sum();
            }
        }
    }
    y
}

fn naive_grad_w(x: &[f32], dy: &[f32], offsets: &[i64], dm: &GroupedMatMulDims) -> Vec<f64> {
    let (d, h) = (dm.d, dm.h);
    let mut dw = vec![0.0; dm.experts * d * h];
    for e in 0..dm.experts {
        for r in offsets[e] as usize..offsets[e + 1] as usize {
            for i in 0..d {
                for j in 0..h {
                    let at = if dm.transpose { j * d + i } else { i * h + j };
                    dw[e * d * h + at] += f64::from(x[r * d + i]) * f64::from(dy[r * h + j]);
                }
            }
        }
    }
    dw
}

/// (per-expert rows, dropped tail rows, d, h): empty groups first, in the
/// middle and last; medium groups (one rayon task each) and one too big
/// for that (groups in turn, each threaded inside gemm).
const GROUPS: &[(&[usize], usize, usize, usize)] = &[
    (&[3], 0, 4, 5),
    (&[0, 2, 0, 3, 1, 0], 2, 5, 7),
    (&[7, 0, 9], 4, 1, 3),
    (&[40, 0, 33, 60, 1, 0, 29, 12], 17, 64, 48),
    (&[300, 0, 200], 50, 128, 96),
    (&[520, 0, 5], 3, 128, 256),
    (&[0, 0, 0], 6, 8, 8),
];

#[test]
fn grouped_matmul_matches_naive_in_both_layouts() {
    let mut rng = Lcg(17);
    for &(counts, tail, d, h) in GROUPS {
        let experts = counts.len();
        let offsets = offsets_of(counts);
        let rows = *offsets.last().unwrap() as usize + tail;
        let x = rng.vec(rows * d);
        let w = rng.vec(experts * d * h);
        for transpose in [false, true] {
            let dm = dims(experts, rows, d, h, transpose);
            let mut y = vec![f32::NAN; rows * h];
            grouped_matmul(&x, &w, &offsets, &mut y, &dm).unwrap();
            close(&y, &naive_grouped(&x, &w, &offsets, &dm), "grouped_matmul");
            let o32: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
            let mut y32 = vec![f32::NAN; rows * h];
            grouped_matmul(&x, &w, &o32, &mut y32, &dm).unwrap();
            assert_eq!(y, y32);
        }
    }
}

#[test]
fn grouped_matmul_with_empty_rows_is_zero() {
    let offsets = offsets_of(&[2, 1]);
    let mut y = vec![f32::NAN; 4 * 3];
    grouped_matmul(&[], &[], &offsets, &mut y, &dims(2, 4, 0, 3, false)).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
}

#[test]
fn grad_w_matches_naive_and_zero_fills_empty_experts() {
    let mut rng = Lcg(23);
    for &(counts, tail, d, h) in GROUPS {
        let experts = counts.len();
        let offsets = offsets_of(counts);
        let rows = *offsets.last().unwrap() as usize + tail;
        let x = rng.vec(rows * d);
        let dy = rng.vec(rows * h);
        for transpose in [false, true] {
            let dm = dims(experts, rows, d, h, transpose);
            let mut dw = vec![f32::NAN; experts * d * h];
            grouped_matmul_grad_w(&x, &dy, &offsets, &mut dw, &dm).unwrap();
            close(&dw, &naive_grad_w(&x, &dy, &offsets, &dm), "grad_w");
            for (e, &c) in counts.iter().enumerate() {
                if c == 0 {
                    let block = &dw[e * d * h..(e + 1) * d * h];
                    assert!(block.iter().all(|&v| v.to_bits() == 0), "expert {e}");
                }
            }
        }
    }
}

/// Forward (with GELU), weight gradient in both layouts, run in a pool
/// of `threads`.
fn grouped_outputs(
    threads: usize,
    counts: &[usize],
    tail: usize,
    d: usize,
    h: usize,
) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut rng = Lcg(31);
    let experts = counts.len();
    let offsets = offsets_of(counts);
    let rows = *offsets.last().unwrap() as usize + tail;
    let x = rng.vec(rows * d);
    let w = rng.vec(experts * d * h);
    let dy = rng.vec(rows * h);
    let mut outs = Vec::new();
    pool.install(|| {
        for transpose in [false, true] {
            let dm = dims(experts, rows, d, h, transpose);
            let mut y = vec![f32::NAN; rows * h];
            let mut act = vec![f32::NAN; rows * h];
            let gelu = Some((crate::backend::UnaryOp::GeluTanh, &mut act[..]));
            crate::cpu::grouped::grouped_matmul_act(&x, &w, &offsets, &mut y, &dm, gelu).unwrap();
            let mut dw = vec![f32::NAN; experts * d * h];
            grouped_matmul_grad_w(&x, &dy, &offsets, &mut dw, &dm).unwrap();
            outs.extend([y, act, dw]);
        }
    });
    outs
}

/// Cutting the work into one part per thread (groups split by rows, or
/// by columns for the weight gradient) changes no bit: 2, 3 and 4
/// threads give what 1 gives, on groups big enough to be cut, empty and
/// tiny ones among them, and dropped rows.
#[test]
fn grouped_matmuls_give_the_same_bits_on_any_thread_count() {
    let cases: &[(&[usize], usize, usize, usize)] = &[
        (&[0, 300, 5, 0, 250, 97, 40, 0], 8, 24, 160),
        (&[1000], 0, 16, 96),
        (&[70, 70, 70, 70], 3, 64, 72),
    ];
    for &(counts, tail, d, h) in cases {
        let one = grouped_outputs(1, counts, tail, d, h);
        for threads in [2, 3, 4] {
            let many = grouped_outputs(threads, counts, tail, d, h);
            for (k, (a, b)) in one.iter().zip(&many).enumerate() {
                let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same, "{counts:?}: output {k} differs on {threads} threads");
            }
        }
    }
}

#[test]
fn bad_offsets_are_errors_naming_the_problem() {
    let (x, w, dy) = (vec![0.0; 4 * 2], vec![0.0; 2 * 2 * 3], vec![0.0; 4 * 3]);
    let cases: [(&[i64], &str); 4] = [
        (&[1, 2, 3], "offsets[0] is 1"),
        (&[0, 3, 2], "offsets[2] = 2 is below offsets[1] = 3"),
        (&[0, 2, 5], "offsets[2] = 5 exceeds the 4 rows"),
        (&[0, 2], "expected 3 elements, found 2"),
    ];
    for (offsets, message) in cases {
        let dm = dims(2, 4, 2, 3, false);
        let mut y = vec![0.0; 4 * 3];
        let err = grouped_matmul(&x, &w, offsets, &mut y, &dm).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
        let mut dw = vec![0.0; 2 * 2 * 3];
        let err = grouped_matmul_grad_w(&x, &dy, offsets, &mut dw, &dm).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
}
