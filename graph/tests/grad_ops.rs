//! Gradient checks of every op in the set, first and second order, against
//! finite differences on the f64 interpreter (`adjoint_graph::gradcheck`).
//!
//! The table below has one line per op: the op, how to build it from the
//! graph inputs, its arity, the domain of each input, the case generator
//! (random shapes and parameters, driven by proptest with a fixed seed per
//! row) and the tolerance. Each line is a test that runs, per case, FD vs
//! J·v, FD vs Jᵀ·u and the adjoint identity on the op's graph, then the same
//! three on the op's gradient graph (second order). Dedicated tests cover
//! repeated gather indices, ReduceMax ties, fixed broadcasting examples, and
//! show that the harness fails on wrong rules.
//!
//! The grouped matmuls take their offsets as a fed, never-perturbed input
//! (`Dom::Offsets`) with an empty expert and a dropped tail; TopK is checked
//! through the MoE gate on well-separated logits, MoeRoute through the
//! dispatch gather it drives. The collectives are checked at `ranks = 1`,
//! the only group the interpreter runs, on the grouped matmuls' rows and
//! offsets (dropped rows come out zero).
//!
//! Convolutions and pools run with fixed attributes per row (stride 2,
//! uneven padding, dilation 2, groups 2, ceil mode; see `CONVS` and
//! `POOLS`) on random batch, channel and spatial sizes; max pools take
//! distinct values so no window's argmax flips under the FD step.

// Builder closures return the crate's `Result`, whose error is large.
#![allow(clippy::result_large_err)]

mod common;

use std::collections::BTreeMap;

use adjoint_graph::gradcheck::{self, Options};
use adjoint_graph::interp::{EvalCx, Tensor};
use adjoint_graph::ops::conv::{out_size, pool_out};
use adjoint_graph::ops::{Conv2dAttrs, GeluApprox, Loss, Movement, Nn, Pool2dAttrs};
use adjoint_graph::{Builder, DType, Graph, InputRole, Op, Shape, ValueId};
use common::Dom::{AwayFromZero, Distinct, Frozen, Index, Int, Offsets, Pos, Real};
use common::*;
use proptest::prelude::any;
use proptest::strategy::{BoxedStrategy, Strategy};

/// Default (rtol, atol) of the FD comparisons.
const T: (f64, f64) = (1e-5, 1e-6);

macro_rules! table {
    ($($test:ident: $op:literal, $label:literal, $arity:literal, $cases:expr, [$($dom:expr),*], $tol:expr,
       $build:expr;)*) => {
        /// The op table: one row per op (variant).
        fn table() -> Vec<Row> {
            vec![$(Row {
                op: $op,
                label: $label,
                arity: $arity,
                cases: || $cases,
                dom: &[$($dom),*],
                tol: $tol,
                build: $build,
            }),*]
        }
        $(
            #[test]
            fn $test() {
                let rows = table();
                let row = rows.iter().find(|r| r.label == $label).expect("row");
                run_row(row);
            }
        )*
    };
}

