//! Unit tests of the convolution and pooling family: values by hand,
//! output sizes (padding, stride, dilation, ceil mode), shape errors and
//! the attribute round trip. Gradient checks are in
//! `graph/tests/grad_ops.rs`.

use super::*;
use crate::DType;
use crate::ops::Op;
use crate::ops::test_util::{check_gradients, parse_err, t, ty};

const F: DType = DType::F64;

fn ev1(op: Conv, inputs: &[&Tensor]) -> Tensor {
    op.eval(inputs, &EvalCx::default()).unwrap().remove(0)
}

#[test]
fn conv2d_by_hand() {
    // x 1×1×3×3 = 1..9, w 1×1×2×2 = [1, 0; 0, -1]: y = x[i,j] - x[i+1,j+1].
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let w = t(&[1, 1, 2, 2], &[1., 0., 0., -1.]);
    let y = ev1(Conv::Conv2d(Conv2dAttrs::default()), &[&x, &w]);
    assert_eq!(y.shape, vec![1, 1, 2, 2]);
    assert_eq!(y.data, vec![-4.; 4]);
    // Padding 1 everywhere, stride 2: windows at (-1,-1), (-1,1), (1,-1), (1,1).
    let c = Conv2dAttrs {
        strides: [2, 2],
        pads: [1, 1, 1, 1],
        ..Conv2dAttrs::default()
    };
    let y = ev1(Conv::Conv2d(c), &[&x, &w]);
    assert_eq!(y.shape, vec![1, 1, 2, 2]);
    assert_eq!(y.data, vec![-1., -3., -7., 5. - 9.]);
}

#[test]
fn conv2d_groups_keep_channels_apart() {
    // Two channels, groups 2, 1×1 kernels: y_c = w_c · x_c.
    let x = t(&[1, 2, 1, 2], &[1., 2., 3., 4.]);
    let w = t(&[2, 1, 1, 1], &[10., 100.]);
    let c = Conv2dAttrs {
        groups: 2,
        ..Conv2dAttrs::default()
    };
    let y = ev1(Conv::Conv2d(c), &[&x, &w]);
    assert_eq!(y.data, vec![10., 20., 300., 400.]);
}

#[test]
fn output_sizes() {
    assert_eq!(out_size(5, 3, 1, 1, [0, 0], false), Some(3));
    assert_eq!(out_size(5, 3, 2, 1, [1, 1], false), Some(3));
    assert_eq!(out_size(7, 3, 1, 2, [0, 0], false), Some(3));
    // Ceil mode: 4 wide, window 3, stride 2 → floor 1, ceil 2.
    assert_eq!(out_size(4, 3, 2, 1, [0, 0], false), Some(1));
    assert_eq!(out_size(4, 3, 2, 1, [0, 0], true), Some(2));
    // A last window that would start in the end padding is dropped.
    assert_eq!(out_size(4, 2, 2, 1, [0, 1], true), Some(2));
    assert_eq!(out_size(2, 3, 1, 1, [0, 0], false), None);
}

#[test]
fn pools_by_hand() {
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 9., 6., 7., 8., 5.]);
    let p = Pool2dAttrs::square(2, 1);
    let y = ev1(Conv::MaxPool2d(p), &[&x]);
    assert_eq!(y.data, vec![9.; 4]);
    let dy = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let dx = ev1(Conv::MaxPool2dGrad(p), &[&x, &dy]);
    assert_eq!(dx.data, vec![0., 0., 0., 0., 10., 0., 0., 0., 0.]);
    let sel = ev1(Conv::MaxPool2dSelect(p), &[&x, &x]);
    assert_eq!(sel.data, vec![9.; 4]);
    let avg = |count_include_pad| Conv::AvgPool2d {
        pool: Pool2dAttrs {
            pads: [1, 1, 0, 0],
            ..Pool2dAttrs::square(2, 2)
        },
        count_include_pad,
    };
    // Windows: {1}, {2,3}, {4,7}, {9,6,8,5}.
    let y = ev1(avg(false), &[&x]);
    assert_eq!(y.data, vec![1., 2.5, 5.5, 7.]);
    let y = ev1(avg(true), &[&x]);
    assert_eq!(y.data, vec![0.25, 1.25, 2.75, 7.]);
}

#[test]
fn max_pool_padding_never_wins() {
    let x = t(&[1, 1, 1, 2], &[-5., -7.]);
    let p = Pool2dAttrs {
        pads: [0, 1, 0, 1],
        ..Pool2dAttrs::square(1, 1)
    };
    let p = Pool2dAttrs {
        kernel: [1, 2],
        ..p
    };
    let y = ev1(Conv::MaxPool2d(p), &[&x]);
    assert_eq!(y.data, vec![-5., -5., -7.]);
}

