//! The CPU backend: f32 kernels over aligned host buffers.
//!
//! [`CpuBackend`] owns the buffers and checks every view (bounds, type,
//! alignment, outputs disjoint from inputs) before handing plain slices to
//! the kernels, which live one family per file and know nothing of views.
//! Large kernels split their work over rayon's pool (one pool for the
//! process, nothing spawned per op); GEMM goes through the `gemm` crate.

#[macro_use]
mod widest;

mod conv;
mod elementwise;
mod fused;
pub mod gemm_bf16;
mod grouped;
mod index;
mod layout;
mod loss;
mod matmul;
mod memory;
mod moe;
mod nn;
mod optim;
mod reduce;

use memory::{Buffer, Elem, check, slice, slice_mut};

use crate::backend::*;

/// Elements below which a kernel stays on one thread.
pub const PARALLEL_THRESHOLD: usize = 1 << 15;

/// The CPU backend.
#[derive(Debug, Default)]
pub struct CpuBackend {
    buffers: Vec<Buffer>,
    events: u64,
    /// im2col's column matrices (see `conv.rs`) and transposed right
    /// operands of matmuls (see `matmul.rs`), grown to the largest run so
    /// far, so steps after the first allocate nothing.
    scratch: Vec<f32>,
    /// f32 copies of half operands (see [`crate::widen`]).
    half: crate::widen::HalfScratch,
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }

    /// Sizes rayon's global pool (the one pool every kernel uses). Only the
    /// first call in a process takes effect.
    pub fn set_threads(threads: usize) {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build_global();
    }

    /// Threads kernels run on.
    pub fn threads() -> usize {
        rayon::current_num_threads()
    }

    fn buf(&self, what: &'static str, v: View) -> Result<&Buffer> {
        self.buffers
            .get(v.buffer.0 as usize)
            .ok_or(Error::OutOfBounds {
                what,
                buffer: v.buffer.0,
                offset: v.offset,
                len: v.bytes(),
                buffer_len: 0,
            })
    }

    /// [`crate::widen::widened`] over this backend's half scratch.
    fn widened<const N: usize>(
        &mut self,
        what: &'static str,
        views: [View; N],
        written: [bool; N],
        f: impl FnOnce(&mut CpuBackend, [View; N]) -> Result<()>,
    ) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.half);
        let out = crate::widen::widened(self, &mut scratch, what, views, written, f);
        self.half = scratch;
        out
    }

    /// A checked input slice.
    fn r<T: Elem>(&self, what: &'static str, v: View) -> Result<&[T]> {
        let buf = self.buf(what, v)?;
        check::<T>(what, buf, v)?;
        // SAFETY: checked above; every method that hands out a mutable slice
        // first proves it disjoint from this call's other views (`disjoint`).
        Ok(unsafe { slice(buf, v) })
    }

    /// A checked output slice; call [`disjoint`] for the call's views first.
    #[allow(clippy::mut_from_ref)]
    fn w<T: Elem>(&self, what: &'static str, v: View) -> Result<&mut [T]> {
        let buf = self.buf(what, v)?;
        check::<T>(what, buf, v)?;
        // SAFETY: checked above; `disjoint` proved no other view of this call
        // overlaps `v`, so this is the only live slice of these bytes.
        Ok(unsafe { slice_mut(buf, v) })
    }
}

/// Runs `$body` with `$t` bound to the Rust type of element type `$elem`.
macro_rules! with_elem {
    ($elem:expr, $t:ident => $body:expr) => {
        match $elem {
            ElemType::F32 => {
                type $t = f32;
                $body
            }
            ElemType::BF16 => {
                type $t = ::half::bf16;
                $body
            }
            ElemType::F16 => {
                type $t = ::half::f16;
                $body
            }
            ElemType::I32 => {
                type $t = i32;
                $body
            }
            ElemType::I64 => {
                type $t = i64;
                $body
            }
            ElemType::U8 => {
                type $t = u8;
                $body
            }
        }
    };
}

/// Runs `$body` with `$idx` bound to the index view `$view` read as i32 or
/// i64 slices (every other element type reads as i64 and fails there).
macro_rules! with_index {
    ($self:ident, $what:expr, $view:expr, $idx:ident => $body:expr) => {
        match $view.elem {
            ElemType::I32 => {
                let $idx = $self.r::<i32>($what, $view)?;
                $body
            }
            _ => {
                let $idx = $self.r::<i64>($what, $view)?;
                $body
            }
        }
    };
}