table! {
    // test:     op,        label,              arity, cases,            domains,                  tol, build
    neg:         "Neg",     "Neg",                 1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.neg(x[0]));
    exp:         "Exp",     "Exp",                 1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.exp(x[0]));
    log:         "Log",     "Log",                 1, same(1, 0, 3),     [Pos],                    T, |b, x, _| one(b.log(x[0]));
    sqrt:        "Sqrt",    "Sqrt",                1, same(1, 0, 3),     [Pos],                    T, |b, x, _| one(b.sqrt(x[0]));
    rsqrt:       "Rsqrt",   "Rsqrt",               1, same(1, 0, 3),     [Pos],                    T, |b, x, _| one(b.rsqrt(x[0]));
    tanh:        "Tanh",    "Tanh",                1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.tanh(x[0]));
    sigmoid:     "Sigmoid", "Sigmoid",             1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.sigmoid(x[0]));
    relu:        "Relu",    "Relu",                1, same(1, 0, 3),     [AwayFromZero],           T, |b, x, _| one(b.relu(x[0]));
    gelu_tanh:   "Gelu",    "Gelu(tanh)",          1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.gelu(x[0], GeluApprox::Tanh));
    gelu_erf:    "Gelu",    "Gelu(erf)",           1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.gelu(x[0], GeluApprox::Erf));
    erf:         "Erf",     "Erf",                 1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.erf(x[0]));
    cast:        "Cast",    "Cast(f64->f64)",      1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.cast(x[0], DType::F64));
    cast_int:    "Cast",    "Cast(i64->f64)*x",    2, same(2, 0, 3),     [Int(5), Real],           T, |b, x, _| { let c = b.cast(x[0], DType::F64)?; one(b.mul(c, x[1])) };
    constant:    "Constant","Constant*x",          1, same(1, 0, 3),     [Real],                   T, |b, x, _| { let k = b.scalar(1.7, DType::F64)?; one(b.mul(x[0], k)) };
    add:         "Add",     "Add",                 2, broadcasting(2),   [Real, Real],             T, |b, x, _| one(b.add(x[0], x[1]));
    sub:         "Sub",     "Sub",                 2, broadcasting(2),   [Real, Real],             T, |b, x, _| one(b.sub(x[0], x[1]));
    mul:         "Mul",     "Mul",                 2, broadcasting(2),   [Real, Real],             T, |b, x, _| one(b.mul(x[0], x[1]));
    div:         "Div",     "Div",                 2, broadcasting(2),   [Real, AwayFromZero],     T, |b, x, _| one(b.div(x[0], x[1]));
    pow:         "Pow",     "Pow",                 2, broadcasting(2),   [Pos, Real],              T, |b, x, _| one(b.pow(x[0], x[1]));
    equal:       "Equal",   "Where(Equal(i,j))",   4, same(4, 0, 3),     [Int(2), Int(2), Real, Real], T, |b, x, _| { let c = b.equal(x[0], x[1])?; one(b.select(c, x[2], x[3])) };
    greater:     "Greater", "Where(Greater(a,b))", 2, broadcasting(2),   [Real, Real],             T, |b, x, _| { let c = b.greater(x[0], x[1])?; one(b.select(c, x[0], x[1])) };
    where_:      "Where",   "Where(c>0,a,b)",      3, broadcasting(3),   [Frozen, Real, Real],     T, |b, x, _| { let z = b.zeros_like(x[0])?; let c = b.greater(x[0], z)?; one(b.select(c, x[1], x[2])) };
    matmul:      "MatMul",  "MatMul",              2, common::matmul(),          [Real, Real],             T, |b, x, c| one(b.matmul_t(x[0], x[1], c.trans_a, c.trans_b));
    reduce_sum:  "ReduceSum", "ReduceSum",         1, reduce(),          [Real],                   T, |b, x, c| one(b.sum(x[0], &c.axes, c.keep_dims));
    reduce_mean: "ReduceMean", "ReduceMean",       1, reduce(),          [Real],                   T, |b, x, c| one(b.mean(x[0], &c.axes, c.keep_dims));
    reduce_max:  "ReduceMax", "ReduceMax",         1, reduce(),          [Distinct],               T, |b, x, c| one(b.max(x[0], &c.axes, c.keep_dims));
    reshape:     "Reshape", "Reshape",             1, common::reshape(),         [Real],                   T, |b, x, c| b.node(Op::Movement(Movement::Reshape(Shape::of(&c.target))), x);
    transpose:   "Transpose", "Transpose",         1, common::transpose(),       [Real],                   T, |b, x, c| one(b.transpose(x[0], &c.perm));
    broadcast:   "Broadcast", "Broadcast",         1, common::broadcast(),       [Real],                   T, |b, x, c| b.node(Op::Movement(Movement::Broadcast(Shape::of(&c.target))), x);
    concat:      "Concat",  "Concat",              3, common::concat(),          [Real, Real, Real],       T, |b, x, c| one(b.concat(x, c.axis));
    slice:       "Slice",   "Slice",               1, slice_or_pad(true), [Real],                  T, |b, x, c| one(b.slice(x[0], c.axis, c.lo, c.hi));
    pad:         "Pad",     "Pad",                 1, slice_or_pad(false), [Real],                 T, |b, x, c| one(b.pad(x[0], c.axis, c.lo, c.hi));
    gather:      "Gather",  "Gather",              2, common::gather(),          [Real, Index],            T, |b, x, c| one(b.gather(x[0], x[1], c.axis));
    scatter_add: "ScatterAdd", "ScatterAdd",       2, scatter(),         [Real, Index],            T, |b, x, c| one(b.scatter_add(x[0], x[1], c.axis, c.bound));
    one_hot:     "OneHot",  "OneHot*x",            2, common::one_hot(),         [Index, Real],            T, |b, x, c| { let h = b.one_hot(x[0], c.bound, DType::F64)?; one(b.mul(h, x[1])) };
    softmax:     "Softmax", "Softmax",             1, with_axis(1, 3),   [Real],                   T, |b, x, c| one(b.softmax(x[0], c.axis));
    log_softmax: "LogSoftmax", "LogSoftmax",       1, with_axis(1, 3),   [Real],                   T, |b, x, c| one(b.log_softmax(x[0], c.axis));
    layer_norm:  "LayerNorm", "LayerNorm",         3, last_axis(&[true, false, false]), [Real, Real, Real], T, |b, x, _| one(b.layer_norm(x[0], x[1], x[2], 1e-5));
    layer_norm_grad: "LayerNormGrad", "LayerNormGrad", 3, last_axis(&[true, false, true]), [Real, Real, Real], T, |b, x, _| b.node(Op::Nn(Nn::LayerNormGrad { eps: 1e-5 }), x);
    gelu_grad_tanh: "GeluGrad", "GeluGrad(tanh)",  2, same(2, 0, 3),     [Real, Real],             T, |b, x, _| b.node(Op::Nn(Nn::GeluGrad(GeluApprox::Tanh)), x);
    gelu_grad_erf: "GeluGrad", "GeluGrad(erf)",    2, same(2, 0, 3),     [Real, Real],             T, |b, x, _| b.node(Op::Nn(Nn::GeluGrad(GeluApprox::Erf)), x);
    dropout:     "Dropout", "Dropout(p=0.3)",      1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.dropout(x[0], 0.3, 7));
    causal_mask: "CausalMask", "CausalMask(0)",    1, square(),          [Real],                   T, |b, x, _| one(b.causal_mask(x[0], 0.0));
    causal_mask_softmax: "CausalMask", "Softmax(CausalMask(-1e9))", 1, square(), [Real],          T, |b, x, _| { let m = b.causal_mask(x[0], -1e9)?; one(b.softmax(m, -1)) };
    causal_mask_inf: "CausalMask", "Softmax(CausalMask(-inf))", 1, square(), [Real],              T, |b, x, _| { let m = b.causal_mask(x[0], f64::NEG_INFINITY)?; one(b.softmax(m, -1)) };
    softmax_cross_entropy: "SoftmaxCrossEntropy", "SoftmaxCrossEntropy", 2, cross_entropy(false), [Real, Index], T, |b, x, _| one(b.softmax_cross_entropy(x[0], x[1]));
    softmax_cross_entropy_grad: "SoftmaxCrossEntropyGrad", "SoftmaxCrossEntropyGrad", 3, cross_entropy(true), [Real, Index, Real], T, |b, x, _| b.node(Op::Loss(Loss::SoftmaxCrossEntropyGrad), x);
    mse:         "Mse",     "Mse",                 2, same(2, 0, 3),     [Real, Real],             T, |b, x, _| one(b.mse(x[0], x[1]));
    grouped_matmul: "GroupedMatMul", "GroupedMatMul", 3, grouped(false, false), [Real, Real, Offsets], T, |b, x, c| one(b.grouped_matmul(x[0], x[1], x[2], c.trans_b));
    grouped_matmul_t: "GroupedMatMul", "GroupedMatMul(transpose_w)", 3, grouped(false, true), [Real, Real, Offsets], T, |b, x, c| one(b.grouped_matmul(x[0], x[1], x[2], c.trans_b));
    grouped_matmul_grad_w: "GroupedMatMulGradW", "GroupedMatMulGradW", 3, grouped(true, false), [Real, Real, Offsets], T, |b, x, c| one(b.grouped_matmul_grad_w(x[0], x[1], x[2], c.trans_b));
    grouped_matmul_grad_w_t: "GroupedMatMulGradW", "GroupedMatMulGradW(transpose)", 3, grouped(true, true), [Real, Real, Offsets], T, |b, x, c| one(b.grouped_matmul_grad_w(x[0], x[1], x[2], c.trans_b));
    top_k_gate:  "TopK",    "TopK(gate weights)",  1, moe_gate(),        [Distinct],               T, gate_weights;
    moe_route:   "MoeRoute", "MoeRoute(dispatch)", 2, common::moe_route(), [Index, Real],          T, dispatch;
    gather_rows: "GatherRows", "GatherRows",      2, common::gather_rows(), [Real, Index],         T, |b, x, _| one(b.gather_rows(x[0], x[1]));
    scatter_add_rows: "ScatterAddRows", "ScatterAddRows", 2, common::scatter_add_rows(), [Real, Index], T, |b, x, c| one(b.scatter_add_rows(x[0], x[1], Shape::of(&c.target)));
    all_to_all:  "AllToAll", "AllToAll(ranks=1)",  2, exchange(false),   [Real, Offsets],          T, |b, x, _| { let [y, _, _] = b.all_to_all(x[0], x[1], 1)?; Ok(vec![y]) };
    all_to_all_combine: "AllToAllCombine", "AllToAllCombine(ranks=1)", 3, exchange(true), [Real, Offsets, Int(3)], T, |b, x, _| one(b.all_to_all_combine(x[0], x[1], x[2], 1));
    all_reduce:  "AllReduce", "AllReduce(ranks=1)", 1, same(1, 0, 3),     [Real],                   T, |b, x, _| one(b.all_reduce(x[0], 1));
    conv2d:      "Conv2d",  "Conv2d",              2, conv_cases(0, 0),  [Real, Real],             T, |b, x, _| one(b.conv2d(x[0], x[1], CONVS[0].0));
    conv2d_stride_pads: "Conv2d", "Conv2d(stride 2, pads)", 2, conv_cases(1, 0), [Real, Real],     T, |b, x, _| one(b.conv2d(x[0], x[1], CONVS[1].0));
    conv2d_dilation: "Conv2d", "Conv2d(dilation 2)", 2, conv_cases(2, 0),  [Real, Real],           T, |b, x, _| one(b.conv2d(x[0], x[1], CONVS[2].0));
    conv2d_groups: "Conv2d", "Conv2d(groups 2)",   2, conv_cases(3, 0),  [Real, Real],             T, |b, x, _| one(b.conv2d(x[0], x[1], CONVS[3].0));
    conv2d_grad_input: "Conv2dGradInput", "Conv2dGradInput(stride 2, pads)", 2, conv_cases(1, 1), [Real, Real], T, |b, x, c| one(b.conv2d_grad_input(x[0], x[1], CONVS[1].0, hw(c)));
    conv2d_grad_input_groups: "Conv2dGradInput", "Conv2dGradInput(groups 2)", 2, conv_cases(3, 1), [Real, Real], T, |b, x, c| one(b.conv2d_grad_input(x[0], x[1], CONVS[3].0, hw(c)));
    conv2d_grad_weight: "Conv2dGradWeight", "Conv2dGradWeight(dilation 2)", 2, conv_cases(2, 2), [Real, Real], T, |b, x, _| one(b.conv2d_grad_weight(x[0], x[1], CONVS[2].0, CONVS[2].1));
    conv2d_grad_weight_groups: "Conv2dGradWeight", "Conv2dGradWeight(groups 2, stride 2)", 2, conv_cases(4, 2), [Real, Real], T, |b, x, _| one(b.conv2d_grad_weight(x[0], x[1], CONVS[4].0, CONVS[4].1));
    max_pool2d:  "MaxPool2d", "MaxPool2d",         1, pool_cases(0, 0),  [Distinct],               T, |b, x, _| one(b.max_pool2d(x[0], POOLS[0]));
    max_pool2d_ceil: "MaxPool2d", "MaxPool2d(pads, ceil_mode)", 1, pool_cases(1, 0), [Distinct],   T, |b, x, _| one(b.max_pool2d(x[0], POOLS[1]));
    max_pool2d_dilation: "MaxPool2d", "MaxPool2d(dilation 2)", 1, pool_cases(2, 0), [Distinct],    T, |b, x, _| one(b.max_pool2d(x[0], POOLS[2]));
    max_pool2d_grad: "MaxPool2dGrad", "MaxPool2dGrad(pads, ceil_mode)", 2, pool_cases(1, 1), [Distinct, Real], T, |b, x, _| one(b.max_pool2d_grad(x[0], x[1], POOLS[1]));
    max_pool2d_select: "MaxPool2dSelect", "MaxPool2dSelect(dilation 2)", 2, pool_cases(2, 2), [Distinct, Real], T, |b, x, _| one(b.max_pool2d_select(x[0], x[1], POOLS[2]));
    avg_pool2d:  "AvgPool2d", "AvgPool2d",         1, pool_cases(0, 0),  [Real],                   T, |b, x, _| one(b.avg_pool2d(x[0], POOLS[0], false));
    avg_pool2d_ceil: "AvgPool2d", "AvgPool2d(pads, ceil_mode)", 1, pool_cases(1, 0), [Real],       T, |b, x, _| one(b.avg_pool2d(x[0], POOLS[1], false));
    avg_pool2d_include_pad: "AvgPool2d", "AvgPool2d(pads, ceil_mode, count_include_pad)", 1, pool_cases(1, 0), [Real], T, |b, x, _| one(b.avg_pool2d(x[0], POOLS[1], true));
    avg_pool2d_dilation: "AvgPool2d", "AvgPool2d(dilation 2)", 1, pool_cases(2, 0), [Real],         T, |b, x, _| one(b.avg_pool2d(x[0], POOLS[2], true));
    avg_pool2d_grad: "AvgPool2dGrad", "AvgPool2dGrad(pads, ceil_mode, count_include_pad)", 1, pool_cases(1, 3), [Real], T, |b, x, c| one(b.avg_pool2d_grad(x[0], POOLS[1], true, hw(c)));
}

