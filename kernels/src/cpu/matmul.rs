//! Batched matrix multiplication through the `gemm` crate.
//!
//! Every batch entry is one `gemm` call; transposes are expressed through
//! the row and column strides handed to `gemm`, never by copying. Three
//! strategies, picked per call:
//!
//! - **folded**: `b` broadcasts over the whole batch, `a` and `c` are
//!   contiguous over it and `a` is not transposed, so `[B, m, k]·[k, n]` is
//!   one `[B·m, k]·[k, n]` GEMM (the `x[B, T, d]·W[d, n]` of every linear
//!   layer);
//! - **batch-parallel**: many small entries and a contiguous `c`: rayon
//!   splits the batch, each entry single-threaded inside `gemm`;
//! - **sequential**: entries one after another, each parallel inside `gemm`
//!   when it is big enough.
//!
//! All offsets are validated against the slice lengths before any unsafe
//! code runs.

use rayon::prelude::*;

use crate::alloc_audit::third_party;
use crate::backend::{Error, MatMulDims, Result};

/// Most batch axes a call may have.
const MAX_RANK: usize = 8;

/// Multiply-adds per GEMM above which `gemm` itself uses rayon.
const GEMM_PARALLEL_WORK: usize = 2 * 64 * 64 * 64;

/// Total multiply-adds above which small batch entries run in parallel.
const BATCH_PARALLEL_WORK: usize = 64 * 64 * 64;

/// Element strides of one GEMM's operands, as `gemm` takes them.
#[derive(Debug, Clone, Copy)]
struct Strides {
    lhs_cs: isize,
    lhs_rs: isize,
    rhs_cs: isize,
    rhs_rs: isize,
    dst_cs: isize,
    dst_rs: isize,
}

/// `c = op(a)·op(b)` for every batch entry (see [`MatMulDims`]).
pub fn matmul(a: &[f32], b: &[f32], c: &mut [f32], dims: &MatMulDims<'_>) -> Result<()> {
    let (m, n, k) = (dims.m, dims.n, dims.k);
    let rank = dims.batch.len();
    if rank > MAX_RANK {
        return Err(Error::Invalid(format!(
            "matmul: {rank} batch axes, at most {MAX_RANK} supported"
        )));
    }
    for (what, s) in [
        ("a", dims.a_batch_strides),
        ("b", dims.b_batch_strides),
        ("c", dims.c_batch_strides),
    ] {
        if s.len() != rank {
            return Err(Error::Invalid(format!(
                "matmul: {} batch strides for {what}, expected {rank}",
                s.len()
            )));
        }
    }
    let count = product(dims.batch).ok_or_else(|| overflow("batch size"))?;
    let a_entry = m.checked_mul(k).ok_or_else(|| overflow("a entry"))?;
    let b_entry = k.checked_mul(n).ok_or_else(|| overflow("b entry"))?;
    let c_entry = m.checked_mul(n).ok_or_else(|| overflow("c entry"))?;
    if count == 0 || c_entry == 0 {
        return Ok(());
    }
    check_extent(
        "matmul c",
        dims.batch,
        dims.c_batch_strides,
        c_entry,
        c.len(),
    )?;
    if k == 0 {
        return zero_entries(c, dims.batch, dims.c_batch_strides, c_entry);
    }
    check_extent(
        "matmul a",
        dims.batch,
        dims.a_batch_strides,
        a_entry,
        a.len(),
    )?;
    check_extent(
        "matmul b",
        dims.batch,
        dims.b_batch_strides,
        b_entry,
        b.len(),
    )?;

    let st = strides(dims);
    let work = c_entry.checked_mul(k).ok_or_else(|| overflow("work"))?;
    if !dims.trans_a
        && dims
            .b_batch_strides
            .iter()
            .zip(dims.batch)
            .all(|(&s, &d)| s == 0 || d == 1)
        && is_contiguous(dims.batch, dims.a_batch_strides, a_entry)
        && is_contiguous(dims.batch, dims.c_batch_strides, c_entry)
    {
        // One [count·m, k]·[k, n] GEMM: rows of consecutive entries follow
        // each other in a and c with the same row strides.
        let rows = count * m; // ≤ c.len() / n, checked by check_extent
        // The folded a and c are the first count·a_entry / count·c_entry
        // elements, inside the slices by check_extent.
        let a = &a[..count * a_entry];
        let c = &mut c[..count * c_entry];
        gemm_checked(
            rows,
            n,
            k,
            a,
            &b[..b_entry],
            c,
            st,
            parallelism(work.saturating_mul(count)),
        );
        return Ok(());
    }
    if count > 1
        && work < GEMM_PARALLEL_WORK
        && work.saturating_mul(count) >= BATCH_PARALLEL_WORK
        && rayon::current_num_threads() > 1
        && is_contiguous(dims.batch, dims.c_batch_strides, c_entry)
    {
        batch_parallel(
            a,
            b,
            &mut c[..count * c_entry],
            dims,
            st,
            (a_entry, b_entry),
        );
        return Ok(());
    }
    sequential(
        a,
        b,
        c,
        dims,
        st,
        (a_entry, b_entry, c_entry),
        parallelism(work),
    );
    Ok(())
}

