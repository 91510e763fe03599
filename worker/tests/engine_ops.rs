//! Every op on the CPU engine against the f64 reference interpreter,
//! forward and backward: for each op, the loss Σ⟨w, op(params)⟩ and every
//! parameter's gradient from the compiled joint graph match the
//! interpreter's within a two-sided tolerance.

mod common;

use adjoint_graph::ops::{Conv2dAttrs, GeluApprox, Pool2dAttrs};
use adjoint_graph::{Builder, DType, Graph, Init, InputRole, Shape, ValueId};
use common::*;

const NORMAL: Init = Init::Normal {
    mean: 0.0,
    std: 1.0,
};
const POSITIVE: Init = Init::Uniform {
    low: 0.5,
    high: 2.0,
};

/// Builds `loss = Σ_k sum(out_k · w_k)` around the outputs `build` returns.
fn model(name: &str, build: impl FnOnce(&mut Builder) -> Vec<ValueId>) -> Graph {
    let mut b = Builder::new(name);
    let outs = build(&mut b);
    let mut total = None;
    for (k, o) in outs.into_iter().enumerate() {
        let shape = b.graph().static_shape(o);
        let w = b
            .frozen_param(&format!("w{k}"), DType::F32, &shape, NORMAL)
            .unwrap();
        let prod = b.mul(o, w).unwrap();
        let s = b.sum_all(prod).unwrap();
        total = Some(match total {
            None => s,
            Some(t) => b.add(t, s).unwrap(),
        });
    }
    let loss = total.unwrap();
    b.loss(loss);
    b.finish().unwrap()
}

fn p(b: &mut Builder, name: &str, shape: &[usize], init: Init) -> ValueId {
    b.param(name, DType::F32, shape, init).unwrap()
}

macro_rules! unary_case {
    ($test:ident, $method:ident, $init:expr) => {
        #[test]
        fn $test() {
            check_engine(
                model(stringify!($method), |b| {
                    let x = p(b, "x", &[3, 70], $init);
                    vec![b.$method(x).unwrap()]
                }),
                &[],
            );
        }
    };
}

unary_case!(neg, neg, NORMAL);
unary_case!(exp, exp, NORMAL);
unary_case!(log, log, POSITIVE);
unary_case!(sqrt, sqrt, POSITIVE);
unary_case!(rsqrt, rsqrt, POSITIVE);
unary_case!(tanh, tanh, NORMAL);
unary_case!(sigmoid, sigmoid, NORMAL);
unary_case!(relu, relu, NORMAL);
unary_case!(erf, erf, NORMAL);

#[test]
fn gelu_both_forms() {
    for approx in [GeluApprox::Tanh, GeluApprox::Erf] {
        check_engine(
            model("gelu", |b| {
                let x = p(b, "x", &[4, 33], NORMAL);
                vec![b.gelu(x, approx).unwrap()]
            }),
            &[],
        );
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    let shapes: [(&[usize], &[usize]); 4] = [
        (&[3, 4], &[3, 4]),
        (&[3, 1, 4], &[2, 1]),
        (&[5, 6], &[6]),
        (&[2, 3], &[]),
    ];
    for (sa, sb) in shapes {
        check_engine(
            model("add_sub_mul", |b| {
                let x = p(b, "x", sa, NORMAL);
                let y = p(b, "y", sb, NORMAL);
                vec![
                    b.add(x, y).unwrap(),
                    b.sub(x, y).unwrap(),
                    b.mul(x, y).unwrap(),
                ]
            }),
            &[],
        );
        check_engine(
            model("div_pow", |b| {
                let x = p(b, "x", sa, POSITIVE);
                let y = p(b, "y", sb, POSITIVE);
                vec![b.div(x, y).unwrap(), b.pow(x, y).unwrap()]
            }),
            &[],
        );
    }
}

#[test]
fn comparisons_and_select() {
    check_engine(
        model("where", |b| {
            let x = p(b, "x", &[4, 5], NORMAL);
            let y = p(b, "y", &[5], NORMAL);
            let c = b.greater(x, y).unwrap();
            let e = b.equal(x, x).unwrap();
            let s = b.select(c, x, y).unwrap();
            let t = b.select(e, s, x).unwrap();
            vec![t]
        }),
        &[],
    );
}

#[test]
fn matmul_all_flag_combinations_and_broadcast_batches() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        check_engine(
            model("matmul", |b| {
                let a_shape: &[usize] = if ta { &[2, 1, 5, 3] } else { &[2, 1, 3, 5] };
                let b_shape: &[usize] = if tb { &[3, 4, 5] } else { &[3, 5, 4] };
                let x = p(b, "a", a_shape, NORMAL);
                let y = p(b, "b", b_shape, NORMAL);
                vec![b.matmul_t(x, y, ta, tb).unwrap()]
            }),
            &[],
        );
    }
    check_engine(
        model("linear", |b| {
            let x = p(b, "x", &[2, 7, 6], NORMAL);
            let w = p(b, "w", &[6, 9], NORMAL);
            vec![b.matmul(x, w).unwrap()]
        }),
        &[],
    );
}