/// The MoE gate: softmax, top-k, the chosen probabilities (one-hot of the
/// ids times the probabilities, summed over experts) renormalised over k.
/// Distinct logits keep the top-k margin far above the FD step, so the
/// routing never flips.
fn gate_weights(b: &mut Builder, x: &[ValueId], c: &Case) -> adjoint_graph::Result<Vec<ValueId>> {
    let (k, experts) = (c.lo, c.bound);
    let probs = b.softmax(x[0], -1)?;
    let ids = b.top_k(probs, k)?;
    let hot = b.one_hot(ids, experts, DType::F64)?;
    let mut dims = c.shapes[0].clone();
    dims.insert(dims.len() - 1, 1);
    let row = b.reshape(probs, Shape::of(&dims))?;
    let picked = b.mul(hot, row)?;
    let chosen = b.sum(picked, &[-1], false)?;
    let total = b.sum(chosen, &[-1], true)?;
    one(b.div(chosen, total))
}

/// Routing then dispatch: each packed row gathers its token; and each
/// token scaled by how many of its slots were kept (capacity from the
/// case). Neither the ids nor the routing outputs get a gradient.
fn dispatch(b: &mut Builder, x: &[ValueId], c: &Case) -> adjoint_graph::Result<Vec<ValueId>> {
    let [row_token, _, keep, _] = b.moe_route(x[0], c.bound, c.capacity_factor)?;
    let packed = b.gather(x[1], row_token, 0)?;
    let keep = b.cast(keep, DType::F64)?;
    let kept = b.sum(keep, &[-1], true)?;
    let scaled = b.mul(x[1], kept)?;
    Ok(vec![packed, scaled])
}

