//! Mixture-of-experts kernels: top-k selection and routing (packing slots
//! by expert under a capacity); the grouped matmuls over the packed rows
//! are in [`super::grouped`].
//!
//! Tokens pick `k` experts each (`top_k`); `moe_route` packs the `R = T·k`
//! slots into rows grouped by expert, kept slots first (expert ascending,
//! slot order within an expert), dropped slots last, and writes
//! `offsets [E+1]`: expert `e` owns rows `offsets[e]..offsets[e+1]`. The
//! grouped matmuls read those offsets at run time, so shapes are static
//! while the grouping is data-dependent: one GEMM per non-empty group,
//! nothing for empty experts, no padding.
//!
//! Every offsets array is validated (starts at 0, monotone, at most `R`)
//! before anything is written, and routing checks every expert id, so bad
//! data is an error naming the culprit rather than a panic. Nothing here
//! allocates: routing keeps its per-expert counters in `offsets` and its
//! per-slot ranks in `slot_row` until they are overwritten.

use rayon::prelude::*;

use super::PARALLEL_THRESHOLD;
use super::index::IndexElem;
use crate::backend::{Error, Result};

pub(super) fn expect_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            found,
        })
    }
}

pub(super) fn mul(what: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::Invalid(format!("{what}: size overflows usize")))
}

/// Whether `(a, ia)` ranks before `(b, ib)`: larger value first, ties to
/// the lower index, NaN below every number (NaNs among themselves by
/// index).
#[inline]
fn ranks_before(a: f32, ia: usize, b: f32, ib: usize) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a > b || (a == b && ia < ib),
        (false, true) => true,
        (true, false) => false,
        (true, true) => ia < ib,
    }
}

/// The indices of the `out.len()` largest entries of `row`, best first
/// (insertion into the sorted prefix of `out`: O(n·k), no scratch).
fn top_k_row(row: &[f32], out: &mut [i64]) {
    let k = out.len();
    if k == 0 {
        return;
    }
    let mut filled = 0;
    for (i, &v) in row.iter().enumerate() {
        if filled == k {
            let last = out[k - 1] as usize;
            if !ranks_before(v, i, row[last], last) {
                continue;
            }
        }
        // The new entry goes at `p`, shifting worse ones right (the worst
        // falls off when `out` is full).
        let mut p = filled.min(k - 1);
        while p > 0 {
            let prev = out[p - 1] as usize;
            if !ranks_before(v, i, row[prev], prev) {
                break;
            }
            out[p] = out[p - 1];
            p -= 1;
        }
        out[p] = i as i64;
        filled = (filled + 1).min(k);
    }
}

/// `x` as `[rows, n]`: `ids[r, j]` is the index of the `j`-th largest entry
/// of row `r` (descending, ties to the lower index, NaN smallest).
pub fn top_k(x: &[f32], ids: &mut [i64], rows: usize, n: usize, k: usize) -> Result<()> {
    if k > n {
        return Err(Error::Invalid(format!(
            "top_k: k = {k} exceeds the row length {n}"
        )));
    }
    expect_len("top_k x", mul("top_k", rows, n)?, x.len())?;
    expect_len("top_k ids", mul("top_k", rows, k)?, ids.len())?;
    if k == 0 || rows == 0 {
        return Ok(());
    }
    if x.len() < PARALLEL_THRESHOLD {
        for (row, out) in x.chunks_exact(n).zip(ids.chunks_exact_mut(k)) {
            top_k_row(row, out);
        }
    } else {
        x.par_chunks_exact(n)
            .zip(ids.par_chunks_exact_mut(k))
            .for_each(|(row, out)| top_k_row(row, out));
    }
    Ok(())
}

/// The outputs of [`moe_route`], each as described on
/// [`crate::Backend::moe_route`].
#[derive(Debug)]
pub struct Route<'a> {
    pub row_token: &'a mut [i64],
    pub slot_row: &'a mut [i64],
    pub slot_keep: &'a mut [f32],
    pub offsets: &'a mut [i64],
}

