//! Elementwise kernels: unary math, broadcasting binary ops, comparisons,
//! select, casts, the GELU backward, dropout and the causal mask.
//!
//! Broadcasting kernels first simplify their layout on the stack: axes of
//! size 1 are dropped and neighbours that every operand steps through
//! contiguously are merged, so a same-shape op becomes one flat run, a bias
//! add `[M, N] + [N]` becomes `M` rows, and a scalar operand has stride 0.
//! The output (always contiguous) is then walked in rows of the innermost
//! axis, with loops specialised for inner strides 1 and 0 that LLVM
//! vectorises; large outputs are split in chunks over rayon's pool.
//!
//! The transcendental functions GELU, sigmoid and erf need are written
//! here branch-free ([`exp_f32`], [`erf_f32`], [`tanh_f32`]) so that loops
//! over them vectorise too; their errors are a few ulp. Flat maps run an
//! AVX2 build of their loop where the CPU has it (same bits: Rust never
//! fuses multiply-adds).

use rayon::prelude::*;

use super::PARALLEL_THRESHOLD;
use crate::backend::{BinaryOp, CompareOp, Error, Result, RngKey, UnaryOp};
use crate::rng::Stream;

/// The highest rank a strided kernel accepts.
pub(crate) const MAX_RANK: usize = 8;

/// Elements a parallel task gets at least.
const MIN_TASK: usize = 1 << 13;

// ----- scalar math -----

/// `sqrt(2 / pi)`, the constant of the tanh form of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh form of GELU.
const GELU_CUBIC: f32 = 0.044_715;
/// `1 / sqrt(2 pi)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// Below this `|x|` erf uses its odd polynomial, above it erfc's tail.
const ERF_CUT: f32 = 0.875;

/// `erf(x) / x` as a polynomial in `x^2` on `|x| < 0.875` (Chebyshev
/// interpolant, relative error 2.2e-10 in exact arithmetic).
const ERF_SMALL: [f32; 7] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    -0.376_126_35,
    0.112_837_36,
    -0.026_861_74,
    0.005_207_134_4,
    -0.000_821_555_96,
    8.694_667_5e-5,
];

/// `erfc(x) e^{x^2} / t` as a polynomial in `t = 1 / (1 + x/2)` for
/// `x >= 0.875` (Chebyshev interpolant, relative error 2e-9 in exact
/// arithmetic, up to `x = inf`).
const ERFC_TAIL: [f32; 10] = [
    0.282_094_8,
    0.282_094_57,
    0.246_846_42,
    0.176_010_97,
    0.087_097_14,
    -0.025_971_372,
    0.027_068_263,
    -0.250_038_4,
    0.252_825_5,
    -0.078_221_26,
];

/// `tanh(x) / x` as a polynomial in `x^2` on `|x| < 0.55` (Chebyshev
/// interpolant, relative error 1e-9 in exact arithmetic).
const TANH_SMALL: [f32; 6] = [
    1.0,
    -0.333_333_1,
    0.133_324_68,
    -0.053_843_368,
    0.021_042_168,
    -0.006_238_845_6,
];

#[inline(always)]
fn horner<const N: usize>(c: &[f32; N], x: f32) -> f32 {
    let mut p = c[N - 1];
    for k in (0..N - 1).rev() {
        p = p * x + c[k];
    }
    p
}

/// `e^x` within about 1 ulp, branch-free so that loops over it vectorise:
/// Cody-Waite reduction by `ln 2`, a degree-7 Taylor polynomial on
/// `|r| <= ln2 / 2`, and a scale by `2^n` in two halves (so subnormal
/// results come out right). NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_145_75; // ln 2 to 15 bits, so n * LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-104.0, 89.0);
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let ni = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32) << 23);
    p * s1 * s2
}

/// `x^2` as `hi + lo` exactly (Dekker's product on a 12-bit split).
#[inline(always)]
fn two_square(x: f32) -> (f32, f32) {
    let hi = x * x;
    let xh = f32::from_bits(x.to_bits() & 0xFFFF_F000);
    let xl = x - xh;
    let lo = (((xh * xh - hi) + xh * xl) + xh * xl) + xl * xl;
    (hi, lo)
}

