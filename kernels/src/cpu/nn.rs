//! Softmax, log-softmax and LayerNorm (forward and backward).
//!
//! Rows are independent, so large calls split rows over rayon; the only
//! cross-row reduction, LayerNorm's `dγ`/`dβ`, splits the feature axis
//! instead, each column summed over rows in order, so every result is the
//! same bit for bit whatever the thread count or timing. Row sums
//! accumulate in f64 over eight fixed lanes (vectorisable, fixed order).

use rayon::prelude::*;

use super::PARALLEL_THRESHOLD;

/// Elements a parallel task gets at least.
const TASK_ELEMS: usize = 1 << 13;

/// Columns per block where the reduced axis is strided (softmax with
/// `inner > 1`, LayerNorm's `dγ`/`dβ`).
const COL_BLOCK: usize = 64;

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

/// Softmax (or log-softmax) over the middle axis of `[outer, n, inner]`.
pub fn softmax(x: &[f32], y: &mut [f32], outer: usize, n: usize, inner: usize, log: bool) {
    let total = outer.checked_mul(n).and_then(|on| on.checked_mul(inner));
    // The backend checked the lengths; stay panic-free regardless.
    if total != Some(x.len()) || y.len() != x.len() || x.is_empty() {
        return;
    }
    if inner == 1 {
        each_row(y, n, |r, yr| softmax_row(&x[r * n..(r + 1) * n], yr, log));
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
fn softmax_row(x: &[f32], y: &mut [f32], log: bool) {
    let m = max(x);
    for (o, &v) in y.iter_mut().zip(x) {
        *o = (v - m).exp();
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
        let rows = || x.chunks_exact(inner).map(|r| &r[c0..c0 + w]);
        for xr in rows() {
            for (m, &v) in mx.iter_mut().zip(xr) {
                *m = m.max(v);
            }
        }
        for (xr, yr) in rows().zip(y.chunks_exact_mut(inner)) {
            for (((o, &v), &m), acc) in yr[c0..c0 + w].iter_mut().zip(xr).zip(&mx).zip(&mut s) {
                *o = (v - m).exp();
                *acc += f64::from(*o);
            }
        }
        let mut t = [0.0f32; COL_BLOCK];
        for (t, &s) in t.iter_mut().zip(&s) {
            *t = if log { s.ln() as f32 } else { (1.0 / s) as f32 };
        }
        for (xr, yr) in rows().zip(y.chunks_exact_mut(inner)) {
            let yr = &mut yr[c0..c0 + w];
            if log {
                for (((o, &v), &m), &ln_s) in yr.iter_mut().zip(xr).zip(&mx).zip(&t) {
                    *o = (v - m) - ln_s;
                }
            } else {
                for (o, &inv) in yr.iter_mut().zip(&t) {
                    *o *= inv;
                }
            }
        }
    }
}

/// Mean and `1/sqrt(var + eps)` of a row (biased variance, f64 sums).
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f64;
    let mean = sum(x) / d;
    let var = sum2(x, x, |a, _| (a - mean) * (a - mean)) / d;
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
        let xr = &x[r * d..(r + 1) * d];
        let (mean, rstd) = row_stats(xr, eps);
        for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
            *o = (v - mean) * rstd * g + b;
        }
    });
}

/// The LayerNorm backward, statistics recomputed from `x`:
/// `dx = rstd·(dy·γ − mean(dy·γ) − x̂·mean(dy·γ·x̂))`, `dγ = Σ_rows dy·x̂`,
/// `dβ = Σ_rows dy`.
///
/// Three passes: each row's mean and rstd are parked in the first two
/// elements of its `dx` row; `dγ`/`dβ` are summed per column block from
/// them; then each row reads its statistics back and writes its `dx`.
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
        return;
    }
    if d < 2 || rows == 0 {
        // d = 1: x̂ = 0, so dx = 0 and dγ = 0; dβ = Σ dy.
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
        return;
    }
    each_row(dx, d, |r, st| {
        let (mean, rstd) = row_stats(&x[r * d..(r + 1) * d], eps);
        st[0] = mean;
        st[1] = rstd;
    });
    param_grads(x, dy, dx, dgamma, dbeta, d);
    each_row(dx, d, |r, dxr| {
        let (mean, rstd) = (dxr[0], dxr[1]);
        let (xr, dyr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
        let (mut s1, mut s2) = ([0.0f64; 8], [0.0f64; 8]);
        for (i, ((&v, &dv), &g)) in xr.iter().zip(dyr).zip(gamma).enumerate() {
            let dxh = dv * g;
            s1[i % 8] += f64::from(dxh);
            s2[i % 8] += f64::from(dxh) * f64::from((v - mean) * rstd);
        }
        let m1 = (lanes(&s1) / d as f64) as f32;
        let m2 = (lanes(&s2) / d as f64) as f32;
        for (((o, &v), &dv), &g) in dxr.iter_mut().zip(xr).zip(dyr).zip(gamma) {
            let xh = (v - mean) * rstd;
            *o = rstd * (dv * g - m1 - xh * m2);
        }
    });
}

/// The eight lanes combined in the same fixed order as [`sum2`].
fn lanes(acc: &[f64; 8]) -> f64 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `dγ` and `dβ` by column blocks, rows in order; `stats` holds each row's
/// mean and rstd in its first two elements.
fn param_grads(
    x: &[f32],
    dy: &[f32],
    stats: &[f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    d: usize,
) {
    let block = |c0: usize, dg: &mut [f32], db: &mut [f32]| {
        let w = dg.len();
        let (mut g, mut b) = ([0.0f64; COL_BLOCK], [0.0f64; COL_BLOCK]);
        for ((xr, dyr), st) in x
            .chunks_exact(d)
            .zip(dy.chunks_exact(d))
            .zip(stats.chunks_exact(d))
        {
            let (mean, rstd) = (st[0], st[1]);
            let (xr, dyr) = (&xr[c0..c0 + w], &dyr[c0..c0 + w]);
            for (((g, b), &v), &dv) in g.iter_mut().zip(&mut b).zip(xr).zip(dyr) {
                *g += f64::from(dv) * f64::from((v - mean) * rstd);
                *b += f64::from(dv);
            }
        }
        for (((o, p), &g), &b) in dg.iter_mut().zip(db.iter_mut()).zip(&g).zip(&b) {
            *o = g as f32;
            *p = b as f32;
        }
    };
    let blocks = dgamma
        .chunks_mut(COL_BLOCK)
        .zip(dbeta.chunks_mut(COL_BLOCK));
    if x.len() < PARALLEL_THRESHOLD || d <= COL_BLOCK {
        for (i, (dg, db)) in blocks.enumerate() {
            block(i * COL_BLOCK, dg, db);
        }
    } else {
        dgamma
            .par_chunks_mut(COL_BLOCK)
            .zip(dbeta.par_chunks_mut(COL_BLOCK))
            .enumerate()
            .for_each(|(i, (dg, db))| block(i * COL_BLOCK, dg, db));
    }
}

#[cfg(test)]
#[path = "tests/nn.rs"]
mod tests;
