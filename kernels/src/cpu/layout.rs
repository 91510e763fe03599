//! Strided copies: transpose, broadcast, slice, concat and pad.
//!
//! A copy first simplifies its layout on the stack: axes of size 1 go,
//! the rest are ordered by destination stride (outermost first) when the
//! destination offsets are injective, and neighbours that both sides step
//! through contiguously merge. What is left is walked in rows of the
//! innermost axis:
//!
//! - both sides contiguous: `copy_from_slice` runs (one run when the whole
//!   copy is contiguous);
//! - a broadcast source (stride 0): `fill` runs;
//! - a transpose of the last two axes (the source contiguous along the
//!   second-to-last axis, the destination along the last): 32x32 tiles, so
//!   both sides stay in cache;
//! - anything else: a strided gather per row.
//!
//! Large copies split their rows over rayon's pool, recursively halving
//! the destination so each task owns a disjoint slice of it (possible
//! whenever the destination offsets are ordered, which the simplification
//! checks). A destination that writes some element twice is copied on one
//! thread in row-major order, so the last write wins.

use super::PARALLEL_THRESHOLD;
use super::elementwise::{MAX_RANK, check_shape, check_strides};
use crate::backend::Result;

/// Tile edge of the blocked transpose.
const TILE: usize = 64;

/// Elements a parallel task gets at least.
const MIN_TASK: usize = 1 << 14;

/// A simplified copy layout.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rank: usize,
    shape: [usize; MAX_RANK],
    src: [usize; MAX_RANK],
    dst: [usize; MAX_RANK],
    /// Destination offsets strictly increase in row-major order of `shape`
    /// (so they are distinct and splitting rows splits the destination).
    ordered: bool,
    /// The last two axes form a transpose worth tiling.
    tiled: bool,
}

/// A position in the row space (all axes but the last) with the offsets
/// of its row.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    idx: [usize; MAX_RANK],
    src: usize,
    dst: usize,
}

impl Plan {
    fn new(shape: &[usize], src_strides: &[usize], dst_strides: &[usize]) -> Plan {
        let mut axes = [(1usize, 0usize, 0usize); MAX_RANK];
        let mut r = 0;
        for ((&n, &s), &d) in shape.iter().zip(src_strides).zip(dst_strides) {
            if n != 1 {
                axes[r] = (n, s, d);
                r += 1;
            }
        }
        let mut sorted = axes;
        sorted[..r].sort_unstable_by_key(|a| std::cmp::Reverse(a.2));
        let ordered = is_ordered(&sorted[..r]);
        let axes = if ordered { sorted } else { axes };
        let mut p = Plan {
            rank: 0,
            shape: [1; MAX_RANK],
            src: [0; MAX_RANK],
            dst: [0; MAX_RANK],
            ordered,
            tiled: false,
        };
        for &(n, s, d) in &axes[..r] {
            let k = p.rank;
            if k > 0 && p.src[k - 1] == s * n && p.dst[k - 1] == d * n {
                p.shape[k - 1] *= n;
                (p.src[k - 1], p.dst[k - 1]) = (s, d);
            } else {
                (p.shape[k], p.src[k], p.dst[k]) = (n, s, d);
                p.rank += 1;
            }
        }
        if p.rank == 0 {
            p.rank = 1;
        }
        let r = p.rank;
        p.tiled = ordered
            && r >= 2
            && p.dst[r - 1] == 1
            && p.src[r - 2] == 1
            && p.src[r - 1] > 1
            && p.shape[r - 1] >= TILE / 2
            && p.shape[r - 2] >= TILE / 2;
        p
    }

    /// Rows (positions of all axes but the last).
    fn rows(&self) -> usize {
        self.shape[..self.rank - 1].iter().product()
    }

    fn row_len(&self) -> usize {
        self.shape[self.rank - 1]
    }

    /// The cursor at row `v`.
    fn cursor(&self, mut v: usize) -> Cursor {
        let mut c = Cursor {
            idx: [0; MAX_RANK],
            src: 0,
            dst: 0,
        };
        for d in (0..self.rank - 1).rev() {
            c.idx[d] = v % self.shape[d];
            v /= self.shape[d];
            c.src += c.idx[d] * self.src[d];
            c.dst += c.idx[d] * self.dst[d];
        }
        c
    }

