//! Tests of the elementwise kernels against naive f64 references.

use super::*;
use crate::backend::{BinaryOp, CompareOp, RngKey, UnaryOp};

/// A tiny LCG: uniform f32 in `[lo, hi)`.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (hi - lo) * self.next()) as f32)
            .collect()
    }
}

fn close(got: f32, want: f64, atol: f64, rtol: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return f64::from(got) == want;
    }
    (f64::from(got) - want).abs() <= atol + rtol * want.abs()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(close(g, w, atol, rtol), "{what}[{i}]: got {g}, want {w}");
    }
}

/// Reference erf in f64: the Taylor series below 3, erfc's continued
/// fraction above.
fn erf64(x: f64) -> f64 {
    let a = x.abs();
    let v = if a < 3.0 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-18 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        1.0 - erfc_cf(a)
    };
    if x < 0.0 { -v } else { v }
}

fn erfc_cf(a: f64) -> f64 {
    let mut f = a;
    for k in (1..=200).rev() {
        f = a + (f64::from(k) / 2.0) / f;
    }
    (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
}

/// `Phi(x)`, accurate for negative `x`.
fn cdf64(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    if z < -3.0 {
        0.5 * erfc_cf(-z)
    } else {
        0.5 * (1.0 + erf64(z))
    }
}

fn gelu64(x: f64, tanh: bool) -> f64 {
    if tanh {
        // 0.5 x (1 + tanh u), without its cancellation for negative u.
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
        x / (1.0 + (-2.0 * u).exp())
    } else {
        x * cdf64(x)
    }
}

fn gelu_prime64(x: f64, tanh: bool) -> f64 {
    if tanh {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        let u = k * (x + 0.044715 * x * x * x);
        let t = u.tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
    } else {
        cdf64(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
    }
}

#[test]
fn exp_is_within_two_ulp_everywhere() {
    let mut x = -104.0f32;
    while x < 89.0 {
        let got = exp_f32(x);
        let want = f64::from(x).exp();
        if want > f64::from(f32::MAX) {
            assert_eq!(got, f32::INFINITY, "exp({x})");
            x += 0.000_97;
            continue;
        }
        let ulp = f64::from(f32::from_bits((want as f32).to_bits() + 1)) - f64::from(want as f32);
        let err = (f64::from(got) - want).abs();
        let tol = if want < 1.2e-38 { 1.5e-45 } else { 2.0 * ulp };
        assert!(err <= tol, "exp({x}) = {got}, want {want}");
        x += 0.000_97;
    }
    assert_eq!(exp_f32(0.0), 1.0);
    assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_f32(89.0), f32::INFINITY);
    assert!(exp_f32(f32::NAN).is_nan());
}

#[test]
fn two_square_is_exact() {
    let mut r = Lcg(3);
    for v in r.vec(10_000, -100.0, 100.0) {
        let (hi, lo) = two_square(v);
        let exact = f64::from(v) * f64::from(v);
        assert_eq!(f64::from(hi) + f64::from(lo), exact, "{v}");
    }
}

#[test]
fn erf_matches_the_reference_to_a_few_ulp() {
    let mut x = -8.0f32;
    while x < 8.0 {
        let want = erf64(f64::from(x));
        assert!(
            close(erf_f32(x), want, 1e-30, 4e-7),
            "erf({x}) = {}, want {want}",
            erf_f32(x)
        );
        x += 0.000_73;
    }
    assert_eq!(erf_f32(0.0), 0.0);
    assert_eq!(erf_f32(f32::INFINITY), 1.0);
    assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
    assert!(erf_f32(f32::NAN).is_nan());
    assert!(close(erf_f32(1e-30), 1.128_379_167e-30, 0.0, 1e-6));
}

#[test]
fn normal_cdf_keeps_relative_accuracy_in_the_left_tail() {
    let mut x = -13.0f32;
    while x < 6.0 {
        let (cdf, pdf) = normal_cdf_pdf(x);
        let xd = f64::from(x);
        assert!(
            close(cdf, cdf64(xd), 1e-37, 2e-6),
            "cdf({x}) = {cdf}, want {}",
            cdf64(xd)
        );
        let want_pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
        assert!(
            close(pdf, want_pdf, 1e-37, 1e-6),
            "pdf({x}) = {pdf}, want {want_pdf}"
        );
        x += 0.001_3;
    }
}

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        UnaryOp::GeluTanh => gelu64(x, true),
        UnaryOp::GeluErf => gelu64(x, false),
        UnaryOp::Erf => erf64(x),
    }
}

