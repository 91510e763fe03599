//! Indexing kernels: gather, scatter-add (repeated indices accumulate) and
//! one-hot.
//!
//! Every index is checked before anything is written, so a bad index leaves
//! the output untouched. Large calls split over rayon: gather and one-hot
//! by output rows; scatter-add by `outer` slab and column block of the
//! inner axis, so no two threads ever add into the same output element and
//! each element accumulates its updates in index order (deterministic).

use rayon::prelude::*;

use super::PARALLEL_THRESHOLD;
use crate::backend::{Error, Result};

/// Integer types used as indices.
pub trait IndexElem: Copy + Send + Sync {
    fn get(self) -> i64;
}

impl IndexElem for i64 {
    fn get(self) -> i64 {
        self
    }
}

impl IndexElem for i32 {
    fn get(self) -> i64 {
        i64::from(self)
    }
}

/// Elements of output a parallel task gets at least.
const TASK_ELEMS: usize = 1 << 13;

/// Column block width of parallel scatter-add: a multiple of a cache line
/// of f32 so that tasks never share a line within a row.
const SCATTER_BLOCK: usize = 64;

/// Checks every index against `bound`.
pub(super) fn check_indices<I: IndexElem>(
    what: &'static str,
    indices: &[I],
    bound: usize,
) -> Result<()> {
    for &i in indices {
        let v = i.get();
        if v < 0 || v as u64 >= bound as u64 {
            return Err(Error::IndexOutOfRange {
                what,
                index: v,
                bound,
            });
        }
    }
    Ok(())
}

/// An index already checked by [`check_indices`].
#[inline]
fn at<I: IndexElem>(i: I) -> usize {
    i.get() as usize
}

fn mul3(what: &'static str, a: usize, b: usize, c: usize) -> Result<usize> {
    a.checked_mul(b)
        .and_then(|ab| ab.checked_mul(c))
        .ok_or_else(|| Error::Invalid(format!("{what}: size overflows usize")))
}

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

/// `data` as `[outer, axis, inner]`: `out[o, j, i] = data[o, indices[j], i]`.
pub fn gather<I: IndexElem>(
    data: &[f32],
    indices: &[I],
    out: &mut [f32],
    outer: usize,
    axis: usize,
    inner: usize,
) -> Result<()> {
    let k = indices.len();
    expect_len(
        "gather data",
        mul3("gather", outer, axis, inner)?,
        data.len(),
    )?;
    expect_len("gather out", mul3("gather", outer, k, inner)?, out.len())?;
    check_indices("gather index", indices, axis)?;
    if out.is_empty() {
        return Ok(());
    }
    // Output row r = o·k + j copies data row o·axis + indices[j].
    let copy_rows = |first: usize, chunk: &mut [f32]| {
        for (r, dst) in (first..).zip(chunk.chunks_exact_mut(inner)) {
            let (o, j) = (r / k, r % k);
            let src = (o * axis + at(indices[j])) * inner;
            dst.copy_from_slice(&data[src..src + inner]);
        }
    };
    if out.len() < PARALLEL_THRESHOLD {
        copy_rows(0, out);
    } else {
        let rows_per_task = TASK_ELEMS.div_ceil(inner);
        out.par_chunks_mut(rows_per_task * inner)
            .enumerate()
            .for_each(|(t, chunk)| copy_rows(t * rows_per_task, chunk));
    }
    Ok(())
}

/// `out` as `[outer, size, inner]` set to zero, then
/// `out[o, indices[j], i] += updates[o, j, i]`.
pub fn scatter_add<I: IndexElem>(
    updates: &[f32],
    indices: &[I],
    out: &mut [f32],
    outer: usize,
    size: usize,
    inner: usize,
) -> Result<()> {
    let k = indices.len();
    expect_len(
        "scatter_add updates",
        mul3("scatter_add", outer, k, inner)?,
        updates.len(),
    )?;
    expect_len(
        "scatter_add out",
        mul3("scatter_add", outer, size, inner)?,
        out.len(),
    )?;
    check_indices("scatter_add index", indices, size)?;
    if out.is_empty() {
        return Ok(());
    }
    let slab = size * inner;
    let blocks = inner.div_ceil(SCATTER_BLOCK);
    let parallel = out.len().max(updates.len()) >= PARALLEL_THRESHOLD && outer * blocks > 1;
    if !parallel {
        out.fill(0.0);
        for (o, dst) in out.chunks_exact_mut(slab).enumerate() {
            scatter_slab(
                &updates[o * k * inner..(o + 1) * k * inner],
                indices,
                dst,
                inner,
            );
        }
        return Ok(());
    }
    if blocks == 1 {
        // Parallel over outer slabs only: safe disjoint chunks.
        out.par_chunks_mut(slab).enumerate().for_each(|(o, dst)| {
            dst.fill(0.0);
            scatter_slab(
                &updates[o * k * inner..(o + 1) * k * inner],
                indices,
                dst,
                inner,
            );
        });
        return Ok(());
    }
    scatter_blocks(updates, indices, out, outer, size, inner);
    Ok(())
}

