//! Tests of SGD and AdamW against straightforward f64 re-implementations
//! over several steps.

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

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        assert!(
            (g - w).abs() <= tol + tol * w.abs(),
            "{what}[{i}] = {g}, want {w}"
        );
    }
}

const SIZES: &[usize] = &[1, 7, 33, 1000, 70_001];

#[test]
fn sgd_matches_reference() {
    let configs = [
        (0.1, 0.0, 0.0, 0.0, false),
        (0.1, 0.0, 0.0, 0.01, false),
        (0.05, 0.9, 0.0, 0.0, false),
        (0.05, 0.9, 0.1, 1e-4, false),
        (0.05, 0.9, 0.0, 1e-2, true),
    ];
    let mut rng = Lcg(1);
    for &n in SIZES {
        for &(lr, momentum, dampening, weight_decay, nesterov) in &configs {
            let mut w = rng.vec(n);
            let mut buf = if momentum != 0.0 {
                vec![f32::NAN; n]
            } else {
                vec![]
            };
            let (mut w64, mut b64) = (f64s(&w), vec![0.0f64; n]);
            for step in 0..5 {
                let g = rng.vec(n);
                let p = SgdParams {
                    lr,
                    momentum,
                    dampening,
                    weight_decay,
                    nesterov,
                    first_step: step == 0,
                };
                sgd(&mut w, &g, &mut buf, &p);
                let (lr, mu, damp, wd) = (
                    f64::from(lr),
                    f64::from(momentum),
                    f64::from(dampening),
                    f64::from(weight_decay),
                );
                for i in 0..n {
                    let mut d = f64::from(g[i]) + wd * w64[i];
                    if mu != 0.0 {
                        b64[i] = if step == 0 {
                            d
                        } else {
                            mu * b64[i] + (1.0 - damp) * d
                        };
                        d = if nesterov { d + mu * b64[i] } else { b64[i] };
                    }
                    w64[i] -= lr * d;
                }
            }
            close(
                &w,
                &w64,
                1e-5,
                &format!("sgd n={n} mu={momentum} nesterov={nesterov} param"),
            );
            if momentum != 0.0 {
                close(&buf, &b64, 1e-5, "sgd momentum buffer");
            }
        }
    }
}

#[test]
fn adamw_matches_reference() {
    let configs = [
        (1e-3, 0.9, 0.999, 1e-8, 0.01),
        (1e-2, 0.8, 0.99, 1e-6, 0.0),
        (3e-4, 0.3, 0.95, 1e-8, 0.1),
    ];
    let mut rng = Lcg(2);
    for &n in SIZES {
        for &(lr, beta1, beta2, eps, weight_decay) in &configs {
            let mut w = rng.vec(n);
            let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
            let (mut w64, mut m64, mut v64) = (f64s(&w), vec![0.0f64; n], vec![0.0f64; n]);
            for step in 1..=6u64 {
                let g = rng.vec(n);
                let p = AdamWParams {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    step,
                };
                adamw(&mut w, &g, &mut m, &mut v, &p);
                let (lr, b1, b2, eps, wd) = (
                    f64::from(lr),
                    f64::from(beta1),
                    f64::from(beta2),
                    f64::from(eps),
                    f64::from(weight_decay),
                );
                let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
                for i in 0..n {
                    let g = f64::from(g[i]);
                    w64[i] *= 1.0 - lr * wd;
                    m64[i] = b1 * m64[i] + (1.0 - b1) * g;
                    v64[i] = b2 * v64[i] + (1.0 - b2) * g * g;
                    let denom = v64[i].sqrt() / bc2.sqrt() + eps;
                    w64[i] -= lr / bc1 * m64[i] / denom;
                }
            }
            let what = format!("adamw n={n} lr={lr} b1={beta1}");
            close(&w, &w64, 1e-5, &format!("{what} param"));
            close(&m, &m64, 1e-5, &format!("{what} m"));
            close(&v, &v64, 1e-5, &format!("{what} v"));
        }
    }
}

#[test]
fn adamw_first_step_moves_by_lr() {
    // Step 1 with no decay: m̂ = g, v̂ = g², so each weight moves by lr·sign(g).
    let mut w = vec![0.0f32; 4];
    let g = [0.5f32, -2.0, 1e-3, -7.0];
    let (mut m, mut v) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    let p = AdamWParams {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-12,
        weight_decay: 0.0,
        step: 1,
    };
    adamw(&mut w, &g, &mut m, &mut v, &p);
    for (&w, &g) in w.iter().zip(&g) {
        assert!((w + 0.01 * g.signum()).abs() < 1e-7, "{w}");
    }
}

#[test]
fn bad_lengths_do_nothing() {
    let mut w = [1.0f32; 4];
    let p = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
        first_step: true,
    };
    sgd(&mut w, &[1.0; 4], &mut [], &p);
    sgd(&mut w, &[1.0; 3], &mut [0.0; 4], &p);
    let q = AdamWParams {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    adamw(&mut w, &[1.0; 4], &mut [0.0; 4], &mut [0.0; 3], &q);
    assert!(w.iter().all(|&x| x == 1.0));
}