#[test]
fn unary_ops_match_the_reference() {
    let mut r = Lcg(7);
    let ops = [
        (UnaryOp::Neg, -10.0, 10.0),
        (UnaryOp::Exp, -90.0, 88.0),
        (UnaryOp::Log, 1e-6, 1e6),
        (UnaryOp::Sqrt, 0.0, 1e6),
        (UnaryOp::Rsqrt, 1e-6, 1e6),
        (UnaryOp::Tanh, -10.0, 10.0),
        (UnaryOp::Tanh, -0.7, 0.7),
        (UnaryOp::Sigmoid, -100.0, 100.0),
        (UnaryOp::Relu, -10.0, 10.0),
        (UnaryOp::GeluTanh, -12.0, 12.0),
        (UnaryOp::GeluErf, -14.0, 14.0),
        (UnaryOp::Erf, -5.0, 5.0),
    ];
    for n in [0, 1, 7, 1000, PARALLEL_THRESHOLD + 13] {
        for &(op, lo, hi) in &ops {
            let mut x = r.vec(n, lo, hi);
            if n > 4 {
                x[..4].copy_from_slice(&[0.0, -0.0, 1e-3, -1e-3]);
                if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt) {
                    x[..4].copy_from_slice(&[1.0, 2.0, 1e-3, 1e3]);
                }
            }
            let mut y = vec![0.0; n];
            unary(op, &x, &mut y);
            let want: Vec<f64> = x.iter().map(|&v| unary_ref(op, f64::from(v))).collect();
            // In GELU-tanh's left tail, rounding `u` in f32 costs 2|u| ulp
            // relative (PyTorch's 0.5 x (1 + tanh u) loses far more).
            let (atol, rtol) = if op == UnaryOp::GeluTanh {
                (1e-12, 2e-6)
            } else {
                (1e-37, 6e-7)
            };
            assert_close(&format!("{op:?} n={n}"), &y, &want, atol, rtol);
        }
    }
}

#[test]
fn unary_propagates_nan() {
    for op in [
        UnaryOp::Exp,
        UnaryOp::Sigmoid,
        UnaryOp::GeluTanh,
        UnaryOp::GeluErf,
        UnaryOp::Erf,
        UnaryOp::Tanh,
    ] {
        let mut y = [0.0];
        unary(op, &[f32::NAN], &mut y);
        assert!(y[0].is_nan(), "{op:?}");
    }
}

#[test]
fn gelu_grad_matches_the_reference() {
    let mut r = Lcg(11);
    for n in [1, 33, PARALLEL_THRESHOLD + 5] {
        let x = r.vec(n, -15.0, 15.0);
        let dy = r.vec(n, -2.0, 2.0);
        for tanh in [true, false] {
            let mut dx = vec![0.0; n];
            gelu_grad(tanh, &x, &dy, &mut dx);
            let want: Vec<f64> = x
                .iter()
                .zip(&dy)
                .map(|(&x, &g)| f64::from(g) * gelu_prime64(f64::from(x), tanh))
                .collect();
            assert_close(&format!("gelu_grad tanh={tanh}"), &dx, &want, 1e-6, 1e-5);
        }
    }
}

/// Contiguous row-major strides of `shape`.
fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Broadcast strides of an operand of `shape` (right-aligned) in `out`.
fn bstrides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let c = contiguous(shape);
    let pad = out.len() - shape.len();
    (0..out.len())
        .map(|d| {
            if d < pad || shape[d - pad] == 1 {
                0
            } else {
                c[d - pad]
            }
        })
        .collect()
}

/// The element offsets of `strides` over `shape`, in row-major order.
fn offsets(shape: &[usize], strides: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut f| {
            let mut o = 0;
            for d in (0..shape.len()).rev() {
                o += (f % shape[d]) * strides[d];
                f /= shape[d];
            }
            o
        })
        .collect()
}