/// The collectives at `ranks = 1` (what the interpreter runs): rows and
/// offsets with an empty expert and a dropped tail, from [`grouped`]. For
/// AllToAll: x `[..., D]`, offsets; for AllToAllCombine (`combine`): y
/// `[1, ..., D]`, offsets and counts `[1, E]` (which one rank ignores).
fn exchange(combine: bool) -> BoxedStrategy<Case> {
    grouped(false, false)
        .prop_map(move |mut c| {
            let experts = c.offsets.len() - 1;
            c.shapes.remove(1);
            if combine {
                c.shapes[0].insert(0, 1);
                c.shapes.push(vec![1, experts]);
            }
            c
        })
        .boxed()
}

/// Convolution rows' attributes and kernels: plain 3×3; stride 2 with
/// uneven padding; dilation 2; groups 2; groups 2 with stride 2 and
/// padding.
const CONVS: [(Conv2dAttrs, [usize; 2]); 5] = [
    (conv_attrs([1, 1], [0; 4], [1, 1], 1), [3, 3]),
    (conv_attrs([2, 2], [1, 0, 2, 1], [1, 1], 1), [3, 2]),
    (conv_attrs([1, 1], [1, 1, 1, 1], [2, 2], 1), [2, 3]),
    (conv_attrs([1, 1], [0, 1, 0, 1], [1, 1], 2), [2, 2]),
    (conv_attrs([2, 1], [1, 1, 0, 0], [1, 2], 2), [3, 2]),
];