/// `erf(x) / x`-based value for `|x| < ERF_CUT`.
#[inline(always)]
fn erf_small(x: f32) -> f32 {
    x * horner(&ERF_SMALL, x * x)
}

/// `erfc(a)` for `a >= ERF_CUT`, given `a^2 = sq_hi + sq_lo`: the product
/// `e^{-a^2}` keeps the low part, so the relative error stays a few ulp
/// far into the tail.
#[inline(always)]
fn erfc_tail(a: f32, sq_hi: f32, sq_lo: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * a);
    t * horner(&ERFC_TAIL, t) * exp_f32(-sq_hi) * (1.0 - sq_lo)
}

/// The error function in f32, within a few ulp, branch-free.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    // erfc(10) underflows f32; clamping keeps the square finite.
    let a = if a > 10.0 { 10.0 } else { a };
    let (hi, lo) = two_square(a);
    let tail = (1.0 - erfc_tail(a, hi, lo)).copysign(x);
    if x.abs() < ERF_CUT {
        erf_small(x)
    } else {
        tail
    }
}

/// The standard normal CDF `Phi(x)` and density `phi(x)`, both accurate in
/// relative terms for negative `x` (no `1 - erf` cancellation there).
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    let xa = x.abs();
    let xc = if xa > 14.0 { 14.0 } else { xa };
    let (hi, lo) = two_square(xc);
    let (hi, lo) = (0.5 * hi, 0.5 * lo);
    let z = xc * std::f32::consts::FRAC_1_SQRT_2;
    let half_erfc = 0.5 * erfc_tail(z, hi, lo);
    let big = if x > 0.0 { 1.0 - half_erfc } else { half_erfc };
    let small = 0.5 + 0.5 * erf_small(x * std::f32::consts::FRAC_1_SQRT_2);
    let cdf = if z < ERF_CUT { small } else { big };
    let pdf = INV_SQRT_2PI * exp_f32(-hi) * (1.0 - lo);
    (cdf, pdf)
}

#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    x * normal_cdf_pdf(x).0
}

/// `x sigmoid(2u) = 0.5 x (1 + tanh u)`, no cancellation for negative `u`.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    x / (1.0 + exp_f32(-2.0 * u))
}

#[inline(always)]
pub(crate) fn gelu_erf_prime(x: f32) -> f32 {
    let (cdf, pdf) = normal_cdf_pdf(x);
    cdf + x * pdf
}

/// With `s = sigmoid(2u)`: `0.5 (1 + t) = s` and `1 - t^2 = 4 s (1 - s)`.
#[inline(always)]
pub(crate) fn gelu_tanh_prime(x: f32) -> f32 {
    let x2 = x * x;
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x2 * x);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x2);
    let m = -2.0 * u;
    // e^80 stays finite, so e * s is 1 - s even where s underflows.
    let e = exp_f32(if m > 80.0 { 80.0 } else { m });
    let s = 1.0 / (1.0 + e);
    s + 2.0 * x * (e * s) * s * du
}

/// `tanh` within a few ulp, branch-free: the odd polynomial below 0.55,
/// `1 - 2 / (e^{2|x|} + 1)` above.
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let big = (1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0)).copysign(x);
    let small = x * horner(&TANH_SMALL, x * x);
    if a < 0.55 { small } else { big }
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

// ----- flat maps -----

fn task_len(n: usize) -> usize {
    let per_thread = n.div_ceil(4 * rayon::current_num_threads());
    per_thread.max(MIN_TASK).next_multiple_of(64)
}

/// `y[i] = f(x[i])`: the loop every flat map runs.
#[inline(always)]
pub(crate) fn map_loop<T: Copy, U>(x: &[T], y: &mut [U], f: &impl Fn(T) -> U) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f(v);
    }
}

/// [`map_loop`] in the widest build the CPU runs (`widest!`: twice the
/// lanes for the polynomial math with AVX2, four times with AVX-512).
#[inline(always)]
fn map_leaf<T: Copy, U>(x: &[T], y: &mut [U], f: &impl Fn(T) -> U) {
    widest!(map_loop(x, y, f))
}

/// `out[i] = f(a[i], b[i])`: the loop of flat two-input maps.
#[inline(always)]
fn zip_loop(a: &[f32], b: &[f32], out: &mut [f32], f: &impl Fn(f32, f32) -> f32) {
    for (o, (&u, &v)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = f(u, v);
    }
}