fn overflow(what: &str) -> Error {
    Error::Invalid(format!("matmul: {what} overflows usize"))
}

fn product(xs: &[usize]) -> Option<usize> {
    xs.iter().try_fold(1usize, |p, &x| p.checked_mul(x))
}

fn parallelism(work: usize) -> gemm::Parallelism {
    if work >= GEMM_PARALLEL_WORK && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    }
}

/// The `gemm` strides of `c = op(a)·op(b)` for row-major operands.
fn strides(d: &MatMulDims<'_>) -> Strides {
    // Every dimension is at most a slice length (checked by the caller), so
    // it fits in isize.
    let (m, n, k) = (d.m as isize, d.n as isize, d.k as isize);
    let (lhs_cs, lhs_rs) = if d.trans_a { (m, 1) } else { (1, k) };
    let (rhs_cs, rhs_rs) = if d.trans_b { (k, 1) } else { (1, n) };
    Strides {
        lhs_cs,
        lhs_rs,
        rhs_cs,
        rhs_rs,
        dst_cs: 1,
        dst_rs: n,
    }
}

/// Checks that every batch entry of `entry` elements lies inside `len`.
fn check_extent(
    what: &'static str,
    batch: &[usize],
    strides: &[usize],
    entry: usize,
    len: usize,
) -> Result<()> {
    if entry == 0 {
        return Ok(());
    }
    let mut last = 0usize;
    for (&d, &s) in batch.iter().zip(strides) {
        // d ≥ 1 here: the caller returned early on an empty batch.
        let step = (d - 1).checked_mul(s).ok_or_else(|| overflow(what))?;
        last = last.checked_add(step).ok_or_else(|| overflow(what))?;
    }
    let end = last.checked_add(entry).ok_or_else(|| overflow(what))?;
    if end > len {
        return Err(Error::Length {
            what,
            expected: end,
            found: len,
        });
    }
    Ok(())
}

/// Whether the entries sit back to back in row-major batch order (axes of
/// size 1 ignored).
fn is_contiguous(batch: &[usize], strides: &[usize], entry: usize) -> bool {
    let mut expected = entry;
    for (&d, &s) in batch.iter().zip(strides).rev() {
        if d != 1 {
            if s != expected {
                return false;
            }
            expected = expected.saturating_mul(d);
        }
    }
    true
}

/// Sets every entry of `c` to zero (the `k = 0` product).
fn zero_entries(c: &mut [f32], batch: &[usize], strides: &[usize], entry: usize) -> Result<()> {
    let mut idx = [0usize; MAX_RANK];
    let mut offs = [0usize; 3];
    loop {
        // In bounds: check_extent covered the largest offset.
        c[offs[2]..offs[2] + entry].fill(0.0);
        if !advance(&mut idx, &mut offs, batch, [strides; 3]) {
            return Ok(());
        }
    }
}

