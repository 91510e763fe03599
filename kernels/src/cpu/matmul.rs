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
//! code runs. bf16 operands (with f32 results) take the same strategies,
//! each entry through [`super::gemm_bf16`].

use rayon::prelude::*;

use crate::alloc_audit::third_party;
use crate::backend::{Error, MatMulDims, Result};

/// Most batch axes a call may have.
const MAX_RANK: usize = 8;

/// Multiply-adds per GEMM above which `gemm` itself uses rayon.
const GEMM_PARALLEL_WORK: usize = 2 * 64 * 64 * 64;

/// Total multiply-adds above which small batch entries run in parallel.
pub(super) const BATCH_PARALLEL_WORK: usize = 64 * 64 * 64;

/// Multiply-adds per entry below which a batch of at least four entries
/// per thread runs one entry per task rather than each entry threaded.
const BATCH_ENTRY_MAX_WORK: usize = 256 * 256 * 256;

/// Element strides of one GEMM's operands, as `gemm` takes them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Strides {
    pub(super) lhs_cs: isize,
    pub(super) lhs_rs: isize,
    pub(super) rhs_cs: isize,
    pub(super) rhs_rs: isize,
    pub(super) dst_cs: isize,
    pub(super) dst_rs: isize,
}

/// An operand element type of [`matmul`]: how one entry's GEMM runs
/// (results are f32 either way).
pub(super) trait GemmOperand: Copy + Sync {
    #[allow(clippy::too_many_arguments)]
    fn entry_gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[Self],
        b: &[Self],
        c: &mut [f32],
        st: Strides,
        par: gemm::Parallelism,
    );
}

impl GemmOperand for f32 {
    fn entry_gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        st: Strides,
        par: gemm::Parallelism,
    ) {
        gemm_checked(m, n, k, a, b, c, st, par);
    }
}

/// bf16 operands on AVX512_BF16 ([`super::gemm_bf16`]); the backend only
/// calls [`matmul`] with them where [`super::gemm_bf16::available`].
impl GemmOperand for half::bf16 {
    fn entry_gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[half::bf16],
        b: &[half::bf16],
        c: &mut [f32],
        st: Strides,
        par: gemm::Parallelism,
    ) {
        if operands_fit(m, n, k, a.len(), b.len(), c.len()) {
            let parallel = !matches!(par, gemm::Parallelism::None);
            let ran = super::gemm_bf16::gemm(m, n, k, a, b, c, st, parallel);
            debug_assert!(ran, "matmul: bf16 GEMM on a CPU without AVX512_BF16");
        }
    }
}

/// Whether one entry's slices hold exactly `m·k`, `k·n` and `m·n`
/// elements. The callers' slicing makes them exact; anything else would be
/// a bug here, and the GEMM is skipped rather than run out of bounds.
fn operands_fit(m: usize, n: usize, k: usize, a: usize, b: usize, c: usize) -> bool {
    let ok = a == m * k && b == k * n && c == m * n;
    debug_assert!(ok, "matmul: operand slices do not match m, n, k");
    ok
}