    /// Moves `c` on by `k` rows, `k` no more than what is left of the
    /// second-to-last axis.
    fn advance(&self, c: &mut Cursor, k: usize) {
        let q = self.rank - 1;
        c.idx[q - 1] += k;
        c.src += k * self.src[q - 1];
        c.dst += k * self.dst[q - 1];
        for d in (0..q).rev() {
            if c.idx[d] < self.shape[d] {
                break;
            }
            c.src -= self.shape[d] * self.src[d];
            c.dst -= self.shape[d] * self.dst[d];
            c.idx[d] = 0;
            if d > 0 {
                c.idx[d - 1] += 1;
                c.src += self.src[d - 1];
                c.dst += self.dst[d - 1];
            }
        }
    }
}

/// Whether each axis's destination stride exceeds the span of the axes
/// inside it (for axes sorted by decreasing destination stride).
fn is_ordered(axes: &[(usize, usize, usize)]) -> bool {
    let mut span = 0usize;
    for &(n, _, d) in axes.iter().rev() {
        if d <= span {
            return false;
        }
        span += (n - 1) * d;
    }
    true
}

pub fn copy_strided<T: Copy + Send + Sync>(
    src: &[T],
    src_strides: &[usize],
    dst: &mut [T],
    dst_strides: &[usize],
    shape: &[usize],
) -> Result<()> {
    let n = check_shape("copy_strided", shape)?;
    check_strides("copy_strided src", shape, src_strides, src.len())?;
    check_strides("copy_strided dst", shape, dst_strides, dst.len())?;
    if n == 0 {
        return Ok(());
    }
    let p = Plan::new(shape, src_strides, dst_strides);
    let parallel = p.ordered && n >= PARALLEL_THRESHOLD;
    if p.rank == 1 {
        let (ss, ds) = (p.src[0], p.dst[0]);
        if parallel {
            split_run(src, ss, dst, ds, 0, n);
        } else {
            copy_run(src, 0, ss, dst, 0, ds, n);
        }
    } else if parallel {
        let mut grain = MIN_TASK.div_ceil(p.row_len()).max(1);
        if p.tiled {
            grain = grain.next_multiple_of(TILE);
        }
        split_rows(&p, src, dst, 0, 0, p.rows(), grain);
    } else {
        copy_rows(&p, src, dst, 0, 0, p.rows());
    }
    Ok(())
}

/// `dst[do + j ds] = src[so + j ss]` for `j < n`, in order.
#[inline]
fn copy_run<T: Copy>(
    src: &[T],
    so: usize,
    ss: usize,
    dst: &mut [T],
    d0: usize,
    ds: usize,
    n: usize,
) {
    match (ss, ds) {
        (1, 1) => dst[d0..d0 + n].copy_from_slice(&src[so..so + n]),
        (0, 1) => dst[d0..d0 + n].fill(src[so]),
        (_, 1) => {
            for (o, &v) in dst[d0..d0 + n].iter_mut().zip(src[so..].iter().step_by(ss)) {
                *o = v;
            }
        }
        // Every write lands on one element: the last one wins.
        (_, 0) => dst[d0] = src[so + (n - 1) * ss],
        (0, _) => dst[d0..]
            .iter_mut()
            .step_by(ds)
            .take(n)
            .for_each(|o| *o = src[so]),
        _ => {
            for (o, &v) in dst[d0..]
                .iter_mut()
                .step_by(ds)
                .zip(src[so..].iter().step_by(ss))
                .take(n)
            {
                *o = v;
            }
        }
    }
}

/// A one-axis copy split over threads; `dst` starts at element `a`'s
/// destination offset.
fn split_run<T: Copy + Send + Sync>(
    src: &[T],
    ss: usize,
    dst: &mut [T],
    ds: usize,
    a: usize,
    b: usize,
) {
    if b - a <= MIN_TASK {
        copy_run(src, a * ss, ss, dst, 0, ds, b - a);
        return;
    }
    let mid = a + ((b - a) / 2).next_multiple_of(64);
    let (l, r) = dst.split_at_mut((mid - a) * ds);
    rayon::join(
        || split_run(src, ss, l, ds, a, mid),
        || split_run(src, ss, r, ds, mid, b),
    );
}