/// Steps the batch multi-index `idx` (row-major) and the offsets of the
/// three operands that follow it; false once every entry was visited.
fn advance(
    idx: &mut [usize; MAX_RANK],
    offs: &mut [usize; 3],
    batch: &[usize],
    strides: [&[usize]; 3],
) -> bool {
    for ax in (0..batch.len()).rev() {
        idx[ax] += 1;
        if idx[ax] < batch[ax] {
            for (o, s) in offs.iter_mut().zip(strides) {
                *o += s[ax];
            }
            return true;
        }
        idx[ax] = 0;
        for (o, s) in offs.iter_mut().zip(strides) {
            *o -= s[ax] * (batch[ax] - 1);
        }
    }
    false
}

/// Entries one after another, `c` at any (even overlapping) strides.
fn sequential(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    d: &MatMulDims<'_>,
    st: Strides,
    (a_entry, b_entry, c_entry): (usize, usize, usize),
    par: gemm::Parallelism,
) {
    let strides = [d.a_batch_strides, d.b_batch_strides, d.c_batch_strides];
    let mut idx = [0usize; MAX_RANK];
    let mut offs = [0usize; 3];
    loop {
        let [a_off, b_off, c_off] = offs;
        // In bounds: check_extent covered the largest offset of each operand.
        let (a_e, b_e) = (&a[a_off..a_off + a_entry], &b[b_off..b_off + b_entry]);
        let c_e = &mut c[c_off..c_off + c_entry];
        gemm_checked(d.m, d.n, d.k, a_e, b_e, c_e, st, par);
        if !advance(&mut idx, &mut offs, d.batch, strides) {
            return;
        }
    }
}

/// Entries split over rayon's pool; `c` contiguous, `count·c_entry` long.
fn batch_parallel(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    d: &MatMulDims<'_>,
    st: Strides,
    (a_entry, b_entry): (usize, usize),
) {
    let c_entry = d.m * d.n;
    c.par_chunks_mut(c_entry).enumerate().for_each(|(e, c_e)| {
        // The entry's multi-index from its row-major linear index.
        let (mut rest, mut a_off, mut b_off) = (e, 0usize, 0usize);
        for ax in (0..d.batch.len()).rev() {
            let i = rest % d.batch[ax];
            rest /= d.batch[ax];
            a_off += i * d.a_batch_strides[ax];
            b_off += i * d.b_batch_strides[ax];
        }
        // In bounds: check_extent covered the largest offset of each operand.
        let (a_e, b_e) = (&a[a_off..a_off + a_entry], &b[b_off..b_off + b_entry]);
        gemm_checked(d.m, d.n, d.k, a_e, b_e, c_e, st, gemm::Parallelism::None);
    });
}

/// One GEMM over slices that hold exactly the operands: `a` the `m·k`
/// elements of `op(a)`, `b` the `k·n` of `op(b)`, `c` the `m·n` of `c`.
#[allow(clippy::too_many_arguments)]
fn gemm_checked(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    st: Strides,
    par: gemm::Parallelism,
) {
    // Slicing above made these exact; anything else would be a bug here.
    let ok = a.len() == m * k && b.len() == k * n && c.len() == m * n;
    debug_assert!(ok, "matmul: operand slices do not match m, n, k");
    if !ok {
        return;
    }
    third_party(|| {
        // SAFETY: `a`, `b` and `c` hold exactly m·k, k·n and m·n elements;
        // with the strides from `strides` every element gemm touches,
        // i·rs + j·cs for i < rows and j < cols of that operand, is below
        // that length (a row-major matrix, or its transpose, of that size;
        // the folded case is a row-major [count·m, k] / [count·m, n] matrix,
        // still within the slice). `c` is a unique borrow, so it aliases
        // neither input, and read_dst = false means its old contents (which
        // may be anything, NaN included) are not read.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                st.dst_cs,
                st.dst_rs,
                false,
                a.as_ptr(),
                st.lhs_cs,
                st.lhs_rs,
                b.as_ptr(),
                st.rhs_cs,
                st.rhs_rs,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
    });
}

#[cfg(test)]
#[path = "tests/matmul.rs"]
mod tests;