const fn conv_attrs(
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    groups: usize,
) -> Conv2dAttrs {
    Conv2dAttrs {
        strides,
        pads,
        dilations,
        groups,
    }
}

/// Pooling rows' windows: 2×2 stride 2; 3×3 stride 2 with padding in
/// ceil mode; 2×2 dilation 2 stride 1 with uneven padding.
const POOLS: [Pool2dAttrs; 3] = [
    Pool2dAttrs {
        kernel: [2, 2],
        strides: [2, 2],
        pads: [0; 4],
        dilations: [1, 1],
        ceil_mode: false,
    },
    Pool2dAttrs {
        kernel: [3, 3],
        strides: [2, 2],
        pads: [1, 1, 1, 1],
        dilations: [1, 1],
        ceil_mode: true,
    },
    Pool2dAttrs {
        kernel: [2, 2],
        strides: [1, 1],
        pads: [1, 0, 0, 1],
        dilations: [2, 2],
        ceil_mode: false,
    },
];

/// The spatial size a gradient row's case stores in `target`.
fn hw(c: &Case) -> [usize; 2] {
    [c.target[0], c.target[1]]
}

/// An input's spatial size for a window `k` taps `d` apart: the window
/// plus 0..=3.
fn spatial_sizes(k: [usize; 2], d: [usize; 2]) -> impl Strategy<Value = [usize; 2]> {
    let span = |a: usize| d[a] * (k[a] - 1) + 1;
    (span(0)..=span(0) + 3, span(1)..=span(1) + 3).prop_map(|(h, w)| [h, w])
}

/// Cases of convolution row `i` of [`CONVS`]: `kind` 0 gives (x, w), 1
/// (w, dy) and 2 (x, dy); `target` holds x's spatial size.
fn conv_cases(i: usize, kind: usize) -> BoxedStrategy<Case> {
    let (c, k) = CONVS[i];
    (
        1usize..=2,
        1usize..=2,
        1usize..=2,
        spatial_sizes(k, c.dilations),
        any::<u64>(),
    )
        .prop_map(move |(n, cg, mg, [h, w], seed)| {
            let g = c.groups;
            let out = |a: usize, size: usize| {
                let pad = [c.pads[a], c.pads[a + 2]];
                out_size(size, k[a], c.strides[a], c.dilations[a], pad, false).unwrap()
            };
            let x = vec![n, cg * g, h, w];
            let wt = vec![mg * g, cg, k[0], k[1]];
            let y = vec![n, mg * g, out(0, h), out(1, w)];
            let shapes = match kind {
                0 => vec![x, wt],
                1 => vec![wt, y],
                _ => vec![x, y],
            };
            Case {
                target: vec![h, w],
                seed,
                ..Case::of(shapes)
            }
        })
        .boxed()
}

/// Cases of pooling row `i` of [`POOLS`]: `kind` 0 gives (x), 1 (x, dy),
/// 2 (x, x-shaped v) and 3 (dy); `target` holds x's spatial size.
fn pool_cases(i: usize, kind: usize) -> BoxedStrategy<Case> {
    let p = POOLS[i];
    (
        1usize..=2,
        1usize..=2,
        spatial_sizes(p.kernel, p.dilations),
        any::<u64>(),
    )
        .prop_map(move |(n, ch, [h, w], seed)| {
            let o = pool_out(&p, [h, w]).unwrap();
            let x = vec![n, ch, h, w];
            let y = vec![n, ch, o[0], o[1]];
            let shapes = match kind {
                0 => vec![x],
                1 => vec![x, y],
                2 => vec![x.clone(), x],
                _ => vec![y],
            };
            Case {
                target: vec![h, w],
                seed,
                ..Case::of(shapes)
            }
        })
        .boxed()
}

