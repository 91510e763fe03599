//! Reductions (sum, mean, max) over any set of axes.
//!
//! The layout is first simplified on the stack (axes of size 1 dropped,
//! neighbours both reduced or both kept merged), leaving two cases:
//!
//! - the last axis is reduced (row sums `[M, N] -> [M]`, a full reduction,
//!   `[A, B, C] -> [B]`): each output folds its contiguous rows, eight
//!   lanes at a time;
//! - the last axis is kept (the bias-gradient pattern `[M, N] -> [N]`,
//!   `[A, B, C] -> [A, C]`): each output row is built in blocks of columns,
//!   adding whole input rows into a stack accumulator.
//!
//! Sums accumulate in f64; max propagates NaN (as the reference does).
//! Every result is a fixed tree of partial results determined by the
//! shape alone: large inputs run its branches on rayon's pool, small ones
//! on one thread, and both give the same bits whatever the thread count.

use super::PARALLEL_THRESHOLD;
use super::elementwise::{MAX_RANK, check_shape};
use crate::backend::{Error, ReduceOp, Result};
use rayon::prelude::*;

/// Elements a tree leaf folds on one thread.
const LEAF: usize = 1 << 14;

/// Columns per accumulator block when the last axis is kept.
const BLOCK: usize = 1024;

