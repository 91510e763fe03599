//! Tests of the convolution and pooling kernels against naive f64 loops.

use super::*;

/// A tiny LCG: uniform in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as u32) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
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

fn out(size: usize, k: usize, s: usize, d: usize, pads: usize) -> usize {
    (size + pads - d * (k - 1) - 1) / s + 1
}

#[allow(clippy::too_many_arguments)]
fn dims(
    n: usize,
    c: usize,
    hw: [usize; 2],
    m: usize,
    k: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    groups: usize,
) -> Conv2dDims {
    Conv2dDims {
        n,
        c,
        h: hw[0],
        w: hw[1],
        m,
        kh: k[0],
        kw: k[1],
        oh: out(hw[0], k[0], strides[0], dilations[0], pads[0] + pads[2]),
        ow: out(hw[1], k[1], strides[1], dilations[1], pads[1] + pads[3]),
        strides,
        pads,
        dilations,
        groups,
    }
}

/// Every multiplying (x, w, y) index triple of a convolution.
fn triples(d: &Conv2dDims, mut f: impl FnMut(usize, usize, usize)) {
    let (cg, mg) = (d.c / d.groups, d.m / d.groups);
    for n in 0..d.n {
        for m in 0..d.m {
            let g = m / mg;
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    let yi = ((n * d.m + m) * d.oh + oy) * d.ow + ox;
                    for ci in 0..cg {
                        for ky in 0..d.kh {
                            for kx in 0..d.kw {
                                let iy = (oy * d.strides[0] + ky * d.dilations[0]) as isize
                                    - d.pads[0] as isize;
                                let ix = (ox * d.strides[1] + kx * d.dilations[1]) as isize
                                    - d.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize {
                                    continue;
                                }
                                let xi = ((n * d.c + g * cg + ci) * d.h + iy as usize) * d.w
                                    + ix as usize;
                                let wi = ((m * cg + ci) * d.kh + ky) * d.kw + kx;
                                f(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn check_conv(d: Conv2dDims, seed: u64) {
    let mut rng = Lcg(seed);
    let xn = d.n * d.c * d.h * d.w;
    let wn = d.m * (d.c / d.groups) * d.kh * d.kw;
    let yn = d.n * d.m * d.oh * d.ow;
    let (x, w, dy) = (rng.vec(xn), rng.vec(wn), rng.vec(yn));
    let (mut y_ref, mut dx_ref, mut dw_ref) = (vec![0.0; yn], vec![0.0; xn], vec![0.0; wn]);
    triples(&d, |xi, wi, yi| {
        y_ref[yi] += f64::from(x[xi]) * f64::from(w[wi]);
        dx_ref[xi] += f64::from(dy[yi]) * f64::from(w[wi]);
        dw_ref[wi] += f64::from(dy[yi]) * f64::from(x[xi]);
    });
    let mut scratch = Vec::new();
    // Outputs start as garbage: kernels must overwrite, not accumulate.
    let (mut y, mut dx, mut dw) = (vec![f32::NAN; yn], vec![f32::NAN; xn], vec![f32::NAN; wn]);
    conv2d(&x, &w, &mut y, &d, &mut scratch).unwrap();
    close(&y, &y_ref, &format!("y {d:?}"));
    conv2d_grad_input(&w, &dy, &mut dx, &d, &mut scratch).unwrap();
    close(&dx, &dx_ref, &format!("dx {d:?}"));
    conv2d_grad_weight(&x, &dy, &mut dw, &d, &mut scratch).unwrap();
    close(&dw, &dw_ref, &format!("dw {d:?}"));
}

#[test]
fn conv_matches_naive_loops() {
    let cases = [
        dims(1, 1, [5, 5], 1, [3, 3], [1, 1], [0; 4], [1, 1], 1),
        dims(2, 3, [7, 6], 4, [3, 2], [2, 1], [1, 0, 2, 1], [1, 1], 1),
        dims(2, 4, [8, 8], 6, [2, 3], [1, 2], [1, 1, 1, 1], [2, 2], 2),
        dims(3, 4, [5, 5], 4, [3, 3], [1, 1], [1; 4], [1, 1], 4),
        // Pointwise: no im2col.
        dims(2, 3, [4, 5], 5, [1, 1], [1, 1], [0; 4], [1, 1], 1),
        // Strided 1×1 goes through im2col.
        dims(2, 3, [5, 5], 2, [1, 1], [2, 2], [0; 4], [1, 1], 1),
        // Many images: the per-image parallel path.
        dims(32, 8, [12, 12], 8, [3, 3], [1, 1], [1; 4], [1, 1], 1),
        // A big image: parallel im2col and threaded GEMMs.
        dims(2, 16, [40, 40], 32, [3, 3], [1, 1], [1; 4], [1, 1], 2),
    ];
    for (i, d) in cases.into_iter().enumerate() {
        check_conv(d, i as u64 + 1);
    }
}

#[test]
fn conv_rejects_bad_lengths_and_groups() {
    let d = dims(1, 2, [3, 3], 2, [2, 2], [1, 1], [0; 4], [1, 1], 1);
    let mut s = Vec::new();
    let e = conv2d(&[0.0; 17], &[0.0; 16], &mut [0.0; 8], &d, &mut s).unwrap_err();
    assert!(matches!(e, Error::Length { .. }), "{e}");
    let bad = Conv2dDims { groups: 3, ..d };
    let e = conv2d(&[0.0; 18], &[0.0; 16], &mut [0.0; 8], &bad, &mut s).unwrap_err();
    assert!(e.to_string().contains("groups 3"), "{e}");
}

fn pool(
    planes: usize,
    hw: [usize; 2],
    out: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    pads: [usize; 4],
    dil: [usize; 2],
) -> Pool2dDims {
    Pool2dDims {
        planes,
        h: hw[0],
        w: hw[1],
        oh: out[0],
        ow: out[1],
        kernel: k,
        strides: s,
        pads,
        dilations: dil,
    }
}

/// The in-input taps of window (plane, oy, ox), as flat x indices, in
/// row-major tap order, and the window's tap count with padding.
fn window(d: &Pool2dDims, plane: usize, oy: usize, ox: usize) -> (Vec<usize>, usize) {
    let (mut taps, mut padded) = (Vec::new(), 0);
    for ky in 0..d.kernel[0] {
        for kx in 0..d.kernel[1] {
            let py = oy * d.strides[0] + ky * d.dilations[0];
            let px = ox * d.strides[1] + kx * d.dilations[1];
            if py < d.pads[0] + d.h + d.pads[2] && px < d.pads[1] + d.w + d.pads[3] {
                padded += 1;
            }
            let (iy, ix) = (
                py as isize - d.pads[0] as isize,
                px as isize - d.pads[1] as isize,
            );
            if iy >= 0 && ix >= 0 && (iy as usize) < d.h && (ix as usize) < d.w {
                taps.push((plane * d.h + iy as usize) * d.w + ix as usize);
            }
        }
    }
    (taps, padded)
}

#[test]
fn pools_match_naive_loops() {
    let cases = [
        pool(3, [4, 4], [2, 2], [2, 2], [2, 2], [0; 4], [1, 1]),
        // 3×3 stride 2 padded 1 in ceil mode: 5 → 3.
        pool(2, [5, 6], [3, 3], [3, 3], [2, 2], [1; 4], [1, 1]),
        pool(2, [6, 5], [4, 3], [2, 2], [1, 1], [1, 0, 0, 1], [2, 2]),
        // Enough work for the parallel path.
        pool(64, [32, 32], [16, 16], [3, 3], [2, 2], [1; 4], [1, 1]),
    ];
    for (i, d) in cases.into_iter().enumerate() {
        let mut rng = Lcg(i as u64 + 9);
        let (xn, yn) = (d.planes * d.h * d.w, d.planes * d.oh * d.ow);
        let (x, dy, v) = (rng.vec(xn), rng.vec(yn), rng.vec(xn));
        let mut want = [
            vec![0.0; yn],
            vec![0.0; xn],
            vec![0.0; yn],
            vec![0.0; yn],
            vec![0.0; yn],
        ];
        let mut want_avg_grad = [vec![0.0; xn], vec![0.0; xn]];
        for p in 0..d.planes {
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    let yi = (p * d.oh + oy) * d.ow + ox;
                    let (taps, padded) = window(&d, p, oy, ox);
                    let mut best = taps[0];
                    for &t in &taps {
                        if x[t] > x[best] {
                            best = t;
                        }
                    }
                    want[0][yi] = f64::from(x[best]);
                    want[1][best] += f64::from(dy[yi]);
                    want[2][yi] = f64::from(v[best]);
                    let sum: f64 = taps.iter().map(|&t| f64::from(x[t])).sum();
                    want[3][yi] = sum / taps.len() as f64;
                    want[4][yi] = sum / padded as f64;
                    for &t in &taps {
                        want_avg_grad[0][t] += f64::from(dy[yi]) / taps.len() as f64;
                        want_avg_grad[1][t] += f64::from(dy[yi]) / padded as f64;
                    }
                }
            }
        }
        let (mut y, mut dx) = (vec![f32::NAN; yn], vec![f32::NAN; xn]);
        max_pool2d(&x, &mut y, &d).unwrap();
        close(&y, &want[0], "max_pool2d");
        max_pool2d_grad(&x, &dy, &mut dx, &d).unwrap();
        close(&dx, &want[1], "max_pool2d_grad");
        max_pool2d_select(&x, &v, &mut y, &d).unwrap();
        close(&y, &want[2], "max_pool2d_select");
        for (include, w) in [(false, 3), (true, 4)] {
            avg_pool2d(&x, &mut y, &d, include).unwrap();
            close(&y, &want[w], "avg_pool2d");
            avg_pool2d_grad(&dy, &mut dx, &d, include).unwrap();
            close(&dx, &want_avg_grad[usize::from(include)], "avg_pool2d_grad");
        }
    }
}

#[test]
fn max_pool_ties_go_to_the_first_tap() {
    let d = pool(1, [2, 2], [1, 1], [2, 2], [1, 1], [0; 4], [1, 1]);
    let (x, mut dx) = ([1.0, 3.0, 3.0, 2.0], [0.0; 4]);
    max_pool2d_grad(&x, &[1.0], &mut dx, &d).unwrap();
    assert_eq!(dx, [0.0, 1.0, 0.0, 0.0]);
}
