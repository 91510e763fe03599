//! Tests of the reductions against a naive f64 reference.

use super::*;

struct Lcg(u64);

impl Lcg {
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)) as f32
            })
            .collect()
    }
}

/// The reference: every element added (or maxed) into its output in f64.
fn naive(op: ReduceOp, x: &[f32], shape: &[usize], axes: &[bool]) -> Vec<f64> {
    let keep: Vec<usize> = shape
        .iter()
        .zip(axes)
        .map(|(&n, &r)| if r { 1 } else { n })
        .collect();
    let outputs: usize = keep.iter().product();
    let count = x.len().checked_div(outputs).unwrap_or(0);
    let init = if op == ReduceOp::Max {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    let mut acc = vec![init; outputs];
    for (mut f, &v) in x.iter().enumerate() {
        let (mut o, mut stride) = (0, 1);
        for d in (0..shape.len()).rev() {
            let i = f % shape[d];
            f /= shape[d];
            if !axes[d] {
                o += i * stride;
                stride *= shape[d];
            }
        }
        let v = f64::from(v);
        match op {
            ReduceOp::Max if !acc[o].is_nan() && (v.is_nan() || v > acc[o]) => acc[o] = v,
            ReduceOp::Max => {}
            _ => acc[o] += v,
        }
    }
    if op == ReduceOp::Mean {
        acc.iter_mut().for_each(|a| *a /= count as f64);
    }
    acc
}

fn check(op: ReduceOp, x: &[f32], shape: &[usize], axes: &[bool]) {
    let want = naive(op, x, shape, axes);
    let mut got = vec![f32::NAN; want.len()];
    reduce(op, x, shape, axes, &mut got).unwrap();
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            (f64::from(g) - w).abs() <= 1e-6 + 1e-6 * w.abs()
        };
        assert!(ok, "{op:?} {shape:?} {axes:?} at {i}: got {g}, want {w}");
    }
}

/// Every subset of axes of `shape`, for every op.
fn check_all_subsets(r: &mut Lcg, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let x = r.vec(n, -1.0, 1.0);
    for mask in 0..1u32 << shape.len() {
        let axes: Vec<bool> = (0..shape.len()).map(|d| mask >> d & 1 == 1).collect();
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
            check(op, &x, shape, &axes);
        }
    }
}

#[test]
fn every_axis_subset_matches_the_reference() {
    let mut r = Lcg(1);
    for shape in [
        &[7][..],
        &[1],
        &[3, 5],
        &[1, 9],
        &[9, 1],
        &[2, 3, 4],
        &[4, 1, 3, 1, 5],
        &[3, 2, 2, 3, 2],
        &[17, 300],
        &[300, 17],
    ] {
        check_all_subsets(&mut r, shape);
    }
    check(ReduceOp::Sum, &[2.5], &[], &[]);
}

#[test]
fn large_reductions_match_above_the_parallel_threshold() {
    let mut r = Lcg(2);
    for shape in [
        &[1000, 300][..],
        &[300, 1000],
        &[PARALLEL_THRESHOLD * 5 + 3][..],
        &[3, 70_000],
        &[70_000, 3],
        &[8, 130, 70],
    ] {
        check_all_subsets(&mut r, shape);
    }
}

#[test]
fn results_do_not_depend_on_threading() {
    // The same tree on one thread and on the pool: identical bits.
    let mut r = Lcg(3);
    let shape = [2048, 300];
    let x = r.vec(2048 * 300, -1.0, 1.0);
    for axes in [[true, false], [false, true], [true, true]] {
        let p = Plan::new(&shape, &axes);
        let n = if axes[0] { 300 } else { 2048 };
        let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
        if axes == [true, true] {
            a.truncate(1);
            b.truncate(1);
        }
        run::<Sum>(&p, &x, &mut a, false, |s| s as f32);
        run::<Sum>(&p, &x, &mut b, true, |s| s as f32);
        assert_eq!(a, b, "{axes:?}");
    }
}

#[test]
fn long_sums_keep_f64_accuracy() {
    // 2^24 + many small values: f32 accumulation would drop them all.
    let mut x = vec![1.0f32; 1 << 20];
    x[0] = 16_777_216.0;
    let mut y = [0.0f32];
    reduce(ReduceOp::Sum, &x, &[1 << 20], &[true], &mut y).unwrap();
    assert_eq!(y[0], 16_777_216.0 + ((1 << 20) - 1) as f32);
    let mut cols = vec![0.0f32; 4];
    let x: Vec<f32> = (0..4 << 18)
        .map(|i| if i < 4 { 16_777_216.0 } else { 1.0 })
        .collect();
    reduce(ReduceOp::Sum, &x, &[1 << 18, 4], &[true, false], &mut cols).unwrap();
    assert_eq!(cols, vec![16_777_216.0 + ((1 << 18) - 1) as f32; 4]);
}

