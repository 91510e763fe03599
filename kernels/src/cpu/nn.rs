//! Softmax, log-softmax and LayerNorm (forward and backward).
//!
//! Rows are independent, so large calls split rows over rayon. The only
//! cross-row reduction, LayerNorm's `dγ`/`dβ`, sums fixed parts of rows
//! (the partition does not depend on the thread count) and adds the parts
//! in order, so every result is the same bit for bit whatever the thread
//! count or timing. Row sums accumulate in f64 over eight fixed lanes
//! (vectorisable, fixed order); `exp` is a branch-free polynomial that
//! vectorises, where `f32::exp` is a libm call per element.

use rayon::prelude::*;

use super::PARALLEL_THRESHOLD;

/// Elements a parallel task gets at least.
const TASK_ELEMS: usize = 1 << 13;

/// Columns per block of the stack accumulators (softmax with `inner > 1`,
/// the final sum of LayerNorm's `dγ`/`dβ`).
const COL_BLOCK: usize = 512;

/// Applies `f(row_index, row)` to each `d`-long row of `out`, split over
/// rayon above the parallel threshold. `d` must be positive.
pub(super) fn each_row(out: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.len() < PARALLEL_THRESHOLD {
        for (r, row) in out.chunks_exact_mut(d).enumerate() {
            f(r, row);
        }
    } else {
        let per_task = TASK_ELEMS.div_ceil(d);
        out.par_chunks_mut(per_task * d)
            .enumerate()
            .for_each(|(t, chunk)| {
                for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
                    f(t * per_task + i, row);
                }
            });
    }
}

/// `Σ f(a[i], b[i])` in f64 over eight lanes, combined in a fixed order.
#[inline]
pub(super) fn sum2(a: &[f32], b: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f(f64::from(xa[l]), f64::from(xb[l]));
        }
    }
    for (l, (&xa, &xb)) in ra.iter().zip(rb).enumerate() {
        acc[l] += f(f64::from(xa), f64::from(xb));
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `Σ x` in f64.
#[inline]
pub(super) fn sum(x: &[f32]) -> f64 {
    sum2(x, x, |a, _| a)
}

/// The largest element (NaN ignored, as `f32::max` does); `-inf` if empty.
#[inline]
pub(super) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = acc[l].max(c[l]);
        }
    }
    for (l, &v) in rem.iter().enumerate() {
        acc[l] = acc[l].max(v);
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `e^x` in f32, written so that LLVM vectorises loops calling it (no
/// branches, no libm call): Cody-Waite reduction `x = n·ln2 + r`, Cephes'
/// degree-6 polynomial for `e^r` on `|r| ≤ ln2/2`, then `2^n` applied in
/// two halves so that every factor stays a normal float. About 1 ulp off
/// the exact value; `-inf` gives 0, `+inf` and overflows give `inf`,
/// NaN gives NaN; results below the normal range flush towards 0 through
/// the usual subnormal rounding.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 355.0 / 512.0; // ln 2 in few bits: n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: v + ROUND rounds v to an integer
    // Beyond these e^x is 0 or inf in f32; NaN passes through clamp.
    let x = x.clamp(-104.0, 88.8);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * (r * r) + r + 1.0;
    // 2^n = 2^h · 2^(n-h) with both halves in the normal range.
    let h = ni >> 1;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - h + 127) as u32) << 23);
    er * s1 * s2
}

/// Softmax (or log-softmax) over the middle axis of `[outer, n, inner]`.
pub fn softmax(x: &[f32], y: &mut [f32], outer: usize, n: usize, inner: usize, log: bool) {
    let total = outer.checked_mul(n).and_then(|on| on.checked_mul(inner));
    // The backend checked the lengths; stay panic-free regardless.
    if total != Some(x.len()) || y.len() != x.len() || x.is_empty() {
        return;
    }
    if inner == 1 {
        each_row(y, n, |r, yr| {
            widest!(softmax_row(&x[r * n..(r + 1) * n], yr, log))
        });
        return;
    }
    let slab = n * inner;
    if y.len() >= PARALLEL_THRESHOLD && outer > 1 {
        y.par_chunks_mut(slab)
            .zip(x.par_chunks(slab))
            .for_each(|(ys, xs)| softmax_slab(xs, ys, inner, log));
    } else {
        for (ys, xs) in y.chunks_exact_mut(slab).zip(x.chunks_exact(slab)) {
            softmax_slab(xs, ys, inner, log);
        }
    }
}

