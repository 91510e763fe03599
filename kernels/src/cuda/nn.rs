//! Reductions, normalisation, losses, indexing, optimizers and MoE routing
//! on the CUDA backend: the CPU backend's checks, then launches of
//! `reduce.cu`, `nn.cu`, `loss.cu`, `index.cu`, `optim.cu` and `moe.cu`.

use super::device::{BLOCK, CudaBackend, args};
use super::kernels::Kernel;
use super::layout::{ReduceLayout, check_shape};
use crate::backend::{AdamWParams, ElemType, Error, ReduceOp, Result, SgdParams, View};
use crate::backend::{disjoint, same_len};

/// Most blocks a block-per-row kernel is launched with (it strides over
/// the rest).
const MAX_ROW_BLOCKS: u64 = 1 << 16;

/// Blocks of the first pass of a deterministic mean (fixed, so the sum's
/// shape depends on nothing but the element count).
const MEAN_PARTS: u64 = 256;

/// Threads per block for rows of `n` elements: a power of two from 32 to
/// 512.
fn row_block(n: u64) -> u32 {
    n.next_power_of_two().clamp(32, 512) as u32
}

fn row_grid(rows: u64) -> u32 {
    rows.clamp(1, MAX_ROW_BLOCKS) as u32
}

/// Grid and block of a column-tile launch (kernels/cuda/common.cuh): 32
/// columns per block, up to 16 lanes sharing each column's `rows`.
fn column_tiles(columns: u64, rows: u64) -> (u32, u32) {
    let lanes = rows.next_power_of_two().clamp(1, 16) as u32;
    let tiles = columns.div_ceil(32).clamp(1, MAX_ROW_BLOCKS) as u32;
    (tiles, 32 * lanes)
}

fn mul3(what: &'static str, a: usize, b: usize, c: usize) -> Result<usize> {
    a.checked_mul(b)
        .and_then(|ab| ab.checked_mul(c))
        .ok_or_else(|| Error::Invalid(format!("{what}: size overflows usize")))
}