/// (output shape, a shape, b shape) cases, broadcasting numpy-style.
const BROADCASTS: &[(&[usize], &[usize], &[usize])] = &[
    (&[5], &[5], &[5]),
    (&[3, 4], &[3, 4], &[3, 4]),
    (&[3, 4], &[3, 4], &[]),
    (&[3, 4], &[], &[3, 4]),
    (&[7, 9], &[7, 9], &[9]),
    (&[7, 9], &[7, 1], &[7, 9]),
    (&[2, 3, 5], &[2, 1, 5], &[3, 1]),
    (&[2, 1, 3, 5], &[1, 1, 3, 1], &[2, 1, 1, 5]),
    (&[0, 3], &[0, 3], &[3]),
    (&[1], &[1], &[1]),
    (&[300, 131], &[300, 131], &[131]),
    (&[131, 300], &[131, 1], &[131, 300]),
    (&[40_000], &[40_000], &[1]),
    (&[64, 9, 70], &[64, 9, 70], &[64, 9, 70]),
    (&[64, 9, 70], &[9, 1], &[64, 1, 70]),
];

fn binary_ref(op: BinaryOp, x: f64, y: f64) -> f64 {
    match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Pow => x.powf(y),
    }
}

#[test]
fn binary_broadcasts_like_the_reference() {
    let mut r = Lcg(5);
    for &(out_shape, a_shape, b_shape) in BROADCASTS {
        let (na, nb): (usize, usize) = (a_shape.iter().product(), b_shape.iter().product());
        let a = r.vec(na, 0.1, 3.0);
        let b = r.vec(nb, -2.0, 2.0);
        let (sa, sb) = (bstrides(a_shape, out_shape), bstrides(b_shape, out_shape));
        let (oa, ob) = (offsets(out_shape, &sa), offsets(out_shape, &sb));
        for op in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Pow,
        ] {
            let mut out = vec![f32::NAN; oa.len()];
            binary(op, &a, &sa, &b, &sb, &mut out, out_shape).unwrap();
            let want: Vec<f64> = oa
                .iter()
                .zip(&ob)
                .map(|(&i, &j)| binary_ref(op, f64::from(a[i]), f64::from(b[j])))
                .collect();
            assert_close(&format!("{op:?} {out_shape:?}"), &out, &want, 1e-30, 4e-7);
        }
    }
}

#[test]
fn binary_reads_transposed_and_padded_strides() {
    let mut r = Lcg(9);
    // a is a [5, 4] matrix read transposed; b a [4, 5] window of a [6, 8] array.
    let a = r.vec(20, -1.0, 1.0);
    let b = r.vec(48, -1.0, 1.0);
    let (shape, sa, sb) = ([4, 5], [1, 4], [8, 1]);
    let mut out = vec![0.0; 20];
    binary(BinaryOp::Sub, &a, &sa, &b[3..], &sb, &mut out, &shape).unwrap();
    for i in 0..4 {
        for j in 0..5 {
            assert_eq!(out[i * 5 + j], a[j * 4 + i] - b[3 + i * 8 + j]);
        }
    }
}

#[test]
fn pow_by_a_scalar_two_is_the_exact_square() {
    let mut r = Lcg(1);
    let a = r.vec(100, -1e3, 1e3);
    let mut out = vec![0.0; 100];
    binary(BinaryOp::Pow, &a, &[1], &[2.0], &[0], &mut out, &[100]).unwrap();
    for (o, v) in out.iter().zip(&a) {
        assert_eq!(*o, v * v);
    }
}

