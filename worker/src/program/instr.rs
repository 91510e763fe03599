//! One backend call with its arguments resolved.

use adjoint_kernels::backend::{Conv2dDims, FusedElementwise, GroupedMatMulDims, Pool2dDims};
use adjoint_kernels::{Backend, BinaryOp, CompareOp, MatMulDims, ReduceOp, RngKey, UnaryOp, View};

use super::exchange::Exchange;

/// A backend call. Shapes and strides are owned here, computed once at
/// compile time, and lent to the backend at run time.
#[derive(Debug, Clone)]
pub enum Instr {
    Fill {
        dst: View,
        value: f64,
    },
    Copy {
        src: View,
        dst: View,
    },
    CopyStrided {
        src: View,
        src_strides: Vec<usize>,
        dst: View,
        dst_strides: Vec<usize>,
        shape: Vec<usize>,
    },
    Unary {
        op: UnaryOp,
        x: View,
        y: View,
    },
    Binary {
        op: BinaryOp,
        a: View,
        a_strides: Vec<usize>,
        b: View,
        b_strides: Vec<usize>,
        out: View,
        shape: Vec<usize>,
    },
    Compare {
        op: CompareOp,
        a: View,
        a_strides: Vec<usize>,
        b: View,
        b_strides: Vec<usize>,
        out: View,
        shape: Vec<usize>,
    },
    Select {
        cond: View,
        cond_strides: Vec<usize>,
        a: View,
        a_strides: Vec<usize>,
        b: View,
        b_strides: Vec<usize>,
        out: View,
        shape: Vec<usize>,
    },
    Cast {
        x: View,
        y: View,
    },
    GeluGrad {
        tanh: bool,
        x: View,
        dy: View,
        dx: View,
    },
    Dropout {
        x: View,
        y: View,
        p: f32,
        site: u64,
    },
    CausalMask {
        x: View,
        y: View,
        batch: usize,
        t: usize,
        fill: f32,
    },
    Reduce {
        op: ReduceOp,
        x: View,
        shape: Vec<usize>,
        axes: Vec<bool>,
        y: View,
    },
    MatMul(Box<MatMulInstr>),
    Gather {
        data: View,
        indices: View,
        out: View,
        outer: usize,
        axis: usize,
        inner: usize,
    },
    ScatterAdd {
        updates: View,
        indices: View,
        out: View,
        outer: usize,
        size: usize,
        inner: usize,
    },
    OneHot {
        indices: View,
        out: View,
        depth: usize,
    },
    Softmax {
        x: View,
        y: View,
        outer: usize,
        n: usize,
        inner: usize,
        log: bool,
    },
    LayerNorm {
        x: View,
        gamma: View,
        beta: View,
        y: View,
        rows: usize,
        d: usize,
        eps: f32,
    },
    LayerNormGrad {
        x: View,
        gamma: View,
        dy: View,
        dx: View,
        dgamma: View,
        dbeta: View,
        rows: usize,
        d: usize,
        eps: f32,
    },
    SoftmaxCrossEntropy {
        logits: View,
        labels: View,
        loss: View,
        rows: usize,
        classes: usize,
    },
    SoftmaxCrossEntropyGrad {
        logits: View,
        labels: View,
        dloss: View,
        dlogits: View,
        rows: usize,
        classes: usize,
    },
    Mse {
        pred: View,
        target: View,
        loss: View,
    },
    TopK {
        x: View,
        ids: View,
        rows: usize,
        n: usize,
        k: usize,
    },
    MoeRoute {
        ids: View,
        row_token: View,
        slot_row: View,
        slot_keep: View,
        offsets: View,
        k: usize,
        experts: usize,
        /// Slots an expert keeps; `None`: all (dropless).
        capacity: Option<usize>,
    },
    GroupedMatMul {
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: GroupedMatMulDims,
    },
    GroupedMatMulGradW {
        x: View,
        dy: View,
        offsets: View,
        dw: View,
        dims: GroupedMatMulDims,
    },
    Conv2d {
        x: View,
        w: View,
        y: View,
        dims: Conv2dDims,
    },
    Conv2dGradInput {
        w: View,
        dy: View,
        dx: View,
        dims: Conv2dDims,
    },
    Conv2dGradWeight {
        x: View,
        dy: View,
        dw: View,
        dims: Conv2dDims,
    },
    MaxPool2d {
        x: View,
        y: View,
        dims: Pool2dDims,
    },
    MaxPool2dGrad {
        x: View,
        dy: View,
        dx: View,
        dims: Pool2dDims,
    },
    MaxPool2dSelect {
        x: View,
        v: View,
        y: View,
        dims: Pool2dDims,
    },
    AvgPool2d {
        x: View,
        y: View,
        dims: Pool2dDims,
        count_include_pad: bool,
    },
    AvgPool2dGrad {
        dy: View,
        dx: View,
        dims: Pool2dDims,
        count_include_pad: bool,
    },
    /// A chain of elementwise instructions run as one pass (the fusion
    /// rewrite, `fuse.rs`).
    Fused(Box<FusedElementwise>),
    /// A grouped matmul and the activation of its result, applied group by
    /// group (the fusion rewrite).
    GroupedMatMulAct {
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: GroupedMatMulDims,
        act: UnaryOp,
        act_out: View,
    },
    /// A grouped matmul and GELU's backward taking its result as the
    /// cotangent, `dx = y · gelu'(pre)`, applied group by group (the
    /// fusion rewrite).
    GroupedMatMulGeluGrad {
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: GroupedMatMulDims,
        tanh: bool,
        pre: View,
        dx: View,
    },
    /// Data that crosses ranks: run by the executor with the job's
    /// collective, never by [`Instr::run`].
    Exchange(Box<Exchange>),
}