#[test]
fn max_propagates_nan_and_handles_infinities() {
    let x = [
        1.0,
        f32::NAN,
        3.0,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
    ];
    let mut y = [0.0f32; 2];
    reduce(ReduceOp::Max, &x, &[2, 3], &[false, true], &mut y).unwrap();
    assert!(y[0].is_nan());
    assert_eq!(y[1], f32::NEG_INFINITY);
    let mut y = [0.0f32; 3];
    reduce(ReduceOp::Max, &x, &[2, 3], &[true, false], &mut y).unwrap();
    assert_eq!(y[0], 1.0);
    assert!(y[1].is_nan());
    assert_eq!(y[2], 3.0);
    let mut big: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
    big[77_777] = f32::NAN;
    let mut y = [0.0f32];
    reduce(ReduceOp::Max, &big, &[100_000], &[true], &mut y).unwrap();
    assert!(y[0].is_nan());
}

#[test]
fn empty_extents() {
    let mut y = [5.0f32; 3];
    reduce(ReduceOp::Sum, &[], &[0, 3], &[true, false], &mut y).unwrap();
    assert_eq!(y, [0.0; 3]);
    reduce(ReduceOp::Mean, &[], &[0, 3], &[true, false], &mut y).unwrap();
    assert!(y.iter().all(|v| v.is_nan()));
    assert!(reduce(ReduceOp::Max, &[], &[0, 3], &[true, false], &mut y).is_err());
    // No outputs at all: nothing to do, even for max.
    reduce(ReduceOp::Max, &[], &[3, 0], &[true, false], &mut []).unwrap();
}

#[test]
fn bad_arguments_are_errors() {
    let x = [1.0f32; 6];
    let mut y = [0.0f32; 3];
    assert!(reduce(ReduceOp::Sum, &x, &[2, 3], &[true], &mut y).is_err());
    assert!(reduce(ReduceOp::Sum, &x[..5], &[2, 3], &[true, false], &mut y).is_err());
    assert!(reduce(ReduceOp::Sum, &x, &[2, 3], &[true, false], &mut y[..2]).is_err());
    assert!(reduce(ReduceOp::Sum, &x, &[2, 3], &[false, true], &mut y).is_err());
    assert!(reduce(ReduceOp::Sum, &x, &[1; 9], &[true; 9], &mut y[..1]).is_err());
    assert!(reduce(ReduceOp::Sum, &x, &[usize::MAX, 3], &[true, false], &mut y).is_err());
}

/// Throughput; run with `cargo test --release -p adjoint-kernels
/// reduce::tests::bench -- --ignored --nocapture --test-threads=1`.
#[test]
#[ignore]
fn bench() {
    let (m, n) = (4096, 1024);
    let x = Lcg(1).vec(m * n, -1.0, 1.0);
    let mut y = vec![0.0f32; m * n];
    let time = |name: &str, f: &mut dyn FnMut()| {
        f();
        let t = std::time::Instant::now();
        for _ in 0..10 {
            f();
        }
        let s = t.elapsed().as_secs_f64() / 10.0;
        println!(
            "{name:>18}: {:7.3} ms, {:6.2} Gelem/s",
            s * 1e3,
            (m * n) as f64 / s / 1e9
        );
    };
    time("rows [M,N]->[M]", &mut || {
        reduce(ReduceOp::Sum, &x, &[m, n], &[false, true], &mut y[..m]).unwrap()
    });
    time("cols [M,N]->[N]", &mut || {
        reduce(ReduceOp::Sum, &x, &[m, n], &[true, false], &mut y[..n]).unwrap()
    });
    time("all", &mut || {
        reduce(ReduceOp::Sum, &x, &[m, n], &[true, true], &mut y[..1]).unwrap()
    });
    time("max rows", &mut || {
        reduce(ReduceOp::Max, &x, &[m, n], &[false, true], &mut y[..m]).unwrap()
    });
    time("middle [A,B,C]->[A,C]", &mut || {
        reduce(
            ReduceOp::Sum,
            &x,
            &[64, 64, n],
            &[false, true, false],
            &mut y[..64 * n],
        )
        .unwrap()
    });
}
