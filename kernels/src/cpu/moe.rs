//! Mixture-of-experts kernels: top-k selection, routing (packing slots by
//! expert under a capacity), and grouped matmuls over the packed rows.
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
use super::elementwise;
use super::index::IndexElem;
use super::matmul::{BATCH_PARALLEL_WORK, Strides, gemm_checked, parallelism};
use crate::backend::{Error, GroupedMatMulDims, Result, UnaryOp};

/// Multiply-adds of the largest group below which groups run one per
/// rayon task (each GEMM single-threaded) rather than one after another
/// (each GEMM threaded inside `gemm`).
const GROUP_TASK_MAX_WORK: usize = 256 * 256 * 256;

fn expect_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
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

fn mul(what: &'static str, a: usize, b: usize) -> Result<usize> {
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
fn group<I: IndexElem>(offsets: &[I], e: usize) -> (usize, usize) {
    (offsets[e].get() as usize, offsets[e + 1].get() as usize)
}

/// Whether the groups of `offsets` run one per rayon task: enough work in
/// all, at least two of them, and either none big enough to want `gemm`'s
/// own threads or none so big that splitting by groups leaves a thread
/// idle (the largest at most a `2·threads`-th of all rows). Single-threaded
/// GEMMs side by side beat each GEMM split over the threads by 5 to 10% on
/// the `moe` workload's 256-row experts.
fn groups_in_parallel<I: IndexElem>(offsets: &[I], per_row: usize) -> bool {
    let mut nonempty = 0;
    let mut largest = 0;
    for e in 0..offsets.len() - 1 {
        let (a, b) = group(offsets, e);
        let rows = b - a;
        nonempty += usize::from(rows > 0);
        largest = largest.max(rows);
    }
    let total = offsets[offsets.len() - 1].get() as usize;
    let threads = rayon::current_num_threads();
    threads > 1
        && nonempty > 1
        && total.saturating_mul(per_row) >= BATCH_PARALLEL_WORK
        && (largest.saturating_mul(per_row) < GROUP_TASK_MAX_WORK
            || largest.saturating_mul(2 * threads) <= total)
}

/// `y_r = x_r · w_e` (or `x_r · w_eᵀ`) for the rows `r` of group `e`; rows
/// from `offsets[E]` on are zero. `x [rows, d]`, `w [E, d, h]` (`[E, h, d]`
/// when transposed), `y [rows, h]`.
pub fn grouped_matmul<I: IndexElem>(
    x: &[f32],
    w: &[f32],
    offsets: &[I],
    y: &mut [f32],
    dims: &GroupedMatMulDims,
) -> Result<()> {
    grouped_matmul_act(x, w, offsets, y, dims, None)
}

/// [`grouped_matmul`], then `act_out = act(y)` when `act` is given, applied
/// to each group's rows right after its GEMM, while they are in cache (the
/// same bits as a separate [`super::elementwise::unary`] over `y`).
pub fn grouped_matmul_act<I: IndexElem>(
    x: &[f32],
    w: &[f32],
    offsets: &[I],
    y: &mut [f32],
    dims: &GroupedMatMulDims,
    act: Option<(UnaryOp, &mut [f32])>,
) -> Result<()> {
    let GroupedMatMulDims {
        experts,
        rows,
        d,
        h,
        transpose,
    } = *dims;
    const WHAT: &str = "grouped_matmul";
    expect_len("grouped_matmul x", mul(WHAT, rows, d)?, x.len())?;
    expect_len(
        "grouped_matmul w",
        mul(WHAT, experts, mul(WHAT, d, h)?)?,
        w.len(),
    )?;
    expect_len("grouped_matmul y", mul(WHAT, rows, h)?, y.len())?;
    check_offsets("grouped_matmul offsets", offsets, experts, rows)?;
    if let Some((_, out)) = &act {
        expect_len("grouped_matmul act_out", y.len(), out.len())?;
    }
    let kept = offsets[experts].get() as usize;
    let (grouped, tail) = y.split_at_mut(kept * h);
    tail.fill(0.0);
    let (op, act_out) = match act {
        Some((op, out)) => (Some(op), out),
        None => (None, &mut [][..]),
    };
    let (act_grouped, act_tail) = act_out.split_at_mut(if op.is_some() { kept * h } else { 0 });
    if let Some(op) = op {
        elementwise::unary(op, tail, act_tail);
    }
    if d == 0 || kept == 0 || h == 0 {
        grouped.fill(0.0); // empty sums
        if let Some(op) = op {
            elementwise::unary(op, grouped, act_grouped);
        }
        return Ok(());
    }
    // x_e is row-major [m_e, d]; w_e row-major [d, h], or [h, d] read as
    // its transpose; y_e row-major [m_e, h].
    let (rhs_cs, rhs_rs) = if transpose { (d, 1) } else { (1, h) };
    let g = Grouped {
        x,
        w,
        offsets,
        d,
        h,
        st: Strides {
            lhs_cs: 1,
            lhs_rs: d as isize,
            rhs_cs: rhs_cs as isize,
            rhs_rs: rhs_rs as isize,
            dst_cs: 1,
            dst_rs: h as isize,
        },
    };
    if groups_in_parallel(offsets, d * h) {
        g.split(0, experts, grouped, op.map(|op| (op, act_grouped)));
    } else {
        for e in 0..experts {
            let (a, b) = group(offsets, e);
            let par = parallelism((b - a) * d * h);
            let y_e = &mut grouped[a * h..b * h];
            g.gemm(e, y_e, par);
            if let Some(op) = op {
                elementwise::unary(op, y_e, &mut act_grouped[a * h..b * h]);
            }
        }
    }
    Ok(())
}

/// Operands of a forward grouped matmul whose offsets were checked.
struct Grouped<'a, I> {
    x: &'a [f32],
    w: &'a [f32],
    offsets: &'a [I],
    d: usize,
    h: usize,
    st: Strides,
}