#[test]
fn reductions() {
    for axes in [&[0i64][..], &[1], &[-1], &[0, 2], &[0, 1, 2]] {
        for keep in [false, true] {
            check_engine(
                model("reduce", |b| {
                    let x = p(b, "x", &[3, 4, 5], NORMAL);
                    vec![
                        b.sum(x, axes, keep).unwrap(),
                        b.mean(x, axes, keep).unwrap(),
                        b.max(x, axes, keep).unwrap(),
                    ]
                }),
                &[],
            );
        }
    }
}

#[test]
fn movement_ops() {
    check_engine(
        model("movement", |b| {
            let x = p(b, "x", &[2, 3, 4], NORMAL);
            let y = p(b, "y", &[2, 5, 4], NORMAL);
            let r = b.reshape(x, Shape::of(&[6, 4])).unwrap();
            let t = b.transpose(x, &[2, 0, 1]).unwrap();
            let br = b.broadcast(x, Shape::of(&[3, 2, 3, 4])).unwrap();
            let c = b.concat(&[x, y], 1).unwrap();
            let s = b.slice(y, 1, 1, 4).unwrap();
            let pd = b.pad(x, -1, 2, 1).unwrap();
            vec![r, t, br, c, s, pd]
        }),
        &[],
    );
}

#[test]
fn gather_scatter_with_repeated_indices_and_one_hot() {
    let mut bld = Builder::new("embedding");
    let table = p(&mut bld, "table", &[5, 3], NORMAL);
    let ids = bld
        .input("ids", DType::I64, Shape::of(&[2, 4]), InputRole::Data)
        .unwrap();
    let rows = bld.gather(table, ids, 0).unwrap();
    let hot = bld.one_hot(ids, 5, DType::F32).unwrap();
    let mixed = bld.matmul(hot, table).unwrap();
    let both = bld.add(rows, mixed).unwrap();
    let w = bld
        .frozen_param("w", DType::F32, &[2, 4, 3], NORMAL)
        .unwrap();
    let prod = bld.mul(both, w).unwrap();
    let loss = bld.sum_all(prod).unwrap();
    bld.loss(loss);
    check_engine(
        bld.finish().unwrap(),
        &[("ids", vec![1.0, 3.0, 1.0, 1.0, 0.0, 4.0, 3.0, 1.0])],
    );
}

#[test]
fn softmax_log_softmax_on_every_axis() {
    for axis in [0i64, 1, -1] {
        check_engine(
            model("softmax", |b| {
                let x = p(b, "x", &[3, 4, 5], NORMAL);
                vec![b.softmax(x, axis).unwrap(), b.log_softmax(x, axis).unwrap()]
            }),
            &[],
        );
    }
}

#[test]
fn layer_norm_and_its_gradients() {
    check_engine(
        model("layer_norm", |b| {
            let x = p(b, "x", &[2, 3, 16], NORMAL);
            let g = p(b, "gamma", &[16], POSITIVE);
            let be = p(b, "beta", &[16], NORMAL);
            vec![b.layer_norm(x, g, be, 1e-5).unwrap()]
        }),
        &[],
    );
}

#[test]
fn dropout_replays_the_reference_mask() {
    check_engine(
        model("dropout", |b| {
            let x = p(b, "x", &[8, 40], NORMAL);
            vec![b.dropout(x, 0.3, 1234).unwrap()]
        }),
        &[],
    );
}

#[test]
fn causal_attention_scores() {
    check_engine(
        model("attention", |b| {
            let q = p(b, "q", &[2, 6, 4], NORMAL);
            let k = p(b, "k", &[2, 6, 4], NORMAL);
            let s = b.matmul_t(q, k, false, true).unwrap();
            let m = b.causal_mask(s, f64::NEG_INFINITY).unwrap();
            vec![b.softmax(m, -1).unwrap()]
        }),
        &[],
    );
}