/// One contiguous row, max-subtracted.
#[inline(always)]
fn softmax_row(x: &[f32], y: &mut [f32], log: bool) {
    let m = max(x);
    for (o, &v) in y.iter_mut().zip(x) {
        *o = exp(v - m);
    }
    let s = sum(y);
    if log {
        let ln_s = s.ln() as f32;
        for (o, &v) in y.iter_mut().zip(x) {
            *o = (v - m) - ln_s;
        }
    } else {
        let inv = (1.0 / s) as f32;
        for o in y.iter_mut() {
            *o *= inv;
        }
    }
}

/// One `[n, inner]` slab, softmax down its columns, a block of columns at a
/// time with the running max and sums on the stack.
fn softmax_slab(x: &[f32], y: &mut [f32], inner: usize, log: bool) {
    for c0 in (0..inner).step_by(COL_BLOCK) {
        let w = COL_BLOCK.min(inner - c0);
        let mut mx = [f32::NEG_INFINITY; COL_BLOCK];
        let mut s = [0.0f64; COL_BLOCK];
        let (mx, s) = (&mut mx[..w], &mut s[..w]);
        let rows = || x.chunks_exact(inner).map(|r| &r[c0..c0 + w]);
        for xr in rows() {
            for (m, &v) in mx.iter_mut().zip(xr) {
                *m = m.max(v);
            }
        }
        for (xr, yr) in rows().zip(y.chunks_exact_mut(inner)) {
            exp_shifted(xr, mx, &mut yr[c0..c0 + w]);
            for (acc, &e) in s.iter_mut().zip(&yr[c0..c0 + w]) {
                *acc += f64::from(e);
            }
        }
        let mut t = [0.0f32; COL_BLOCK];
        let t = &mut t[..w];
        for (t, &s) in t.iter_mut().zip(s.iter()) {
            *t = if log { s.ln() as f32 } else { (1.0 / s) as f32 };
        }
        for (xr, yr) in rows().zip(y.chunks_exact_mut(inner)) {
            let yr = &mut yr[c0..c0 + w];
            if log {
                for (((o, &v), &m), &ln_s) in yr.iter_mut().zip(xr).zip(mx.iter()).zip(t.iter()) {
                    *o = (v - m) - ln_s;
                }
            } else {
                for (o, &inv) in yr.iter_mut().zip(t.iter()) {
                    *o *= inv;
                }
            }
        }
    }
}

/// `y = exp(x - m)` elementwise (a separate function: no aliasing).
fn exp_shifted(x: &[f32], m: &[f32], y: &mut [f32]) {
    for ((o, &v), &m) in y.iter_mut().zip(x).zip(m) {
        *o = exp(v - m);
    }
}

/// Mean and `1/sqrt(var + eps)` of a row (biased variance). One pass of
/// f64 sums of `x` and `x²` in eight lanes: f32 inputs squared are exact in
/// f64, so `E[x²] − mean²` has a relative error near 1e-16·(mean/std)²,
/// noticeable only where f32 inputs can barely resolve the spread anyway.
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let (mut s, mut q) = ([0.0f64; 8], [0.0f64; 8]);
    let chunks = x.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            let v = f64::from(c[l]);
            s[l] += v;
            q[l] += v * v;
        }
    }
    for (l, &v) in rem.iter().enumerate() {
        let v = f64::from(v);
        s[l] += v;
        q[l] += v * v;
    }
    let d = x.len() as f64;
    let mean = lanes(&s) / d;
    let var = (lanes(&q) / d - mean * mean).max(0.0);
    (mean as f32, (1.0 / (var + f64::from(eps)).sqrt()) as f32)
}

/// LayerNorm over the last axis of `[rows, d]`: `(x - mean)·rstd·γ + β`.
pub fn layer_norm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
    rows: usize,
    d: usize,
    eps: f32,
) {
    let ok = rows.checked_mul(d) == Some(x.len())
        && y.len() == x.len()
        && gamma.len() == d
        && beta.len() == d;
    if !ok || x.is_empty() {
        return;
    }
    each_row(y, d, |r, yr| {
        widest!(layer_norm_row(&x[r * d..(r + 1) * d], gamma, beta, yr, eps))
    });
}

/// One row of [`layer_norm`].
#[inline(always)]
fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], eps: f32) {
    let (mean, rstd) = row_stats(x, eps);
    for (((o, &v), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v - mean) * rstd * g + b;
    }
}