/// Every op of the set (serialized names).
const ALL_OPS: &[&str] = &[
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Rsqrt",
    "Tanh",
    "Sigmoid",
    "Relu",
    "Erf",
    "Gelu",
    "Cast",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Equal",
    "Greater",
    "Where",
    "MatMul",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "Reshape",
    "Transpose",
    "Broadcast",
    "Concat",
    "Slice",
    "Pad",
    "Constant",
    "Gather",
    "ScatterAdd",
    "OneHot",
    "Softmax",
    "LogSoftmax",
    "LayerNorm",
    "LayerNormGrad",
    "GeluGrad",
    "Dropout",
    "CausalMask",
    "SoftmaxCrossEntropy",
    "SoftmaxCrossEntropyGrad",
    "Mse",
    "TopK",
    "MoeRoute",
    "GroupedMatMul",
    "GroupedMatMulGradW",
    "GatherRows",
    "ScatterAddRows",
    "AllToAll",
    "AllToAllCombine",
    "AllReduce",
    "Conv2d",
    "Conv2dGradInput",
    "Conv2dGradWeight",
    "MaxPool2d",
    "MaxPool2dGrad",
    "MaxPool2dSelect",
    "AvgPool2d",
    "AvgPool2dGrad",
];

#[test]
fn every_op_has_a_row() {
    let rows = table();
    assert_eq!(ALL_OPS.len(), 60);
    for &op in ALL_OPS {
        assert!(rows.iter().any(|r| r.op == op), "no row for {op}");
    }
    for r in &rows {
        assert_eq!(r.dom.len(), r.arity, "row {}", r.label);
    }
}

// ----- helpers of the dedicated tests -----

fn t(shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec())
}

fn input(b: &mut Builder, name: &str, dtype: DType, shape: &[usize]) -> ValueId {
    b.input(name, dtype, Shape::of(shape), InputRole::Data)
        .unwrap()
}

/// Runs the first- and second-order checks and panics with the report.
fn assert_checks(g: &Graph, wrt: &[ValueId], feeds: &BTreeMap<ValueId, Tensor>) {
    let opts = Options::default();
    let first = gradcheck::check(g, wrt, feeds, &opts).unwrap();
    assert!(first.passed(), "{first}");
    let second = gradcheck::check_second_order(g, wrt, feeds, &opts).unwrap();
    assert!(second.passed(), "{second}");
    assert_eq!(second.order, 2);
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + y.abs()))
}

// ----- dedicated tests -----

/// The grouped-matmul cases exercise an expert with no rows and rows past
/// `offsets[E]`, and their offsets are valid.
#[test]
fn moe_offsets_have_an_empty_group_and_a_dropped_tail() {
    let (mut empty, mut tail) = (0, 0);
    for seed in 0..64 {
        let mut mix = Mix(seed);
        let (experts, rows) = (1 + mix.below(4), 1 + mix.below(8));
        let o = moe_offsets(experts, rows, &mut mix);
        assert_eq!((o.len(), o[0]), (experts + 1, 0));
        assert!(o.windows(2).all(|w| w[0] <= w[1]) && o[experts] <= rows);
        if rows >= 2 {
            assert!(o[experts] >= 1 && o[experts] < rows, "{o:?} of {rows}");
        }
        empty += usize::from(o.windows(2).any(|w| w[0] == w[1]));
        tail += usize::from(o[experts] < rows);
        if experts >= 2 {
            assert!(o.windows(2).any(|w| w[0] == w[1]), "{o:?}");
        }
    }
    assert!(empty > 32 && tail > 32, "{empty} {tail}");
}

/// An embedding lookup where rows repeat: the gradient rows accumulate.
#[test]
fn gather_with_repeated_indices_accumulates_gradient_rows() {
    let mut b = Builder::new("embedding");
    let table = input(&mut b, "table", DType::F64, &[4, 3]);
    let ids = input(&mut b, "ids", DType::I64, &[2, 3]);
    let y = b.gather(table, ids, 0).unwrap();
    b.output(y);
    let g = b.finish().unwrap();
    assert_eq!(g.static_shape(y), vec![2, 3, 3]);
    let idx = [1.0, 3.0, 1.0, 1.0, 0.0, 3.0];
    let values: Vec<f64> = (0..12).map(|i| 0.1 * i as f64 - 0.5).collect();
    let feeds = BTreeMap::from([(table, t(&[4, 3], &values)), (ids, t(&[2, 3], &idx))]);
    let u: Vec<f64> = (0..18).map(|i| 1.0 + i as f64).collect();
    let got = gradcheck::autodiff_vjp(
        &g,
        &[table],
        &feeds,
        &EvalCx::default(),
        &[t(&[2, 3, 3], &u)],
    )
    .unwrap();
    let mut want = vec![0.0; 12];
    for (p, &row) in idx.iter().enumerate() {
        for c in 0..3 {
            want[row as usize * 3 + c] += u[p * 3 + c];
        }
    }
    assert_eq!(got[0].shape, vec![4, 3]);
    assert!(
        close(&got[0].data, &want),
        "got {:?}, want {want:?}",
        got[0].data
    );
    // Row 1 appears three times, row 3 twice, row 2 never.
    assert_eq!(
        &want[3..6],
        &[1.0 + 7.0 + 10.0, 2.0 + 8.0 + 11.0, 3.0 + 9.0 + 12.0]
    );
    assert_eq!(&want[6..9], &[0.0, 0.0, 0.0]);
    assert_checks(&g, &[table], &feeds);
}