/// How values fold: the accumulator, its identity and its two steps.
trait Fold: Copy + Send + Sync {
    type Acc: Copy + Send + Sync;
    const ZERO: Self::Acc;
    fn add(acc: Self::Acc, v: f32) -> Self::Acc;
    fn merge(a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

#[derive(Debug, Clone, Copy)]
struct Sum;

impl Fold for Sum {
    type Acc = f64;
    const ZERO: f64 = 0.0;
    #[inline(always)]
    fn add(acc: f64, v: f32) -> f64 {
        acc + f64::from(v)
    }
    #[inline(always)]
    fn merge(a: f64, b: f64) -> f64 {
        a + b
    }
}

#[derive(Debug, Clone, Copy)]
struct Max;

impl Fold for Max {
    type Acc = f32;
    const ZERO: f32 = f32::NEG_INFINITY;
    /// NaN wins: a NaN `v` replaces the maximum, and nothing replaces NaN.
    #[inline(always)]
    fn add(acc: f32, v: f32) -> f32 {
        if v > acc || v.is_nan() { v } else { acc }
    }
    #[inline(always)]
    fn merge(a: f32, b: f32) -> f32 {
        Max::add(a, b)
    }
}

/// A set of axes of `x`: sizes and element strides.
#[derive(Debug, Clone, Copy)]
struct Axes {
    n: usize,
    dims: [usize; MAX_RANK],
    strides: [usize; MAX_RANK],
}

impl Axes {
    fn new() -> Axes {
        Axes {
            n: 0,
            dims: [1; MAX_RANK],
            strides: [0; MAX_RANK],
        }
    }

    fn push(&mut self, dim: usize, stride: usize) {
        (self.dims[self.n], self.strides[self.n]) = (dim, stride);
        self.n += 1;
    }

    fn count(&self) -> usize {
        self.dims[..self.n].iter().product()
    }

    /// The offset of flat position `v`.
    fn offset(&self, mut v: usize) -> usize {
        let mut off = 0;
        for d in (0..self.n).rev() {
            off += v % self.dims[d] * self.strides[d];
            v /= self.dims[d];
        }
        off
    }

    /// Calls `f(offset)` for flat positions `a..b`, in order.
    #[inline(always)]
    fn each(&self, a: usize, b: usize, mut f: impl FnMut(usize)) {
        if a >= b {
            return;
        }
        if self.n == 0 {
            return f(0);
        }
        let mut idx = [0usize; MAX_RANK];
        let mut rest = a;
        for d in (0..self.n).rev() {
            idx[d] = rest % self.dims[d];
            rest /= self.dims[d];
        }
        let mut off = self.offset(a);
        for _ in a..b {
            f(off);
            for d in (0..self.n).rev() {
                idx[d] += 1;
                off += self.strides[d];
                if idx[d] < self.dims[d] {
                    break;
                }
                off -= self.dims[d] * self.strides[d];
                idx[d] = 0;
            }
        }
    }
}

/// The simplified layout: kept and reduced axes besides the last one, and
/// the last axis.
#[derive(Debug, Clone, Copy)]
struct Plan {
    kept: Axes,
    reduced: Axes,
    last: usize,
    last_reduced: bool,
}

impl Plan {
    fn new(shape: &[usize], axes: &[bool]) -> Plan {
        let mut dims = [(1usize, false); MAX_RANK];
        let mut r = 0;
        for (&n, &red) in shape.iter().zip(axes) {
            if n == 1 {
                continue;
            }
            if r > 0 && dims[r - 1].1 == red {
                dims[r - 1].0 *= n;
            } else {
                dims[r] = (n, red);
                r += 1;
            }
        }
        if r == 0 {
            (dims[0], r) = ((1, true), 1);
        }
        let (mut kept, mut reduced) = (Axes::new(), Axes::new());
        let mut stride = dims[r - 1].0;
        for &(n, red) in dims[..r - 1].iter().rev() {
            if red {
                reduced.push(n, stride);
            } else {
                kept.push(n, stride);
            }
            stride *= n;
        }
        // Pushed innermost first: put them outermost first.
        for a in [&mut kept, &mut reduced] {
            a.dims[..a.n].reverse();
            a.strides[..a.n].reverse();
        }
        Plan {
            kept,
            reduced,
            last: dims[r - 1].0,
            last_reduced: dims[r - 1].1,
        }
    }
}

pub fn reduce(
    op: ReduceOp,
    x: &[f32],
    shape: &[usize],
    axes: &[bool],
    y: &mut [f32],
) -> Result<()> {
    if axes.len() != shape.len() {
        return Err(Error::Invalid(format!(
            "reduce: {} axis flags for rank {}",
            axes.len(),
            shape.len()
        )));
    }
    let numel = check_shape("reduce", shape)?;
    if x.len() != numel {
        return Err(Error::Length {
            what: "reduce x",
            expected: numel,
            found: x.len(),
        });
    }
    let outputs: usize = shape
        .iter()
        .zip(axes)
        .filter(|(_, r)| !**r)
        .map(|(n, _)| n)
        .product();
    if y.len() != outputs {
        return Err(Error::Length {
            what: "reduce y",
            expected: outputs,
            found: y.len(),
        });
    }
    if outputs == 0 {
        return Ok(());
    }
    let count = numel / outputs;
    if count == 0 {
        if op == ReduceOp::Max {
            return Err(Error::Invalid(format!(
                "reduce: max over an empty axis of shape {shape:?}"
            )));
        }
        // The reference's 0 / 0 for a mean.
        y.fill(if op == ReduceOp::Sum { 0.0 } else { f32::NAN });
        return Ok(());
    }
    let p = Plan::new(shape, axes);
    let par = numel >= PARALLEL_THRESHOLD;
    match op {
        ReduceOp::Sum => run::<Sum>(&p, x, y, par, |s| s as f32),
        ReduceOp::Mean => run::<Sum>(&p, x, y, par, |s| (s / count as f64) as f32),
        ReduceOp::Max => run::<Max>(&p, x, y, par, |m| m),
    }
    Ok(())
}

fn run<F: Fold>(
    p: &Plan,
    x: &[f32],
    y: &mut [f32],
    par: bool,
    finish: impl Fn(F::Acc) -> f32 + Sync,
) {
    if p.last_reduced {
        let work = p.reduced.count() * p.last;
        let one = |o: usize| {
            finish(fold_rows::<F>(
                p,
                x,
                p.kept.offset(o),
                0,
                p.reduced.count(),
                par,
            ))
        };
        if par {
            let chunk = LEAF.div_ceil(work).max(1);
            y.par_chunks_mut(chunk).enumerate().for_each(|(i, ys)| {
                ys.iter_mut()
                    .enumerate()
                    .for_each(|(k, o)| *o = one(i * chunk + k));
            });
        } else {
            y.iter_mut().enumerate().for_each(|(o, v)| *v = one(o));
        }
    } else {
        let block = |o: usize, b: usize, ys: &mut [f32]| {
            let mut acc = [F::ZERO; BLOCK];
            let acc = &mut acc[..ys.len()];
            fold_columns::<F>(
                p,
                x,
                p.kept.offset(o) + b * BLOCK,
                acc,
                0,
                p.reduced.count(),
                par,
            );
            ys.iter_mut()
                .zip(acc.iter())
                .for_each(|(v, &a)| *v = finish(a));
        };
        if par {
            y.par_chunks_mut(p.last).enumerate().for_each(|(o, row)| {
                row.par_chunks_mut(BLOCK)
                    .enumerate()
                    .for_each(|(b, ys)| block(o, b, ys));
            });
        } else {
            for (o, row) in y.chunks_mut(p.last).enumerate() {
                row.chunks_mut(BLOCK)
                    .enumerate()
                    .for_each(|(b, ys)| block(o, b, ys));
            }
        }
    }
}

/// Folds the contiguous rows (of the last axis) at reduced positions
/// `a..b` from `base`: a fixed tree, its halves on two threads when `par`.
fn fold_rows<F: Fold>(p: &Plan, x: &[f32], base: usize, a: usize, b: usize, par: bool) -> F::Acc {
    if b - a == 1 {
        let start = base + p.reduced.offset(a);
        return fold_run::<F>(&x[start..start + p.last], par);
    }
    if (b - a) * p.last <= LEAF {
        let mut acc = F::ZERO;
        p.reduced.each(a, b, |off| {
            acc = F::merge(acc, fold_leaf::<F>(&x[base + off..base + off + p.last]))
        });
        return acc;
    }
    let mid = a + (b - a) / 2;
    let (l, r) = join(
        par,
        || fold_rows::<F>(p, x, base, a, mid, par),
        || fold_rows::<F>(p, x, base, mid, b, par),
    );
    F::merge(l, r)
}

/// Folds one contiguous run: a fixed tree of `LEAF`-sized leaves.
fn fold_run<F: Fold>(x: &[f32], par: bool) -> F::Acc {
    if x.len() <= LEAF {
        return fold_leaf::<F>(x);
    }
    let (l, r) = x.split_at((x.len() / 2).next_multiple_of(LEAF));
    let (l, r) = join(par, || fold_run::<F>(l, par), || fold_run::<F>(r, par));
    F::merge(l, r)
}

/// Folds `x` over eight lanes, merged pairwise in a fixed order.
#[inline(always)]
fn fold_leaf<F: Fold>(x: &[f32]) -> F::Acc {
    let mut lanes = [F::ZERO; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            lanes[k] = F::add(lanes[k], c[k]);
        }
    }
    for (k, &v) in chunks.remainder().iter().enumerate() {
        lanes[k] = F::add(lanes[k], v);
    }
    let m = F::merge;
    m(
        m(m(lanes[0], lanes[1]), m(lanes[2], lanes[3])),
        m(m(lanes[4], lanes[5]), m(lanes[6], lanes[7])),
    )
}

/// Adds the `w` columns at `base` of the rows at reduced positions `a..b`
/// into `acc` (`w` long, zeroed): a fixed tree over the rows.
#[allow(clippy::too_many_arguments)]
fn fold_columns<F: Fold>(
    p: &Plan,
    x: &[f32],
    base: usize,
    acc: &mut [F::Acc],
    a: usize,
    b: usize,
    par: bool,
) {
    let w = acc.len();
    if b - a == 1 || (b - a) * w <= LEAF {
        // Rows go in fours, so each accumulator is loaded and stored once
        // per four additions (made in the same order as one by one).
        let mut offs = [0usize; 4];
        let mut k = 0;
        p.reduced.each(a, b, |off| {
            offs[k] = off;
            k += 1;
            if k == 4 {
                k = 0;
                let [r0, r1, r2, r3] = offs.map(|o| &x[base + o..base + o + w]);
                for (j, s) in acc.iter_mut().enumerate() {
                    *s = F::add(F::add(F::add(F::add(*s, r0[j]), r1[j]), r2[j]), r3[j]);
                }
            }
        });
        for &o in &offs[..k] {
            let row = &x[base + o..base + o + w];
            acc.iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s = F::add(*s, v));
        }
        return;
    }
    let mid = a + (b - a) / 2;
    let mut right = [F::ZERO; BLOCK];
    let right = &mut right[..w];
    join(
        par,
        || fold_columns::<F>(p, x, base, acc, a, mid, par),
        || fold_columns::<F>(p, x, base, right, mid, b, par),
    );
    acc.iter_mut()
        .zip(right.iter())
        .for_each(|(s, &r)| *s = F::merge(*s, r));
}

/// Both closures, on two threads when `par`; the same results either way.
fn join<A: Send, B: Send>(
    par: bool,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if par { rayon::join(a, b) } else { (a(), b()) }
}

#[cfg(test)]
#[path = "tests/reduce.rs"]
mod tests;
