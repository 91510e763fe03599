//! `impl Backend for CudaBackend`: each method checks and launches through
//! the family files (`elementwise.rs`, `nn.rs`, `blas.rs`, `fused.rs`). Convolution and
//! pooling are not on CUDA yet and say so. bf16/f16 matmuls run on cuBLAS
//! with f32 accumulation; other kernels given half operands run widened
//! ([`crate::widen`]).

use super::device::CudaBackend;
use crate::backend::*;
use crate::widen;

/// The error of a method the CUDA backend does not have yet.
fn not_yet(op: &str) -> Error {
    Error::Invalid(format!("{op}: not implemented on CUDA yet"))
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda:{} ({})", self.info.ordinal, self.info.name)
    }

    fn alloc(&mut self, bytes: usize) -> Result<BufferId> {
        let id = u32::try_from(self.buffers.len())
            .map_err(|_| Error::Invalid("alloc: too many buffers".into()))?;
        let buf = self.raw_alloc(bytes)?;
        self.buffers.push(buf);
        Ok(BufferId(id))
    }

    fn buffer_bytes(&self, buffer: BufferId) -> usize {
        self.buffers.get(buffer.0 as usize).map_or(0, |b| b.bytes)
    }

    fn write(&mut self, dst: View, data: &[u8]) -> Result<()> {
        self.write_bytes(dst, data)
    }

    fn read(&self, src: View, out: &mut [u8]) -> Result<()> {
        self.read_bytes(src, out)
    }

    fn copy(&mut self, src: View, dst: View) -> Result<()> {
        self.copy_bytes(src, dst)
    }

    fn fill(&mut self, dst: View, value: f64) -> Result<()> {
        self.fill_view(dst, value)
    }

    fn device_address(&self, v: View) -> Option<u64> {
        self.ptr("device_address", v, v.elem).ok()
    }

    fn record_event(&mut self, stream: Stream) -> Event {
        self.record(stream)
    }

    fn wait_event(&mut self, stream: Stream, event: Event) {
        self.wait(stream, event);
    }

    fn synchronize(&mut self) -> Result<()> {
        self.sync_streams()?;
        self.take_pending()?;
        self.check_device_errors()
    }

    fn unary(&mut self, op: UnaryOp, x: View, y: View) -> Result<()> {
        if widen::any_half(&[x, y]) {
            return self.widened("unary", [x, y], [false, true], |b, [x, y]| {
                b.unary(op, x, y)
            });
        }
        self.run_unary(op, x, y)
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
        if widen::any_half(&[a, b, out]) {
            return self.widened(
                "binary",
                [a, b, out],
                [false, false, true],
                |b_, [a, b, out]| b_.binary(op, a, a_strides, b, b_strides, out, shape),
            );
        }
        self.run_binary(op, a, a_strides, b, b_strides, out, shape)
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
        if widen::any_half(&[a, b, out]) {
            return self.widened(
                "compare",
                [a, b, out],
                [false, false, true],
                |b_, [a, b, out]| b_.compare(op, a, a_strides, b, b_strides, out, shape),
            );
        }
        self.run_compare(op, a, a_strides, b, b_strides, out, shape)
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
        if widen::any_half(&[cond, a, b, out]) {
            return self.widened(
                "select",
                [cond, a, b, out],
                [false, false, false, true],
                |b_, [cond, a, b, out]| {
                    b_.select(cond, cond_strides, a, a_strides, b, b_strides, out, shape)
                },
            );
        }
        self.run_select(cond, cond_strides, a, a_strides, b, b_strides, out, shape)
    }

    fn cast(&mut self, x: View, y: View) -> Result<()> {
        self.run_cast(x, y)
    }

    fn gelu_grad(&mut self, tanh: bool, x: View, dy: View, dx: View) -> Result<()> {
        if widen::any_half(&[x, dy, dx]) {
            return self.widened(
                "gelu_grad",
                [x, dy, dx],
                [false, false, true],
                |b, [x, dy, dx]| b.gelu_grad(tanh, x, dy, dx),
            );
        }
        self.run_gelu_grad(tanh, x, dy, dx)
    }

    fn dropout(&mut self, x: View, y: View, p: f32, key: RngKey) -> Result<()> {
        if widen::any_half(&[x, y]) {
            return self.widened("dropout", [x, y], [false, true], |b, [x, y]| {
                b.dropout(x, y, p, key)
            });
        }
        self.run_dropout(x, y, p, key)
    }

    fn causal_mask(&mut self, x: View, y: View, batch: usize, t: usize, fill: f32) -> Result<()> {
        if widen::any_half(&[x, y]) {
            return self.widened("causal_mask", [x, y], [false, true], |b, [x, y]| {
                b.causal_mask(x, y, batch, t, fill)
            });
        }
        self.run_causal_mask(x, y, batch, t, fill)
    }

    fn copy_strided(
        &mut self,
        src: View,
        src_strides: &[usize],
        dst: View,
        dst_strides: &[usize],
        shape: &[usize],
    ) -> Result<()> {
        self.run_copy_strided(src, src_strides, dst, dst_strides, shape)
    }

    fn reduce(
        &mut self,
        op: ReduceOp,
        x: View,
        shape: &[usize],
        axes: &[bool],
        y: View,
    ) -> Result<()> {
        if widen::any_half(&[x, y]) {
            return self.widened("reduce", [x, y], [false, true], |b, [x, y]| {
                b.reduce(op, x, shape, axes, y)
            });
        }
        self.run_reduce(op, x, shape, axes, y)
    }

    fn matmul(&mut self, a: View, b: View, c: View, dims: &MatMulDims<'_>) -> Result<()> {
        if widen::any_half(&[a, b, c]) && !(a.elem == b.elem && b.elem == c.elem) {
            return self.widened(
                "matmul",
                [a, b, c],
                [false, false, true],
                |b_, [a, b, c]| b_.matmul(a, b, c, dims),
            );
        }
        self.run_matmul(a, b, c, dims)
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
        if widen::any_half(&[data, indices, out]) {
            return self.widened(
                "gather",
                [data, indices, out],
                [false, false, true],
                |b, [data, indices, out]| b.gather(data, indices, out, outer, axis, inner),
            );
        }
        self.run_gather(data, indices, out, (outer, axis, inner))
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
        if widen::any_half(&[updates, indices, out]) {
            return self.widened(
                "scatter_add",
                [updates, indices, out],
                [false, false, true],
                |b, [updates, indices, out]| {
                    b.scatter_add(updates, indices, out, outer, size, inner)
                },
            );
        }
        self.run_scatter_add(updates, indices, out, (outer, size, inner))
    }

    fn one_hot(&mut self, indices: View, out: View, depth: usize) -> Result<()> {
        if widen::any_half(&[indices, out]) {
            return self.widened(
                "one_hot",
                [indices, out],
                [false, true],
                |b, [indices, out]| b.one_hot(indices, out, depth),
            );
        }
        self.run_one_hot(indices, out, depth)
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
        if widen::any_half(&[x, y]) {
            return self.widened("softmax", [x, y], [false, true], |b, [x, y]| {
                b.softmax(x, y, outer, n, inner, log)
            });
        }
        self.run_softmax(x, y, (outer, n, inner), log)
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
        if widen::any_half(&[x, gamma, beta, y]) {
            return self.widened(
                "layer_norm",
                [x, gamma, beta, y],
                [false, false, false, true],
                |b, [x, gamma, beta, y]| b.layer_norm(x, gamma, beta, y, rows, d, eps),
            );
        }
        self.run_layer_norm(x, gamma, beta, y, rows, d, eps)
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
        if widen::any_half(&[x, gamma, dy, dx, dgamma, dbeta]) {
            return self.widened(
                "layer_norm_grad",
                [x, gamma, dy, dx, dgamma, dbeta],
                [false, false, false, true, true, true],
                |b, [x, gamma, dy, dx, dgamma, dbeta]| {
                    b.layer_norm_grad(x, gamma, dy, dx, dgamma, dbeta, rows, d, eps)
                },
            );
        }
        self.run_layer_norm_grad([x, gamma, dy], [dx, dgamma, dbeta], rows, d, eps)
    }

    fn softmax_cross_entropy(
        &mut self,
        logits: View,
        labels: View,
        loss: View,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        if widen::any_half(&[logits, labels, loss]) {
            return self.widened(
                "softmax_cross_entropy",
                [logits, labels, loss],
                [false, false, true],
                |b, [logits, labels, loss]| {
                    b.softmax_cross_entropy(logits, labels, loss, rows, classes)
                },
            );
        }
        self.run_softmax_cross_entropy(logits, labels, loss, rows, classes)
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
        if widen::any_half(&[logits, labels, dloss, dlogits]) {
            return self.widened(
                "softmax_cross_entropy_grad",
                [logits, labels, dloss, dlogits],
                [false, false, false, true],
                |b, [logits, labels, dloss, dlogits]| {
                    b.softmax_cross_entropy_grad(logits, labels, dloss, dlogits, rows, classes)
                },
            );
        }
        self.run_softmax_cross_entropy_grad([logits, labels, dloss], dlogits, rows, classes)
    }

    fn mse(&mut self, pred: View, target: View, loss: View) -> Result<()> {
        if widen::any_half(&[pred, target, loss]) {
            return self.widened(
                "mse",
                [pred, target, loss],
                [false, false, true],
                |b, [pred, target, loss]| b.mse(pred, target, loss),
            );
        }
        self.run_mse(pred, target, loss)
    }

    fn sgd(&mut self, param: View, grad: View, momentum: View, p: &SgdParams) -> Result<()> {
        if widen::any_half(&[param, grad, momentum]) {
            return self.widened(
                "sgd",
                [param, grad, momentum],
                [true, false, true],
                |b, [param, grad, momentum]| b.sgd(param, grad, momentum, p),
            );
        }
        self.run_sgd(param, grad, momentum, p)
    }

    fn adamw(&mut self, param: View, grad: View, m: View, v: View, p: &AdamWParams) -> Result<()> {
        if widen::any_half(&[param, grad, m, v]) {
            return self.widened(
                "adamw",
                [param, grad, m, v],
                [true, false, true, true],
                |b, [param, grad, m, v]| b.adamw(param, grad, m, v, p),
            );
        }
        self.run_adamw([param, grad, m, v], p)
    }

    fn conv2d(&mut self, _x: View, _w: View, _y: View, _dims: &Conv2dDims) -> Result<()> {
        Err(not_yet("conv2d"))
    }

    fn conv2d_grad_input(&mut self, _w: View, _dy: View, _dx: View, _d: &Conv2dDims) -> Result<()> {
        Err(not_yet("conv2d_grad_input"))
    }

    fn conv2d_grad_weight(
        &mut self,
        _x: View,
        _dy: View,
        _dw: View,
        _d: &Conv2dDims,
    ) -> Result<()> {
        Err(not_yet("conv2d_grad_weight"))
    }

    fn max_pool2d(&mut self, _x: View, _y: View, _dims: &Pool2dDims) -> Result<()> {
        Err(not_yet("max_pool2d"))
    }

    fn max_pool2d_grad(&mut self, _x: View, _dy: View, _dx: View, _d: &Pool2dDims) -> Result<()> {
        Err(not_yet("max_pool2d_grad"))
    }

    fn max_pool2d_select(&mut self, _x: View, _v: View, _y: View, _d: &Pool2dDims) -> Result<()> {
        Err(not_yet("max_pool2d_select"))
    }

    fn avg_pool2d(
        &mut self,
        _x: View,
        _y: View,
        _dims: &Pool2dDims,
        _count_include_pad: bool,
    ) -> Result<()> {
        Err(not_yet("avg_pool2d"))
    }

    fn avg_pool2d_grad(
        &mut self,
        _dy: View,
        _dx: View,
        _dims: &Pool2dDims,
        _count_include_pad: bool,
    ) -> Result<()> {
        Err(not_yet("avg_pool2d_grad"))
    }

    fn top_k(&mut self, x: View, ids: View, rows: usize, n: usize, k: usize) -> Result<()> {
        if widen::any_half(&[x, ids]) {
            return self.widened("top_k", [x, ids], [false, true], |b, [x, ids]| {
                b.top_k(x, ids, rows, n, k)
            });
        }
        self.run_top_k(x, ids, rows, n, k)
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
        self.run_moe_route(
            ids,
            [row_token, slot_row, slot_keep, offsets],
            k,
            experts,
            capacity,
        )
    }

    fn grouped_matmul(
        &mut self,
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: &GroupedMatMulDims,
    ) -> Result<()> {
        if widen::any_half(&[x, w, offsets, y]) {
            return self.widened(
                "grouped_matmul",
                [x, w, offsets, y],
                [false, false, false, true],
                |b, [x, w, offsets, y]| b.grouped_matmul(x, w, offsets, y, dims),
            );
        }
        self.run_grouped_matmul([x, w, offsets], y, dims)
    }

    fn grouped_matmul_grad_w(
        &mut self,
        x: View,
        dy: View,
        offsets: View,
        dw: View,
        dims: &GroupedMatMulDims,
    ) -> Result<()> {
        if widen::any_half(&[x, dy, offsets, dw]) {
            return self.widened(
                "grouped_matmul_grad_w",
                [x, dy, offsets, dw],
                [false, false, false, true],
                |b, [x, dy, offsets, dw]| b.grouped_matmul_grad_w(x, dy, offsets, dw, dims),
            );
        }
        self.run_grouped_matmul_grad_w([x, dy, offsets], dw, dims)
    }

    fn fused_elementwise(&mut self, f: &FusedElementwise) -> Result<()> {
        let half = f.inputs.iter().any(|i| i.view.elem.is_half())
            || f.steps.iter().any(|s| s.out.elem.is_half());
        if half {
            // Each step widened, as its unfused call.
            return f.run_unfused(self);
        }
        self.run_fused(f)
    }
}