#[test]
fn strided_kernels_reject_bad_layouts() {
    let (a, b) = (vec![1.0f32; 6], vec![1.0f32; 6]);
    let mut out = vec![0.0; 6];
    // Wrong stride count, a stride past the end, a short output, rank 9.
    assert!(binary(BinaryOp::Add, &a, &[3], &b, &[3, 1], &mut out, &[2, 3]).is_err());
    assert!(binary(BinaryOp::Add, &a, &[3, 2], &b, &[3, 1], &mut out, &[2, 3]).is_err());
    assert!(
        binary(
            BinaryOp::Add,
            &a,
            &[3, 1],
            &b,
            &[3, 1],
            &mut out[..5],
            &[2, 3]
        )
        .is_err()
    );
    assert!(
        binary(
            BinaryOp::Add,
            &a,
            &[1; 9],
            &b,
            &[1; 9],
            &mut out[..1],
            &[1; 9]
        )
        .is_err()
    );
    assert!(
        binary(
            BinaryOp::Add,
            &a,
            &[usize::MAX, 1],
            &b,
            &[3, 1],
            &mut out,
            &[2, 3]
        )
        .is_err()
    );
    assert!(
        binary(
            BinaryOp::Add,
            &a,
            &[0, 0],
            &b,
            &[0, 0],
            &mut out,
            &[usize::MAX, 3]
        )
        .is_err()
    );
    let mut bytes = vec![0u8; 6];
    assert!(
        compare(
            CompareOp::Equal,
            &a,
            &[3, 1],
            &b[..5],
            &[3, 1],
            &mut bytes,
            &[2, 3]
        )
        .is_err()
    );
    let cond = vec![1u8; 6];
    assert!(select(&cond, &[3, 1], &a, &[3, 1], &b, &[4, 1], &mut out, &[2, 3]).is_err());
    // Empty shapes are fine whatever the strides.
    binary(BinaryOp::Add, &[], &[7, 7], &[], &[7, 7], &mut [], &[0, 3]).unwrap();
}

#[test]
fn compare_writes_bytes_for_floats_and_ints() {
    let mut r = Lcg(2);
    for &(out_shape, a_shape, b_shape) in BROADCASTS {
        let (na, nb): (usize, usize) = (a_shape.iter().product(), b_shape.iter().product());
        let a: Vec<f32> = r.vec(na, 0.0, 4.0).iter().map(|v| v.floor()).collect();
        let b: Vec<f32> = r.vec(nb, 0.0, 4.0).iter().map(|v| v.floor()).collect();
        let (sa, sb) = (bstrides(a_shape, out_shape), bstrides(b_shape, out_shape));
        let (oa, ob) = (offsets(out_shape, &sa), offsets(out_shape, &sb));
        let ai: Vec<i64> = a.iter().map(|&v| v as i64).collect();
        let bi: Vec<i64> = b.iter().map(|&v| v as i64).collect();
        for op in [CompareOp::Equal, CompareOp::Greater] {
            let want: Vec<u8> = oa
                .iter()
                .zip(&ob)
                .map(|(&i, &j)| {
                    u8::from(if op == CompareOp::Equal {
                        a[i] == b[j]
                    } else {
                        a[i] > b[j]
                    })
                })
                .collect();
            let mut out = vec![7u8; oa.len()];
            compare(op, &a, &sa, &b, &sb, &mut out, out_shape).unwrap();
            assert_eq!(out, want, "{op:?} {out_shape:?} f32");
            let mut out = vec![7u8; oa.len()];
            compare(op, &ai, &sa, &bi, &sb, &mut out, out_shape).unwrap();
            assert_eq!(out, want, "{op:?} {out_shape:?} i64");
        }
    }
    let mut out = [9u8; 2];
    compare(
        CompareOp::Equal,
        &[f32::NAN, 1.0],
        &[1],
        &[f32::NAN],
        &[0],
        &mut out,
        &[2],
    )
    .unwrap();
    assert_eq!(out, [0, 0]);
}

#[test]
fn select_broadcasts_all_three_inputs() {
    let mut r = Lcg(4);
    type Case<'a> = (&'a [usize], &'a [usize], &'a [usize], &'a [usize]);
    let cases: &[Case] = &[
        (&[9], &[9], &[9], &[9]),
        (&[9], &[9], &[9], &[]),
        (&[9], &[9], &[], &[9]),
        (&[4, 6], &[6], &[4, 1], &[4, 6]),
        (&[3, 4, 5], &[3, 1, 5], &[4, 1], &[5]),
        (&[200, 300], &[200, 300], &[200, 300], &[1]),
        (&[200, 300], &[200, 1], &[300], &[200, 300]),
    ];
    for &(shape, cs, as_, bs) in cases {
        let n = |s: &[usize]| s.iter().product::<usize>();
        let cond: Vec<u8> = r.vec(n(cs), 0.0, 3.0).iter().map(|&v| v as u8).collect();
        let (a, b) = (r.vec(n(as_), -1.0, 1.0), r.vec(n(bs), -1.0, 1.0));
        let (sc, sa, sb) = (
            bstrides(cs, shape),
            bstrides(as_, shape),
            bstrides(bs, shape),
        );
        let (oc, oa, ob) = (
            offsets(shape, &sc),
            offsets(shape, &sa),
            offsets(shape, &sb),
        );
        let mut out = vec![f32::NAN; oc.len()];
        select(&cond, &sc, &a, &sa, &b, &sb, &mut out, shape).unwrap();
        for i in 0..oc.len() {
            let want = if cond[oc[i]] != 0 { a[oa[i]] } else { b[ob[i]] };
            assert_eq!(out[i], want, "{shape:?} at {i}");
        }
    }
}

