//! Elementwise, memory and layout operations of the CUDA backend: checks
//! as the CPU backend's, then one launch of a kernel of
//! `elementwise.cu` or `layout.cu`.

use super::device::{BLOCK, CudaBackend, args, cuda_err};
use super::kernels::Kernel;
use super::layout::Strided;
use crate::backend::{BinaryOp, CompareOp, ElemType, Error, Result, RngKey, UnaryOp, View};
use crate::backend::{disjoint, same_len};
use cudarc::driver::result as drv;

/// A view's bytes as a u8 view.
pub(super) fn as_bytes(v: View) -> View {
    View {
        elem: ElemType::U8,
        len: v.bytes(),
        ..v
    }
}

impl CudaBackend {
    pub(super) fn write_bytes(&mut self, dst: View, data: &[u8]) -> Result<()> {
        same_len("write", dst.bytes(), data.len())?;
        let d = self.ptr("write", as_bytes(dst), ElemType::U8)?;
        if data.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `d` is a checked range of `data.len()` bytes of a live
        // buffer; from pageable memory the call returns once `data` has
        // been staged, so it may be dropped after.
        unsafe { drv::memcpy_htod_async(d, data, self.compute.cu_stream()) }
            .map_err(|e| cuda_err("write", e))
    }

    pub(super) fn read_bytes(&self, src: View, out: &mut [u8]) -> Result<()> {
        same_len("read", src.bytes(), out.len())?;
        let s = self.ptr("read", as_bytes(src), ElemType::U8)?;
        self.bind()?;
        if !out.is_empty() {
            // SAFETY: `s` is a checked range of `out.len()` bytes; into
            // pageable memory the copy completes before the call returns.
            unsafe { drv::memcpy_dtoh_async(out, s, self.compute.cu_stream()) }
                .map_err(|e| cuda_err("read", e))?;
        }
        self.compute
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))?;
        self.check_device_errors()
    }

    pub(super) fn copy_bytes(&mut self, src: View, dst: View) -> Result<()> {
        same_len("copy", src.bytes(), dst.bytes())?;
        disjoint("copy", &[dst], &[src])?;
        let s = self.ptr("copy", as_bytes(src), ElemType::U8)?;
        let d = self.ptr("copy", as_bytes(dst), ElemType::U8)?;
        if src.bytes() == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both checked ranges of live buffers, disjoint, same size.
        unsafe { drv::memcpy_dtod_async(d, s, src.bytes(), self.compute.cu_stream()) }
            .map_err(|e| cuda_err("copy", e))
    }

    pub(super) fn fill_view(&mut self, dst: View, value: f64) -> Result<()> {
        let y = self.any_ptr("fill", dst)?;
        let n = dst.len as u64;
        if n == 0 {
            return Ok(());
        }
        let grid = self.grid(n);
        let (k, bits32, bits64) = match dst.elem {
            ElemType::F32 => (Kernel::FillF32, (value as f32).to_bits(), 0),
            ElemType::I32 => (Kernel::FillF32, value as i32 as u32, 0),
            ElemType::I64 => (Kernel::FillI64, 0, value as i64 as u64),
            ElemType::U8 => (Kernel::FillU8, u32::from(value != 0.0), 0),
            ElemType::BF16 => (Kernel::FillU16, bf16_bits(value), 0),
            ElemType::F16 => (Kernel::FillU16, f16_bits(value), 0),
        };
        if k == Kernel::FillI64 {
            let mut p = args!(y, n, bits64);
            // SAFETY: `y` is a checked view of n i64 elements.
            unsafe { self.launch(k, grid, BLOCK, &mut p) }
        } else {
            let mut p = args!(y, n, bits32);
            // SAFETY: `y` is a checked view of n elements of the kernel's
            // width (u8 for fill_u8, u16 for fill_u16, 4 bytes for fill_f32).
            unsafe { self.launch(k, grid, BLOCK, &mut p) }
        }
    }

    pub(super) fn run_unary(&mut self, op: UnaryOp, x: View, y: View) -> Result<()> {
        same_len("unary", x.len, y.len)?;
        disjoint("unary", &[y], &[x])?;
        let xp = self.ptr("unary x", x, ElemType::F32)?;
        let yp = self.ptr("unary y", y, ElemType::F32)?;
        let n = x.len as u64;
        if n == 0 {
            return Ok(());
        }
        let mut p = args!(xp, yp, n);
        // SAFETY: x and y are checked, disjoint f32 views of n elements.
        unsafe { self.launch(Kernel::unary(op), self.grid(n), BLOCK, &mut p) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_binary(
        &mut self,
        op: BinaryOp,
        a: View,
        a_strides: &[usize],
        b: View,
        b_strides: &[usize],
        out: View,
        shape: &[usize],
    ) -> Result<()> {
        disjoint("binary", &[out], &[a, b])?;
        let ap = self.ptr("binary a", a, ElemType::F32)?;
        let bp = self.ptr("binary b", b, ElemType::F32)?;
        let op_ = self.ptr("binary out", out, ElemType::F32)?;
        let (s, n) = Strided::broadcast(
            "binary",
            shape,
            [a_strides, b_strides],
            [a.len, b.len],
            out.len,
        )?;
        if n == 0 {
            return Ok(());
        }
        let k = match op {
            BinaryOp::Add => Kernel::AddF32,
            BinaryOp::Sub => Kernel::SubF32,
            BinaryOp::Mul => Kernel::MulF32,
            BinaryOp::Div => Kernel::DivF32,
            BinaryOp::Pow => Kernel::PowF32,
        };
        let n = n as u64;
        let mut p = args!(ap, bp, op_, n, s);
        // SAFETY: `Strided::broadcast` proved every offset it yields lies
        // inside a and b; out is a checked contiguous view of n elements,
        // disjoint from both.
        unsafe { self.launch(k, self.grid(n), BLOCK, &mut p) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_compare(
        &mut self,
        op: CompareOp,
        a: View,
        a_strides: &[usize],
        b: View,
        b_strides: &[usize],
        out: View,
        shape: &[usize],
    ) -> Result<()> {
        disjoint("compare", &[out], &[a, b])?;
        let ap = self.ptr("compare a", a, a.elem)?;
        let bp = self.ptr("compare b", b, a.elem)?;
        let op_ = self.ptr("compare out", out, ElemType::U8)?;
        let (s, n) = Strided::broadcast(
            "compare",
            shape,
            [a_strides, b_strides],
            [a.len, b.len],
            out.len,
        )?;
        if n == 0 {
            return Ok(());
        }
        let k = Kernel::compare(op == CompareOp::Greater, a.elem).ok_or_else(|| {
            Error::Invalid(format!("compare of {:?} on CUDA: widen first", a.elem))
        })?;
        let n = n as u64;
        let mut p = args!(ap, bp, op_, n, s);
        // SAFETY: as for `binary`: offsets proved inside a and b (both of
        // a's element type), out a checked disjoint u8 view of n elements.
        unsafe { self.launch(k, self.grid(n), BLOCK, &mut p) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_select(
        &mut self,
        cond: View,
        cond_strides: &[usize],
        a: View,
        a_strides: &[usize],
        b: View,
        b_strides: &[usize],
        out: View,
        shape: &[usize],
    ) -> Result<()> {
        disjoint("select", &[out], &[cond, a, b])?;
        let cp = self.ptr("select cond", cond, ElemType::U8)?;
        let ap = self.ptr("select a", a, ElemType::F32)?;
        let bp = self.ptr("select b", b, ElemType::F32)?;
        let op_ = self.ptr("select out", out, ElemType::F32)?;
        let (s, n) = Strided::broadcast(
            "select",
            shape,
            [cond_strides, a_strides, b_strides],
            [cond.len, a.len, b.len],
            out.len,
        )?;
        if n == 0 {
            return Ok(());
        }
        let n = n as u64;
        let mut p = args!(cp, ap, bp, op_, n, s);
        // SAFETY: offsets proved inside cond, a and b; out a checked
        // disjoint f32 view of n elements.
        unsafe { self.launch(Kernel::SelectF32, self.grid(n), BLOCK, &mut p) }
    }

    pub(super) fn run_cast(&mut self, x: View, y: View) -> Result<()> {
        same_len("cast", x.len, y.len)?;
        disjoint("cast", &[y], &[x])?;
        let xp = self.any_ptr("cast x", x)?;
        let yp = self.any_ptr("cast y", y)?;
        let n = x.len as u64;
        if n == 0 {
            return Ok(());
        }
        let k = Kernel::cast(x.elem, y.elem).ok_or_else(|| {
            Error::Invalid(format!(
                "cast from {:?} to {:?} is not on CUDA yet (half types cast to and from f32)",
                x.elem, y.elem
            ))
        })?;
        let mut p = args!(xp, yp, n);
        // SAFETY: x and y are checked disjoint views of n elements of the
        // kernel's source and destination types.
        unsafe { self.launch(k, self.grid(n), BLOCK, &mut p) }
    }

    pub(super) fn run_gelu_grad(&mut self, tanh: bool, x: View, dy: View, dx: View) -> Result<()> {
        same_len("gelu_grad", x.len, dx.len)?;
        same_len("gelu_grad", dy.len, dx.len)?;
        disjoint("gelu_grad", &[dx], &[x, dy])?;
        let xp = self.ptr("gelu_grad x", x, ElemType::F32)?;
        let dyp = self.ptr("gelu_grad dy", dy, ElemType::F32)?;
        let dxp = self.ptr("gelu_grad dx", dx, ElemType::F32)?;
        let n = x.len as u64;
        if n == 0 {
            return Ok(());
        }
        let k = if tanh {
            Kernel::GeluTanhGradF32
        } else {
            Kernel::GeluErfGradF32
        };
        let mut p = args!(xp, dyp, dxp, n);
        // SAFETY: three checked f32 views of n elements, dx disjoint.
        unsafe { self.launch(k, self.grid(n), BLOCK, &mut p) }
    }

    pub(super) fn run_dropout(&mut self, x: View, y: View, prob: f32, key: RngKey) -> Result<()> {
        same_len("dropout", x.len, y.len)?;
        disjoint("dropout", &[y], &[x])?;
        let xp = self.ptr("dropout x", x, ElemType::F32)?;
        let yp = self.ptr("dropout y", y, ElemType::F32)?;
        if prob == 0.0 {
            return self.copy_bytes(x, y);
        }
        let n = x.len as u64;
        if n == 0 {
            return Ok(());
        }
        // uniform(e) = (bits >> 8) / 2^24 >= p  <=>  bits >> 8 >= ceil(p 2^24).
        let threshold: u32 = if prob.is_nan() {
            1 << 24
        } else {
            (f64::from(prob) * 16_777_216.0)
                .ceil()
                .clamp(0.0, 16_777_216.0) as u32
        };
        let scale = 1.0 / (1.0 - f64::from(prob));
        let (seed, step, rank, site) = (key.seed, key.step, key.rank, key.site);
        let mut p = args!(xp, yp, n, threshold, scale, seed, step, rank, site);
        // SAFETY: checked disjoint f32 views of n elements.
        unsafe { self.launch(Kernel::DropoutF32, self.grid(n), BLOCK, &mut p) }
    }

    pub(super) fn run_causal_mask(
        &mut self,
        x: View,
        y: View,
        batch: usize,
        t: usize,
        fill: f32,
    ) -> Result<()> {
        same_len("causal_mask", batch * t * t, x.len)?;
        same_len("causal_mask", x.len, y.len)?;
        disjoint("causal_mask", &[y], &[x])?;
        let xp = self.ptr("causal_mask x", x, ElemType::F32)?;
        let yp = self.ptr("causal_mask y", y, ElemType::F32)?;
        let n = x.len as u64;
        if n == 0 {
            return Ok(());
        }
        let t = t as u64;
        let mut p = args!(xp, yp, n, t, fill);
        // SAFETY: checked disjoint f32 views of n = batch·t·t elements.
        unsafe { self.launch(Kernel::CausalMaskF32, self.grid(n), BLOCK, &mut p) }
    }

    pub(super) fn run_copy_strided(
        &mut self,
        src: View,
        src_strides: &[usize],
        dst: View,
        dst_strides: &[usize],
        shape: &[usize],
    ) -> Result<()> {
        disjoint("copy_strided", &[dst], &[src])?;
        if src.elem != dst.elem {
            return Err(Error::ElemType {
                what: "copy_strided dst",
                expected: src.elem,
                found: dst.elem,
            });
        }
        let sp = self.any_ptr("copy_strided src", src)?;
        let dp = self.any_ptr("copy_strided dst", dst)?;
        let (s, n) = Strided::copy(shape, src_strides, src.len, dst_strides, dst.len)?;
        if n == 0 {
            return Ok(());
        }
        let n = n as u64;
        let mut p = args!(sp, dp, n, s);
        // SAFETY: `Strided::copy` proved every source and destination
        // offset inside its view; the views are disjoint and of the
        // kernel's element width.
        unsafe { self.launch(Kernel::copy_strided(src.elem), self.grid(n), BLOCK, &mut p) }
    }
}

/// The bf16 bit pattern of `value` (rounded to nearest even), for `fill_u16`.
fn bf16_bits(value: f64) -> u32 {
    u32::from(half::bf16::from_f64(value).to_bits())
}

/// The f16 bit pattern of `value`, for `fill_u16`.
fn f16_bits(value: f64) -> u32 {
    u32::from(half::f16::from_f64(value).to_bits())
}