/// [`zip_loop`] in the widest build the CPU runs.
#[inline(always)]
fn zip_leaf(a: &[f32], b: &[f32], out: &mut [f32], f: &impl Fn(f32, f32) -> f32) {
    widest!(zip_loop(a, b, out, f))
}

/// `y[i] = f(x[i])`, split over threads for large inputs.
#[inline(always)]
fn map1<T: Copy + Sync, U: Send>(x: &[T], y: &mut [U], f: impl Fn(T) -> U + Sync) {
    if y.len() >= PARALLEL_THRESHOLD {
        let c = task_len(y.len());
        y.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .for_each(|(y, x)| map_leaf(x, y, &f));
    } else {
        map_leaf(x, y, &f);
    }
}

/// Runs `$body` with `$f` bound to the scalar function of `$op`: the one
/// [`unary`] maps, and the fused kernels too (the same bits either way).
macro_rules! with_unary {
    ($op:expr, $f:ident => $body:expr) => {
        match $op {
            $crate::backend::UnaryOp::Neg => {
                let $f = |v: f32| -v;
                $body
            }
            $crate::backend::UnaryOp::Exp => {
                let $f = $crate::cpu::elementwise::exp_f32;
                $body
            }
            $crate::backend::UnaryOp::Log => {
                let $f = f32::ln;
                $body
            }
            $crate::backend::UnaryOp::Sqrt => {
                let $f = f32::sqrt;
                $body
            }
            $crate::backend::UnaryOp::Rsqrt => {
                let $f = |v: f32| 1.0 / v.sqrt();
                $body
            }
            $crate::backend::UnaryOp::Tanh => {
                let $f = $crate::cpu::elementwise::tanh_f32;
                $body
            }
            $crate::backend::UnaryOp::Sigmoid => {
                let $f = $crate::cpu::elementwise::sigmoid;
                $body
            }
            // NaN passes through (`!(v <= 0)`), as in PyTorch.
            $crate::backend::UnaryOp::Relu => {
                let $f = |v: f32| if v <= 0.0 { 0.0 } else { v };
                $body
            }
            $crate::backend::UnaryOp::GeluTanh => {
                let $f = $crate::cpu::elementwise::gelu_tanh;
                $body
            }
            $crate::backend::UnaryOp::GeluErf => {
                let $f = $crate::cpu::elementwise::gelu_erf;
                $body
            }
            $crate::backend::UnaryOp::Erf => {
                let $f = $crate::cpu::elementwise::erf_f32;
                $body
            }
        }
    };
}
pub(crate) use with_unary;

pub fn unary(op: UnaryOp, x: &[f32], y: &mut [f32]) {
    with_unary!(op, f => map1(x, y, f))
}

/// `y[i] = op(x[i])` on one thread, in the widest build the CPU runs.
pub(crate) fn unary_serial(op: UnaryOp, x: &[f32], y: &mut [f32]) {
    with_unary!(op, f => map_leaf(x, y, &f))
}

// ----- strided layouts -----

/// A broadcast layout of `K` inputs over a contiguous output, simplified:
/// no axis of size 1, neighbours merged where every input allows it.
#[derive(Debug, Clone, Copy)]
struct Plan<const K: usize> {
    rank: usize,
    shape: [usize; MAX_RANK],
    strides: [[usize; MAX_RANK]; K],
}