impl<I: IndexElem> Grouped<'_, I> {
    /// Group `e`'s GEMM into `y_e` (its `m_e·h` output elements); nothing
    /// for an empty group.
    fn gemm(&self, e: usize, y_e: &mut [f32], par: gemm::Parallelism) {
        let (a, b) = group(self.offsets, e);
        if a == b {
            return;
        }
        let entry = self.d * self.h;
        // x rows a..b and expert e's matrix; `gemm_checked` takes slices
        // holding exactly the operands, and the strides describe a
        // row-major matrix (or its transpose) of exactly that size.
        let (x_e, w_e) = (
            &self.x[a * self.d..b * self.d],
            &self.w[e * entry..(e + 1) * entry],
        );
        gemm_checked(b - a, self.h, self.d, x_e, w_e, y_e, self.st, par);
    }

    /// Groups `e0..e1` into `y` (their rows, `offsets[e0]..offsets[e1]`),
    /// split in two halves of about equal rows under `rayon::join`.
    fn split(&self, e0: usize, e1: usize, y: &mut [f32], act: Option<(UnaryOp, &mut [f32])>) {
        let (start, end) = (
            self.offsets[e0].get() as usize,
            self.offsets[e1].get() as usize,
        );
        if start == end {
            return;
        }
        if e1 - e0 == 1 {
            self.gemm(e0, y, gemm::Parallelism::None);
            if let Some((op, out)) = act {
                elementwise::unary_serial(op, y, out);
            }
            return;
        }
        let target = (start + end) as i64 / 2;
        let inner = &self.offsets[e0 + 1..e1];
        let mid = (e0 + 1 + inner.partition_point(|o| o.get() < target)).min(e1 - 1);
        let at = (self.offsets[mid].get() as usize - start) * self.h;
        let (lo, hi) = y.split_at_mut(at);
        let (act_lo, act_hi) = match act {
            Some((op, out)) => {
                let (a, b) = out.split_at_mut(at);
                (Some((op, a)), Some((op, b)))
            }
            None => (None, None),
        };
        rayon::join(
            || self.split(e0, mid, lo, act_lo),
            || self.split(mid, e1, hi, act_hi),
        );
    }
}

/// `dw_e = Σ_{r in group e} x_rᵀ · dy_r`, one GEMM `x_eᵀ · dy_e` per
/// non-empty group; empty experts are zero. `x [rows, d]`, `dy [rows, h]`,
/// `dw [E, d, h]` (`[E, h, d]`, each `dw_e` transposed, when `transpose`).
pub fn grouped_matmul_grad_w<I: IndexElem>(
    x: &[f32],
    dy: &[f32],
    offsets: &[I],
    dw: &mut [f32],
    dims: &GroupedMatMulDims,
) -> Result<()> {
    let GroupedMatMulDims {
        experts,
        rows,
        d,
        h,
        transpose,
    } = *dims;
    const WHAT: &str = "grouped_matmul_grad_w";
    let entry = mul(WHAT, d, h)?;
    expect_len("grouped_matmul_grad_w x", mul(WHAT, rows, d)?, x.len())?;
    expect_len("grouped_matmul_grad_w dy", mul(WHAT, rows, h)?, dy.len())?;
    expect_len(
        "grouped_matmul_grad_w dw",
        mul(WHAT, experts, entry)?,
        dw.len(),
    )?;
    check_offsets("grouped_matmul_grad_w offsets", offsets, experts, rows)?;
    if entry == 0 {
        return Ok(());
    }
    // x_eᵀ: x_e is row-major [m_e, d], read as [d, m_e]; dy_e row-major
    // [m_e, h]; dw_e row-major [d, h], or written transposed as [h, d].
    let (dst_cs, dst_rs) = if transpose { (d, 1) } else { (1, h) };
    let st = Strides {
        lhs_cs: d as isize,
        lhs_rs: 1,
        rhs_cs: 1,
        rhs_rs: h as isize,
        dst_cs: dst_cs as isize,
        dst_rs: dst_rs as isize,
    };
    let expert = |e: usize, dw_e: &mut [f32], par: Option<gemm::Parallelism>| {
        let (a, b) = group(offsets, e);
        if a == b {
            dw_e.fill(0.0);
            return;
        }
        let par = par.unwrap_or_else(|| parallelism((b - a) * entry));
        let (x_e, dy_e) = (&x[a * d..b * d], &dy[a * h..b * h]);
        gemm_checked(d, h, b - a, x_e, dy_e, dw_e, st, par);
    };
    if groups_in_parallel(offsets, entry) {
        dw.par_chunks_exact_mut(entry)
            .enumerate()
            .for_each(|(e, dw_e)| expert(e, dw_e, Some(gemm::Parallelism::None)));
    } else {
        for (e, dw_e) in dw.chunks_exact_mut(entry).enumerate() {
            expert(e, dw_e, None);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "tests/moe.rs"]
mod tests;
