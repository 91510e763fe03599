//! Grouped matmuls over rows packed by expert ([`super::moe::moe_route`]):
//! one GEMM per non-empty group `offsets[e]..offsets[e + 1]`, forward
//! (`y_e = x_e·w_e`, optionally followed, while the rows are in cache, by
//! an activation or by GELU's backward taking `y` as its cotangent) and
//! for the weight gradient (`dw_e = x_eᵀ·dy_e`).
//!
//! On several threads the work is cut into one part per thread with equal
//! multiply-adds, whatever the groups' sizes: the forward by rows (a group
//! straddling a cut gives each side its own rows), the weight gradient by
//! output columns (each side computes its columns of the straddling
//! expert's `dw_e` over all that expert's rows). Each part runs its GEMMs
//! single-threaded, one after another; a cut never leaves a side fewer
//! than [`MIN_SHARE`] rows or columns of a group. Cutting changes no bit:
//! above 64 × 64, `gemm` blocks the contraction by `k` alone, so every
//! element of a result is the same sum in the same order whichever part
//! computes it
//! (the tests compare 1, 2 and 3 threads bit for bit).
//!
//! Offsets are checked before anything is written; nothing allocates.

use super::elementwise;
use super::index::IndexElem;
use super::matmul::{BATCH_PARALLEL_WORK, Strides, gemm_checked, gemm_raw, parallelism};
use super::moe::{check_offsets, expect_len, group, mul};
use crate::backend::{GroupedMatMulDims, Result, UnaryOp};

/// Fewest rows or columns of a group a part takes when it shares the group
/// with a neighbour; a cut nearer a group's edge moves to the edge. More
/// than 64: `gemm` blocks the contraction differently for products of at
/// most 64 × 64, so a share that small could change the sums' order.
const MIN_SHARE: usize = 65;

/// Whether grouped work of `madds` multiply-adds is cut into parts, one
/// per thread (rather than run group by group, each GEMM threaded inside
/// `gemm` when it is big enough).
fn in_parts(madds: usize) -> bool {
    rayon::current_num_threads() > 1 && madds >= BATCH_PARALLEL_WORK
}