#[allow(clippy::needless_range_loop)] // loops over the K operands' arrays
impl<const K: usize> Plan<K> {
    /// Checks the strides against the slice lengths and the output length,
    /// then simplifies.
    fn new(
        what: &'static str,
        shape: &[usize],
        strides: [&[usize]; K],
        lens: [usize; K],
        out_len: usize,
    ) -> Result<Plan<K>> {
        let numel = check_shape(what, shape)?;
        if numel != out_len {
            return Err(Error::Length {
                what,
                expected: numel,
                found: out_len,
            });
        }
        for k in 0..K {
            check_strides(what, shape, strides[k], lens[k])?;
        }
        let mut p = Plan {
            rank: 0,
            shape: [1; MAX_RANK],
            strides: [[0; MAX_RANK]; K],
        };
        for (d, &n) in shape.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let mergeable = p.rank > 0
                && (0..K).all(|k| strides[k][d].checked_mul(n) == Some(p.strides[k][p.rank - 1]));
            if mergeable {
                p.shape[p.rank - 1] *= n;
                for k in 0..K {
                    p.strides[k][p.rank - 1] = strides[k][d];
                }
            } else {
                p.shape[p.rank] = n;
                for k in 0..K {
                    p.strides[k][p.rank] = strides[k][d];
                }
                p.rank += 1;
            }
        }
        if p.rank == 0 {
            p.rank = 1;
        }
        Ok(p)
    }

    /// Calls `f(position, run length, input offsets)` for each piece of
    /// an innermost-axis row within output positions `start..start + len`.
    #[inline(always)]
    fn walk(&self, start: usize, len: usize, mut f: impl FnMut(usize, usize, [usize; K])) {
        let r = self.rank;
        let mut idx = [0usize; MAX_RANK];
        let mut offs = [0usize; K];
        let mut rest = start;
        for d in (0..r).rev() {
            idx[d] = rest % self.shape[d];
            rest /= self.shape[d];
            for k in 0..K {
                offs[k] += idx[d] * self.strides[k][d];
            }
        }
        let (mut pos, end) = (start, start + len);
        while pos < end {
            let n = (self.shape[r - 1] - idx[r - 1]).min(end - pos);
            f(pos - start, n, offs);
            pos += n;
            if pos == end {
                break;
            }
            // The row is done: back to its start, then carry.
            for k in 0..K {
                offs[k] -= idx[r - 1] * self.strides[k][r - 1];
            }
            idx[r - 1] = 0;
            for d in (0..r - 1).rev() {
                idx[d] += 1;
                for k in 0..K {
                    offs[k] += self.strides[k][d];
                }
                if idx[d] < self.shape[d] {
                    break;
                }
                for k in 0..K {
                    offs[k] -= self.shape[d] * self.strides[k][d];
                }
                idx[d] = 0;
            }
        }
    }

    /// Runs `row(out_run, input offsets)` over all of `out`.
    #[inline(always)]
    fn drive<O: Send>(&self, out: &mut [O], row: impl Fn(&mut [O], [usize; K]) + Sync) {
        let n = out.len();
        if n >= PARALLEL_THRESHOLD {
            let c = task_len(n);
            out.par_chunks_mut(c).enumerate().for_each(|(i, o)| {
                self.walk(i * c, o.len(), |p, len, offs| row(&mut o[p..p + len], offs));
            });
        } else {
            self.walk(0, n, |p, len, offs| row(&mut out[p..p + len], offs));
        }
    }

    fn inner(&self, k: usize) -> usize {
        self.strides[k][self.rank - 1]
    }
}

/// The element count of `shape`, checking the rank and for overflow.
pub(crate) fn check_shape(what: &'static str, shape: &[usize]) -> Result<usize> {
    if shape.len() > MAX_RANK {
        return Err(Error::Invalid(format!(
            "{what}: rank {} exceeds {MAX_RANK}",
            shape.len()
        )));
    }
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Invalid(format!("{what}: shape {shape:?} overflows")))
}

/// Checks that `strides` has one entry per axis and that every element of
/// `shape` lands inside a slice of `len` elements.
pub(crate) fn check_strides(
    what: &'static str,
    shape: &[usize],
    strides: &[usize],
    len: usize,
) -> Result<()> {
    if strides.len() != shape.len() {
        return Err(Error::Invalid(format!(
            "{what}: {} strides for rank {}",
            strides.len(),
            shape.len()
        )));
    }
    if shape.contains(&0) {
        return Ok(());
    }
    let last = shape.iter().zip(strides).try_fold(0usize, |a, (&d, &s)| {
        (d - 1).checked_mul(s).and_then(|o| a.checked_add(o))
    });
    match last {
        Some(last) if last < len => Ok(()),
        _ => Err(Error::Invalid(format!(
            "{what}: strides {strides:?} over shape {shape:?} reach past the {len} elements of the slice"
        ))),
    }
}

