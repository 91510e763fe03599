//! bf16 GEMM on AVX512_BF16: `c = a·b` with bf16 operands and f32
//! accumulation, for CPUs with `vdpbf16ps` (Zen 4, Sapphire Rapids and
//! later), at about twice the f32 GEMM's rate.
//!
//! The shape is the classic packed GEMM: for each block of `KC` along `k`,
//! `b` is packed once into pairs (`b[k][j]`, `b[k+1][j]` in one 32-bit
//! lane, 32 columns per panel, zero-padded), then row panels of `MR` rows
//! of `a` are packed the same way and multiplied by every column panel in
//! an `MR × 32` register tile (`2·MR` accumulators of sixteen f32 lanes).
//! Row panels are split over rayon's pool. Operands are read through any
//! row and column strides, so transposes cost nothing but the packing.
//!
//! `vdpbf16ps` adds the two products of a pair to the accumulator; products
//! of bf16 values are exact in f32, so only the summation order differs from
//! a widened f32 GEMM. Inputs and results below f32's normal range are
//! flushed to zero by the instruction, as in every AVX512_BF16 library.

use half::bf16;
use rayon::prelude::*;

use super::matmul::Strides;

/// Rows of `a` in one register tile.
const MR: usize = 8;
/// Columns of `b` in one register tile (two registers of sixteen lanes).
const NR: usize = 32;
/// Elements of `k` per packed block (even: pairs).
const KC: usize = 512;

/// One register tile's results.
type Tile = [[f32; NR]; MR];

/// Whether this CPU runs [`gemm`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c = op(a)·op(b)` for an `m × k` by `k × n` product, `c` overwritten.
/// `a` and `b` are read at `st`'s lhs and rhs strides, `c` written at its
/// dst strides; each slice must hold every element those strides reach
/// (the caller's checks). `parallel`: split row panels over the pool.
/// Returns false, writing nothing, when the CPU lacks AVX512_BF16.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[bf16],
    b: &[bf16],
    c: &mut [f32],
    st: Strides,
    parallel: bool,
) -> bool {
    if !available() {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let at = |i: usize, j: usize, rs: isize, cs: isize| i as isize * rs + j as isize * cs;
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                c[at(i, j, st.dst_rs, st.dst_cs) as usize] = 0.0;
            }
        }
        return true;
    }
    let panels = n.div_ceil(NR);
    // The packed b of this thread's last call, reused: taken out (a call
    // nested by rayon's work stealing finds it empty and makes its own)
    // and put back at the end, so steady-state steps allocate nothing.
    let mut packed_b = PACKED_B.with(|cell| cell.take());
    packed_b.resize(panels * (KC / 2) * NR, 0);
    let row_panels = m.div_ceil(MR);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let pairs = kc.div_ceil(2);
        pack_b(
            b,
            st,
            k0,
            kc,
            n,
            &mut packed_b[..panels * pairs * NR],
            parallel,
        );
        let packed_b = &packed_b[..panels * pairs * NR];
        let accumulate = k0 > 0;
        // Row panel `p` times every column panel, each tile written into
        // `c_rows` (`c` from element `base` on), added to what an earlier
        // block wrote there.
        let run_panel = |p: usize, c_rows: &mut [f32], base: isize| {
            let mut packed_a = [0u32; (KC / 2) * MR];
            let rows = MR.min(m - p * MR);
            pack_a(a, st, p * MR, rows, k0, kc, &mut packed_a[..pairs * MR]);
            for q in 0..panels {
                let mut tile = [[0f32; NR]; MR];
                let bq = &packed_b[q * pairs * NR..(q + 1) * pairs * NR];
                // SAFETY: `available()` checked the features; the slices
                // hold `pairs·MR` and `pairs·NR` lanes.
                unsafe { kernel(&packed_a[..pairs * MR], bq, pairs, &mut tile) };
                let cols = NR.min(n - q * NR);
                for (r, row) in tile.iter().enumerate().take(rows) {
                    let (i, j0) = (p * MR + r, q * NR);
                    if st.dst_cs == 1 {
                        // Contiguous row: slices the compiler vectorises.
                        let start = (at(i, j0, st.dst_rs, 1) - base) as usize;
                        let dst = &mut c_rows[start..start + cols];
                        if accumulate {
                            dst.iter_mut().zip(row).for_each(|(d, &v)| *d += v);
                        } else {
                            dst.copy_from_slice(&row[..cols]);
                        }
                        continue;
                    }
                    for (j, &v) in row.iter().enumerate().take(cols) {
                        let idx = (at(i, j0 + j, st.dst_rs, st.dst_cs) - base) as usize;
                        if accumulate {
                            c_rows[idx] += v;
                        } else {
                            c_rows[idx] = v;
                        }
                    }
                }
            }
        };
        if parallel && row_panels > 1 && st.dst_cs == 1 && st.dst_rs == n as isize {
            // Row-major c: each task owns its panel's rows.
            c[..m * n]
                .par_chunks_mut(MR * n)
                .enumerate()
                .for_each(|(p, c_panel)| run_panel(p, c_panel, (p * MR * n) as isize));
        } else {
            for p in 0..row_panels {
                run_panel(p, c, 0);
            }
        }
        k0 += kc;
    }
    PACKED_B.with(|cell| cell.set(packed_b));
    true
}