/// `c = op(a)·op(b)` for every batch entry (see [`MatMulDims`]).
pub fn matmul<T: GemmOperand>(
    a: &[T],
    b: &[T],
    c: &mut [f32],
    dims: &MatMulDims<'_>,
) -> Result<()> {
    let Some(Sizes {
        count,
        a_entry,
        b_entry,
        c_entry,
    }) = validate(a.len(), b.len(), c.len(), dims)?
    else {
        return Ok(()); // nothing to write
    };
    let (m, n, k) = (dims.m, dims.n, dims.k);
    if k == 0 {
        return zero_entries(c, dims.batch, dims.c_batch_strides, c_entry);
    }
    let st = strides(dims);
    let work = c_entry.saturating_mul(k);
    let b_broadcasts = b_shared(dims);
    if !dims.trans_a
        && b_broadcasts
        && is_contiguous(dims.batch, dims.a_batch_strides, a_entry)
        && is_contiguous(dims.batch, dims.c_batch_strides, c_entry)
    {
        // One [count·m, k]·[k, n] GEMM: rows of consecutive entries follow
        // each other in a and c with the same row strides; the folded a and
        // c are the first count·a_entry / count·c_entry elements, inside
        // the slices by `validate`.
        let (a, c) = (&a[..count * a_entry], &mut c[..count * c_entry]);
        let par = parallelism(work.saturating_mul(count));
        T::entry_gemm(count * m, n, k, a, &b[..b_entry], c, st, par);
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    // Entries too small for gemm's own threads, or many medium ones (as in
    // attention, B·H of them): one entry per task.
    let small = work < GEMM_PARALLEL_WORK;
    let many = count >= 4 * threads && work < BATCH_ENTRY_MAX_WORK;
    if count > 1
        && (small || many)
        && work.saturating_mul(count) >= BATCH_PARALLEL_WORK
        && threads > 1
        && is_contiguous(dims.batch, dims.c_batch_strides, c_entry)
    {
        let c = &mut c[..count * c_entry];
        batch_parallel(a, b, c, dims, st, (a_entry, b_entry));
        return Ok(());
    }
    let par = parallelism(work);
    sequential(a, b, c, dims, st, (a_entry, b_entry, c_entry), par);
    Ok(())
}

/// Elements of a transposed right operand shared by the whole batch from
/// which it is copied out row-major before the product: `gemm` packs a
/// column-major right operand far more slowly than a row-major one
/// (`[256, 1024]·[1024, 1024]ᵀ`: 5.5 ms, against 3.9 ms with the copy;
/// 15% faster at 256 Ki elements); smaller ones are left as they are. The
/// copy lives in the backend's scratch, outside the memory plan, like
/// im2col's columns: as large as the largest such operand.
const TRANSPOSE_RHS_MIN_ELEMS: usize = 1 << 18;

/// Rows of the product (batch entries folded) up to which the copy is
/// made: with more, `gemm`'s packing is amortised over them and the gain
/// was within this machine's noise.
const TRANSPOSE_RHS_MAX_ROWS: usize = 1024;

/// [`matmul`] on f32 operands; a transposed `b` shared by every batch entry
/// (a linear layer's `dy·Wᵀ`) is first copied out row-major into
/// `scratch`. The same bits either way: `gemm` packs both layouts into the
/// same panels.
pub fn matmul_f32(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    dims: &MatMulDims<'_>,
    scratch: &mut Vec<f32>,
) -> Result<()> {
    let (n, k) = (dims.n, dims.k);
    let kn = k.saturating_mul(n);
    let worth = dims.trans_b
        && !dims.trans_a
        && b_shared(dims)
        && n > 1
        && k > 1
        && (TRANSPOSE_RHS_MIN_ELEMS..=b.len()).contains(&kn)
        && product(dims.batch)
            .and_then(|p| p.checked_mul(dims.m))
            .is_some_and(|rows| rows <= TRANSPOSE_RHS_MAX_ROWS);
    if !worth {
        return matmul(a, b, c, dims);
    }
    if scratch.len() < kn {
        scratch.resize(kn, 0.0);
    }
    // b's one entry is [n, k] row-major (read as its transpose); written
    // out as [k, n] row-major, the layout a plain `b` has.
    transpose_into(&b[..kn], &mut scratch[..kn], n, k);
    let plain = MatMulDims {
        trans_b: false,
        ..*dims
    };
    matmul(a, &scratch[..kn], c, &plain)
}

/// Columns (of `src`) per band of [`transpose_into`].
const BAND: usize = 8;

/// `src` row-major `[rows, cols]` into `dst` row-major `[cols, rows]`: bands
/// of 8 output rows, split over the pool when there are many, each in 8 × 8
/// register tiles where the CPU has AVX (elements copied, so the same bits
/// on every path).
fn transpose_into(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    if src.len() != rows * cols || dst.len() != src.len() || rows == 0 {
        return; // the caller sizes both; stay panic-free regardless
    }
    let band = |(b, out): (usize, &mut [f32])| {
        let c0 = b * BAND;
        let w = out.len() / rows;
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if w == BAND && std::is_x86_feature_detected!("avx") {
            while done + BAND <= rows {
                // SAFETY: AVX is present. The tile reads src rows
                // done..done + 8, columns c0..c0 + 8 (c0 + 8 = c0 + w ≤
                // cols): below rows·cols. It writes out[j·rows + done + i]
                // for i, j < 8: below 8·rows = out.len().
                unsafe {
                    tile8x8(
                        src.as_ptr().add(done * cols + c0),
                        cols,
                        out.as_mut_ptr().add(done),
                        rows,
                    );
                }
                done += BAND;
            }
        }
        for r in done..rows {
            let row = &src[r * cols + c0..r * cols + c0 + w];
            for (j, &v) in row.iter().enumerate() {
                out[j * rows + r] = v;
            }
        }
    };
    if dst.len() >= super::PARALLEL_THRESHOLD {
        dst.par_chunks_mut(BAND * rows).enumerate().for_each(band);
    } else {
        dst.chunks_mut(BAND * rows).enumerate().for_each(band);
    }
}

/// Transposes the 8 × 8 block at `src` (row stride `ss`) into `dst` (row
/// stride `ds`) through AVX registers.
///
/// # Safety
/// AVX must be present; rows `0..8` of 8 elements at `src + i·ss` must be
/// readable and at `dst + i·ds` writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile8x8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract covers every load and store.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, v) in out.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ds), v);
        }
    }
}

/// Whether every batch entry reads the same `b` (each batch axis
/// broadcasts it or has one entry).
fn b_shared(dims: &MatMulDims<'_>) -> bool {
    (dims.b_batch_strides.iter().zip(dims.batch)).all(|(&s, &d)| s == 0 || d == 1)
}

