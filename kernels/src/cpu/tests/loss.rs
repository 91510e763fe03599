//! Tests of the loss kernels against naive f64 code.

use super::*;

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

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect()
    }

    fn labels(&mut self, n: usize, bound: usize) -> Vec<i64> {
        (0..n)
            .map(|_| i64::from(self.next_u32()) % bound as i64)
            .collect()
    }
}

fn naive_sce(logits: &[f32], labels: &[i64], classes: usize, dloss: f64) -> (f64, Vec<f64>) {
    let rows = labels.len();
    let (mut total, mut grad) = (0.0, vec![]);
    for (row, &l) in logits.chunks(classes).zip(labels) {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        total += m + s.ln() - row[l as usize];
        grad.extend(row.iter().enumerate().map(|(c, v)| {
            let hot = if c as i64 == l { 1.0 } else { 0.0 };
            ((v - m).exp() / s - hot) * dloss / rows as f64
        }));
    }
    (total / rows as f64, grad)
}

#[test]
fn softmax_cross_entropy_matches_naive() {
    let mut rng = Lcg(1);
    for &(rows, classes) in &[
        (1, 1),
        (1, 2),
        (3, 7),
        (5, 33),
        (64, 1000),
        (7, 10000),
        (1000, 65),
    ] {
        let logits = rng.vec(rows * classes, 20.0);
        let labels = rng.labels(rows, classes);
        let dloss = 1.7f32;
        let (want, want_grad) = naive_sce(&logits, &labels, classes, f64::from(dloss));
        let mut loss = [f32::NAN];
        softmax_cross_entropy(&logits, &labels, &mut loss, rows, classes).unwrap();
        assert!(
            (f64::from(loss[0]) - want).abs() <= 1e-6 + 1e-6 * want.abs(),
            "loss {} want {want}",
            loss[0]
        );
        let labels32: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
        let mut loss32 = [f32::NAN];
        softmax_cross_entropy(&logits, &labels32, &mut loss32, rows, classes).unwrap();
        assert_eq!(loss[0].to_bits(), loss32[0].to_bits());

        let mut grad = vec![f32::NAN; rows * classes];
        softmax_cross_entropy_grad(&logits, &labels, dloss, &mut grad, rows, classes).unwrap();
        let scale = f64::from(dloss) / rows as f64;
        for (i, (&g, &w)) in grad.iter().zip(&want_grad).enumerate() {
            let g = f64::from(g);
            assert!(
                (g - w).abs() <= 1e-7 * scale + 1e-5 * w.abs(),
                "[{rows}, {classes}] grad[{i}] = {g}, want {w}"
            );
        }
    }
}

#[test]
fn softmax_cross_entropy_is_deterministic_across_threads() {
    let mut rng = Lcg(2);
    let (rows, classes) = (300, 500);
    let logits = rng.vec(rows * classes, 5.0);
    let labels = rng.labels(rows, classes);
    let run = || {
        let mut loss = [0.0f32];
        softmax_cross_entropy(&logits, &labels, &mut loss, rows, classes).unwrap();
        loss[0].to_bits()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(run(), pool.install(run));
}

#[test]
fn softmax_cross_entropy_errors() {
    let logits = [0.0f32; 6];
    let mut loss = [7.0f32];
    let e = softmax_cross_entropy(&logits, &[0i64, 3], &mut loss, 2, 3).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IndexOutOfRange {
                index: 3,
                bound: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        softmax_cross_entropy(&logits, &[-1i32, 0], &mut loss, 2, 3),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        softmax_cross_entropy(&logits, &[0i64], &mut loss, 2, 3),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        softmax_cross_entropy(&logits[..5], &[0i64, 0], &mut loss, 2, 3),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        softmax_cross_entropy(&logits, &[0i64, 0], &mut [], 2, 3),
        Err(Error::Length { .. })
    ));
    assert!(softmax_cross_entropy(&logits, &[0i64, 0], &mut loss, usize::MAX, 3).is_err());
    assert_eq!(loss[0], 7.0);
    let mut grad = [7.0f32; 6];
    assert!(matches!(
        softmax_cross_entropy_grad(&logits, &[0i64, 5], 1.0, &mut grad, 2, 3),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        softmax_cross_entropy_grad(&logits, &[0i64, 1], 1.0, &mut grad[..5], 2, 3),
        Err(Error::Length { .. })
    ));
    assert!(grad.iter().all(|&g| g == 7.0));
    // Zero rows: a NaN mean, an empty gradient.
    softmax_cross_entropy::<i64>(&[], &[], &mut loss, 0, 3).unwrap();
    assert!(loss[0].is_nan());
    softmax_cross_entropy_grad::<i64>(&[], &[], 1.0, &mut [], 0, 3).unwrap();
}

#[test]
fn mse_matches_naive() {
    let mut rng = Lcg(3);
    for &n in &[1, 7, 33, 1000, 100_003] {
        let (p, t) = (rng.vec(n, 3.0), rng.vec(n, 3.0));
        let want = p
            .iter()
            .zip(&t)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum::<f64>()
            / n as f64;
        let got = f64::from(mse(&p, &t));
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "mse n={n}: {got} want {want}"
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(
            mse(&p, &t).to_bits(),
            pool.install(|| mse(&p, &t)).to_bits()
        );
    }
    assert!(mse(&[], &[]).is_nan());
    assert!(mse(&[1.0], &[]).is_nan());
}
