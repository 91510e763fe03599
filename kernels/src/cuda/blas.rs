//! Matrix products on the CUDA backend through cuBLAS: batched matmul
//! (strided-batched SGEMM, or for bf16/f16 operands strided-batched
//! GemmEx computing in f32) and the MoE grouped matmuls (one SGEMM per
//! non-empty expert group).
//!
//! cuBLAS is column-major. A row-major `[r, c]` matrix read column-major
//! is its `[c, r]` transpose, so the row-major `C = op(A)·op(B)` is the
//! column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`: one call with the operands swapped
//! and `m`/`n` exchanged (DEPENDENCIES.md pitfall 4). TF32 is off unless
//! [`CudaBackend::set_tf32`] turns it on.

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::result as drv;

use super::device::{CudaBackend, cuda_err};
use crate::backend::{ElemType, Error, GroupedMatMulDims, MatMulDims, Result, View};
use crate::backend::{disjoint, same_len};

/// Most batch axes a matmul may have (as the CPU's).
const MAX_RANK: usize = 8;

/// One row-major GEMM shape: `c [m, n] = op(a) · op(b)`.
#[derive(Debug, Clone, Copy)]
struct Gemm {
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
}

/// Element strides between batch entries of a, b and c.
#[derive(Debug, Clone, Copy)]
struct BatchStrides {
    a: u64,
    b: u64,
    c: u64,
}

fn int(what: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Invalid(format!(
            "matmul: {what} = {v} exceeds cuBLAS's 32-bit sizes"
        ))
    })
}

fn overflow(what: &str) -> Error {
    Error::Invalid(format!("matmul: {what} overflows usize"))
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

/// Batch axes with size-1 axes dropped and neighbours merged where all
/// three operands step through them evenly: `(size, [sa, sb, sc])`.
fn simplify(dims: &MatMulDims<'_>) -> ([(usize, [usize; 3]); MAX_RANK], usize) {
    let mut axes = [(1usize, [0usize; 3]); MAX_RANK];
    let mut r = 0;
    for (i, &d) in dims.batch.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let s = [
            dims.a_batch_strides[i],
            dims.b_batch_strides[i],
            dims.c_batch_strides[i],
        ];
        if r > 0 && (0..3).all(|k| s[k].checked_mul(d) == Some(axes[r - 1].1[k])) {
            axes[r - 1].0 *= d;
            axes[r - 1].1 = s;
        } else {
            axes[r] = (d, s);
            r += 1;
        }
    }
    (axes, r)
}

impl CudaBackend {
    /// As [`CudaBackend::sgemm`] for operands of `elem`: f32 through
    /// SGEMM, bf16 and f16 through GemmEx with f32 accumulation (one
    /// rounding of each result).
    fn gemm(
        &self,
        elem: ElemType,
        g: Gemm,
        [a, b, c]: [u64; 3],
        st: BatchStrides,
        batch: usize,
    ) -> Result<()> {
        use blas_sys::cudaDataType::{CUDA_R_16BF, CUDA_R_16F};
        let ty = match elem {
            ElemType::BF16 => CUDA_R_16BF,
            ElemType::F16 => CUDA_R_16F,
            _ => return self.sgemm(g, [a, b, c], st, batch),
        };
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (m, n, k) = (int("m", g.m)?, int("n", g.n)?, int("k", g.k)?);
        let lda = if g.trans_b { k } else { n };
        let ldb = if g.trans_a { m } else { k };
        let (alpha, beta) = (1.0f32, 0.0f32);
        self.bind()?;
        // SAFETY: as for `sgemm`, with every operand of `elem` (2-byte
        // elements, so the checked extents are in those); alpha and beta
        // are f32 host values, as CUBLAS_COMPUTE_32F requires.
        unsafe {
            blas::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(g.trans_b),
                op(g.trans_a),
                n,
                m,
                k,
                (&alpha as *const f32).cast(),
                b as usize as *const std::ffi::c_void,
                ty,
                lda,
                st.b as i64,
                a as usize as *const std::ffi::c_void,
                ty,
                ldb,
                st.a as i64,
                (&beta as *const f32).cast(),
                c as usize as *mut std::ffi::c_void,
                ty,
                n,
                st.c as i64,
                int("batch", batch)?,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| cuda_err("cublasGemmStridedBatchedEx", e))
    }