/// The batch entry count and each operand's entry size.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    count: usize,
    a_entry: usize,
    b_entry: usize,
    c_entry: usize,
}

/// Checks the batch rank, the stride slices and that every entry of every
/// operand lies inside its slice; `None` when there is nothing to write.
fn validate(
    a_len: usize,
    b_len: usize,
    c_len: usize,
    dims: &MatMulDims<'_>,
) -> Result<Option<Sizes>> {
    let rank = dims.batch.len();
    if rank > MAX_RANK {
        return Err(Error::Invalid(format!(
            "matmul: {rank} batch axes, at most {MAX_RANK} supported"
        )));
    }
    let operands = [
        (
            "matmul a",
            dims.a_batch_strides,
            dims.m.checked_mul(dims.k),
            a_len,
        ),
        (
            "matmul b",
            dims.b_batch_strides,
            dims.k.checked_mul(dims.n),
            b_len,
        ),
        (
            "matmul c",
            dims.c_batch_strides,
            dims.m.checked_mul(dims.n),
            c_len,
        ),
    ];
    let mut entries = [0usize; 3];
    for (e, &(what, strides, entry, _)) in entries.iter_mut().zip(&operands) {
        if strides.len() != rank {
            return Err(Error::Invalid(format!(
                "{what}: {} batch strides, expected {rank}",
                strides.len()
            )));
        }
        *e = entry.ok_or_else(|| overflow(what))?;
    }
    let count = product(dims.batch).ok_or_else(|| overflow("matmul batch"))?;
    if count == 0 || entries[2] == 0 {
        return Ok(None);
    }
    for (&entry, &(what, strides, _, len)) in entries.iter().zip(&operands) {
        check_extent(what, dims.batch, strides, entry, len)?;
    }
    let [a_entry, b_entry, c_entry] = entries;
    Ok(Some(Sizes {
        count,
        a_entry,
        b_entry,
        c_entry,
    }))
}

fn overflow(what: &str) -> Error {
    Error::Invalid(format!("matmul: {what} overflows usize"))
}

fn product(xs: &[usize]) -> Option<usize> {
    xs.iter().try_fold(1usize, |p, &x| p.checked_mul(x))
}

pub(super) fn parallelism(work: usize) -> gemm::Parallelism {
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
fn sequential<T: GemmOperand>(
    a: &[T],
    b: &[T],
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
        T::entry_gemm(d.m, d.n, d.k, a_e, b_e, c_e, st, par);
        if !advance(&mut idx, &mut offs, d.batch, strides) {
            return;
        }
    }
}

/// Entries split over rayon's pool; `c` contiguous, `count·c_entry` long.
fn batch_parallel<T: GemmOperand>(
    a: &[T],
    b: &[T],
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
        T::entry_gemm(d.m, d.n, d.k, a_e, b_e, c_e, st, gemm::Parallelism::None);
    });
}

/// One GEMM over slices that hold exactly the operands: `a` the `m·k`
/// elements of `op(a)`, `b` the `k·n` of `op(b)`, `c` the `m·n` of `c`.
/// `st` must describe each operand as a row-major matrix of that size or
/// its transpose (as [`strides`] does; the grouped matmuls of `moe.rs` also
/// write `c` transposed).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_checked(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    st: Strides,
    par: gemm::Parallelism,
) {
    if !operands_fit(m, n, k, a.len(), b.len(), c.len()) {
        return;
    }
    // SAFETY: `a`, `b` and `c` hold exactly m·k, k·n and m·n elements;
    // with the strides from `strides` every element gemm touches,
    // i·rs + j·cs for i < rows and j < cols of that operand, is below
    // that length (a row-major matrix, or its transpose, of that size;
    // the folded case is a row-major [count·m, k] / [count·m, n] matrix,
    // still within the slice). `c` is a unique borrow, so it aliases
    // neither input.
    unsafe { gemm_raw(m, n, k, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), st, par) }
}

/// `c = a·b` through `gemm` on raw pointers, `c`'s old contents (which
/// may be anything, NaN included) not read.
///
/// # Safety
/// Every element `gemm` touches, `p + i·rs + j·cs` for `i` below the
/// operand's rows and `j` below its columns, must be in bounds of its
/// allocation; `c`'s elements must alias neither input, and no other
/// thread may read or write them during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    st: Strides,
    par: gemm::Parallelism,
) {
    third_party(|| {
        // SAFETY: the caller's contract.
        unsafe {
            gemm::gemm(
                m, n, k, c, st.dst_cs, st.dst_rs, false, a, st.lhs_cs, st.lhs_rs, b, st.rhs_cs,
                st.rhs_rs, 0.0f32, 1.0f32, false, false, false, par,
            );
        }
    });
}

#[cfg(test)]
#[path = "tests/matmul.rs"]
mod tests;