/// Parallel scatter-add over (outer slab, column block) tasks. Re-checks
/// its own bounds (cheaply) so that the unsafe writes below rely on no
/// caller.
fn scatter_blocks<I: IndexElem>(
    updates: &[f32],
    indices: &[I],
    out: &mut [f32],
    outer: usize,
    size: usize,
    inner: usize,
) {
    let k = indices.len();
    let slab_ok = |rows: usize, len: usize| mul3("", outer, rows, inner).ok() == Some(len);
    if !slab_ok(size, out.len()) || !slab_ok(k, updates.len()) {
        return;
    }
    let blocks = inner.div_ceil(SCATTER_BLOCK);
    let out_ptr = SharedOut(out.as_mut_ptr());
    (0..outer * blocks).into_par_iter().for_each(|task| {
        let (o, blk) = (task / blocks, task % blocks);
        let cols = blk * SCATTER_BLOCK..((blk + 1) * SCATTER_BLOCK).min(inner);
        let upd = &updates[o * k * inner..(o + 1) * k * inner];
        // The columns `cols` of row `r` of slab `o`, as a unique slice.
        let row = |r: usize| {
            // SAFETY: `out` is `outer·size·inner` long (checked above), o <
            // outer, r < size (checked at each call) and `cols` lies within
            // `inner`, so the range lies inside `out`. Tasks are distinct
            // (o, blk) pairs and this one only touches columns `cols` of slab
            // `o`, so no other task ever holds these elements; each slice is
            // dropped before the next is made. `out` stays mutably borrowed
            // through `out_ptr` for the whole loop and nothing else uses it.
            unsafe {
                let start = out_ptr.get().add((o * size + r) * inner + cols.start);
                std::slice::from_raw_parts_mut(start, cols.len())
            }
        };
        for r in 0..size {
            row(r).fill(0.0);
        }
        for (j, &idx) in indices.iter().enumerate() {
            let r = at(idx);
            if r >= size {
                continue; // unreachable: the caller checked the indices
            }
            let src = &upd[j * inner + cols.start..j * inner + cols.end];
            for (d, &u) in row(r).iter_mut().zip(src) {
                *d += u;
            }
        }
    });
}

/// `*mut f32` that tasks share; each writes its own disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the pointer is only dereferenced at elements that one task owns
// (see `scatter_add`); the buffer outlives the parallel loop.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Taking `self` whole keeps closures capturing the Send wrapper, not
    /// the bare pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Adds the update rows of one slab into `dst` (one `[size, inner]` slab).
fn scatter_slab<I: IndexElem>(upd: &[f32], indices: &[I], dst: &mut [f32], inner: usize) {
    for (src, &idx) in upd.chunks_exact(inner).zip(indices) {
        let d = at(idx) * inner;
        for (o, &u) in dst[d..d + inner].iter_mut().zip(src) {
            *o += u;
        }
    }
}

/// `out[j, c] = (indices[j] == c)` as f32.
pub fn one_hot<I: IndexElem>(indices: &[I], out: &mut [f32], depth: usize) -> Result<()> {
    let rows = indices.len();
    let expected = rows
        .checked_mul(depth)
        .ok_or_else(|| Error::Invalid("one_hot: size overflows usize".into()))?;
    expect_len("one_hot out", expected, out.len())?;
    check_indices("one_hot index", indices, depth)?;
    if out.is_empty() {
        return Ok(());
    }
    let fill_rows = |chunk: &mut [f32], idx: &[I]| {
        chunk.fill(0.0);
        for (row, &i) in chunk.chunks_exact_mut(depth).zip(idx) {
            row[at(i)] = 1.0;
        }
    };
    if out.len() < PARALLEL_THRESHOLD {
        fill_rows(out, indices);
    } else {
        let rows_per_task = TASK_ELEMS.div_ceil(depth);
        out.par_chunks_mut(rows_per_task * depth)
            .zip(indices.par_chunks(rows_per_task))
            .for_each(|(chunk, idx)| fill_rows(chunk, idx));
    }
    Ok(())
}

#[cfg(test)]
#[path = "tests/index.rs"]
mod tests;