/// The LayerNorm backward, statistics recomputed from `x`:
/// `dx = rstd·(dy·γ − mean(dy·γ) − x̂·mean(dy·γ·x̂))`, `dγ = Σ_rows dy·x̂`,
/// `dβ = Σ_rows dy`.
///
/// The rows split into fixed parts of [`PART_ROWS`] (the last one takes
/// the remainder, up to twice that), independent of the thread count. In
/// one pass each part writes `dx` for all but its first two rows and sums
/// its rows' `dy·x̂` and `dy` (f32, rows in order) into those two rows'
/// `dx`, used as scratch; the parts' sums are then added in f64, parts in
/// order, into `dγ`/`dβ`; finally each part writes the `dx` of its first two
/// rows. No allocation, and the same bits on any pool.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_grad(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    rows: usize,
    d: usize,
    eps: f32,
) {
    let ok = rows.checked_mul(d) == Some(x.len())
        && dy.len() == x.len()
        && dx.len() == x.len()
        && gamma.len() == d
        && dgamma.len() == d
        && dbeta.len() == d;
    if !ok {
        return; // the backend checked the lengths; stay panic-free regardless
    }
    if d < 2 || rows < 2 {
        return layer_norm_grad_small(x, gamma, dy, dx, dgamma, dbeta, rows, d, eps);
    }
    let parts = (rows / PART_ROWS).max(1);
    let part_len = PART_ROWS * d;
    let (head, tail) = dx.split_at_mut((parts - 1) * part_len);
    let part = |p: usize, dxp: &mut [f32]| {
        let (start, end) = (p * part_len, p * part_len + dxp.len());
        widest!(part_pass(
            &x[start..end],
            &dy[start..end],
            gamma,
            dxp,
            d,
            eps
        ));
    };
    if x.len() >= PARALLEL_THRESHOLD {
        let tail = rayon::iter::once(tail);
        head.par_chunks_mut(part_len)
            .chain(tail)
            .enumerate()
            .for_each(|(p, dxp)| part(p, dxp));
    } else {
        for (p, dxp) in head
            .chunks_exact_mut(part_len)
            .chain(std::iter::once(tail))
            .enumerate()
        {
            part(p, dxp);
        }
    }
    combine_parts(dx, parts, part_len, d, dgamma, dbeta);
    let first_rows = |p: usize, dxp: &mut [f32]| {
        for (k, dxr) in dxp[..2 * d].chunks_exact_mut(d).enumerate() {
            let r = p * PART_ROWS + k;
            row_grad(
                &x[r * d..(r + 1) * d],
                &dy[r * d..(r + 1) * d],
                gamma,
                dxr,
                eps,
            );
        }
    };
    if x.len() >= PARALLEL_THRESHOLD {
        dx.par_chunks_mut(part_len)
            .take(parts)
            .enumerate()
            .for_each(|(p, dxp)| first_rows(p, dxp));
    } else {
        for (p, dxp) in dx.chunks_mut(part_len).take(parts).enumerate() {
            first_rows(p, dxp);
        }
    }
}

/// Rows per part of [`layer_norm_grad`] (the last part has up to twice).
const PART_ROWS: usize = 64;

/// One part of [`layer_norm_grad`]: `x`, `dy` and `dx` hold its rows (at
/// least two). Writes `dx` of rows 2.. and the part's `Σ dy·x̂` and `Σ dy`
/// into rows 0 and 1 of `dx`.
#[inline(always)]
fn part_pass(x: &[f32], dy: &[f32], gamma: &[f32], dx: &mut [f32], d: usize, eps: f32) {
    let (scratch, rest) = dx.split_at_mut(2 * d);
    let (sg, sb) = scratch.split_at_mut(d);
    sg.fill(0.0);
    sb.fill(0.0);
    let rows = x.chunks_exact(d).zip(dy.chunks_exact(d));
    for (k, (xr, dyr)) in rows.enumerate() {
        let (mean, rstd) = row_stats(xr, eps);
        if k < 2 {
            for (((g, b), &v), &dv) in sg.iter_mut().zip(sb.iter_mut()).zip(xr).zip(dyr) {
                *g += dv * ((v - mean) * rstd);
                *b += dv;
            }
            continue;
        }
        let (m1, m2) = grad_means(xr, dyr, gamma, mean, rstd);
        let out = &mut rest[(k - 2) * d..(k - 1) * d];
        fused_row(xr, dyr, gamma, out, sg, sb, [mean, rstd, m1, m2]);
    }
}

/// Writes one row's `dx` and adds its `dy·x̂` and `dy` into `sg`, `sb`.
/// (Separate function so that LLVM knows the slices do not alias.)
#[inline(never)]
fn fused_row(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    dx: &mut [f32],
    sg: &mut [f32],
    sb: &mut [f32],
    [mean, rstd, m1, m2]: [f32; 4],
) {
    let n = x.len();
    let (dy, gamma, dx, sg, sb) = (
        &dy[..n],
        &gamma[..n],
        &mut dx[..n],
        &mut sg[..n],
        &mut sb[..n],
    );
    for i in 0..n {
        let xh = (x[i] - mean) * rstd;
        dx[i] = rstd * (dy[i] * gamma[i] - m1 - xh * m2);
        sg[i] += dy[i] * xh;
        sb[i] += dy[i];
    }
}