/// One run of `out[j] = f(a[ao + j sa], b[bo + j sb])`, specialised for the
/// contiguous and broadcast strides.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn zip_row<T: Copy, O: Copy>(
    f: &impl Fn(T, T) -> O,
    out: &mut [O],
    a: &[T],
    ao: usize,
    sa: usize,
    b: &[T],
    bo: usize,
    sb: usize,
) {
    let n = out.len();
    match (sa, sb) {
        (1, 1) => {
            let (a, b) = (&a[ao..ao + n], &b[bo..bo + n]);
            out.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&x, &y))| *o = f(x, y));
        }
        (1, 0) => {
            let y = b[bo];
            out.iter_mut()
                .zip(&a[ao..ao + n])
                .for_each(|(o, &x)| *o = f(x, y));
        }
        (0, 1) => {
            let x = a[ao];
            out.iter_mut()
                .zip(&b[bo..bo + n])
                .for_each(|(o, &y)| *o = f(x, y));
        }
        (0, 0) => out.fill(f(a[ao], b[bo])),
        _ => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = f(a[ao + j * sa], b[bo + j * sb]);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn zip_strided<T: Copy + Sync, O: Copy + Send>(
    what: &'static str,
    f: impl Fn(T, T) -> O + Sync,
    a: &[T],
    a_strides: &[usize],
    b: &[T],
    b_strides: &[usize],
    out: &mut [O],
    shape: &[usize],
) -> Result<()> {
    let p = Plan::new(
        what,
        shape,
        [a_strides, b_strides],
        [a.len(), b.len()],
        out.len(),
    )?;
    if out.is_empty() {
        return Ok(());
    }
    let (sa, sb) = (p.inner(0), p.inner(1));
    p.drive(out, |o, [ao, bo]| zip_row(&f, o, a, ao, sa, b, bo, sb));
    Ok(())
}

pub fn binary(
    op: BinaryOp,
    a: &[f32],
    a_strides: &[usize],
    b: &[f32],
    b_strides: &[usize],
    out: &mut [f32],
    shape: &[usize],
) -> Result<()> {
    macro_rules! go {
        ($f:expr) => {
            zip_strided("binary", $f, a, a_strides, b, b_strides, out, shape)
        };
    }
    match op {
        BinaryOp::Add => go!(|x: f32, y: f32| x + y),
        BinaryOp::Sub => go!(|x: f32, y: f32| x - y),
        BinaryOp::Mul => go!(|x: f32, y: f32| x * y),
        BinaryOp::Div => go!(|x: f32, y: f32| x / y),
        // A scalar exponent of 2 (variance, MSE) is a product, exactly.
        BinaryOp::Pow if b_strides.iter().all(|&s| s == 0) && b.first() == Some(&2.0) => {
            go!(|x: f32, _: f32| x * x)
        }
        BinaryOp::Pow => go!(f32::powf),
    }
}