/// Rows `a..b` split over threads; `dst` starts at destination offset
/// `base`, that of row `a`.
fn split_rows<T: Copy + Send + Sync>(
    p: &Plan,
    src: &[T],
    dst: &mut [T],
    base: usize,
    a: usize,
    b: usize,
    grain: usize,
) {
    if b - a <= grain {
        copy_rows(p, src, dst, base, a, b);
        return;
    }
    let mut mid = a + (b - a) / 2;
    if p.tiled && mid / TILE * TILE > a {
        mid = mid / TILE * TILE;
    }
    let at = p.cursor(mid).dst - base;
    let (l, r) = dst.split_at_mut(at);
    rayon::join(
        || split_rows(p, src, l, base, a, mid, grain),
        || split_rows(p, src, r, base + at, mid, b, grain),
    );
}

/// Copies rows `a..b`, where `dst` starts at destination offset `base`.
fn copy_rows<T: Copy>(p: &Plan, src: &[T], dst: &mut [T], base: usize, a: usize, b: usize) {
    let q = p.rank - 1;
    if p.tiled {
        // The transpose's block buffer, made once per task.
        let mut buf = [src[p.cursor(a).src]; TILE * TILE];
        for_bands(p, a, b, |c, band| {
            transpose_band(p, src, c.src, dst, c.dst - base, band, &mut buf)
        });
    } else {
        let (rs, rd) = (p.src[q - 1], p.dst[q - 1]);
        for_bands(p, a, b, |c, band| {
            for i in 0..band {
                copy_run(
                    src,
                    c.src + i * rs,
                    p.src[q],
                    dst,
                    c.dst - base + i * rd,
                    p.dst[q],
                    p.shape[q],
                );
            }
        });
    }
}

/// Calls `f(cursor, band)` for rows `a..b` in bands of consecutive rows
/// along the second-to-last axis.
#[inline(always)]
fn for_bands(p: &Plan, a: usize, b: usize, mut f: impl FnMut(&Cursor, usize)) {
    let q = p.rank - 1;
    let mut c = p.cursor(a);
    let mut v = a;
    while v < b {
        let band = (p.shape[q - 1] - c.idx[q - 1]).min(b - v);
        f(&c, band);
        v += band;
        if v < b {
            p.advance(&mut c, band);
        }
    }
}

/// `band` rows of a transpose, in `TILE x TILE` blocks: the source is
/// contiguous down the rows, the destination along them. Each block goes
/// through a stack buffer, read in source runs and written in destination
/// runs, so power-of-two strides (whose lines share cache sets) cost
/// nothing extra.
fn transpose_band<T: Copy>(
    p: &Plan,
    src: &[T],
    so: usize,
    dst: &mut [T],
    d0: usize,
    band: usize,
    buf: &mut [T; TILE * TILE],
) {
    let q = p.rank - 1;
    let (cols, sc, rd) = (p.shape[q], p.src[q], p.dst[q - 1]);
    for i0 in (0..band).step_by(TILE) {
        let rows = TILE.min(band - i0);
        for j0 in (0..cols).step_by(TILE) {
            let w = TILE.min(cols - j0);
            if rows == TILE && w == TILE {
                full_tile(src, so + i0 + j0 * sc, sc, dst, d0 + i0 * rd + j0, rd, buf);
                continue;
            }
            for (j, b) in buf.chunks_exact_mut(TILE).take(w).enumerate() {
                let s = so + i0 + (j0 + j) * sc;
                b[..rows].copy_from_slice(&src[s..s + rows]);
            }
            for i in 0..rows {
                let out = &mut dst[d0 + (i0 + i) * rd + j0..][..w];
                for (o, b) in out.iter_mut().zip(buf[i..].iter().step_by(TILE)) {
                    *o = *b;
                }
            }
        }
    }
}

/// One whole block: `dst[i rd + j] = src[i + j sc]` for `i, j < TILE`,
/// with the sizes known to the compiler.
#[inline(always)]
fn full_tile<T: Copy>(
    src: &[T],
    so: usize,
    sc: usize,
    dst: &mut [T],
    d0: usize,
    rd: usize,
    buf: &mut [T; TILE * TILE],
) {
    for (j, b) in buf.chunks_exact_mut(TILE).enumerate() {
        b.copy_from_slice(&src[so + j * sc..][..TILE]);
    }
    for i in 0..TILE {
        let out = &mut dst[d0 + i * rd..][..TILE];
        for (j, o) in out.iter_mut().enumerate() {
            *o = buf[j * TILE + i];
        }
    }
}

#[cfg(test)]
#[path = "tests/layout.rs"]
mod tests;