/// Packs the slots of `ids [T, k]` (expert per slot) into rows grouped by
/// expert; an expert keeps its first `capacity` slots in slot order
/// (`None`: all), the rest go after every kept row, in slot order.
pub fn moe_route<I: IndexElem>(
    ids: &[I],
    k: usize,
    experts: usize,
    capacity: Option<usize>,
    out: Route<'_>,
) -> Result<()> {
    let slots = ids.len();
    if (k == 0 && slots != 0) || (k != 0 && !slots.is_multiple_of(k)) {
        return Err(Error::Invalid(format!(
            "moe_route: {slots} slots are not a whole number of tokens of {k} slots"
        )));
    }
    let Route {
        row_token,
        slot_row,
        slot_keep,
        offsets,
    } = out;
    expect_len("moe_route row_token", slots, row_token.len())?;
    expect_len("moe_route slot_row", slots, slot_row.len())?;
    expect_len("moe_route slot_keep", slots, slot_keep.len())?;
    expect_len("moe_route offsets", experts + 1, offsets.len())?;
    for e in ids.iter().map(|i| i.get()) {
        if e < 0 || e as u64 >= experts as u64 {
            return Err(Error::IndexOutOfRange {
                what: "moe_route expert id",
                index: e,
                bound: experts,
            });
        }
    }
    let capacity = capacity.unwrap_or(usize::MAX);
    // Pass 1: each slot's rank among its expert's slots (kept in slot_row
    // for now); offsets[e + 1] counts expert e's slots.
    offsets.fill(0);
    for (e, rank) in ids.iter().zip(slot_row.iter_mut()) {
        let count = &mut offsets[e.get() as usize + 1];
        *rank = *count;
        *count += 1;
    }
    // Kept rows per expert, then their running sum: group starts.
    let mut kept = 0i64;
    for o in &mut offsets[1..] {
        kept += (*o as usize).min(capacity) as i64;
        *o = kept;
    }
    // Pass 2: rows. Kept slots fill their expert's group in slot order;
    // dropped ones follow every kept row.
    let mut dropped = kept;
    for (s, (e, row)) in ids.iter().zip(slot_row.iter_mut()).enumerate() {
        let rank = *row;
        let keep = (rank as usize) < capacity;
        *row = if keep {
            offsets[e.get() as usize] + rank
        } else {
            dropped += 1;
            dropped - 1
        };
        slot_keep[s] = if keep { 1.0 } else { 0.0 };
        row_token[*row as usize] = (s / k) as i64;
    }
    Ok(())
}

/// Checks `offsets` (length `experts + 1`): `offsets[0] = 0`, monotone,
/// `offsets[experts] ≤ rows`.
pub fn check_offsets<I: IndexElem>(
    what: &'static str,
    offsets: &[I],
    experts: usize,
    rows: usize,
) -> Result<()> {
    expect_len(what, experts + 1, offsets.len())?;
    let first = offsets[0].get();
    if first != 0 {
        return Err(Error::Invalid(format!(
            "{what}: offsets[0] is {first}, expected 0"
        )));
    }
    for (e, pair) in offsets.windows(2).enumerate() {
        let (lo, hi) = (pair[0].get(), pair[1].get());
        if hi < lo {
            return Err(Error::Invalid(format!(
                "{what}: offsets[{}] = {hi} is below offsets[{e}] = {lo} (offsets must not decrease)",
                e + 1
            )));
        }
    }
    let last = offsets[experts].get();
    if last as u64 > rows as u64 {
        return Err(Error::Invalid(format!(
            "{what}: offsets[{experts}] = {last} exceeds the {rows} rows"
        )));
    }
    Ok(())
}

/// Rows `offsets[e]..offsets[e + 1]` of a checked offsets array.
#[inline]
pub(super) fn group<I: IndexElem>(offsets: &[I], e: usize) -> (usize, usize) {
    (offsets[e].get() as usize, offsets[e + 1].get() as usize)
}

#[cfg(test)]
#[path = "tests/moe.rs"]
mod tests;
