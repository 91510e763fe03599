//! Tests of softmax and LayerNorm against naive f64 code.

use super::*;

/// A tiny LCG: uniform values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}] = {g}, want {w}"
        );
    }
}

fn naive_softmax(x: &[f32], outer: usize, n: usize, inner: usize, log: bool) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * n + j) * inner + i;
            let m = (0..n)
                .map(|j| f64::from(x[at(j)]))
                .fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..n).map(|j| (f64::from(x[at(j)]) - m).exp()).sum();
            for j in 0..n {
                let v = f64::from(x[at(j)]) - m;
                y[at(j)] = if log { v - s.ln() } else { v.exp() / s };
            }
        }
    }
    y
}

#[test]
fn softmax_matches_naive() {
    let mut rng = Lcg(1);
    let shapes = [
        (1, 1, 1),
        (3, 7, 1),
        (2, 33, 1),
        (5, 1000, 1),
        (64, 1024, 1),
        (2, 5, 3),
        (3, 17, 65),
        (1, 9, 130),
        (8, 64, 100),
        (1, 300, 200),
        (2, 3, 600),
    ];
    for &(outer, n, inner) in &shapes {
        // Large magnitudes check the max subtraction.
        let x = rng.vec(outer * n * inner, 30.0);
        for log in [false, true] {
            let mut y = vec![f32::NAN; x.len()];
            softmax(&x, &mut y, outer, n, inner, log);
            let want = naive_softmax(&x, outer, n, inner, log);
            let what = format!("softmax log={log} [{outer}, {n}, {inner}]");
            close(&y, &want, 1e-6, 1e-5, &what);
        }
    }
}

#[test]
fn softmax_extremes() {
    // Huge logits do not overflow; -inf gets probability 0.
    let x = [1000.0f32, 999.0, f32::NEG_INFINITY, -1000.0];
    let mut y = [0.0f32; 4];
    softmax(&x, &mut y, 1, 4, 1, false);
    let e = (-1.0f64).exp();
    close(
        &y,
        &[1.0 / (1.0 + e), e / (1.0 + e), 0.0, 0.0],
        1e-7,
        1e-6,
        "softmax",
    );
    softmax(&x, &mut y, 1, 4, 1, true);
    assert!(y[2] == f32::NEG_INFINITY);
    assert!((f64::from(y[0]) + (1.0 + e).ln()).abs() < 1e-6);
    // Bad lengths: nothing happens, no panic.
    let mut y = [7.0f32; 4];
    softmax(&x, &mut y, 1, 3, 1, false);
    softmax(&x, &mut y, usize::MAX, 2, 3, false);
    assert!(y.iter().all(|&v| v == 7.0));
}

/// (y, dx, dγ, dβ, a tolerance per dx element) in f64. The tolerance
/// scales with rstd and the size of the terms that cancel in dx (f32
/// rounding of each, as any f32 implementation has).
fn naive_layer_norm(
    x: &[f32],
    g: &[f32],
    b: &[f32],
    dy: &[f32],
    d: usize,
    eps: f32,
) -> [Vec<f64>; 5] {
    let (mut y, mut dx, mut tol) = (vec![], vec![], vec![]);
    let (mut dg, mut db) = (vec![0.0; d], vec![0.0; d]);
    for (row, dyr) in x.chunks(d).zip(dy.chunks(d)) {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        let xh: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        y.extend((0..d).map(|k| xh[k] * f64::from(g[k]) + f64::from(b[k])));
        let dxh: Vec<f64> = (0..d)
            .map(|k| f64::from(dyr[k]) * f64::from(g[k]))
            .collect();
        let m1 = dxh.iter().sum::<f64>() / d as f64;
        let m2 = (0..d).map(|k| dxh[k] * xh[k]).sum::<f64>() / d as f64;
        dx.extend((0..d).map(|k| rstd * (dxh[k] - m1 - xh[k] * m2)));
        tol.extend((0..d).map(|k| {
            let terms = dxh[k].abs() + m1.abs() + (xh[k] * m2).abs();
            // The mean rounded to f32 shifts x̂ by rstd·ulp(mean).
            1e-6 + 1e-6 * rstd * terms + 3e-7 * rstd * rstd * mean.abs() * m2.abs()
        }));
        for k in 0..d {
            dg[k] += f64::from(dyr[k]) * xh[k];
            db[k] += f64::from(dyr[k]);
        }
    }
    [y, dx, dg, db, tol]
}

#[test]
fn layer_norm_matches_naive() {
    let mut rng = Lcg(2);
    let shapes = [
        (1, 1),
        (3, 1),
        (1, 2),
        (2, 2),
        (4, 7),
        (5, 33),
        (7, 65),
        (64, 768),
        (65, 40),
        (128, 512),
        (129, 33),
        (300, 130),
        (2, 40000),
        (2000, 20),
    ];
    for &(rows, d) in &shapes {
        // An offset mean checks the variance's cancellation.
        let x: Vec<f32> = rng.vec(rows * d, 3.0).iter().map(|v| v + 5.0).collect();
        let g = rng.vec(d, 1.0);
        let b = rng.vec(d, 1.0);
        let dy = rng.vec(rows * d, 1.0);
        let eps = 1e-5;
        let [y_w, dx_w, dg_w, db_w, dx_tol] = naive_layer_norm(&x, &g, &b, &dy, d, eps);
        let mut y = vec![f32::NAN; rows * d];
        layer_norm(&x, &g, &b, &mut y, rows, d, eps);
        close(&y, &y_w, 1e-5, 1e-5, &format!("layer_norm y [{rows}, {d}]"));
        let (mut dx, mut dg, mut db) = (
            vec![f32::NAN; rows * d],
            vec![f32::NAN; d],
            vec![f32::NAN; d],
        );
        layer_norm_grad(&x, &g, &dy, &mut dx, &mut dg, &mut db, rows, d, eps);
        for (i, ((&g, &w), &t)) in dx.iter().zip(&dx_w).zip(&dx_tol).enumerate() {
            let g = f64::from(g);
            assert!(
                (g - w).abs() <= t + 1e-5 * w.abs(),
                "layer_norm dx [{rows}, {d}][{i}] = {g}, want {w}, tol {t}"
            );
        }
        let tol = 1e-5 * (rows as f64).sqrt();
        close(
            &dg,
            &dg_w,
            tol,
            1e-5,
            &format!("layer_norm dgamma [{rows}, {d}]"),
        );
        close(
            &db,
            &db_w,
            tol,
            1e-5,
            &format!("layer_norm dbeta [{rows}, {d}]"),
        );
    }
}