/// ReduceMax splits the cotangent equally among tied maxima; FD is not
/// valid at a tie, but the VJP values and the adjoint identity are.
#[test]
fn reduce_max_splits_ties_equally() {
    let mut b = Builder::new("ties");
    let x = input(&mut b, "x", DType::F64, &[2, 3]);
    let rows = b.max(x, &[1], false).unwrap();
    let all = b.max(x, &[0, -1], true).unwrap();
    b.output(rows);
    b.output(all);
    let g = b.finish().unwrap();
    let feeds = BTreeMap::from([(x, t(&[2, 3], &[1.0, 3.0, 3.0, 3.0, 3.0, 3.0]))]);
    let cx = EvalCx::default();
    let u = [t(&[2], &[1.0, 2.0]), t(&[1, 1], &[10.0])];
    let got = gradcheck::autodiff_vjp(&g, &[x], &feeds, &cx, &u).unwrap();
    let want = [
        0.0,
        0.5 + 2.0,
        0.5 + 2.0,
        2.0 / 3.0 + 2.0,
        2.0 / 3.0 + 2.0,
        2.0 / 3.0 + 2.0,
    ];
    assert!(
        close(&got[0].data, &want),
        "got {:?}, want {want:?}",
        got[0].data
    );
    let report = gradcheck::check(&g, &[x], &feeds, &Options::default()).unwrap();
    assert!(report.adjoint.passed(), "{report}");
}

/// The broadcasting example [3, 1, 4] with [2, 1] for every float binary op.
#[test]
fn binary_ops_broadcast_3x1x4_with_2x1() {
    type BinaryBuild = fn(&mut Builder, ValueId, ValueId) -> adjoint_graph::Result<ValueId>;
    let ops: [(&str, BinaryBuild); 5] = [
        ("add", Builder::add),
        ("sub", Builder::sub),
        ("mul", Builder::mul),
        ("div", Builder::div),
        ("pow", Builder::pow),
    ];
    for (name, op) in ops {
        let mut b = Builder::new(name);
        let a = input(&mut b, "a", DType::F64, &[3, 1, 4]);
        let c = input(&mut b, "c", DType::F64, &[2, 1]);
        let y = op(&mut b, a, c).unwrap();
        b.output(y);
        let g = b.finish().unwrap();
        assert_eq!(g.static_shape(y), vec![3, 2, 4], "{name}");
        let av: Vec<f64> = (0..12).map(|i| 0.6 + 0.13 * i as f64).collect();
        let feeds = BTreeMap::from([(a, t(&[3, 1, 4], &av)), (c, t(&[2, 1], &[0.7, -1.3]))]);
        assert_checks(&g, &[a, c], &feeds);
    }
}

/// Batched matmul [2, 1, M, K] x [3, K, N] under all four transpose flags.
#[test]
fn matmul_broadcasts_batch_dims_under_all_transpose_flags() {
    let (m, k, n) = (2, 3, 4);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut b = Builder::new("mm");
        let sa: &[usize] = if ta { &[2, 1, k, m] } else { &[2, 1, m, k] };
        let sb: &[usize] = if tb { &[3, n, k] } else { &[3, k, n] };
        let a = input(&mut b, "a", DType::F64, sa);
        let c = input(&mut b, "b", DType::F64, sb);
        let y = b.matmul_t(a, c, ta, tb).unwrap();
        b.output(y);
        let g = b.finish().unwrap();
        assert_eq!(g.static_shape(y), vec![2, 3, m, n]);
        let mut mix = Mix(u64::from(ta) * 2 + u64::from(tb));
        let feeds = BTreeMap::from([
            (a, values(Real, sa, &Case::default(), &mut mix)),
            (c, values(Real, sb, &Case::default(), &mut mix)),
        ]);
        assert_checks(&g, &[a, c], &feeds);
    }
}

// ----- the harness itself -----

/// sigmoid(x) and, as the "wrong rule", tanh(x) built with the same names,
/// at one point.
struct Sigmoid {
    g: Graph,
    wrong: Graph,
    x: ValueId,
    feeds: BTreeMap<ValueId, Tensor>,
}

/// J·v or Jᵀ·u: one tensor per output or per `wrt`.
type Products = Result<Vec<Tensor>, String>;

impl Sigmoid {
    fn new() -> Sigmoid {
        let build = |wrong: bool| {
            let mut b = Builder::new("f");
            let x = input(&mut b, "x", DType::F64, &[2, 3]);
            let y = if wrong {
                b.tanh(x).unwrap()
            } else {
                b.sigmoid(x).unwrap()
            };
            b.output(y);
            (b.finish().unwrap(), x)
        };
        let (g, x) = build(false);
        let (wrong, _) = build(true);
        let feeds = BTreeMap::from([(x, t(&[2, 3], &[-1.5, -0.2, 0.0, 0.4, 1.1, 2.0]))]);
        Sigmoid { g, wrong, x, feeds }
    }

    /// J·v of `graph` (`self.g` or `self.wrong`) from its JVP rules.
    fn jvp(&self, graph: &Graph, v: &[Tensor]) -> Products {
        gradcheck::autodiff_jvp(graph, &[self.x], &self.feeds, &EvalCx::default(), v)
    }

    /// Jᵀ·u of `graph` (`self.g` or `self.wrong`) from its VJP rules.
    fn vjp(&self, graph: &Graph, u: &[Tensor]) -> Products {
        gradcheck::autodiff_vjp(graph, &[self.x], &self.feeds, &EvalCx::default(), u)
    }