/// One row's `dx`.
fn row_grad(x: &[f32], dy: &[f32], gamma: &[f32], dx: &mut [f32], eps: f32) {
    let (mean, rstd) = row_stats(x, eps);
    let (m1, m2) = grad_means(x, dy, gamma, mean, rstd);
    for (((o, &v), &dv), &g) in dx.iter_mut().zip(x).zip(dy).zip(gamma) {
        let xh = (v - mean) * rstd;
        *o = rstd * (dv * g - m1 - xh * m2);
    }
}

/// The LayerNorm backward for fewer than two rows or columns.
#[allow(clippy::too_many_arguments)]
fn layer_norm_grad_small(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    rows: usize,
    d: usize,
    eps: f32,
) {
    if rows == 1 {
        let (mean, rstd) = row_stats(x, eps);
        for (((g, b), &v), &dv) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(x).zip(dy) {
            *g = dv * ((v - mean) * rstd);
            *b = dv;
        }
        row_grad(x, dy, gamma, dx, eps);
        return;
    }
    // No rows: zero sums. d = 1: x̂ = 0, so dx = 0 and dγ = 0; dβ = Σ dy.
    dx.fill(0.0);
    dgamma.fill(0.0);
    for (c, db) in dbeta.iter_mut().enumerate() {
        *db = dy
            .iter()
            .skip(c)
            .step_by(d)
            .map(|&v| f64::from(v))
            .sum::<f64>() as f32;
    }
}

/// The eight lanes combined in the same fixed order as [`sum2`].
fn lanes(acc: &[f64; 8]) -> f64 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `mean(dy·γ)` and `mean(dy·γ·x̂)` of one row, f64 sums in eight lanes.
fn grad_means(x: &[f32], dy: &[f32], gamma: &[f32], mean: f32, rstd: f32) -> (f32, f32) {
    let (mut s1, mut s2) = ([0.0f64; 8], [0.0f64; 8]);
    let mut add = |l: usize, v: f32, dv: f32, g: f32| {
        let dxh = dv * g;
        s1[l] += f64::from(dxh);
        s2[l] += f64::from(dxh * ((v - mean) * rstd));
    };
    let (cx, cd, cg) = (x.chunks_exact(8), dy.chunks_exact(8), gamma.chunks_exact(8));
    let (rx, rd, rg) = (cx.remainder(), cd.remainder(), cg.remainder());
    for ((xs, ds), gs) in cx.zip(cd).zip(cg) {
        for l in 0..8 {
            add(l, xs[l], ds[l], gs[l]);
        }
    }
    for (l, ((&v, &dv), &g)) in rx.iter().zip(rd).zip(rg).enumerate() {
        add(l, v, dv, g);
    }
    let d = x.len() as f64;
    ((lanes(&s1) / d) as f32, (lanes(&s2) / d) as f32)
}

/// `dγ`/`dβ` as the f64 sums, parts in order, of the parts' sums (the
/// first `2·d` floats of each `part_len` chunk of `dx`).
fn combine_parts(
    dx: &[f32],
    parts: usize,
    part_len: usize,
    d: usize,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let block = |c0: usize, dg: &mut [f32], db: &mut [f32]| {
        let w = dg.len();
        let (mut g, mut b) = ([0.0f64; COL_BLOCK], [0.0f64; COL_BLOCK]);
        for part in dx.chunks(part_len).take(parts) {
            let (pg, pb) = (&part[c0..c0 + w], &part[d + c0..d + c0 + w]);
            for (((g, b), &pg), &pb) in g.iter_mut().zip(b.iter_mut()).zip(pg).zip(pb) {
                *g += f64::from(pg);
                *b += f64::from(pb);
            }
        }
        for (((o, p), &g), &b) in dg.iter_mut().zip(db.iter_mut()).zip(&g).zip(&b) {
            *o = g as f32;
            *p = b as f32;
        }
    };
    if parts * d >= PARALLEL_THRESHOLD {
        dgamma
            .par_chunks_mut(COL_BLOCK)
            .zip(dbeta.par_chunks_mut(COL_BLOCK))
            .enumerate()
            .for_each(|(i, (dg, db))| block(i * COL_BLOCK, dg, db));
    } else {
        let blocks = dgamma
            .chunks_mut(COL_BLOCK)
            .zip(dbeta.chunks_mut(COL_BLOCK));
        for (i, (dg, db)) in blocks.enumerate() {
            block(i * COL_BLOCK, dg, db);
        }
    }
}

#[cfg(test)]
#[path = "tests/nn.rs"]
mod tests;