    /// `batch` row-major GEMMs, entry `i` of each operand `i·stride`
    /// elements after its base address.
    fn sgemm(&self, g: Gemm, [a, b, c]: [u64; 3], st: BatchStrides, batch: usize) -> Result<()> {
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (m, n, k) = (int("m", g.m)?, int("n", g.n)?, int("k", g.k)?);
        let lda = if g.trans_b { k } else { n };
        let ldb = if g.trans_a { m } else { k };
        let (alpha, beta) = (1.0f32, 0.0f32);
        self.bind()?;
        // SAFETY: the callers checked that every entry of every operand
        // lies inside a live buffer (a: m·k, b: k·n, c: m·n elements per
        // entry at the given strides) and that c is disjoint from a and b;
        // alpha and beta are host values alive for the call (host pointer
        // mode); the handle's stream is the compute stream.
        unsafe {
            blas::sgemm_strided_batched(
                *self.blas.handle(),
                op(g.trans_b),
                op(g.trans_a),
                n,
                m,
                k,
                &alpha,
                b as usize as *const f32,
                lda,
                st.b as i64,
                a as usize as *const f32,
                ldb,
                st.a as i64,
                &beta,
                c as usize as *mut f32,
                n,
                st.c as i64,
                int("batch", batch)?,
            )
        }
        .map_err(|e| cuda_err("cublasSgemmStridedBatched", e))
    }