thread_local! {
    static PACKED_B: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Two bf16 values in one lane: `lo` in the low half, as `vdpbf16ps` pairs
/// them.
#[inline(always)]
fn pair(lo: bf16, hi: bf16) -> u32 {
    u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16)
}

/// Packs rows `k0..k0+kc` of `op(b)` as pairs, panel by panel of `NR`
/// columns: lane `(q·pairs + t)·NR + j` holds `b[k0+2t][qNR+j]` and
/// `b[k0+2t+1][qNR+j]`, zeros past `k` and `n`.
fn pack_b(
    b: &[bf16],
    st: Strides,
    k0: usize,
    kc: usize,
    n: usize,
    out: &mut [u32],
    parallel: bool,
) {
    let pairs = kc.div_ceil(2);
    let get = |kk: usize, j: usize| {
        if kk < k0 + kc && j < n {
            b[(kk as isize * st.rhs_rs + j as isize * st.rhs_cs) as usize]
        } else {
            bf16::ZERO
        }
    };
    let fill = |(q, panel): (usize, &mut [u32])| {
        for t in 0..pairs {
            let kk = k0 + 2 * t;
            for j in 0..NR {
                let col = q * NR + j;
                panel[t * NR + j] = pair(get(kk, col), get(kk + 1, col));
            }
        }
    };
    if parallel {
        out.par_chunks_exact_mut(pairs * NR)
            .enumerate()
            .for_each(fill);
    } else {
        out.chunks_exact_mut(pairs * NR).enumerate().for_each(fill);
    }
}

/// Packs rows `i0..i0+rows` of `op(a)`, columns `k0..k0+kc`, as pairs:
/// lane `t·MR + r` holds `a[i0+r][k0+2t]` and `a[i0+r][k0+2t+1]`, zeros
/// past `k` and the last row.
fn pack_a(a: &[bf16], st: Strides, i0: usize, rows: usize, k0: usize, kc: usize, out: &mut [u32]) {
    let pairs = kc.div_ceil(2);
    if st.lhs_cs == 1 && rows == MR {
        // Rows contiguous along k: each pair is two neighbours.
        for r in 0..MR {
            let start = ((i0 + r) as isize * st.lhs_rs) as usize + k0;
            let row = &a[start..start + kc];
            let mut lanes = out[..pairs * MR].iter_mut().skip(r).step_by(MR);
            // Pairs first: `zip` then stops without taking a lane.
            for (two, lane) in row.chunks_exact(2).zip(lanes.by_ref()) {
                *lane = pair(two[0], two[1]);
            }
            if let (Some(lane), [last]) = (lanes.next(), row.chunks_exact(2).remainder()) {
                *lane = pair(*last, bf16::ZERO);
            }
        }
        return;
    }
    if st.lhs_rs == 1 && rows == MR {
        // Transposed a: each k is MR neighbours.
        let cs = st.lhs_cs as usize;
        let at_k = |kk: usize| &a[kk * cs + i0..kk * cs + i0 + MR];
        for (t, lanes) in out[..pairs * MR].chunks_exact_mut(MR).enumerate() {
            let kk = k0 + 2 * t;
            let even = at_k(kk);
            if kk + 1 < k0 + kc {
                let odd = at_k(kk + 1);
                for ((lane, &lo), &hi) in lanes.iter_mut().zip(even).zip(odd) {
                    *lane = pair(lo, hi);
                }
            } else {
                for (lane, &lo) in lanes.iter_mut().zip(even) {
                    *lane = pair(lo, bf16::ZERO);
                }
            }
        }
        return;
    }
    let get = |r: usize, kk: usize| {
        if r < rows && kk < k0 + kc {
            a[((i0 + r) as isize * st.lhs_rs + kk as isize * st.lhs_cs) as usize]
        } else {
            bf16::ZERO
        }
    };
    for t in 0..pairs {
        for r in 0..MR {
            out[t * MR + r] = pair(get(r, k0 + 2 * t), get(r, k0 + 2 * t + 1));
        }
    }
}