    /// `gradcheck::check_with` on the sigmoid with the given J·v and Jᵀ·u.
    fn check_with(
        &self,
        mut jvp: impl FnMut(&[Tensor]) -> Products,
        mut vjp: impl FnMut(&[Tensor]) -> Products,
    ) -> Result<gradcheck::Report, String> {
        let opts = Options::default();
        gradcheck::check_with(&self.g, &[self.x], &self.feeds, &opts, &mut jvp, &mut vjp)
    }
}

#[test]
fn harness_catches_a_wrong_vjp() {
    let s = Sigmoid::new();
    let r = s
        .check_with(|v| s.jvp(&s.g, v), |u| s.vjp(&s.wrong, u))
        .unwrap();
    assert!(r.fd_vs_jvp.passed(), "{r}");
    assert!(
        !r.fd_vs_vjp.passed() && !r.adjoint.passed() && !r.passed(),
        "{r}"
    );
    let text = r.to_string();
    assert!(
        text.contains("FAILED") && text.contains("adjoint") && text.contains("FAIL"),
        "{text}"
    );
    assert!(r.into_result().is_err());
}

#[test]
fn harness_catches_a_wrong_jvp() {
    let s = Sigmoid::new();
    let r = s
        .check_with(|v| s.jvp(&s.wrong, v), |u| s.vjp(&s.g, u))
        .unwrap();
    assert!(
        !r.fd_vs_jvp.passed() && !r.adjoint.passed() && r.fd_vs_vjp.passed(),
        "{r}"
    );
    let worst = r.fd_vs_jvp.worst.as_ref().unwrap();
    assert_eq!(worst.output, "sigmoid");
    assert!(worst.error > worst.allowed);
}

/// A gradient off by 0.1% in one element is caught; the exact one passes.
#[test]
fn harness_catches_a_slightly_perturbed_gradient() {
    let s = Sigmoid::new();
    for scale in [1.0, 1.001] {
        let vjp = |u: &[Tensor]| {
            let mut grads = s.vjp(&s.g, u)?;
            grads[0].data[4] *= scale;
            Ok(grads)
        };
        let r = s.check_with(|v| s.jvp(&s.g, v), vjp).unwrap();
        assert_eq!(r.passed(), scale == 1.0, "{r}");
    }
}

#[test]
fn harness_reports_nans_and_wrong_shapes() {
    let s = Sigmoid::new();
    let nans = |_: &[Tensor]| Ok(vec![Tensor::full(&[2, 3], f64::NAN)]);
    let r = s.check_with(nans, |u| s.vjp(&s.g, u)).unwrap();
    assert_eq!(r.fd_vs_jvp.failed, 6, "{r}");
    assert!(r.fd_vs_jvp.worst.as_ref().unwrap().jvp.is_nan());
    let transposed = |_: &[Tensor]| Ok(vec![Tensor::zeros(&[3, 2])]);
    let e = s.check_with(transposed, |u| s.vjp(&s.g, u)).unwrap_err();
    assert!(e.contains("shape [3, 2]"), "{e}");
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let mut b = Builder::new("g");
    let x = input(&mut b, "x", DType::F64, &[2]);
    let i = input(&mut b, "i", DType::I64, &[2]);
    let y = b.exp(x).unwrap();
    let g = b.finish().unwrap();
    let opts = Options::default();
    let mut feeds = BTreeMap::new();
    let err = |g: &Graph, wrt: &[ValueId], feeds: &BTreeMap<ValueId, Tensor>| {
        gradcheck::check(g, wrt, feeds, &opts).unwrap_err()
    };
    assert!(err(&g, &[x], &feeds).contains("input 'x' is not fed"));
    assert!(err(&g, &[], &feeds).contains("wrt is empty"));
    assert!(err(&g, &[i], &feeds).contains("cannot differentiate a i64"));
    assert!(err(&g, &[y], &feeds).contains("not a graph input, parameter or state"));
    assert!(err(&g, &[x, x], &feeds).contains("listed twice"));
    assert!(err(&g, &[ValueId(99)], &feeds).contains("not in the graph"));
    feeds.insert(
        x,
        Tensor {
            shape: vec![2],
            data: vec![1.0],
        },
    );
    feeds.insert(i, t(&[2], &[0.0, 1.0]));
    assert!(err(&g, &[x], &feeds).contains("holds 2 elements, but 1 are given"));
    feeds.insert(x, t(&[2], &[1.0, 2.0]));
    assert!(err(&g, &[x], &feeds).contains("no float output"));
    feeds.insert(x, t(&[3], &[1.0, 2.0, 3.0]));
    let mut with_out = g.clone();
    with_out.outputs.push(y);
    assert!(err(&with_out, &[x], &feeds).contains("expected shape [2]"));
}

#[test]
fn checks_are_deterministic_and_seeded() {
    let s = Sigmoid::new();
    let check = |opts: &Options| gradcheck::check(&s.g, &[s.x], &s.feeds, opts).unwrap();
    let opts = Options::default();
    let a = check(&opts);
    assert_eq!(a, check(&opts));
    assert_ne!(a, check(&Options { seed: 1, ..opts }));
}