/// `lo + (hi - lo)·num/den` without overflow (`num ≤ den`).
fn between(lo: usize, hi: usize, num: usize, den: usize) -> usize {
    lo + ((hi - lo) as u128 * num as u128 / den as u128) as usize
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
/// to each part's rows right after their GEMM, while they are in cache (the
/// same bits as a separate [`super::elementwise::unary`] over `y`).
pub fn grouped_matmul_act<I: IndexElem>(
    x: &[f32],
    w: &[f32],
    offsets: &[I],
    y: &mut [f32],
    dims: &GroupedMatMulDims,
    act: Option<(UnaryOp, &mut [f32])>,
) -> Result<()> {
    let epilogue = match act {
        Some((op, out)) => {
            expect_len("grouped_matmul act_out", y.len(), out.len())?;
            Epilogue::Act(op, out)
        }
        None => Epilogue::None,
    };
    grouped_forward(x, w, offsets, y, dims, epilogue)
}

/// [`grouped_matmul`]'s result `y`, then GELU's backward `dx = y ·
/// gelu'(pre)` (`tanh`: of the tanh form) on each part's rows right after
/// their GEMM, while they are in cache (the same bits as a separate
/// [`super::elementwise::gelu_grad`] with `dy = y`). The GEMM writes into
/// `dx` and the backward runs in place, so `y` never reaches memory: its
/// slice is only checked, and left as it was.
#[allow(clippy::too_many_arguments)]
pub fn grouped_matmul_gelu_grad<I: IndexElem>(
    x: &[f32],
    w: &[f32],
    offsets: &[I],
    y: &[f32],
    dims: &GroupedMatMulDims,
    tanh: bool,
    pre: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    expect_len("grouped_matmul_gelu_grad pre", y.len(), pre.len())?;
    expect_len("grouped_matmul_gelu_grad dx", y.len(), dx.len())?;
    grouped_forward(x, w, offsets, dx, dims, Epilogue::GeluGrad { tanh, pre })
}

/// What runs on rows of a forward grouped matmul's result right after
/// their GEMM; its slices are as long as the rows it covers.
enum Epilogue<'a> {
    None,
    /// `out = act(y)`.
    Act(UnaryOp, &'a mut [f32]),
    /// `y = y · gelu'(pre)`, in place.
    GeluGrad {
        tanh: bool,
        pre: &'a [f32],
    },
}

impl<'a> Epilogue<'a> {
    /// The epilogues of elements `..at` and `at..`.
    fn split_at(self, at: usize) -> (Epilogue<'a>, Epilogue<'a>) {
        match self {
            Epilogue::None => (Epilogue::None, Epilogue::None),
            Epilogue::Act(op, out) => {
                let (a, b) = out.split_at_mut(at);
                (Epilogue::Act(op, a), Epilogue::Act(op, b))
            }
            Epilogue::GeluGrad { tanh, pre } => {
                let (a, b) = pre.split_at(at);
                (
                    Epilogue::GeluGrad { tanh, pre: a },
                    Epilogue::GeluGrad { tanh, pre: b },
                )
            }
        }
    }

    /// Applies it to `y`, its elements `range` (threaded over the pool
    /// when `parallel`).
    fn apply(&mut self, y: &mut [f32], range: std::ops::Range<usize>, parallel: bool) {
        match self {
            Epilogue::None => {}
            Epilogue::Act(op, out) if parallel => elementwise::unary(*op, y, &mut out[range]),
            Epilogue::Act(op, out) => elementwise::unary_serial(*op, y, &mut out[range]),
            Epilogue::GeluGrad { tanh, pre } => {
                elementwise::gelu_grad_in_place(*tanh, &pre[range], y, parallel)
            }
        }
    }
}

/// The forward grouped matmul into `y` (rows past the groups zero), with
/// `epilogue` on each part's rows right after their GEMM.
fn grouped_forward<I: IndexElem>(
    x: &[f32],
    w: &[f32],
    offsets: &[I],
    y: &mut [f32],
    dims: &GroupedMatMulDims,
    epilogue: Epilogue<'_>,
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
    let kept = offsets[experts].get() as usize;
    let (grouped, tail) = y.split_at_mut(kept * h);
    tail.fill(0.0);
    let (mut epilogue, mut epilogue_tail) = epilogue.split_at(kept * h);
    epilogue_tail.apply(tail, 0..tail.len(), true);
    if d == 0 || kept == 0 || h == 0 {
        grouped.fill(0.0); // empty sums
        epilogue.apply(grouped, 0..grouped.len(), true);
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
    if in_parts(kept * d * h) {
        g.rows_in_parts(0, kept, rayon::current_num_threads(), grouped, epilogue);
    } else {
        g.rows(0, kept, grouped, epilogue, |rows| parallelism(rows * d * h));
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
    /// Rows `lo..hi` (their outputs `y`, `(hi - lo)·h` elements) as
    /// `parts` parts of about equal rows, side by side under `rayon::join`.
    fn rows_in_parts(
        &self,
        lo: usize,
        hi: usize,
        parts: usize,
        y: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        if parts <= 1 || hi - lo < 2 * MIN_SHARE {
            self.rows(lo, hi, y, epilogue, |_| gemm::Parallelism::None);
            return;
        }
        let left = parts / 2;
        let mid = self.cut(between(lo, hi, left, parts)).clamp(lo, hi);
        let at = (mid - lo) * self.h;
        let (y_lo, y_hi) = y.split_at_mut(at);
        let (e_lo, e_hi) = epilogue.split_at(at);
        rayon::join(
            || self.rows_in_parts(lo, mid, left, y_lo, e_lo),
            || self.rows_in_parts(mid, hi, parts - left, y_hi, e_hi),
        );
    }

    /// `row`, or the edge of its group when that is within [`MIN_SHARE`].
    fn cut(&self, row: usize) -> usize {
        let experts = self.offsets.len() - 1;
        // The group holding `row`: the first whose end is past it.
        let e = self.offsets[1..].partition_point(|o| o.get() as usize <= row);
        if e == experts {
            return row;
        }
        let (a, b) = group(self.offsets, e);
        if row - a < MIN_SHARE {
            a
        } else if b - row < MIN_SHARE {
            b
        } else {
            row
        }
    }

    /// Rows `lo..hi` into `y`: for each group they meet, that group's
    /// GEMM over its rows among them (threaded as `par` says for that
    /// many rows), then the epilogue of those rows (threaded too when the
    /// GEMM was).
    fn rows(
        &self,
        lo: usize,
        hi: usize,
        y: &mut [f32],
        mut epilogue: Epilogue<'_>,
        par: impl Fn(usize) -> gemm::Parallelism,
    ) {
        let (d, h) = (self.d, self.h);
        let entry = d * h;
        let first = self.offsets[1..].partition_point(|o| o.get() as usize <= lo);
        for e in first..self.offsets.len() - 1 {
            let (a, b) = group(self.offsets, e);
            if a >= hi {
                break;
            }
            let (s, t) = (a.max(lo), b.min(hi));
            if s >= t {
                continue;
            }
            let y_e = &mut y[(s - lo) * h..(t - lo) * h];
            // x rows s..t and expert e's matrix; `gemm_checked` takes
            // slices holding exactly the operands, and the strides describe
            // a row-major matrix (or its transpose) of exactly that size.
            let (x_e, w_e) = (&self.x[s * d..t * d], &self.w[e * entry..(e + 1) * entry]);
            let par = par(t - s);
            gemm_checked(t - s, h, d, x_e, w_e, y_e, self.st, par);
            let threaded = !matches!(par, gemm::Parallelism::None);
            epilogue.apply(y_e, (s - lo) * h..(t - lo) * h, threaded);
        }
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
    let g = GradW {
        x,
        dy,
        offsets,
        d,
        h,
        st: Strides {
            lhs_cs: d as isize,
            lhs_rs: 1,
            rhs_cs: 1,
            rhs_rs: h as isize,
            dst_cs: dst_cs as isize,
            dst_rs: dst_rs as isize,
        },
        dw: OutPtr(dw.as_mut_ptr()),
    };
    let kept = offsets[experts].get() as usize;
    let all = experts * h;
    if in_parts(kept * entry) {
        g.cols_in_parts(0, all, rayon::current_num_threads());
    } else {
        g.cols(0, all, |m| parallelism(m * entry));
    }
    Ok(())
}

/// The weight gradient's output, written by several parts at once, each
/// to elements no other part writes.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the parts of `GradW::cols_in_parts` write disjoint elements
// (distinct columns of each `dw_e`), and the borrow of `dw` it came from
// outlives them all (they are joined before `grouped_matmul_grad_w`
// returns).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Operands of a weight gradient whose offsets were checked. Its work is
/// `E·h` columns: column `u` is column `u % h` of expert `u / h`'s GEMM
/// (`h` wide, `d` tall, contracting that expert's rows).
struct GradW<'a, I> {
    x: &'a [f32],
    dy: &'a [f32],
    offsets: &'a [I],
    d: usize,
    h: usize,
    st: Strides,
    dw: OutPtr,
}

impl<I: IndexElem> GradW<'_, I> {
    /// Multiply-adds (over `d`) of the columns before `u`.
    fn work_before(&self, u: usize) -> usize {
        let (e, col) = (u / self.h, u % self.h);
        if e == self.offsets.len() - 1 {
            return self.offsets[e].get() as usize * self.h;
        }
        let (a, b) = group(self.offsets, e);
        a * self.h + (b - a) * col
    }

    /// The column where the work before it reaches `work`, moved to its
    /// expert's edge when within [`MIN_SHARE`] of it.
    fn column_at(&self, work: usize) -> usize {
        let (experts, h) = (self.offsets.len() - 1, self.h);
        // The first expert whose work ends past `work`.
        let e = self.offsets[1..].partition_point(|o| o.get() as usize * h <= work);
        if e == experts {
            return experts * h;
        }
        let (a, b) = group(self.offsets, e);
        let col = (work - a * h).div_ceil(b - a);
        let col = if col < MIN_SHARE {
            0
        } else if h - col < MIN_SHARE {
            h
        } else {
            col
        };
        e * h + col
    }

    /// Columns `lo..hi` as `parts` parts of about equal multiply-adds,
    /// side by side under `rayon::join`.
    fn cols_in_parts(&self, lo: usize, hi: usize, parts: usize) {
        if parts <= 1 {
            self.cols(lo, hi, |_| gemm::Parallelism::None);
            return;
        }
        let left = parts / 2;
        let (w_lo, w_hi) = (self.work_before(lo), self.work_before(hi));
        let mid = self
            .column_at(between(w_lo, w_hi, left, parts))
            .clamp(lo, hi);
        rayon::join(
            || self.cols_in_parts(lo, mid, left),
            || self.cols_in_parts(mid, hi, parts - left),
        );
    }

    /// Columns `lo..hi`: for each expert they meet, its GEMM over those of
    /// its columns (threaded as `par` says for that many rows), or zeros
    /// for an empty expert.
    fn cols(&self, lo: usize, hi: usize, par: impl Fn(usize) -> gemm::Parallelism) {
        let (d, h, st) = (self.d, self.h, self.st);
        let entry = d * h;
        if lo >= hi {
            return;
        }
        for e in lo / h..=(hi - 1) / h {
            let c0 = lo.saturating_sub(e * h);
            let c1 = (hi - e * h).min(h);
            let (a, b) = group(self.offsets, e);
            // Element (i, j) of dw_e's GEMM result sits at
            // e·entry + i·dst_rs + j·dst_cs: below (e + 1)·entry for every
            // i < d, j < h in both layouts ((d - 1)·h + h - 1, or
            // d - 1 + (h - 1)·d).
            let base = e * entry + c0 * st.dst_cs as usize;
            if a == b {
                for i in 0..d {
                    for j in 0..c1 - c0 {
                        let at = base + i * st.dst_rs as usize + j * st.dst_cs as usize;
                        // SAFETY: in bounds of dw (above); only this part
                        // writes expert e's columns c0..c1.
                        unsafe { self.dw.0.add(at).write(0.0) };
                    }
                }
                continue;
            }
            let x_e = &self.x[a * d..b * d];
            let dy_e = &self.dy[a * h..b * h];
            // SAFETY: lhs x_eᵀ [d, m_e] reads x_e[j·d + i] < (b - a)·d;
            // rhs, columns c0..c1 of dy_e [m_e, h], reads c0 + i·h + j
            // < (b - a)·h for i < m_e, j < c1 - c0; the result stays within
            // dw_e (above), in the columns only this part writes, and dw is
            // a unique borrow aliasing neither input.
            unsafe {
                gemm_raw(
                    d,
                    c1 - c0,
                    b - a,
                    x_e.as_ptr(),
                    dy_e.as_ptr().add(c0),
                    self.dw.0.add(base),
                    st,
                    par(b - a),
                );
            }
        }
    }
}