#[test]
fn casts_truncate_saturate_and_test_nonzero() {
    let f = [
        0.0f32,
        -0.0,
        1.9,
        -1.9,
        2.5,
        -2.5,
        3e9,
        -3e9,
        1e20,
        f32::NAN,
        f32::INFINITY,
        0.5,
    ];
    let mut i32s = [0i32; 12];
    cast(&f, &mut i32s);
    assert_eq!(
        i32s,
        [
            0,
            0,
            1,
            -1,
            2,
            -2,
            i32::MAX,
            i32::MIN,
            i32::MAX,
            0,
            i32::MAX,
            0
        ]
    );
    let mut i64s = [0i64; 12];
    cast(&f, &mut i64s);
    assert_eq!(
        i64s[..8],
        [0, 0, 1, -1, 2, -2, 3_000_000_000, -3_000_000_000]
    );
    assert_eq!(i64s[8..], [i64::MAX, 0, i64::MAX, 0]);
    let mut bools = [9u8; 12];
    cast(&f, &mut bools);
    assert_eq!(bools, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);

    let big = [i64::MAX, i64::MIN, (1 << 53) + 1, -5, 0, 1 << 40];
    let mut to_i64 = [0i64; 6];
    cast(&big, &mut to_i64);
    assert_eq!(to_i64, big);
    let mut to_i32 = [0i32; 6];
    cast(&big, &mut to_i32);
    assert_eq!(to_i32, [i32::MAX, i32::MIN, i32::MAX, -5, 0, i32::MAX]);
    let mut to_f32 = [0f32; 6];
    cast(&big, &mut to_f32);
    assert_eq!(to_f32, big.map(|v| v as f32));
    let mut to_u8 = [9u8; 6];
    cast(&big, &mut to_u8);
    assert_eq!(to_u8, [1, 1, 1, 1, 0, 1]);

    let b = [0u8, 1, 2, 255];
    let mut bf = [9f32; 4];
    cast(&b, &mut bf);
    assert_eq!(bf, [0.0, 1.0, 1.0, 1.0]);
    let mut bi = [9i32; 4];
    cast(&b, &mut bi);
    assert_eq!(bi, [0, 1, 1, 1]);
    let mut bb = [9u8; 4];
    cast(&b, &mut bb);
    assert_eq!(bb, [0, 1, 1, 1]);

    let n = PARALLEL_THRESHOLD + 3;
    let src: Vec<i32> = (0..n as i32).map(|v| v - 1000).collect();
    let mut dst = vec![0f32; n];
    cast(&src, &mut dst);
    assert!(dst.iter().zip(&src).all(|(&d, &s)| d == s as f32));
}

#[test]
fn dropout_keeps_the_reference_mask() {
    let key = RngKey {
        seed: 42,
        step: 7,
        rank: 1,
        site: 99,
    };
    let stream = Stream {
        seed: 42,
        step: 7,
        rank: 1,
        site: 99,
    };
    let mut r = Lcg(6);
    for n in [0, 1, 100, 4099, PARALLEL_THRESHOLD + 17] {
        let x = r.vec(n, -3.0, 3.0);
        for p in [0.0f32, 0.1, 0.5, 0.9] {
            let mut y = vec![f32::NAN; n];
            dropout(&x, &mut y, p, key);
            let scale = 1.0 / (1.0 - f64::from(p));
            for (e, (&got, &v)) in y.iter().zip(&x).enumerate() {
                let keep = stream.uniform(e as u64) >= f64::from(p);
                let want = if keep {
                    (f64::from(v) * scale) as f32
                } else {
                    0.0
                };
                assert_eq!(got, want, "n={n} p={p} at {e}");
            }
        }
    }
    let mut y = [5.0f32; 4];
    dropout(&[1.0; 4], &mut y, 1.0, key);
    assert_eq!(y, [0.0; 4]);
}