/// Operands and dimensions of a batched matmul.
#[derive(Debug, Clone)]
pub struct MatMulInstr {
    pub a: View,
    pub b: View,
    pub c: View,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub batch: Vec<usize>,
    pub a_batch_strides: Vec<usize>,
    pub b_batch_strides: Vec<usize>,
    pub c_batch_strides: Vec<usize>,
}

/// Per-step values random kernels are keyed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepKey {
    pub seed: u64,
    pub step: u64,
    pub rank: u32,
}

impl Instr {
    /// Runs the call on `backend`.
    pub fn run<B: Backend>(&self, backend: &mut B, key: StepKey) -> adjoint_kernels::Result<()> {
        match self {
            Instr::Fill { dst, value } => backend.fill(*dst, *value),
            Instr::Copy { src, dst } => backend.copy(*src, *dst),
            Instr::CopyStrided {
                src,
                src_strides,
                dst,
                dst_strides,
                shape,
            } => backend.copy_strided(*src, src_strides, *dst, dst_strides, shape),
            Instr::Unary { op, x, y } => backend.unary(*op, *x, *y),
            Instr::Binary {
                op,
                a,
                a_strides,
                b,
                b_strides,
                out,
                shape,
            } => backend.binary(*op, *a, a_strides, *b, b_strides, *out, shape),
            Instr::Compare {
                op,
                a,
                a_strides,
                b,
                b_strides,
                out,
                shape,
            } => backend.compare(*op, *a, a_strides, *b, b_strides, *out, shape),
            Instr::Select {
                cond,
                cond_strides,
                a,
                a_strides,
                b,
                b_strides,
                out,
                shape,
            } => backend.select(
                *cond,
                cond_strides,
                *a,
                a_strides,
                *b,
                b_strides,
                *out,
                shape,
            ),
            Instr::Cast { x, y } => backend.cast(*x, *y),
            Instr::GeluGrad { tanh, x, dy, dx } => backend.gelu_grad(*tanh, *x, *dy, *dx),
            Instr::Dropout { x, y, p, site } => {
                let key = RngKey {
                    seed: key.seed,
                    step: key.step,
                    rank: key.rank,
                    site: *site,
                };
                backend.dropout(*x, *y, *p, key)
            }
            Instr::CausalMask {
                x,
                y,
                batch,
                t,
                fill,
            } => backend.causal_mask(*x, *y, *batch, *t, *fill),
            Instr::Reduce {
                op,
                x,
                shape,
                axes,
                y,
            } => backend.reduce(*op, *x, shape, axes, *y),
            Instr::MatMul(mm) => {
                let dims = MatMulDims {
                    m: mm.m,
                    n: mm.n,
                    k: mm.k,
                    trans_a: mm.trans_a,
                    trans_b: mm.trans_b,
                    batch: &mm.batch,
                    a_batch_strides: &mm.a_batch_strides,
                    b_batch_strides: &mm.b_batch_strides,
                    c_batch_strides: &mm.c_batch_strides,
                };
                backend.matmul(mm.a, mm.b, mm.c, &dims)
            }
            Instr::Gather {
                data,
                indices,
                out,
                outer,
                axis,
                inner,
            } => backend.gather(*data, *indices, *out, *outer, *axis, *inner),
            Instr::ScatterAdd {
                updates,
                indices,
                out,
                outer,
                size,
                inner,
            } => backend.scatter_add(*updates, *indices, *out, *outer, *size, *inner),
            Instr::OneHot {
                indices,
                out,
                depth,
            } => backend.one_hot(*indices, *out, *depth),
            Instr::Softmax {
                x,
                y,
                outer,
                n,
                inner,
                log,
            } => backend.softmax(*x, *y, *outer, *n, *inner, *log),
            Instr::LayerNorm {
                x,
                gamma,
                beta,
                y,
                rows,
                d,
                eps,
            } => backend.layer_norm(*x, *gamma, *beta, *y, *rows, *d, *eps),
            Instr::LayerNormGrad {
                x,
                gamma,
                dy,
                dx,
                dgamma,
                dbeta,
                rows,
                d,
                eps,
            } => backend.layer_norm_grad(*x, *gamma, *dy, *dx, *dgamma, *dbeta, *rows, *d, *eps),
            Instr::SoftmaxCrossEntropy {
                logits,
                labels,
                loss,
                rows,
                classes,
            } => backend.softmax_cross_entropy(*logits, *labels, *loss, *rows, *classes),
            Instr::SoftmaxCrossEntropyGrad {
                logits,
                labels,
                dloss,
                dlogits,
                rows,
                classes,
            } => backend
                .softmax_cross_entropy_grad(*logits, *labels, *dloss, *dlogits, *rows, *classes),
            Instr::Mse { pred, target, loss } => backend.mse(*pred, *target, *loss),
            Instr::TopK { x, ids, rows, n, k } => backend.top_k(*x, *ids, *rows, *n, *k),
            Instr::MoeRoute {
                ids,
                row_token,
                slot_row,
                slot_keep,
                offsets,
                k,
                experts,
                capacity,
            } => backend.moe_route(
                *ids, *row_token, *slot_row, *slot_keep, *offsets, *k, *experts, *capacity,
            ),
            Instr::GroupedMatMul {
                x,
                w,
                offsets,
                y,
                dims,
            } => backend.grouped_matmul(*x, *w, *offsets, *y, dims),
            Instr::GroupedMatMulGradW {
                x,
                dy,
                offsets,
                dw,
                dims,
            } => backend.grouped_matmul_grad_w(*x, *dy, *offsets, *dw, dims),
            Instr::Fused(f) => backend.fused_elementwise(f),
            Instr::GroupedMatMulAct {
                x,
                w,
                offsets,
                y,
                dims,
                act,
                act_out,
            } => backend.grouped_matmul_act(*x, *w, *offsets, *y, dims, *act, *act_out),
            Instr::GroupedMatMulGeluGrad {
                x,
                w,
                offsets,
                y,
                dims,
                tanh,
                pre,
                dx,
            } => backend.grouped_matmul_gelu_grad(*x, *w, *offsets, *y, dims, *tanh, *pre, *dx),
            Instr::Conv2d { x, w, y, dims } => backend.conv2d(*x, *w, *y, dims),
            Instr::Conv2dGradInput { w, dy, dx, dims } => {
                backend.conv2d_grad_input(*w, *dy, *dx, dims)
            }
            Instr::Conv2dGradWeight { x, dy, dw, dims } => {
                backend.conv2d_grad_weight(*x, *dy, *dw, dims)
            }
            Instr::MaxPool2d { x, y, dims } => backend.max_pool2d(*x, *y, dims),
            Instr::MaxPool2dGrad { x, dy, dx, dims } => backend.max_pool2d_grad(*x, *dy, *dx, dims),
            Instr::MaxPool2dSelect { x, v, y, dims } => backend.max_pool2d_select(*x, *v, *y, dims),
            Instr::AvgPool2d {
                x,
                y,
                dims,
                count_include_pad,
            } => backend.avg_pool2d(*x, *y, dims, *count_include_pad),
            Instr::AvgPool2dGrad {
                dy,
                dx,
                dims,
                count_include_pad,
            } => backend.avg_pool2d_grad(*dy, *dx, dims, *count_include_pad),
            Instr::Exchange(_) => Err(adjoint_kernels::Error::Invalid(
                "a collective op (AllToAll, AllToAllCombine, AllReduce) runs only with a collective: train it with a DistTrainer".into(),
            )),
        }
    }