use crate::backend::{disjoint, same_len};

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", CpuBackend::threads())
    }

    fn in_context<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        if rayon::current_thread_index().is_some() {
            return f();
        }
        rayon::scope(|_| f())
    }

    fn alloc(&mut self, bytes: usize) -> Result<BufferId> {
        self.buffers.push(Buffer::new(bytes)?);
        Ok(BufferId(self.buffers.len() as u32 - 1))
    }

    fn buffer_bytes(&self, buffer: BufferId) -> usize {
        self.buffers.get(buffer.0 as usize).map_or(0, Buffer::bytes)
    }

    fn write(&mut self, dst: View, data: &[u8]) -> Result<()> {
        same_len("write", dst.bytes(), data.len())?;
        let buf = self.buf("write", dst)?;
        check::<u8>(
            "write",
            buf,
            View {
                elem: ElemType::U8,
                len: dst.bytes(),
                ..dst
            },
        )?;
        // SAFETY: bounds checked; `data` is host memory, not in any buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr().add(dst.offset), data.len())
        };
        Ok(())
    }

    fn read(&self, src: View, out: &mut [u8]) -> Result<()> {
        same_len("read", src.bytes(), out.len())?;
        let bytes = View {
            elem: ElemType::U8,
            len: src.bytes(),
            ..src
        };
        out.copy_from_slice(self.r::<u8>("read", bytes)?);
        Ok(())
    }

    fn copy(&mut self, src: View, dst: View) -> Result<()> {
        same_len("copy", src.bytes(), dst.bytes())?;
        disjoint("copy", &[dst], &[src])?;
        let as_bytes = |v: View| View {
            elem: ElemType::U8,
            len: v.bytes(),
            ..v
        };
        let s = self.r::<u8>("copy", as_bytes(src))?;
        let d = self.w::<u8>("copy", as_bytes(dst))?;
        d.copy_from_slice(s);
        Ok(())
    }

    fn fill(&mut self, dst: View, value: f64) -> Result<()> {
        match dst.elem {
            ElemType::F32 => self.w::<f32>("fill", dst)?.fill(value as f32),
            ElemType::BF16 => self
                .w::<::half::bf16>("fill", dst)?
                .fill(::half::bf16::from_f64(value)),
            ElemType::F16 => self
                .w::<::half::f16>("fill", dst)?
                .fill(::half::f16::from_f64(value)),
            ElemType::I32 => self.w::<i32>("fill", dst)?.fill(value as i32),
            ElemType::I64 => self.w::<i64>("fill", dst)?.fill(value as i64),
            ElemType::U8 => self.w::<u8>("fill", dst)?.fill(u8::from(value != 0.0)),
        }
        Ok(())
    }

    fn record_event(&mut self, _stream: Stream) -> Event {
        self.events += 1;
        Event(self.events)
    }

    fn wait_event(&mut self, _stream: Stream, _event: Event) {}

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }

    fn unary(&mut self, op: UnaryOp, x: View, y: View) -> Result<()> {
        if crate::widen::any_half(&[x, y]) {
            return self.widened("unary", [x, y], [false, true], |b, [x, y]| {
                b.unary(op, x, y)
            });
        }
        same_len("unary", x.len, y.len)?;
        disjoint("unary", &[y], &[x])?;
        elementwise::unary(op, self.r("unary x", x)?, self.w("unary y", y)?);
        Ok(())
    }

    fn binary(
        &mut self,
        op: BinaryOp,
        a: View,
        a_strides: &[usize],
        b: View,
        b_strides: &[usize],
        out: View,
        shape: &[usize],
    ) -> Result<()> {
        if crate::widen::any_half(&[a, b, out]) {
            return self.widened(
                "binary",
                [a, b, out],
                [false, false, true],
                |b_, [a, b, out]| b_.binary(op, a, a_strides, b, b_strides, out, shape),
            );
        }
        disjoint("binary", &[out], &[a, b])?;
        let (a, b, out) = (
            self.r("binary a", a)?,
            self.r("binary b", b)?,
            self.w("binary out", out)?,
        );
        elementwise::binary(op, a, a_strides, b, b_strides, out, shape)
    }

    fn compare(
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
        with_elem!(a.elem, T => {
            let (a, b) = (self.r::<T>("compare a", a)?, self.r::<T>("compare b", b)?);
            elementwise::compare(op, a, a_strides, b, b_strides, self.w("compare out", out)?, shape)
        })
    }

    fn select(
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
        if crate::widen::any_half(&[cond, a, b, out]) {
            return self.widened(
                "select",
                [cond, a, b, out],
                [false, false, false, true],
                |b_, [cond, a, b, out]| {
                    b_.select(cond, cond_strides, a, a_strides, b, b_strides, out, shape)
                },
            );
        }
        disjoint("select", &[out], &[cond, a, b])?;
        let cond = self.r::<u8>("select cond", cond)?;
        let (a, b, out) = (
            self.r("select a", a)?,
            self.r("select b", b)?,
            self.w("select out", out)?,
        );
        elementwise::select(cond, cond_strides, a, a_strides, b, b_strides, out, shape)
    }

    fn cast(&mut self, x: View, y: View) -> Result<()> {
        same_len("cast", x.len, y.len)?;
        disjoint("cast", &[y], &[x])?;
        with_elem!(x.elem, S => {
            let src = self.r::<S>("cast x", x)?;
            with_elem!(y.elem, D => elementwise::cast(src, self.w::<D>("cast y", y)?))
        });
        Ok(())
    }

    fn gelu_grad(&mut self, tanh: bool, x: View, dy: View, dx: View) -> Result<()> {
        if crate::widen::any_half(&[x, dy, dx]) {
            return self.widened(
                "gelu_grad",
                [x, dy, dx],
                [false, false, true],
                |b, [x, dy, dx]| b.gelu_grad(tanh, x, dy, dx),
            );
        }
        same_len("gelu_grad", x.len, dx.len)?;
        same_len("gelu_grad", dy.len, dx.len)?;
        disjoint("gelu_grad", &[dx], &[x, dy])?;
        elementwise::gelu_grad(
            tanh,
            self.r("gelu_grad x", x)?,
            self.r("gelu_grad dy", dy)?,
            self.w("gelu_grad dx", dx)?,
        );
        Ok(())
    }

    fn dropout(&mut self, x: View, y: View, p: f32, key: RngKey) -> Result<()> {
        if crate::widen::any_half(&[x, y]) {
            return self.widened("dropout", [x, y], [false, true], |b, [x, y]| {
                b.dropout(x, y, p, key)
            });
        }
        same_len("dropout", x.len, y.len)?;
        disjoint("dropout", &[y], &[x])?;
        elementwise::dropout(self.r("dropout x", x)?, self.w("dropout y", y)?, p, key);
        Ok(())
    }

    fn causal_mask(&mut self, x: View, y: View, batch: usize, t: usize, fill: f32) -> Result<()> {
        if crate::widen::any_half(&[x, y]) {
            return self.widened("causal_mask", [x, y], [false, true], |b, [x, y]| {
                b.causal_mask(x, y, batch, t, fill)
            });
        }
        same_len("causal_mask", batch * t * t, x.len)?;
        same_len("causal_mask", x.len, y.len)?;
        disjoint("causal_mask", &[y], &[x])?;
        elementwise::causal_mask(
            self.r("causal_mask x", x)?,
            self.w("causal_mask y", y)?,
            t,
            fill,
        );
        Ok(())
    }

    fn copy_strided(
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
        with_elem!(src.elem, T => {
            let s = self.r::<T>("copy_strided src", src)?;
            layout::copy_strided(s, src_strides, self.w::<T>("copy_strided dst", dst)?, dst_strides, shape)
        })
    }

    fn reduce(
        &mut self,
        op: ReduceOp,
        x: View,
        shape: &[usize],
        axes: &[bool],
        y: View,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, y]) {
            return self.widened("reduce", [x, y], [false, true], |b, [x, y]| {
                b.reduce(op, x, shape, axes, y)
            });
        }
        disjoint("reduce", &[y], &[x])?;
        reduce::reduce(
            op,
            self.r("reduce x", x)?,
            shape,
            axes,
            self.w("reduce y", y)?,
        )
    }

    fn matmul(&mut self, a: View, b: View, c: View, dims: &MatMulDims<'_>) -> Result<()> {
        // bf16 operands are read as they are where the CPU has AVX512_BF16
        // (f32 accumulation); only a half result is then widened.
        let native_bf16 =
            a.elem == ElemType::BF16 && b.elem == ElemType::BF16 && gemm_bf16::available();
        if native_bf16 && c.elem.is_half() {
            return self.widened("matmul", [c], [true], |b_, [c]| b_.matmul(a, b, c, dims));
        }
        if !native_bf16 && crate::widen::any_half(&[a, b, c]) {
            return self.widened(
                "matmul",
                [a, b, c],
                [false, false, true],
                |b_, [a, b, c]| b_.matmul(a, b, c, dims),
            );
        }
        disjoint("matmul", &[c], &[a, b])?;
        if native_bf16 {
            let c_out = self.w("matmul c", c)?;
            let (a, b) = (self.r("matmul a", a)?, self.r("matmul b", b)?);
            matmul::matmul::<half::bf16>(a, b, c_out, dims)
        } else {
            // The im2col scratch doubles as the transposed right operand.
            let mut scratch = std::mem::take(&mut self.scratch);
            let out = (|| {
                let c_out = self.w("matmul c", c)?;
                let (a, b) = (self.r("matmul a", a)?, self.r("matmul b", b)?);
                matmul::matmul_f32(a, b, c_out, dims, &mut scratch)
            })();
            self.scratch = scratch;
            out
        }
    }

    fn gather(
        &mut self,
        data: View,
        indices: View,
        out: View,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()> {
        if crate::widen::any_half(&[data, indices, out]) {
            return self.widened(
                "gather",
                [data, indices, out],
                [false, false, true],
                |b, [data, indices, out]| b.gather(data, indices, out, outer, axis, inner),
            );
        }
        disjoint("gather", &[out], &[data, indices])?;
        let (data, out) = (
            self.r::<f32>("gather data", data)?,
            self.w::<f32>("gather out", out)?,
        );
        with_index!(self, "gather indices", indices, idx => {
            index::gather(data, idx, out, outer, axis, inner)
        })
    }

    fn scatter_add(
        &mut self,
        updates: View,
        indices: View,
        out: View,
        outer: usize,
        size: usize,
        inner: usize,
    ) -> Result<()> {
        if crate::widen::any_half(&[updates, indices, out]) {
            return self.widened(
                "scatter_add",
                [updates, indices, out],
                [false, false, true],
                |b, [updates, indices, out]| {
                    b.scatter_add(updates, indices, out, outer, size, inner)
                },
            );
        }
        disjoint("scatter_add", &[out], &[updates, indices])?;
        let (updates, out) = (
            self.r::<f32>("scatter_add updates", updates)?,
            self.w::<f32>("scatter_add out", out)?,
        );
        with_index!(self, "scatter_add indices", indices, idx => {
            index::scatter_add(updates, idx, out, outer, size, inner)
        })
    }

    fn one_hot(&mut self, indices: View, out: View, depth: usize) -> Result<()> {
        if crate::widen::any_half(&[indices, out]) {
            return self.widened(
                "one_hot",
                [indices, out],
                [false, true],
                |b, [indices, out]| b.one_hot(indices, out, depth),
            );
        }
        disjoint("one_hot", &[out], &[indices])?;
        let out = self.w::<f32>("one_hot out", out)?;
        with_index!(self, "one_hot indices", indices, idx => index::one_hot(idx, out, depth))
    }

    fn softmax(
        &mut self,
        x: View,
        y: View,
        outer: usize,
        n: usize,
        inner: usize,
        log: bool,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, y]) {
            return self.widened("softmax", [x, y], [false, true], |b, [x, y]| {
                b.softmax(x, y, outer, n, inner, log)
            });
        }
        same_len("softmax", outer * n * inner, x.len)?;
        same_len("softmax", x.len, y.len)?;
        disjoint("softmax", &[y], &[x])?;
        nn::softmax(
            self.r("softmax x", x)?,
            self.w("softmax y", y)?,
            outer,
            n,
            inner,
            log,
        );
        Ok(())
    }

    fn layer_norm(
        &mut self,
        x: View,
        gamma: View,
        beta: View,
        y: View,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, gamma, beta, y]) {
            return self.widened(
                "layer_norm",
                [x, gamma, beta, y],
                [false, false, false, true],
                |b, [x, gamma, beta, y]| b.layer_norm(x, gamma, beta, y, rows, d, eps),
            );
        }
        same_len("layer_norm x", rows * d, x.len)?;
        same_len("layer_norm y", rows * d, y.len)?;
        same_len("layer_norm gamma", d, gamma.len)?;
        same_len("layer_norm beta", d, beta.len)?;
        disjoint("layer_norm", &[y], &[x, gamma, beta])?;
        let (xs, g, b) = (
            self.r("layer_norm x", x)?,
            self.r("layer_norm gamma", gamma)?,
            self.r("layer_norm beta", beta)?,
        );
        nn::layer_norm(xs, g, b, self.w("layer_norm y", y)?, rows, d, eps);
        Ok(())
    }

    fn layer_norm_grad(
        &mut self,
        x: View,
        gamma: View,
        dy: View,
        dx: View,
        dgamma: View,
        dbeta: View,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, gamma, dy, dx, dgamma, dbeta]) {
            return self.widened(
                "layer_norm_grad",
                [x, gamma, dy, dx, dgamma, dbeta],
                [false, false, false, true, true, true],
                |b, [x, gamma, dy, dx, dgamma, dbeta]| {
                    b.layer_norm_grad(x, gamma, dy, dx, dgamma, dbeta, rows, d, eps)
                },
            );
        }
        same_len("layer_norm_grad x", rows * d, x.len)?;
        same_len("layer_norm_grad dy", rows * d, dy.len)?;
        same_len("layer_norm_grad dx", rows * d, dx.len)?;
        same_len("layer_norm_grad gamma", d, gamma.len)?;
        same_len("layer_norm_grad dgamma", d, dgamma.len)?;
        same_len("layer_norm_grad dbeta", d, dbeta.len)?;
        disjoint("layer_norm_grad", &[dx, dgamma, dbeta], &[x, gamma, dy])?;
        let (xs, g, dys) = (
            self.r("layer_norm_grad x", x)?,
            self.r("layer_norm_grad gamma", gamma)?,
            self.r("layer_norm_grad dy", dy)?,
        );
        let (dxs, dg, db) = (
            self.w("layer_norm_grad dx", dx)?,
            self.w("layer_norm_grad dgamma", dgamma)?,
            self.w("layer_norm_grad dbeta", dbeta)?,
        );
        nn::layer_norm_grad(xs, g, dys, dxs, dg, db, rows, d, eps);
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        logits: View,
        labels: View,
        loss: View,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        if crate::widen::any_half(&[logits, labels, loss]) {
            return self.widened(
                "softmax_cross_entropy",
                [logits, labels, loss],
                [false, false, true],
                |b, [logits, labels, loss]| {
                    b.softmax_cross_entropy(logits, labels, loss, rows, classes)
                },
            );
        }
        same_len("softmax_cross_entropy logits", rows * classes, logits.len)?;
        same_len("softmax_cross_entropy labels", rows, labels.len)?;
        same_len("softmax_cross_entropy loss", 1, loss.len)?;
        disjoint("softmax_cross_entropy", &[loss], &[logits, labels])?;
        let (lg, out) = (
            self.r::<f32>("softmax_cross_entropy logits", logits)?,
            self.w::<f32>("softmax_cross_entropy loss", loss)?,
        );
        with_index!(self, "softmax_cross_entropy labels", labels, idx => {
            loss::softmax_cross_entropy(lg, idx, out, rows, classes)
        })
    }

    fn softmax_cross_entropy_grad(
        &mut self,
        logits: View,
        labels: View,
        dloss: View,
        dlogits: View,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        if crate::widen::any_half(&[logits, labels, dloss, dlogits]) {
            return self.widened(
                "softmax_cross_entropy_grad",
                [logits, labels, dloss, dlogits],
                [false, false, false, true],
                |b, [logits, labels, dloss, dlogits]| {
                    b.softmax_cross_entropy_grad(logits, labels, dloss, dlogits, rows, classes)
                },
            );
        }
        same_len(
            "softmax_cross_entropy_grad logits",
            rows * classes,
            logits.len,
        )?;
        same_len(
            "softmax_cross_entropy_grad dlogits",
            rows * classes,
            dlogits.len,
        )?;
        same_len("softmax_cross_entropy_grad labels", rows, labels.len)?;
        same_len("softmax_cross_entropy_grad dloss", 1, dloss.len)?;
        disjoint(
            "softmax_cross_entropy_grad",
            &[dlogits],
            &[logits, labels, dloss],
        )?;
        let lg = self.r::<f32>("softmax_cross_entropy_grad logits", logits)?;
        let dl = self.r::<f32>("softmax_cross_entropy_grad dloss", dloss)?[0];
        let out = self.w::<f32>("softmax_cross_entropy_grad dlogits", dlogits)?;
        with_index!(self, "labels", labels, idx => {
            loss::softmax_cross_entropy_grad(lg, idx, dl, out, rows, classes)
        })
    }

    fn mse(&mut self, pred: View, target: View, loss: View) -> Result<()> {
        if crate::widen::any_half(&[pred, target, loss]) {
            return self.widened(
                "mse",
                [pred, target, loss],
                [false, false, true],
                |b, [pred, target, loss]| b.mse(pred, target, loss),
            );
        }
        same_len("mse", pred.len, target.len)?;
        same_len("mse loss", 1, loss.len)?;
        disjoint("mse", &[loss], &[pred, target])?;
        let out = self.w::<f32>("mse loss", loss)?;
        out[0] = loss::mse(self.r("mse pred", pred)?, self.r("mse target", target)?);
        Ok(())
    }

    fn sgd(&mut self, param: View, grad: View, momentum: View, p: &SgdParams) -> Result<()> {
        if crate::widen::any_half(&[param, grad, momentum]) {
            return self.widened(
                "sgd",
                [param, grad, momentum],
                [true, false, true],
                |b, [param, grad, momentum]| b.sgd(param, grad, momentum, p),
            );
        }
        same_len("sgd grad", param.len, grad.len)?;
        if p.momentum != 0.0 {
            same_len("sgd momentum", param.len, momentum.len)?;
        }
        disjoint("sgd", &[param, momentum], &[grad])?;
        let (w, g) = (self.w("sgd param", param)?, self.r("sgd grad", grad)?);
        let buf = if p.momentum != 0.0 {
            self.w("sgd momentum", momentum)?
        } else {
            &mut [][..]
        };
        optim::sgd(w, g, buf, p);
        Ok(())
    }

    fn adamw(&mut self, param: View, grad: View, m: View, v: View, p: &AdamWParams) -> Result<()> {
        if crate::widen::any_half(&[param, grad, m, v]) {
            return self.widened(
                "adamw",
                [param, grad, m, v],
                [true, false, true, true],
                |b, [param, grad, m, v]| b.adamw(param, grad, m, v, p),
            );
        }
        same_len("adamw grad", param.len, grad.len)?;
        same_len("adamw m", param.len, m.len)?;
        same_len("adamw v", param.len, v.len)?;
        disjoint("adamw", &[param, m, v], &[grad])?;
        let (w, g) = (self.w("adamw param", param)?, self.r("adamw grad", grad)?);
        optim::adamw(w, g, self.w("adamw m", m)?, self.w("adamw v", v)?, p);
        Ok(())
    }

    fn conv2d(&mut self, x: View, w: View, y: View, dims: &Conv2dDims) -> Result<()> {
        if crate::widen::any_half(&[x, w, y]) {
            return self.widened("conv2d", [x, w, y], [false, false, true], |b, [x, w, y]| {
                b.conv2d(x, w, y, dims)
            });
        }
        disjoint("conv2d", &[y], &[x, w])?;
        let mut scratch = std::mem::take(&mut self.scratch);
        let (xs, ws) = (self.r("conv2d x", x)?, self.r("conv2d w", w)?);
        let out = conv::conv2d(xs, ws, self.w("conv2d y", y)?, dims, &mut scratch);
        self.scratch = scratch;
        out
    }

    fn conv2d_grad_input(&mut self, w: View, dy: View, dx: View, dims: &Conv2dDims) -> Result<()> {
        if crate::widen::any_half(&[w, dy, dx]) {
            return self.widened(
                "conv2d_grad_input",
                [w, dy, dx],
                [false, false, true],
                |b, [w, dy, dx]| b.conv2d_grad_input(w, dy, dx, dims),
            );
        }
        disjoint("conv2d_grad_input", &[dx], &[w, dy])?;
        let mut scratch = std::mem::take(&mut self.scratch);
        let ws = self.r("conv2d_grad_input w", w)?;
        let dys = self.r("conv2d_grad_input dy", dy)?;
        let dxs = self.w("conv2d_grad_input dx", dx)?;
        let out = conv::conv2d_grad_input(ws, dys, dxs, dims, &mut scratch);
        self.scratch = scratch;
        out
    }

    fn conv2d_grad_weight(&mut self, x: View, dy: View, dw: View, dims: &Conv2dDims) -> Result<()> {
        if crate::widen::any_half(&[x, dy, dw]) {
            return self.widened(
                "conv2d_grad_weight",
                [x, dy, dw],
                [false, false, true],
                |b, [x, dy, dw]| b.conv2d_grad_weight(x, dy, dw, dims),
            );
        }
        disjoint("conv2d_grad_weight", &[dw], &[x, dy])?;
        let mut scratch = std::mem::take(&mut self.scratch);
        let xs = self.r("conv2d_grad_weight x", x)?;
        let dys = self.r("conv2d_grad_weight dy", dy)?;
        let dws = self.w("conv2d_grad_weight dw", dw)?;
        let out = conv::conv2d_grad_weight(xs, dys, dws, dims, &mut scratch);
        self.scratch = scratch;
        out
    }

    fn max_pool2d(&mut self, x: View, y: View, dims: &Pool2dDims) -> Result<()> {
        if crate::widen::any_half(&[x, y]) {
            return self.widened("max_pool2d", [x, y], [false, true], |b, [x, y]| {
                b.max_pool2d(x, y, dims)
            });
        }
        disjoint("max_pool2d", &[y], &[x])?;
        conv::max_pool2d(self.r("max_pool2d x", x)?, self.w("max_pool2d y", y)?, dims)
    }

    fn max_pool2d_grad(&mut self, x: View, dy: View, dx: View, dims: &Pool2dDims) -> Result<()> {
        if crate::widen::any_half(&[x, dy, dx]) {
            return self.widened(
                "max_pool2d_grad",
                [x, dy, dx],
                [false, false, true],
                |b, [x, dy, dx]| b.max_pool2d_grad(x, dy, dx, dims),
            );
        }
        disjoint("max_pool2d_grad", &[dx], &[x, dy])?;
        let (xs, dys) = (
            self.r("max_pool2d_grad x", x)?,
            self.r("max_pool2d_grad dy", dy)?,
        );
        conv::max_pool2d_grad(xs, dys, self.w("max_pool2d_grad dx", dx)?, dims)
    }

    fn max_pool2d_select(&mut self, x: View, v: View, y: View, dims: &Pool2dDims) -> Result<()> {
        if crate::widen::any_half(&[x, v, y]) {
            return self.widened(
                "max_pool2d_select",
                [x, v, y],
                [false, false, true],
                |b, [x, v, y]| b.max_pool2d_select(x, v, y, dims),
            );
        }
        disjoint("max_pool2d_select", &[y], &[x, v])?;
        let (xs, vs) = (
            self.r("max_pool2d_select x", x)?,
            self.r("max_pool2d_select v", v)?,
        );
        conv::max_pool2d_select(xs, vs, self.w("max_pool2d_select y", y)?, dims)
    }

    fn avg_pool2d(
        &mut self,
        x: View,
        y: View,
        dims: &Pool2dDims,
        count_include_pad: bool,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, y]) {
            return self.widened("avg_pool2d", [x, y], [false, true], |b, [x, y]| {
                b.avg_pool2d(x, y, dims, count_include_pad)
            });
        }
        disjoint("avg_pool2d", &[y], &[x])?;
        let xs = self.r("avg_pool2d x", x)?;
        conv::avg_pool2d(xs, self.w("avg_pool2d y", y)?, dims, count_include_pad)
    }

    fn avg_pool2d_grad(
        &mut self,
        dy: View,
        dx: View,
        dims: &Pool2dDims,
        count_include_pad: bool,
    ) -> Result<()> {
        if crate::widen::any_half(&[dy, dx]) {
            return self.widened("avg_pool2d_grad", [dy, dx], [false, true], |b, [dy, dx]| {
                b.avg_pool2d_grad(dy, dx, dims, count_include_pad)
            });
        }
        disjoint("avg_pool2d_grad", &[dx], &[dy])?;
        let dys = self.r("avg_pool2d_grad dy", dy)?;
        conv::avg_pool2d_grad(
            dys,
            self.w("avg_pool2d_grad dx", dx)?,
            dims,
            count_include_pad,
        )
    }

    fn top_k(&mut self, x: View, ids: View, rows: usize, n: usize, k: usize) -> Result<()> {
        if crate::widen::any_half(&[x, ids]) {
            return self.widened("top_k", [x, ids], [false, true], |b, [x, ids]| {
                b.top_k(x, ids, rows, n, k)
            });
        }
        disjoint("top_k", &[ids], &[x])?;
        moe::top_k(self.r("top_k x", x)?, self.w("top_k ids", ids)?, rows, n, k)
    }

    fn moe_route(
        &mut self,
        ids: View,
        row_token: View,
        slot_row: View,
        slot_keep: View,
        offsets: View,
        k: usize,
        experts: usize,
        capacity: Option<usize>,
    ) -> Result<()> {
        disjoint(
            "moe_route",
            &[row_token, slot_row, slot_keep, offsets],
            &[ids],
        )?;
        let route = moe::Route {
            row_token: self.w("moe_route row_token", row_token)?,
            slot_row: self.w("moe_route slot_row", slot_row)?,
            slot_keep: self.w("moe_route slot_keep", slot_keep)?,
            offsets: self.w("moe_route offsets", offsets)?,
        };
        with_index!(self, "moe_route ids", ids, idx => {
            moe::moe_route(idx, k, experts, capacity, route)
        })
    }

    fn grouped_matmul(
        &mut self,
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: &GroupedMatMulDims,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, w, offsets, y]) {
            return self.widened(
                "grouped_matmul",
                [x, w, offsets, y],
                [false, false, false, true],
                |b, [x, w, offsets, y]| b.grouped_matmul(x, w, offsets, y, dims),
            );
        }
        disjoint("grouped_matmul", &[y], &[x, w, offsets])?;
        let (xs, ws) = (
            self.r("grouped_matmul x", x)?,
            self.r("grouped_matmul w", w)?,
        );
        let ys = self.w("grouped_matmul y", y)?;
        with_index!(self, "grouped_matmul offsets", offsets, o => {
            grouped::grouped_matmul(xs, ws, o, ys, dims)
        })
    }

    fn fused_elementwise(&mut self, f: &FusedElementwise) -> Result<()> {
        const WHAT: &str = "fused_elementwise";
        // Every stored output disjoint from every input and from the
        // other stored outputs (checked without allocating: this runs
        // inside steps).
        let last = f.steps.len().saturating_sub(1);
        let stored = || {
            f.steps
                .iter()
                .enumerate()
                .filter(move |(k, s)| s.store || *k == last)
                .map(|(k, s)| (k, s.out))
        };
        for (k, o) in stored() {
            let clash = f.inputs.iter().any(|i| i.view.overlaps(&o))
                || stored().any(|(j, p)| j > k && p.overlaps(&o));
            if clash {
                return Err(Error::Overlap { what: WHAT });
            }
        }
        let mut ins = [fused::In::None; fused::MAX_INPUTS];
        for (slot, inp) in ins.iter_mut().zip(&f.inputs) {
            *slot = match inp.view.elem {
                ElemType::U8 => fused::In::U8(self.r("fused_elementwise input", inp.view)?),
                _ => fused::In::F32(self.r("fused_elementwise input", inp.view)?),
            };
        }
        let mut outs: [fused::Out<'_>; fused::MAX_STEPS] = Default::default();
        for (k, (slot, s)) in outs.iter_mut().zip(&f.steps).enumerate() {
            if s.store || k + 1 == f.steps.len() {
                *slot = match s.out.elem {
                    ElemType::U8 => fused::Out::U8(self.w("fused_elementwise output", s.out)?),
                    _ => fused::Out::F32(self.w("fused_elementwise output", s.out)?),
                };
            }
        }
        let ins = &ins[..f.inputs.len().min(fused::MAX_INPUTS)];
        fused::check(f, ins, &outs[..f.steps.len().min(fused::MAX_STEPS)])?;
        fused::fused_elementwise(f, ins, outs);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn grouped_matmul_act(
        &mut self,
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: &GroupedMatMulDims,
        act: UnaryOp,
        act_out: View,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, w, offsets, y, act_out]) {
            return self.widened(
                "grouped_matmul_act",
                [x, w, offsets, y, act_out],
                [false, false, false, true, true],
                |b, [x, w, offsets, y, act_out]| {
                    b.grouped_matmul_act(x, w, offsets, y, dims, act, act_out)
                },
            );
        }
        disjoint("grouped_matmul_act", &[y, act_out], &[x, w, offsets])?;
        let (xs, ws) = (
            self.r("grouped_matmul x", x)?,
            self.r("grouped_matmul w", w)?,
        );
        let ys = self.w("grouped_matmul y", y)?;
        let outs = self.w("grouped_matmul act_out", act_out)?;
        with_index!(self, "grouped_matmul offsets", offsets, o => {
            grouped::grouped_matmul_act(xs, ws, o, ys, dims, Some((act, outs)))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn grouped_matmul_gelu_grad(
        &mut self,
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: &GroupedMatMulDims,
        tanh: bool,
        pre: View,
        dx: View,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, w, offsets, y, pre, dx]) {
            return self.widened(
                "grouped_matmul_gelu_grad",
                [x, w, offsets, y, pre, dx],
                [false, false, false, true, false, true],
                |b, [x, w, offsets, y, pre, dx]| {
                    b.grouped_matmul_gelu_grad(x, w, offsets, y, dims, tanh, pre, dx)
                },
            );
        }
        disjoint("grouped_matmul_gelu_grad", &[y, dx], &[x, w, offsets, pre])?;
        let (xs, ws) = (
            self.r("grouped_matmul x", x)?,
            self.r("grouped_matmul w", w)?,
        );
        let pres = self.r("grouped_matmul_gelu_grad pre", pre)?;
        let ys = self.r("grouped_matmul y", y)?; // scratch, left unwritten
        let dxs = self.w("grouped_matmul_gelu_grad dx", dx)?;
        with_index!(self, "grouped_matmul offsets", offsets, o => {
            grouped::grouped_matmul_gelu_grad(xs, ws, o, ys, dims, tanh, pres, dxs)
        })
    }

    fn grouped_matmul_grad_w(
        &mut self,
        x: View,
        dy: View,
        offsets: View,
        dw: View,
        dims: &GroupedMatMulDims,
    ) -> Result<()> {
        if crate::widen::any_half(&[x, dy, offsets, dw]) {
            return self.widened(
                "grouped_matmul_grad_w",
                [x, dy, offsets, dw],
                [false, false, false, true],
                |b, [x, dy, offsets, dw]| b.grouped_matmul_grad_w(x, dy, offsets, dw, dims),
            );
        }
        disjoint("grouped_matmul_grad_w", &[dw], &[x, dy, offsets])?;
        let xs = self.r("grouped_matmul_grad_w x", x)?;
        let dys = self.r("grouped_matmul_grad_w dy", dy)?;
        let dws = self.w("grouped_matmul_grad_w dw", dw)?;
        with_index!(self, "grouped_matmul_grad_w offsets", offsets, o => {
            grouped::grouped_matmul_grad_w(xs, dys, o, dws, dims)
        })
    }
}