#[test]
fn causal_mask_fills_above_the_diagonal() {
    let mut r = Lcg(8);
    for (batch, t) in [(1, 1), (2, 3), (3, 17), (4, 100), (0, 5)] {
        let x = r.vec(batch * t * t, -1.0, 1.0);
        let mut y = vec![0.0; x.len()];
        causal_mask(&x, &mut y, t, f32::NEG_INFINITY);
        for (e, (&got, &v)) in y.iter().zip(&x).enumerate() {
            let want = if e % t > (e / t) % t {
                f32::NEG_INFINITY
            } else {
                v
            };
            assert_eq!(got, want, "batch={batch} t={t} at {e}");
        }
    }
    causal_mask(&[], &mut [], 0, 0.0);
}

/// Throughput of the main kernels; run with
/// `cargo test --release -p adjoint-kernels elementwise::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench() {
    let n = 1 << 22;
    let mut r = Lcg(1);
    let x = r.vec(n, -4.0, 4.0);
    let bias = r.vec(1024, -1.0, 1.0);
    let mut y = vec![0.0; n];
    let time = |name: &str, f: &mut dyn FnMut()| {
        f();
        let t = std::time::Instant::now();
        for _ in 0..10 {
            f();
        }
        let s = t.elapsed().as_secs_f64() / 10.0;
        println!(
            "{name:>14}: {:7.3} ms, {:6.2} Gelem/s",
            s * 1e3,
            n as f64 / s / 1e9
        );
    };
    for op in [
        UnaryOp::Exp,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::GeluTanh,
        UnaryOp::GeluErf,
        UnaryOp::Relu,
    ] {
        time(&format!("{op:?}"), &mut || unary(op, &x, &mut y));
    }
    let dy = x.clone();
    time("gelu_grad erf", &mut || gelu_grad(false, &x, &dy, &mut y));
    time("add", &mut || {
        binary(BinaryOp::Add, &x, &[1], &dy, &[1], &mut y, &[n]).unwrap()
    });
    time("bias add", &mut || {
        binary(
            BinaryOp::Add,
            &x,
            &[1024, 1],
            &bias,
            &[0, 1],
            &mut y,
            &[n / 1024, 1024],
        )
        .unwrap()
    });
    time("scalar mul", &mut || {
        binary(BinaryOp::Mul, &x, &[1], &[0.5], &[0], &mut y, &[n]).unwrap()
    });
    time("dropout", &mut || {
        dropout(
            &x,
            &mut y,
            0.1,
            RngKey {
                seed: 1,
                step: 2,
                rank: 0,
                site: 3,
            },
        )
    });
}

#[test]
fn the_avx2_build_gives_the_same_bits() {
    // `map_loop` called from here is the baseline build; the leaves pick
    // AVX2 where the CPU has it.
    let mut r = Lcg(12);
    let x = r.vec(4099, -20.0, 20.0);
    type Named = (&'static str, fn(f32) -> f32);
    let fns: [Named; 7] = [
        ("exp", exp_f32),
        ("tanh", tanh_f32),
        ("sigmoid", sigmoid),
        ("gelu_tanh", gelu_tanh),
        ("gelu_erf", gelu_erf),
        ("gelu_erf_prime", gelu_erf_prime),
        ("gelu_tanh_prime", gelu_tanh_prime),
    ];
    for (name, f) in fns {
        let (mut base, mut leaf) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        map_loop(&x, &mut base, &f);
        map_leaf(&x, &mut leaf, &f);
        let same = base
            .iter()
            .zip(&leaf)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}");
        zip_leaf(&x, &x, &mut leaf, &|u, v| v * f(u));
        zip_loop(&x, &x, &mut base, &|u, v| v * f(u));
        assert!(
            base.iter()
                .zip(&leaf)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} zip"
        );
    }
    let mut base = vec![0.0f32; x.len()];
    map_loop(&x, &mut base, &erf_f32);
    let mut leaf = vec![0.0f32; x.len()];
    map_leaf(&x, &mut leaf, &erf_f32);
    assert!(
        base.iter()
            .zip(&leaf)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "erf"
    );
}