    /// The instruction's kind, for profiles: `MatMul`, `Unary`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Instr::Fill { .. } => "Fill",
            Instr::Copy { .. } => "Copy",
            Instr::CopyStrided { .. } => "CopyStrided",
            Instr::Unary { .. } => "Unary",
            Instr::Binary { .. } => "Binary",
            Instr::Compare { .. } => "Compare",
            Instr::Select { .. } => "Select",
            Instr::Cast { .. } => "Cast",
            Instr::GeluGrad { .. } => "GeluGrad",
            Instr::Dropout { .. } => "Dropout",
            Instr::CausalMask { .. } => "CausalMask",
            Instr::Reduce { .. } => "Reduce",
            Instr::MatMul(_) => "MatMul",
            Instr::Gather { .. } => "Gather",
            Instr::ScatterAdd { .. } => "ScatterAdd",
            Instr::OneHot { .. } => "OneHot",
            Instr::Softmax { .. } => "Softmax",
            Instr::LayerNorm { .. } => "LayerNorm",
            Instr::LayerNormGrad { .. } => "LayerNormGrad",
            Instr::SoftmaxCrossEntropy { .. } => "SoftmaxCrossEntropy",
            Instr::SoftmaxCrossEntropyGrad { .. } => "SoftmaxCrossEntropyGrad",
            Instr::Mse { .. } => "Mse",
            Instr::TopK { .. } => "TopK",
            Instr::MoeRoute { .. } => "MoeRoute",
            Instr::GroupedMatMul { .. } => "GroupedMatMul",
            Instr::GroupedMatMulGradW { .. } => "GroupedMatMulGradW",
            Instr::Fused(_) => "Fused",
            Instr::GroupedMatMulAct { .. } => "GroupedMatMulAct",
            Instr::GroupedMatMulGeluGrad { .. } => "GroupedMatMulGeluGrad",
            Instr::Conv2d { .. } => "Conv2d",
            Instr::Conv2dGradInput { .. } => "Conv2dGradInput",
            Instr::Conv2dGradWeight { .. } => "Conv2dGradWeight",
            Instr::MaxPool2d { .. } => "MaxPool2d",
            Instr::MaxPool2dGrad { .. } => "MaxPool2dGrad",
            Instr::MaxPool2dSelect { .. } => "MaxPool2dSelect",
            Instr::AvgPool2d { .. } => "AvgPool2d",
            Instr::AvgPool2dGrad { .. } => "AvgPool2dGrad",
            Instr::Exchange(_) => "Exchange",
        }
    }

    /// The views this call writes.
    pub fn outputs(&self) -> Vec<View> {
        match self {
            Instr::Fill { dst, .. } | Instr::Copy { dst, .. } | Instr::CopyStrided { dst, .. } => {
                vec![*dst]
            }
            Instr::Unary { y, .. } | Instr::Cast { y, .. } | Instr::Dropout { y, .. } => vec![*y],
            Instr::CausalMask { y, .. } | Instr::Reduce { y, .. } | Instr::Softmax { y, .. } => {
                vec![*y]
            }
            Instr::LayerNorm { y, .. } => vec![*y],
            Instr::Binary { out, .. } | Instr::Compare { out, .. } | Instr::Select { out, .. } => {
                vec![*out]
            }
            Instr::GeluGrad { dx, .. } => vec![*dx],
            Instr::MatMul(mm) => vec![mm.c],
            Instr::Gather { out, .. }
            | Instr::ScatterAdd { out, .. }
            | Instr::OneHot { out, .. } => vec![*out],
            Instr::LayerNormGrad {
                dx, dgamma, dbeta, ..
            } => vec![*dx, *dgamma, *dbeta],
            Instr::SoftmaxCrossEntropy { loss, .. } | Instr::Mse { loss, .. } => vec![*loss],
            Instr::SoftmaxCrossEntropyGrad { dlogits, .. } => vec![*dlogits],
            Instr::TopK { ids, .. } => vec![*ids],
            Instr::MoeRoute {
                row_token,
                slot_row,
                slot_keep,
                offsets,
                ..
            } => vec![*row_token, *slot_row, *slot_keep, *offsets],
            Instr::GroupedMatMul { y, .. } => vec![*y],
            Instr::GroupedMatMulGradW { dw, .. } => vec![*dw],
            Instr::Fused(f) => f.steps.iter().map(|s| s.out).collect(),
            Instr::GroupedMatMulAct { y, act_out, .. } => vec![*y, *act_out],
            Instr::GroupedMatMulGeluGrad { y, dx, .. } => vec![*y, *dx],
            Instr::Conv2d { y, .. }
            | Instr::MaxPool2d { y, .. }
            | Instr::MaxPool2dSelect { y, .. }
            | Instr::AvgPool2d { y, .. } => vec![*y],
            Instr::Conv2dGradInput { dx, .. }
            | Instr::MaxPool2dGrad { dx, .. }
            | Instr::AvgPool2dGrad { dx, .. } => vec![*dx],
            Instr::Conv2dGradWeight { dw, .. } => vec![*dw],
            Instr::Exchange(x) => x.outputs(),
        }
    }
}