pub fn compare<T: Copy + PartialOrd + Send + Sync>(
    op: CompareOp,
    a: &[T],
    a_strides: &[usize],
    b: &[T],
    b_strides: &[usize],
    out: &mut [u8],
    shape: &[usize],
) -> Result<()> {
    macro_rules! go {
        ($f:expr) => {
            zip_strided("compare", $f, a, a_strides, b, b_strides, out, shape)
        };
    }
    match op {
        CompareOp::Equal => go!(|x: T, y: T| u8::from(x == y)),
        CompareOp::Greater => go!(|x: T, y: T| u8::from(x > y)),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn select(
    cond: &[u8],
    cond_strides: &[usize],
    a: &[f32],
    a_strides: &[usize],
    b: &[f32],
    b_strides: &[usize],
    out: &mut [f32],
    shape: &[usize],
) -> Result<()> {
    let lens = [cond.len(), a.len(), b.len()];
    let p = Plan::new(
        "select",
        shape,
        [cond_strides, a_strides, b_strides],
        lens,
        out.len(),
    )?;
    if out.is_empty() {
        return Ok(());
    }
    let (sc, sa, sb) = (p.inner(0), p.inner(1), p.inner(2));
    let pick = |c: u8, x: f32, y: f32| if c != 0 { x } else { y };
    p.drive(out, |o, [co, ao, bo]| {
        let n = o.len();
        match (sc, sa, sb) {
            (1, 1, 1) => {
                let (c, a, b) = (&cond[co..co + n], &a[ao..ao + n], &b[bo..bo + n]);
                o.iter_mut()
                    .zip(c.iter().zip(a.iter().zip(b)))
                    .for_each(|(o, (&c, (&x, &y)))| *o = pick(c, x, y));
            }
            (1, 1, 0) => {
                let y = b[bo];
                o.iter_mut()
                    .zip(cond[co..co + n].iter().zip(&a[ao..ao + n]))
                    .for_each(|(o, (&c, &x))| *o = pick(c, x, y));
            }
            (1, 0, 1) => {
                let x = a[ao];
                o.iter_mut()
                    .zip(cond[co..co + n].iter().zip(&b[bo..bo + n]))
                    .for_each(|(o, (&c, &y))| *o = pick(c, x, y));
            }
            _ => {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = pick(cond[co + j * sc], a[ao + j * sa], b[bo + j * sb]);
                }
            }
        }
    });
    Ok(())
}

// ----- casts -----

/// Element types `cast` converts between. Floats go to ints truncating
/// toward zero (saturating, NaN to 0), ints convert exactly where the
/// target holds the value (i64 to i32 saturates, to f32 rounds once), and
/// anything goes to bool as `!= 0`; a bool reads as 0 or 1.
pub trait Scalar: Copy + Send + Sync {
    /// This value as a `D`.
    fn cast_to<D: Scalar>(self) -> D;
    fn from_f32(v: f32) -> Self;
    fn from_i64(v: i64) -> Self;
    fn from_bool(v: bool) -> Self;
}

/// `Scalar` for a type: how it casts (`|self| ...`), and how it is made
/// from an f32, an i64 and a bool.
macro_rules! scalar {
    ($t:ty, |$s:ident| $cast:expr, |$f:ident| $from_f32:expr, |$i:ident| $from_i64:expr, |$b:ident| $from_bool:expr) => {
        impl Scalar for $t {
            fn cast_to<D: Scalar>(self) -> D {
                let $s = self;
                $cast
            }
            fn from_f32($f: f32) -> Self {
                $from_f32
            }
            fn from_i64($i: i64) -> Self {
                $from_i64
            }
            fn from_bool($b: bool) -> Self {
                $from_bool
            }
        }
    };
}

#[rustfmt::skip]
scalar!(f32, |s| D::from_f32(s), |v| v, |v| v as f32, |v| u8::from(v).into());
scalar!(
    i32,
    |s| D::from_i64(i64::from(s)),
    |v| v as i32,
    |v| v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
    |v| v.into()
);
scalar!(i64, |s| D::from_i64(s), |v| v as i64, |v| v, |v| v.into());
// Half types round once to nearest even from f32; from an i64 they round
// through f32 (exact for |v| < 2^24, where every half value lies).
scalar!(
    half::bf16,
    |s| D::from_f32(s.to_f32()),
    |v| half::bf16::from_f32(v),
    |v| half::bf16::from_f32(v as f32),
    |v| half::bf16::from_f32(f32::from(u8::from(v)))
);
scalar!(
    half::f16,
    |s| D::from_f32(s.to_f32()),
    |v| half::f16::from_f32(v),
    |v| half::f16::from_f32(v as f32),
    |v| half::f16::from_f32(f32::from(u8::from(v)))
);
// Booleans: any non-zero value is true.
scalar!(
    u8,
    |s| D::from_bool(s != 0),
    |v| u8::from(v != 0.0),
    |v| u8::from(v != 0),
    |v| v.into()
);

pub fn cast<S: Scalar, D: Scalar>(src: &[S], dst: &mut [D]) {
    map1(src, dst, S::cast_to::<D>);
}

// ----- GELU backward, dropout, causal mask -----

pub fn gelu_grad(tanh: bool, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    if tanh {
        gelu_grad_with(gelu_tanh_prime, x, dy, dx, true);
    } else {
        gelu_grad_with(gelu_erf_prime, x, dy, dx, true);
    }
}

/// [`gelu_grad`] on the calling thread (the same bits).
pub(crate) fn gelu_grad_serial(tanh: bool, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    if tanh {
        gelu_grad_with(gelu_tanh_prime, x, dy, dx, false);
    } else {
        gelu_grad_with(gelu_erf_prime, x, dy, dx, false);
    }
}

/// [`gelu_grad`] with `dy` read from `dx` and overwritten (the same bits),
/// split over the pool when `parallel` and long enough: blocks of `dx` are
/// copied aside first, so the loop is the two-input one.
pub(crate) fn gelu_grad_in_place(tanh: bool, x: &[f32], dx: &mut [f32], parallel: bool) {
    fn blocks(tanh: bool, x: &[f32], dx: &mut [f32]) {
        const BLOCK: usize = 256;
        let mut dy = [0.0f32; BLOCK];
        for (x, dx) in x.chunks(BLOCK).zip(dx.chunks_mut(BLOCK)) {
            let dy = &mut dy[..dx.len()];
            dy.copy_from_slice(dx);
            gelu_grad_serial(tanh, x, dy, dx);
        }
    }
    if parallel && dx.len() >= PARALLEL_THRESHOLD {
        let c = task_len(dx.len());
        dx.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .for_each(|(dx, x)| blocks(tanh, x, dx));
    } else {
        blocks(tanh, x, dx);
    }
}

/// `dx = dy · f(x)`, split over the pool when `parallel` and long enough.
fn gelu_grad_with(
    f: impl Fn(f32) -> f32 + Sync,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    parallel: bool,
) {
    let g = |v: f32, d: f32| d * f(v);
    if parallel && dx.len() >= PARALLEL_THRESHOLD {
        let c = task_len(dx.len());
        dx.par_chunks_mut(c)
            .zip(x.par_chunks(c).zip(dy.par_chunks(c)))
            .for_each(|(dx, (x, dy))| zip_leaf(x, dy, dx, &g));
    } else {
        zip_leaf(x, dy, dx, &g);
    }
}

/// Keeps element `e` iff `Stream::uniform(e) >= p` (as the reference
/// interpreter), scaling kept values by `1 / (1 - p)` computed in f64.
pub fn dropout(x: &[f32], y: &mut [f32], p: f32, key: RngKey) {
    if p == 0.0 {
        let n = x.len().min(y.len());
        y[..n].copy_from_slice(&x[..n]);
        return;
    }
    let stream = Stream {
        seed: key.seed,
        step: key.step,
        rank: key.rank,
        site: key.site,
    };
    // uniform(e) = (bits >> 8) / 2^24 >= p  <=>  bits >> 8 >= ceil(p 2^24).
    let threshold = if p.is_nan() {
        1 << 24
    } else {
        (f64::from(p) * 16_777_216.0)
            .ceil()
            .clamp(0.0, 16_777_216.0) as u32
    };
    let scale = 1.0 / (1.0 - f64::from(p));
    let apply = |bits: u32, v: f32| {
        if bits >> 8 >= threshold {
            (f64::from(v) * scale) as f32
        } else {
            0.0
        }
    };
    let body = |first: usize, x: &[f32], y: &mut [f32]| {
        for (e, (o, &v)) in y.iter_mut().zip(x).enumerate() {
            *o = apply(stream.bits((first + e) as u64), v);
        }
    };
    if y.len() >= PARALLEL_THRESHOLD / 8 {
        let c = task_len(y.len() * 8) / 8;
        y.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .enumerate()
            .for_each(|(i, (y, x))| body(i * c, x, y));
    } else {
        body(0, x, y);
    }
}

/// `x` as `[batch, t, t]`: row `r` of each matrix keeps columns `0..=r`
/// and the rest become `fill`.
pub fn causal_mask(x: &[f32], y: &mut [f32], t: usize, fill: f32) {
    if t == 0 {
        return;
    }
    let body = |first_row: usize, x: &[f32], y: &mut [f32]| {
        for (i, (yr, xr)) in y.chunks_exact_mut(t).zip(x.chunks_exact(t)).enumerate() {
            let keep = (first_row + i) % t + 1;
            yr[..keep].copy_from_slice(&xr[..keep]);
            yr[keep..].fill(fill);
        }
    };
    let n = x.len().min(y.len()) / t * t;
    let (x, y) = (&x[..n], &mut y[..n]);
    if n >= PARALLEL_THRESHOLD {
        let rows = task_len(n).div_ceil(t);
        y.par_chunks_mut(rows * t)
            .zip(x.par_chunks(rows * t))
            .enumerate()
            .for_each(|(i, (y, x))| body(i * rows, x, y));
    } else {
        body(0, x, y);
    }
}

#[cfg(test)]
#[path = "tests/elementwise.rs"]
mod tests;