#[test]
fn losses() {
    let mut bld = Builder::new("cross_entropy");
    let logits = p(&mut bld, "logits", &[2, 3, 7], NORMAL);
    let labels = bld
        .input("labels", DType::I64, Shape::of(&[2, 3]), InputRole::Label)
        .unwrap();
    let loss = bld.softmax_cross_entropy(logits, labels).unwrap();
    bld.loss(loss);
    check_engine(
        bld.finish().unwrap(),
        &[("labels", vec![0.0, 6.0, 3.0, 3.0, 1.0, 5.0])],
    );

    let mut bld = Builder::new("mse");
    let pred = p(&mut bld, "pred", &[4, 5], NORMAL);
    let target = p(&mut bld, "target", &[4, 5], NORMAL);
    let loss = bld.mse(pred, target).unwrap();
    bld.loss(loss);
    check_engine(bld.finish().unwrap(), &[]);
}

fn conv(
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

/// Convolutions (plain, strided and padded, dilated, grouped, pointwise)
/// with a bias, forward and both gradients.
#[test]
fn conv2d_variants() {
    let cases = [
        ([2, 3, 9, 9], [4, 3, 3, 3], conv([1, 1], [0; 4], [1, 1], 1)),
        (
            [2, 3, 9, 8],
            [5, 3, 3, 2],
            conv([2, 2], [1, 0, 2, 1], [1, 1], 1),
        ),
        (
            [1, 4, 10, 10],
            [6, 2, 3, 3],
            conv([1, 2], [2, 2, 2, 2], [2, 2], 2),
        ),
        ([3, 4, 6, 6], [4, 1, 3, 3], conv([1, 1], [1; 4], [1, 1], 4)),
        ([2, 6, 5, 7], [3, 6, 1, 1], conv([1, 1], [0; 4], [1, 1], 1)),
    ];
    for (xs, ws, attrs) in cases {
        check_engine(
            model("conv2d", |b| {
                let x = p(b, "x", &xs, NORMAL);
                let w = p(b, "w", &ws, NORMAL);
                let bias = p(b, "bias", &[ws[0], 1, 1], NORMAL);
                let y = b.conv2d(x, w, attrs).unwrap();
                vec![b.add(y, bias).unwrap()]
            }),
            &[],
        );
    }
}

/// The convolution gradients as ops of their own (their backward runs
/// Conv2d and each other).
#[test]
fn conv2d_gradient_ops() {
    let attrs = conv([2, 1], [1, 1, 0, 1], [1, 1], 2);
    check_engine(
        model("conv2d_grads", |b| {
            let x = p(b, "x", &[2, 4, 7, 6], NORMAL);
            let w = p(b, "w", &[6, 2, 3, 2], NORMAL);
            let dy = p(b, "dy", &[2, 6, 3, 7], NORMAL);
            vec![
                b.conv2d_grad_input(w, dy, attrs, [7, 6]).unwrap(),
                b.conv2d_grad_weight(x, dy, attrs, [3, 2]).unwrap(),
            ]
        }),
        &[],
    );
}

/// Max and average pools (padding, ceil mode, dilation, count_include_pad)
/// and the pool gradient ops.
#[test]
fn pools() {
    let windows = [
        Pool2dAttrs::square(2, 2),
        Pool2dAttrs {
            pads: [1; 4],
            ceil_mode: true,
            ..Pool2dAttrs::square(3, 2)
        },
        Pool2dAttrs {
            pads: [1, 0, 0, 1],
            dilations: [2, 2],
            ..Pool2dAttrs::square(2, 1)
        },
    ];
    for pool in windows {
        check_engine(
            model("pools", |b| {
                let x = p(b, "x", &[2, 3, 7, 6], NORMAL);
                let v = p(b, "v", &[2, 3, 7, 6], NORMAL);
                let y = b.max_pool2d(x, pool).unwrap();
                let dy = p(b, "dy", &b.graph().static_shape(y), NORMAL);
                vec![
                    y,
                    b.max_pool2d_select(x, v, pool).unwrap(),
                    b.max_pool2d_grad(x, dy, pool).unwrap(),
                    b.avg_pool2d(x, pool, false).unwrap(),
                    b.avg_pool2d(x, pool, true).unwrap(),
                    b.avg_pool2d_grad(dy, pool, true, [7, 6]).unwrap(),
                ]
            }),
            &[],
        );
    }
}