#[test]
fn layer_norm_grad_is_deterministic() {
    let mut rng = Lcg(4);
    let (rows, d) = (512, 300);
    let x = rng.vec(rows * d, 2.0);
    let g = rng.vec(d, 1.0);
    let dy = rng.vec(rows * d, 1.0);
    let run = || {
        let (mut dx, mut dg, mut db) = (vec![0.0f32; rows * d], vec![0.0f32; d], vec![0.0f32; d]);
        layer_norm_grad(&x, &g, &dy, &mut dx, &mut dg, &mut db, rows, d, 1e-5);
        (dx, dg, db)
    };
    let first = run();
    for _ in 0..5 {
        assert!(run() == first);
    }
    // The same bits on a one-thread pool as on the global pool.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert!(pool.install(run) == first);
}

#[test]
fn layer_norm_bad_lengths_do_nothing() {
    let x = [1.0f32; 6];
    let mut y = [7.0f32; 6];
    layer_norm(&x, &[1.0; 2], &[0.0; 3], &mut y, 2, 3, 1e-5);
    layer_norm(&x, &[1.0; 3], &[0.0; 3], &mut y, usize::MAX, 3, 1e-5);
    assert!(y.iter().all(|&v| v == 7.0));
    let (mut dx, mut dg, mut db) = ([7.0f32; 6], [7.0f32; 3], [7.0f32; 3]);
    layer_norm_grad(
        &x, &[1.0; 3], &[1.0; 5], &mut dx, &mut dg, &mut db, 2, 3, 1e-5,
    );
    assert!(dx.iter().chain(&dg).chain(&db).all(|&v| v == 7.0));
    // Zero rows: parameter gradients are zero.
    layer_norm_grad(&[], &[1.0; 3], &[], &mut [], &mut dg, &mut db, 0, 3, 1e-5);
    assert!(dg.iter().chain(&db).all(|&v| v == 0.0));
}

#[test]
fn exp_is_accurate() {
    // Dense sweep over the normal-result range: within 2 ulp-ish.
    let mut x = -87.0f32;
    while x < 88.7 {
        let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
        assert!(
            (got - want).abs() <= 2.5e-7 * want,
            "exp({x}) = {got}, want {want}"
        );
        x += 0.0137;
    }
    for &x in &[
        0.0f32,
        -0.0,
        1e-8,
        -1e-8,
        0.5,
        -0.5,
        1.0,
        std::f32::consts::LN_2,
        -10.0,
    ] {
        let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
        assert!(
            (got - want).abs() <= 2.5e-7 * want,
            "exp({x}) = {got}, want {want}"
        );
    }
    assert_eq!(exp(0.0), 1.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(-200.0), 0.0);
    assert_eq!(exp(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp(89.0), f32::INFINITY);
    assert!(exp(f32::NAN).is_nan());
    // Subnormal results stay close in absolute terms.
    for &x in &[-88.0f32, -95.0, -103.0] {
        assert!((f64::from(exp(x)) - f64::from(x).exp()).abs() < 1e-44);
    }
}

/// The row kernels run through `widest!` (AVX-512 or AVX2 here) give the
/// bits of their baseline build: softmax and log-softmax rows, LayerNorm
/// rows and a LayerNorm-backward part.
#[test]
fn widest_builds_give_the_baseline_bits() {
    let (rows, d) = (9usize, 77usize);
    let x: Vec<f32> = (0..rows * d)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
        .collect();
    let dy: Vec<f32> = (0..rows * d)
        .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.051)
        .collect();
    let gamma: Vec<f32> = (0..d).map(|i| 1.0 + (i as f32 * 0.37).sin()).collect();
    let beta: Vec<f32> = (0..d).map(|i| (i as f32 * 0.11).cos()).collect();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for log in [false, true] {
        let (mut base, mut wide) = (vec![0.0; d], vec![0.0; d]);
        softmax_row(&x[..d], &mut base, log);
        widest!(softmax_row(&x[..d], &mut wide, log));
        assert_eq!(bits(&base), bits(&wide), "softmax_row log {log}");
    }
    let (mut base, mut wide) = (vec![0.0; d], vec![0.0; d]);
    layer_norm_row(&x[..d], &gamma, &beta, &mut base, 1e-5);
    widest!(layer_norm_row(&x[..d], &gamma, &beta, &mut wide, 1e-5));
    assert_eq!(bits(&base), bits(&wide), "layer_norm_row");
    let (mut base, mut wide) = (vec![0.0; rows * d], vec![0.0; rows * d]);
    part_pass(&x, &dy, &gamma, &mut base, d, 1e-5);
    widest!(part_pass(&x, &dy, &gamma, &mut wide, d, 1e-5));
    assert_eq!(bits(&base), bits(&wide), "part_pass");
}