    /// Zeroes `bytes` bytes at `ptr` (a checked range) on the compute stream.
    fn zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller checked the range lies in a live buffer.
        unsafe { drv::memset_d8_async(ptr, 0, bytes, self.compute.cu_stream()) }
            .map_err(|e| cuda_err("memset", e))
    }

    pub(super) fn run_matmul(
        &mut self,
        a: View,
        b: View,
        c: View,
        dims: &MatMulDims<'_>,
    ) -> Result<()> {
        disjoint("matmul", &[c], &[a, b])?;
        // f32, or one half type for all three (mixed operands are widened
        // before they get here).
        let elem = if a.elem.is_half() {
            a.elem
        } else {
            ElemType::F32
        };
        let ap = self.ptr("matmul a", a, elem)?;
        let bp = self.ptr("matmul b", b, elem)?;
        let cp = self.ptr("matmul c", c, elem)?;
        let rank = dims.batch.len();
        if rank > MAX_RANK {
            return Err(Error::Invalid(format!(
                "matmul: {rank} batch axes, at most {MAX_RANK} supported"
            )));
        }
        let (m, n, k) = (dims.m, dims.n, dims.k);
        let operands = [
            ("matmul a", dims.a_batch_strides, m.checked_mul(k), a.len),
            ("matmul b", dims.b_batch_strides, k.checked_mul(n), b.len),
            ("matmul c", dims.c_batch_strides, m.checked_mul(n), c.len),
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
        let count = dims
            .batch
            .iter()
            .try_fold(1usize, |p, &x| p.checked_mul(x))
            .ok_or_else(|| overflow("matmul batch"))?;
        if count == 0 || entries[2] == 0 {
            return Ok(());
        }
        for (&entry, &(what, strides, _, len)) in entries.iter().zip(&operands) {
            check_extent(what, dims.batch, strides, entry, len)?;
        }
        let [a_entry, _, c_entry] = entries;
        let (axes, r) = simplify(dims);
        let g = Gemm {
            trans_a: dims.trans_a,
            trans_b: dims.trans_b,
            m,
            n,
            k,
        };
        if k == 0 {
            return self.for_each_entry(elem.size(), &axes[..r], [ap, bp, cp], |_, [_, _, c]| {
                self.zero(c, c_entry * elem.size())
            });
        }
        let b_broadcasts = axes[..r].iter().all(|&(_, s)| s[1] == 0);
        let contiguous = |k: usize, entry: usize| r == 0 || (r == 1 && axes[0].1[k] == entry);
        if !dims.trans_a && b_broadcasts && contiguous(0, a_entry) && contiguous(2, c_entry) {
            // One [count·m, k]·[k, n] GEMM: the x·W of every linear layer.
            let folded = Gemm { m: count * m, ..g };
            let st = BatchStrides { a: 0, b: 0, c: 0 };
            return self.gemm(elem, folded, [ap, bp, cp], st, 1);
        }
        if r == 0 {
            let st = BatchStrides { a: 0, b: 0, c: 0 };
            return self.gemm(elem, g, [ap, bp, cp], st, 1);
        }
        // The innermost batch axis is one strided-batched call; the outer
        // axes loop on the host.
        let (inner, s) = axes[r - 1];
        let st = BatchStrides {
            a: s[0] as u64,
            b: s[1] as u64,
            c: s[2] as u64,
        };
        self.for_each_entry(elem.size(), &axes[..r - 1], [ap, bp, cp], |_, ptrs| {
            self.gemm(elem, g, ptrs, st, inner)
        })
    }

    /// Calls `f(i, [a, b, c])` with the device addresses of every entry of
    /// the batch `axes` (row-major order, strides in elements of
    /// `elem_bytes` bytes), starting from `base`.
    fn for_each_entry(
        &self,
        elem_bytes: usize,
        axes: &[(usize, [usize; 3])],
        base: [u64; 3],
        mut f: impl FnMut(usize, [u64; 3]) -> Result<()>,
    ) -> Result<()> {
        let count: usize = axes.iter().map(|a| a.0).product();
        let mut idx = [0usize; MAX_RANK];
        for i in 0..count {
            let mut ptrs = base;
            for (d, &(_, s)) in axes.iter().enumerate() {
                for (p, &s) in ptrs.iter_mut().zip(&s) {
                    *p += (idx[d] * s * elem_bytes) as u64;
                }
            }
            f(i, ptrs)?;
            for d in (0..axes.len()).rev() {
                idx[d] += 1;
                if idx[d] < axes[d].0 {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(())
    }

    /// Reads `offsets` (experts + 1 indices) to the host and checks them as
    /// the CPU does.
    fn read_offsets(
        &self,
        what: &'static str,
        offsets: View,
        experts: usize,
        rows: usize,
    ) -> Result<Vec<i64>> {
        let (op, wide) = self.index_ptr(what, offsets)?;
        same_len(what, experts + 1, offsets.len)?;
        let mut bytes = vec![0u8; offsets.bytes()];
        self.bind()?;
        // SAFETY: `op` is a checked view of `bytes.len()` bytes; into
        // pageable memory the copy completes before the call returns.
        unsafe { drv::memcpy_dtoh_async(&mut bytes, op, self.compute.cu_stream()) }
            .map_err(|e| cuda_err("read offsets", e))?;
        self.compute
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))?;
        let o: Vec<i64> = if wide == 1 {
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect()
        } else {
            bytes
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
                .collect()
        };
        if o[0] != 0 {
            return Err(Error::Invalid(format!(
                "{what}: offsets[0] is {}, expected 0",
                o[0]
            )));
        }
        for (e, pair) in o.windows(2).enumerate() {
            if pair[1] < pair[0] {
                return Err(Error::Invalid(format!(
                    "{what}: offsets[{}] = {} is below offsets[{e}] = {} (offsets must not decrease)",
                    e + 1,
                    pair[1],
                    pair[0]
                )));
            }
        }
        if o[experts] as u64 > rows as u64 {
            return Err(Error::Invalid(format!(
                "{what}: offsets[{experts}] = {} exceeds the {rows} rows",
                o[experts]
            )));
        }
        Ok(o)
    }

    pub(super) fn run_grouped_matmul(
        &mut self,
        [x, w, offsets]: [View; 3],
        y: View,
        dims: &GroupedMatMulDims,
    ) -> Result<()> {
        disjoint("grouped_matmul", &[y], &[x, w, offsets])?;
        let xp = self.ptr("grouped_matmul x", x, ElemType::F32)?;
        let wp = self.ptr("grouped_matmul w", w, ElemType::F32)?;
        let yp = self.ptr("grouped_matmul y", y, ElemType::F32)?;
        let GroupedMatMulDims {
            experts,
            rows,
            d,
            h,
            transpose,
        } = *dims;
        let mul = |a: usize, b: usize| {
            a.checked_mul(b)
                .ok_or_else(|| Error::Invalid("grouped_matmul: size overflows usize".into()))
        };
        same_len("grouped_matmul x", mul(rows, d)?, x.len)?;
        same_len("grouped_matmul w", mul(experts, mul(d, h)?)?, w.len)?;
        same_len("grouped_matmul y", mul(rows, h)?, y.len)?;
        let o = self.read_offsets("grouped_matmul offsets", offsets, experts, rows)?;
        let kept = o[experts] as usize;
        self.zero(yp + (kept * h * 4) as u64, (rows - kept) * h * 4)?;
        if d == 0 {
            return self.zero(yp, kept * h * 4);
        }
        if kept == 0 || h == 0 {
            return Ok(());
        }
        let st = BatchStrides { a: 0, b: 0, c: 0 };
        for e in 0..experts {
            let (a, b) = (o[e] as usize, o[e + 1] as usize);
            if a == b {
                continue;
            }
            let g = Gemm {
                trans_a: false,
                trans_b: transpose,
                m: b - a,
                n: h,
                k: d,
            };
            let ptrs = [
                xp + (a * d * 4) as u64,
                wp + (e * d * h * 4) as u64,
                yp + (a * h * 4) as u64,
            ];
            self.sgemm(g, ptrs, st, 1)?;
        }
        Ok(())
    }

    pub(super) fn run_grouped_matmul_grad_w(
        &mut self,
        [x, dy, offsets]: [View; 3],
        dw: View,
        dims: &GroupedMatMulDims,
    ) -> Result<()> {
        disjoint("grouped_matmul_grad_w", &[dw], &[x, dy, offsets])?;
        let xp = self.ptr("grouped_matmul_grad_w x", x, ElemType::F32)?;
        let dyp = self.ptr("grouped_matmul_grad_w dy", dy, ElemType::F32)?;
        let dwp = self.ptr("grouped_matmul_grad_w dw", dw, ElemType::F32)?;
        let GroupedMatMulDims {
            experts,
            rows,
            d,
            h,
            transpose,
        } = *dims;
        let mul = |a: usize, b: usize| {
            a.checked_mul(b)
                .ok_or_else(|| Error::Invalid("grouped_matmul_grad_w: size overflows usize".into()))
        };
        let entry = mul(d, h)?;
        same_len("grouped_matmul_grad_w x", mul(rows, d)?, x.len)?;
        same_len("grouped_matmul_grad_w dy", mul(rows, h)?, dy.len)?;
        same_len("grouped_matmul_grad_w dw", mul(experts, entry)?, dw.len)?;
        let o = self.read_offsets("grouped_matmul_grad_w offsets", offsets, experts, rows)?;
        if entry == 0 {
            return Ok(());
        }
        let st = BatchStrides { a: 0, b: 0, c: 0 };
        for e in 0..experts {
            let (a, b) = (o[e] as usize, o[e + 1] as usize);
            let dw_e = dwp + (e * entry * 4) as u64;
            if a == b {
                self.zero(dw_e, entry * 4)?;
                continue;
            }
            let (x_e, dy_e) = (xp + (a * d * 4) as u64, dyp + (a * h * 4) as u64);
            // dw_e = x_eᵀ·dy_e ([d, h]), or transposed dy_eᵀ·x_e ([h, d]).
            let (g, ptrs) = if transpose {
                (
                    Gemm {
                        trans_a: true,
                        trans_b: false,
                        m: h,
                        n: d,
                        k: b - a,
                    },
                    [dy_e, x_e, dw_e],
                )
            } else {
                (
                    Gemm {
                        trans_a: true,
                        trans_b: false,
                        m: d,
                        n: h,
                        k: b - a,
                    },
                    [x_e, dy_e, dw_e],
                )
            };
            self.sgemm(g, ptrs, st, 1)?;
        }
        Ok(())
    }
}