/// The register tile: `tile = Σ_t a_pairs[t]·b_pairs[t]` over `pairs`.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `a` holds `pairs·MR` lanes and `b`
/// `pairs·NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(a: &[u32], b: &[u32], pairs: usize, tile: &mut Tile) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for t in 0..pairs {
        // SAFETY: lanes t·NR .. t·NR + 32 lie in `b` (checked by the caller).
        let (b0, b1) = unsafe {
            let p = b.as_ptr().add(t * NR) as *const __m512i;
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.add(1))),
            )
        };
        for (acc_r, &lanes) in acc.iter_mut().zip(&a[t * MR..(t + 1) * MR]) {
            // SAFETY: a vector of 32 bf16 and one of 16 i32 are the same
            // 64 bytes; every bit pattern is a valid value of both.
            let av = unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(lanes as i32))
            };
            acc_r[0] = _mm512_dpbf16_ps(acc_r[0], av, b0);
            acc_r[1] = _mm512_dpbf16_ps(acc_r[1], av, b1);
        }
    }
    for (row, acc_r) in tile.iter_mut().zip(&acc) {
        // SAFETY: each row of `tile` holds 32 f32.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), acc_r[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), acc_r[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: &[u32], _: &[u32], _: usize, _: &mut Tile) {
    unreachable!("gemm_bf16::available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<bf16> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
            })
            .collect()
    }

    /// Every shape edge (tails of MR, NR and KC, odd k), both transposes,
    /// a column-major c, threaded and not, against an f64 reference.
    #[test]
    fn matches_f64_reference() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        for (m, n, k) in [
            (1, 1, 1),
            (7, 33, 5),
            (17, 65, 1027),
            (64, 32, 512),
            (3, 100, 2),
        ] {
            for (trans_a, trans_b, col_major_c, parallel) in [
                (false, false, false, false),
                (true, false, false, true),
                (false, true, false, true),
                (true, true, true, false),
            ] {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let (lhs_cs, lhs_rs) = if trans_a { (m, 1) } else { (1, k) };
                let (rhs_cs, rhs_rs) = if trans_b { (k, 1) } else { (1, n) };
                let (dst_cs, dst_rs) = if col_major_c { (m, 1) } else { (1, n) };
                let st = Strides {
                    lhs_cs: lhs_cs as isize,
                    lhs_rs: lhs_rs as isize,
                    rhs_cs: rhs_cs as isize,
                    rhs_rs: rhs_rs as isize,
                    dst_cs: dst_cs as isize,
                    dst_rs: dst_rs as isize,
                };
                let mut c = vec![f32::NAN; m * n];
                assert!(gemm(m, n, k, &a, &b, &mut c, st, parallel));
                for i in 0..m {
                    for j in 0..n {
                        let (mut want, mut mag) = (0f64, 0f64);
                        for p in 0..k {
                            let x = f64::from(a[i * lhs_rs + p * lhs_cs].to_f32());
                            let y = f64::from(b[p * rhs_rs + j * rhs_cs].to_f32());
                            want += x * y;
                            mag += (x * y).abs();
                        }
                        let got = f64::from(c[i * dst_rs + j * dst_cs]);
                        assert!(
                            (got - want).abs() <= 1e-6 * mag + 1e-30,
                            "{m}x{n}x{k} {trans_a} {trans_b} {col_major_c}: c[{i}][{j}] = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn empty_k_writes_zeros() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let st = Strides {
            lhs_cs: 1,
            lhs_rs: 0,
            rhs_cs: 1,
            rhs_rs: 3,
            dst_cs: 1,
            dst_rs: 3,
        };
        let mut c = vec![f32::NAN; 6];
        assert!(gemm(2, 3, 0, &[], &[], &mut c, st, true));
        assert!(c.iter().all(|&v| v == 0.0));
    }
}