impl CudaBackend {
    pub(super) fn run_reduce(
        &mut self,
        op: ReduceOp,
        x: View,
        shape: &[usize],
        axes: &[bool],
        y: View,
    ) -> Result<()> {
        disjoint("reduce", &[y], &[x])?;
        let xp = self.ptr("reduce x", x, ElemType::F32)?;
        let yp = self.ptr("reduce y", y, ElemType::F32)?;
        if axes.len() != shape.len() {
            return Err(Error::Invalid(format!(
                "reduce: {} axis flags for rank {}",
                axes.len(),
                shape.len()
            )));
        }
        let numel = check_shape("reduce", shape)?;
        same_len("reduce x", numel, x.len)?;
        let outputs: usize = shape
            .iter()
            .zip(axes)
            .filter(|(_, r)| !**r)
            .map(|(n, _)| n)
            .product();
        same_len("reduce y", outputs, y.len)?;
        if outputs == 0 {
            return Ok(());
        }
        let count = numel / outputs;
        if count == 0 {
            if op == ReduceOp::Max {
                return Err(Error::Invalid(format!(
                    "reduce: max over an empty axis of shape {shape:?}"
                )));
            }
            // The reference's 0 / 0 for a mean.
            return self.fill_view(y, if op == ReduceOp::Sum { 0.0 } else { f64::NAN });
        }
        let (layout, last_reduced) = ReduceLayout::new(shape, axes);
        let code: i32 = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Mean => 1,
            ReduceOp::Max => 2,
        };
        let (outputs, count) = (outputs as u64, count as u64);
        let mut p = args!(xp, yp, outputs, count, code, layout);
        if last_reduced {
            // SAFETY: the layout's offsets cover exactly the numel elements
            // of x (checked length); y is a checked disjoint view of
            // `outputs` f32.
            unsafe {
                self.launch(
                    Kernel::ReduceRowsF32,
                    row_grid(outputs),
                    row_block(count),
                    &mut p,
                )
            }
        } else {
            let (grid, block) = column_tiles(outputs, count);
            // SAFETY: as above.
            unsafe { self.launch(Kernel::ReduceColsF32, grid, block, &mut p) }
        }
    }

    pub(super) fn run_softmax(
        &mut self,
        x: View,
        y: View,
        (outer, n, inner): (usize, usize, usize),
        log: bool,
    ) -> Result<()> {
        same_len("softmax", mul3("softmax", outer, n, inner)?, x.len)?;
        same_len("softmax", x.len, y.len)?;
        disjoint("softmax", &[y], &[x])?;
        let xp = self.ptr("softmax x", x, ElemType::F32)?;
        let yp = self.ptr("softmax y", y, ElemType::F32)?;
        if x.len == 0 {
            return Ok(());
        }
        let log = i32::from(log);
        let (outer, n, inner) = (outer as u64, n as u64, inner as u64);
        if inner == 1 {
            let mut p = args!(xp, yp, outer, n, log);
            // SAFETY: checked disjoint f32 views of outer·n elements.
            unsafe {
                self.launch(
                    Kernel::SoftmaxRowsF32,
                    row_grid(outer),
                    row_block(n),
                    &mut p,
                )
            }
        } else {
            let mut p = args!(xp, yp, outer, n, inner, log);
            // SAFETY: checked disjoint f32 views of outer·n·inner elements.
            unsafe {
                self.launch(
                    Kernel::SoftmaxColsF32,
                    self.grid(outer * inner),
                    BLOCK,
                    &mut p,
                )
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_layer_norm(
        &mut self,
        x: View,
        gamma: View,
        beta: View,
        y: View,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        same_len("layer_norm x", rows * d, x.len)?;
        same_len("layer_norm y", rows * d, y.len)?;
        same_len("layer_norm gamma", d, gamma.len)?;
        same_len("layer_norm beta", d, beta.len)?;
        disjoint("layer_norm", &[y], &[x, gamma, beta])?;
        let xp = self.ptr("layer_norm x", x, ElemType::F32)?;
        let gp = self.ptr("layer_norm gamma", gamma, ElemType::F32)?;
        let bp = self.ptr("layer_norm beta", beta, ElemType::F32)?;
        let yp = self.ptr("layer_norm y", y, ElemType::F32)?;
        if x.len == 0 {
            return Ok(());
        }
        let (rows, d) = (rows as u64, d as u64);
        let mut p = args!(xp, gp, bp, yp, rows, d, eps);
        // SAFETY: checked f32 views: x and y of rows·d, gamma and beta of
        // d; y disjoint from the inputs.
        unsafe { self.launch(Kernel::LayerNormF32, row_grid(rows), row_block(d), &mut p) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_layer_norm_grad(
        &mut self,
        [x, gamma, dy]: [View; 3],
        [dx, dgamma, dbeta]: [View; 3],
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        same_len("layer_norm_grad x", rows * d, x.len)?;
        same_len("layer_norm_grad dy", rows * d, dy.len)?;
        same_len("layer_norm_grad dx", rows * d, dx.len)?;
        same_len("layer_norm_grad gamma", d, gamma.len)?;
        same_len("layer_norm_grad dgamma", d, dgamma.len)?;
        same_len("layer_norm_grad dbeta", d, dbeta.len)?;
        disjoint("layer_norm_grad", &[dx, dgamma, dbeta], &[x, gamma, dy])?;
        let xp = self.ptr("layer_norm_grad x", x, ElemType::F32)?;
        let gp = self.ptr("layer_norm_grad gamma", gamma, ElemType::F32)?;
        let dyp = self.ptr("layer_norm_grad dy", dy, ElemType::F32)?;
        let dxp = self.ptr("layer_norm_grad dx", dx, ElemType::F32)?;
        let dgp = self.ptr("layer_norm_grad dgamma", dgamma, ElemType::F32)?;
        let dbp = self.ptr("layer_norm_grad dbeta", dbeta, ElemType::F32)?;
        if d == 0 {
            return Ok(());
        }
        let stats = self.scratch(rows.max(1) * 8)?;
        let (rows, d) = (rows as u64, d as u64);
        if rows > 0 {
            let mut p = args!(xp, gp, dyp, dxp, stats, rows, d, eps);
            // SAFETY: checked f32 views (x, dy, dx of rows·d; gamma of d),
            // dx disjoint; `stats` is scratch of rows float2.
            unsafe {
                self.launch(
                    Kernel::LayerNormGradDxF32,
                    row_grid(rows),
                    row_block(d),
                    &mut p,
                )?
            };
        }
        let mut p = args!(xp, dyp, stats, dgp, dbp, rows, d);
        let (grid, block) = column_tiles(d, rows);
        // SAFETY: as above; dgamma and dbeta are checked disjoint views of d
        // f32; stats was written by the launch before on the same stream.
        unsafe { self.launch(Kernel::LayerNormGradParamsF32, grid, block, &mut p) }
    }

    /// `out[0] = Σ parts / divisor`, the parts summed in order.
    fn finish_mean(&self, parts: u64, n: u64, divisor: f64, out: u64) -> Result<()> {
        let mut p = args!(parts, n, divisor, out);
        // SAFETY: `parts` holds n f64 written on this stream before; `out`
        // is a checked one-element f32 view.
        unsafe { self.launch(Kernel::FinishMeanF32, 1, 256, &mut p) }
    }

    pub(super) fn run_softmax_cross_entropy(
        &mut self,
        logits: View,
        labels: View,
        loss: View,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        same_len("softmax_cross_entropy logits", rows * classes, logits.len)?;
        same_len("softmax_cross_entropy labels", rows, labels.len)?;
        same_len("softmax_cross_entropy loss", 1, loss.len)?;
        disjoint("softmax_cross_entropy", &[loss], &[logits, labels])?;
        let lp = self.ptr("softmax_cross_entropy logits", logits, ElemType::F32)?;
        let (ip, wide) = self.index_ptr("softmax_cross_entropy labels", labels)?;
        let op = self.ptr("softmax_cross_entropy loss", loss, ElemType::F32)?;
        let parts = self.scratch(rows.max(1) * 8)?;
        let err = self.err_ptr();
        let (rows, classes) = (rows as u64, classes as u64);
        if rows > 0 {
            let mut p = args!(lp, ip, wide, parts, rows, classes, err);
            // SAFETY: logits is a checked f32 view of rows·classes, labels
            // of rows indices of the flagged width; parts is scratch of
            // rows f64; labels are range-checked in the kernel.
            unsafe {
                self.launch(
                    Kernel::SoftmaxCrossEntropyRowsF32,
                    row_grid(rows),
                    row_block(classes),
                    &mut p,
                )?
            };
        }
        self.finish_mean(parts, rows, rows as f64, op)
    }

    pub(super) fn run_softmax_cross_entropy_grad(
        &mut self,
        [logits, labels, dloss]: [View; 3],
        dlogits: View,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        const W: &str = "softmax_cross_entropy_grad";
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
        disjoint(W, &[dlogits], &[logits, labels, dloss])?;
        let lp = self.ptr("softmax_cross_entropy_grad logits", logits, ElemType::F32)?;
        let (ip, wide) = self.index_ptr("softmax_cross_entropy_grad labels", labels)?;
        let dlp = self.ptr("softmax_cross_entropy_grad dloss", dloss, ElemType::F32)?;
        let gp = self.ptr("softmax_cross_entropy_grad dlogits", dlogits, ElemType::F32)?;
        if dlogits.len == 0 {
            return Ok(());
        }
        let err = self.err_ptr();
        let (rows, classes) = (rows as u64, classes as u64);
        let mut p = args!(lp, ip, wide, dlp, gp, rows, classes, err);
        // SAFETY: checked views: logits and dlogits of rows·classes f32
        // (disjoint), labels of rows indices, dloss of one f32.
        unsafe {
            self.launch(
                Kernel::SoftmaxCrossEntropyGradF32,
                row_grid(rows),
                row_block(classes),
                &mut p,
            )
        }
    }

    pub(super) fn run_mse(&mut self, pred: View, target: View, loss: View) -> Result<()> {
        same_len("mse", pred.len, target.len)?;
        same_len("mse loss", 1, loss.len)?;
        disjoint("mse", &[loss], &[pred, target])?;
        let pp = self.ptr("mse pred", pred, ElemType::F32)?;
        let tp = self.ptr("mse target", target, ElemType::F32)?;
        let lp = self.ptr("mse loss", loss, ElemType::F32)?;
        let n = pred.len as u64;
        let blocks = n.div_ceil(u64::from(BLOCK)).clamp(1, MEAN_PARTS);
        let parts = self.scratch(blocks as usize * 8)?;
        let mut p = args!(pp, tp, parts, n);
        // SAFETY: pred and target are checked f32 views of n elements;
        // parts is scratch of `blocks` f64, one per block.
        unsafe { self.launch(Kernel::SquaredErrorPartsF32, blocks as u32, BLOCK, &mut p)? };
        self.finish_mean(parts, blocks, n as f64, lp)
    }

    pub(super) fn run_sgd(
        &mut self,
        param: View,
        grad: View,
        momentum: View,
        sp: &SgdParams,
    ) -> Result<()> {
        same_len("sgd grad", param.len, grad.len)?;
        let with_momentum = sp.momentum != 0.0;
        if with_momentum {
            same_len("sgd momentum", param.len, momentum.len)?;
        }
        disjoint("sgd", &[param, momentum], &[grad])?;
        let wp = self.ptr("sgd param", param, ElemType::F32)?;
        let gp = self.ptr("sgd grad", grad, ElemType::F32)?;
        let bp = if with_momentum {
            self.ptr("sgd momentum", momentum, ElemType::F32)?
        } else {
            0
        };
        let n = param.len as u64;
        if n == 0 {
            return Ok(());
        }
        let (neg_lr, wd, mu) = (-sp.lr, sp.weight_decay, sp.momentum);
        let keep = (1.0 - f64::from(sp.dampening)) as f32;
        let flags =
            u32::from(with_momentum) | u32::from(sp.first_step) << 1 | u32::from(sp.nesterov) << 2;
        let mut p = args!(wp, gp, bp, n, neg_lr, wd, mu, keep, flags);
        // SAFETY: checked f32 views of n elements; param and momentum
        // disjoint from grad and each other; momentum is only touched when
        // flag bit 0 is set, and then it was checked.
        unsafe { self.launch(Kernel::SgdF32, self.grid(n), BLOCK, &mut p) }
    }

    pub(super) fn run_adamw(
        &mut self,
        [param, grad, m, v]: [View; 4],
        ap: &AdamWParams,
    ) -> Result<()> {
        same_len("adamw grad", param.len, grad.len)?;
        same_len("adamw m", param.len, m.len)?;
        same_len("adamw v", param.len, v.len)?;
        disjoint("adamw", &[param, m, v], &[grad])?;
        let wp = self.ptr("adamw param", param, ElemType::F32)?;
        let gp = self.ptr("adamw grad", grad, ElemType::F32)?;
        let mp = self.ptr("adamw m", m, ElemType::F32)?;
        let vp = self.ptr("adamw v", v, ElemType::F32)?;
        let n = param.len as u64;
        if n == 0 {
            return Ok(());
        }
        // The CPU's factors (kernels/src/cpu/optim.rs), f64 then f32.
        let (lr, wd) = (f64::from(ap.lr), f64::from(ap.weight_decay));
        let (b1, b2) = (f64::from(ap.beta1), f64::from(ap.beta2));
        let step = ap.step as f64;
        let bias_correction1 = 1.0 - b1.powf(step);
        let bias_correction2 = 1.0 - b2.powf(step);
        let decay = (1.0 - lr * wd) as f32;
        let lerp_w = (1.0 - b1) as f32;
        let beta2 = ap.beta2;
        let one_minus_beta2 = (1.0 - b2) as f32;
        let bc2_sqrt = bias_correction2.sqrt() as f32;
        let neg_step_size = (-(lr / bias_correction1)) as f32;
        let eps = ap.eps;
        let skip_decay = i32::from(ap.weight_decay == 0.0);
        let mut p = args!(
            wp,
            gp,
            mp,
            vp,
            n,
            decay,
            lerp_w,
            beta2,
            one_minus_beta2,
            bc2_sqrt,
            neg_step_size,
            eps,
            skip_decay
        );
        // SAFETY: four checked f32 views of n elements, the three outputs
        // disjoint from grad and from each other.
        unsafe { self.launch(Kernel::AdamwF32, self.grid(n), BLOCK, &mut p) }
    }

    pub(super) fn run_gather(
        &mut self,
        data: View,
        indices: View,
        out: View,
        (outer, axis, inner): (usize, usize, usize),
    ) -> Result<()> {
        disjoint("gather", &[out], &[data, indices])?;
        let dp = self.ptr("gather data", data, ElemType::F32)?;
        let op = self.ptr("gather out", out, ElemType::F32)?;
        let (ip, wide) = self.index_ptr("gather indices", indices)?;
        let k = indices.len;
        same_len("gather data", mul3("gather", outer, axis, inner)?, data.len)?;
        same_len("gather out", mul3("gather", outer, k, inner)?, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let err = self.err_ptr();
        let (outer, axis, inner, k) = (outer as u64, axis as u64, inner as u64, k as u64);
        let mut p = args!(dp, ip, wide, op, outer, axis, inner, k, err);
        // SAFETY: checked views: data of outer·axis·inner f32, out of
        // outer·k·inner f32 (disjoint), k indices range-checked in the
        // kernel before use.
        unsafe { self.launch(Kernel::GatherF32, self.grid(out.len as u64), BLOCK, &mut p) }
    }

    pub(super) fn run_scatter_add(
        &mut self,
        updates: View,
        indices: View,
        out: View,
        (outer, size, inner): (usize, usize, usize),
    ) -> Result<()> {
        disjoint("scatter_add", &[out], &[updates, indices])?;
        let up = self.ptr("scatter_add updates", updates, ElemType::F32)?;
        let op = self.ptr("scatter_add out", out, ElemType::F32)?;
        let (ip, wide) = self.index_ptr("scatter_add indices", indices)?;
        let k = indices.len;
        same_len(
            "scatter_add updates",
            mul3("scatter_add", outer, k, inner)?,
            updates.len,
        )?;
        same_len(
            "scatter_add out",
            mul3("scatter_add", outer, size, inner)?,
            out.len,
        )?;
        if out.len == 0 {
            return Ok(());
        }
        let err = self.err_ptr();
        let columns = (outer * inner) as u64;
        let (outer, size, inner, k) = (outer as u64, size as u64, inner as u64, k as u64);
        // Row ranges enough for about a thousand threads per SM.
        let ranges = (u64::from(self.sms) * 1024)
            .div_ceil(columns)
            .clamp(1, size.max(1));
        let threads = columns * ranges;
        let mut p = args!(up, ip, wide, op, outer, size, inner, k, ranges, err);
        // SAFETY: checked views: updates of outer·k·inner f32, out of
        // outer·size·inner f32 (disjoint); each thread owns one row range
        // of one column of out; indices are range-checked in the kernel.
        unsafe { self.launch(Kernel::ScatterAddF32, self.grid(threads), BLOCK, &mut p) }
    }

    pub(super) fn run_one_hot(&mut self, indices: View, out: View, depth: usize) -> Result<()> {
        disjoint("one_hot", &[out], &[indices])?;
        let op = self.ptr("one_hot out", out, ElemType::F32)?;
        let (ip, wide) = self.index_ptr("one_hot indices", indices)?;
        let rows = indices.len;
        let expected = rows
            .checked_mul(depth)
            .ok_or_else(|| Error::Invalid("one_hot: size overflows usize".into()))?;
        same_len("one_hot out", expected, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let err = self.err_ptr();
        let (rows, depth) = (rows as u64, depth as u64);
        let mut p = args!(ip, wide, op, rows, depth, err);
        // SAFETY: checked views: rows indices, out of rows·depth f32.
        unsafe { self.launch(Kernel::OneHotF32, self.grid(rows * depth), BLOCK, &mut p) }
    }

    pub(super) fn run_top_k(
        &mut self,
        x: View,
        ids: View,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        disjoint("top_k", &[ids], &[x])?;
        let xp = self.ptr("top_k x", x, ElemType::F32)?;
        let ip = self.ptr("top_k ids", ids, ElemType::I64)?;
        if k > n {
            return Err(Error::Invalid(format!(
                "top_k: k = {k} exceeds the row length {n}"
            )));
        }
        same_len("top_k x", mul3("top_k", rows, n, 1)?, x.len)?;
        same_len("top_k ids", mul3("top_k", rows, k, 1)?, ids.len)?;
        if k == 0 || rows == 0 {
            return Ok(());
        }
        let (rows, n, k) = (rows as u64, n as u64, k as u64);
        let mut p = args!(xp, ip, rows, n, k);
        // SAFETY: checked views: x of rows·n f32, ids of rows·k i64; each
        // thread writes only its row of ids.
        unsafe { self.launch(Kernel::TopKF32, self.grid(rows), BLOCK, &mut p) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_moe_route(
        &mut self,
        ids: View,
        [row_token, slot_row, slot_keep, offsets]: [View; 4],
        k: usize,
        experts: usize,
        capacity: Option<usize>,
    ) -> Result<()> {
        disjoint(
            "moe_route",
            &[row_token, slot_row, slot_keep, offsets],
            &[ids],
        )?;
        let tp = self.ptr("moe_route row_token", row_token, ElemType::I64)?;
        let rp = self.ptr("moe_route slot_row", slot_row, ElemType::I64)?;
        let kp = self.ptr("moe_route slot_keep", slot_keep, ElemType::F32)?;
        let op = self.ptr("moe_route offsets", offsets, ElemType::I64)?;
        let (ip, wide) = self.index_ptr("moe_route ids", ids)?;
        let slots = ids.len;
        if (k == 0 && slots != 0) || (k != 0 && !slots.is_multiple_of(k)) {
            return Err(Error::Invalid(format!(
                "moe_route: {slots} slots are not a whole number of tokens of {k} slots"
            )));
        }
        same_len("moe_route row_token", slots, row_token.len)?;
        same_len("moe_route slot_row", slots, slot_row.len)?;
        same_len("moe_route slot_keep", slots, slot_keep.len)?;
        same_len("moe_route offsets", experts + 1, offsets.len)?;
        let capacity = capacity.map_or(u64::MAX, |c| c as u64);
        let err = self.err_ptr();
        let block = if slots.max(experts) <= 256 { 256 } else { 1024 };
        let (slots, k, experts) = (slots as u64, k.max(1) as u64, experts as u64);
        let mut p = args!(ip, wide, tp, rp, kp, op, slots, k, experts, capacity, err);
        // SAFETY: checked views: ids of `slots` indices, row_token,
        // slot_row and slot_keep of `slots` elements, offsets of experts+1
        // i64, all outputs disjoint; every row the kernel writes is below
        // `slots` (kept rows start below the kept count, dropped ones
        // follow it); expert ids are range-checked in the kernel. One
        // block, as the kernel requires.
        unsafe { self.launch(Kernel::MoeRouteI64, 1, block, &mut p) }
    }
}