#[test]
fn shape_rules() {
    let c = Op::Conv(Conv::Conv2d(Conv2dAttrs {
        groups: 2,
        ..Conv2dAttrs::default()
    }));
    let out = c
        .infer(&[&ty(F, &[2, 4, 5, 5]), &ty(F, &[6, 2, 3, 3])])
        .unwrap();
    assert_eq!(out[0], ty(F, &[2, 6, 3, 3]));
    let e = c
        .infer(&[&ty(F, &[2, 4, 5, 5]), &ty(F, &[6, 4, 3, 3])])
        .unwrap_err();
    assert!(e.contains("groups = 2"), "{e}");
    let e = c
        .infer(&[&ty(F, &[2, 4, 5]), &ty(F, &[6, 2, 3])])
        .unwrap_err();
    assert!(e.contains("only 2-D"), "{e}");
    let e = c
        .infer(&[&ty(F, &[2, 4, 2, 2]), &ty(F, &[6, 2, 3, 3])])
        .unwrap_err();
    assert!(e.contains("smaller than the dilated kernel"), "{e}");
    let gi = Op::Conv(Conv::Conv2dGradInput {
        conv: Conv2dAttrs {
            strides: [2, 2],
            ..Conv2dAttrs::default()
        },
        input: [6, 6],
    });
    let out = gi
        .infer(&[&ty(F, &[3, 2, 2, 2]), &ty(F, &[1, 3, 3, 3])])
        .unwrap();
    assert_eq!(out[0], ty(F, &[1, 2, 6, 6]));
    let p = Op::Conv(Conv::MaxPool2d(Pool2dAttrs {
        ceil_mode: true,
        ..Pool2dAttrs::square(3, 2)
    }));
    assert_eq!(
        p.infer(&[&ty(F, &[1, 1, 4, 4])]).unwrap()[0],
        ty(F, &[1, 1, 2, 2])
    );
}

#[test]
fn attribute_round_trip() {
    let conv = Conv2dAttrs {
        strides: [2, 1],
        pads: [1, 0, 2, 1],
        dilations: [1, 2],
        groups: 3,
    };
    let pool = Pool2dAttrs {
        kernel: [3, 2],
        strides: [2, 2],
        pads: [1, 0, 1, 1],
        dilations: [1, 1],
        ceil_mode: true,
    };
    for op in [
        Conv::Conv2d(conv),
        Conv::Conv2dGradInput {
            conv,
            input: [7, 8],
        },
        Conv::Conv2dGradWeight {
            conv,
            kernel: [3, 3],
        },
        Conv::MaxPool2d(pool),
        Conv::MaxPool2dGrad(pool),
        Conv::MaxPool2dSelect(pool),
        Conv::AvgPool2d {
            pool,
            count_include_pad: true,
        },
        Conv::AvgPool2dGrad {
            pool,
            count_include_pad: false,
            input: [5, 5],
        },
    ] {
        let back = Conv::parse(op.name(), &op.attrs()).unwrap().unwrap();
        assert_eq!(back, op);
    }
    let e = parse_err::<Conv>("Conv2d", &[("groups", Attr::Int(0))]);
    assert!(e.contains("'groups'"), "{e}");
    let e = parse_err::<Conv>("MaxPool2d", &[("kernel", Attr::Ints(vec![2]))]);
    assert!(e.contains("'kernel'"), "{e}");
    let e = parse_err::<Conv>(
        "MaxPool2d",
        &[
            ("kernel", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![2, 0, 0, 0])),
        ],
    );
    assert!(e.contains("'pads'"), "{e}");
}

#[test]
fn conv_gradients_with_every_attribute() {
    let c = Conv2dAttrs {
        strides: [2, 1],
        pads: [1, 0, 0, 1],
        dilations: [1, 2],
        groups: 2,
    };
    let x: Vec<f64> = (0..2 * 4 * 5 * 5)
        .map(|i| (i as f64 * 0.37).sin())
        .collect();
    let w: Vec<f64> = (0..4 * 2 * 2 * 2)
        .map(|i| (i as f64 * 0.91).cos())
        .collect();
    check_gradients(
        &[(F, vec![2, 4, 5, 5], x), (F, vec![4, 2, 2, 2], w)],
        |b, xs| b.conv2d(xs[0], xs[1], c),
    );
}
