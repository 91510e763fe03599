//! The precision rewrite: where casts go, that f32 is untouched, and (with
//! float casts made exact) that the rewritten graph computes the original's
//! loss and gradients, so every inserted cast has a correct VJP.

use std::collections::BTreeMap;

use super::{Precision, apply};
use crate::autodiff::grad;
use crate::gradcheck::{self, Options};
use crate::interp::{EvalCx, Tensor, run_outputs};
use crate::ops::{Binary, Loss, Moe, Nn, Op, ReduceKind, Unary};
use crate::zoo::{
    MlpConfig, MoeLayerConfig, MoeTransformerConfig, TransformerConfig, mlp, moe_transformer,
    transformer,
};
use crate::{DType, Graph, ValueId, init};

fn small_transformer() -> TransformerConfig {
    TransformerConfig {
        vocab: 11,
        d_model: 8,
        layers: 1,
        heads: 2,
        seq: 4,
        batch: Some(2),
    }
}

/// Small versions of the workload models, batch bound.
fn models() -> Vec<(&'static str, Graph)> {
    let mlp = mlp(&MlpConfig {
        input: 6,
        hidden: vec![5, 4],
        classes: 3,
        batch: Some(4),
    });
    let moe = moe_transformer(&MoeTransformerConfig {
        transformer: small_transformer(),
        layer: MoeLayerConfig {
            experts: 4,
            top_k: 2,
            hidden: 6,
            capacity_factor: 0.0,
            aux_weight: 0.01,
            z_weight: 0.001,
        },
    });
    vec![
        ("mlp", mlp.unwrap()),
        ("transformer", transformer(&small_transformer()).unwrap()),
        ("moe-transformer", moe.unwrap()),
    ]
}

/// Inputs (ints in range, floats smooth) and parameters from their
/// initializers.
fn feeds(g: &Graph) -> BTreeMap<ValueId, Tensor> {
    let mut f = BTreeMap::new();
    for (k, i) in g.inputs.iter().enumerate() {
        let shape = g.static_shape(i.value);
        let n: usize = shape.iter().product();
        let data = if g.ty(i.value).dtype.is_int() {
            (0..n).map(|j| ((j * 7 + k * 3) % 3) as f64).collect()
        } else {
            (0..n).map(|j| (j as f64 * 0.37 + k as f64).sin()).collect()
        };
        f.insert(i.value, Tensor::new(shape, data));
    }
    for p in &g.params {
        f.insert(p.value, init::materialize(g, p.value, &p.init, 3).unwrap());
    }
    f
}

fn cx(exact: bool) -> EvalCx {
    EvalCx {
        seed: 1,
        exact_float_casts: exact,
        ..EvalCx::default()
    }
}

/// The loss and every trainable parameter's gradient.
fn loss_and_grads(g: &Graph, feeds: &BTreeMap<ValueId, Tensor>, exact: bool) -> Vec<Tensor> {
    let joint = grad(g, g.loss.unwrap(), &g.trainable_params()).unwrap();
    let mut by_name = BTreeMap::new();
    for (&v, t) in feeds {
        if let Some(j) = joint.graph.find(g.name_of(v)) {
            by_name.insert(j, t.clone());
        }
    }
    run_outputs(&joint.graph, &by_name, &cx(exact)).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    let scale = b.data.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f64::max)
}

fn input_types(g: &Graph, node: &crate::Node) -> Vec<DType> {
    node.inputs
        .iter()
        .map(|&v| g.ty(v).dtype)
        .filter(|d| d.is_float())
        .collect()
}

#[test]
fn f32_policy_returns_the_graph_unchanged() {
    for (name, g) in models() {
        assert_eq!(apply(&g, Precision::F32).unwrap(), g, "{name}");
    }
}

#[test]
fn precision_names_parse_and_print() {
    for p in Precision::ALL {
        assert_eq!(Precision::parse(p.name()), Ok(p));
    }
    assert_eq!(Precision::parse(""), Ok(Precision::F32));
    assert_eq!(Precision::parse("f16"), Ok(Precision::Fp16));
    let err = Precision::parse("int8").unwrap_err();
    assert!(err.contains("'int8'") && err.contains("bf16"), "{err}");
}

#[test]
fn matmuls_run_in_the_half_type_and_sensitive_ops_in_f32() {
    for precision in [Precision::Bf16, Precision::Fp16] {
        let half = precision.half().unwrap();
        for (name, g) in models() {
            let r = apply(&g, precision).unwrap();
            let (mut lowered, mut widened) = (0, 0);
            for node in &r.nodes {
                let types = input_types(&r, node);
                match &node.op {
                    Op::MatMul(_) | Op::Moe(Moe::GroupedMatMul { .. }) => {
                        assert!(types.iter().all(|&d| d == half), "{name}: {}", node.name);
                        lowered += 1;
                    }
                    Op::Nn(Nn::Softmax { .. } | Nn::LogSoftmax { .. } | Nn::LayerNorm { .. })
                    | Op::Loss(Loss::SoftmaxCrossEntropy | Loss::Mse)
                    | Op::Moe(Moe::TopK { .. })
                    | Op::Unary(Unary::Exp | Unary::Log) => {
                        assert!(
                            types.iter().all(|&d| d == DType::F32),
                            "{name}: {}",
                            node.name
                        );
                        widened += 1;
                    }
                    Op::Reduce(red) if red.kind != ReduceKind::Max => {
                        assert!(
                            types.iter().all(|&d| d == DType::F32),
                            "{name}: {}",
                            node.name
                        );
                    }
                    _ => {}
                }
            }
            assert!(lowered > 0 && widened > 0, "{name}: {lowered} {widened}");
            // Master weights, outputs and the loss keep their types.
            for p in &r.params {
                assert_eq!(r.ty(p.value), g.ty(p.value), "{name}");
            }
            assert_eq!(r.outputs.len(), g.outputs.len());
            for (a, b) in r.outputs.iter().zip(&g.outputs) {
                assert_eq!(r.ty(*a), g.ty(*b), "{name}");
                assert_eq!(r.name_of(*a), g.name_of(*b), "{name}");
            }
            assert_eq!(r.ty(r.loss.unwrap()).dtype, DType::F32, "{name}");
        }
    }
}

#[test]
fn a_linear_layer_adds_its_bias_in_the_half_type_and_residuals_promote() {
    let g = &models()[1].1;
    let r = apply(g, Precision::Bf16).unwrap();
    let producers = r.producers();
    let mut bias_adds = 0;
    let mut residuals = 0;
    for node in &r.nodes {
        if node.op != Op::Binary(Binary::Add) {
            continue;
        }
        let from_matmul = node
            .inputs
            .iter()
            .any(|&v| producers[v.index()].is_some_and(|n| matches!(r.node(n).op, Op::MatMul(_))));
        let out = r.ty(node.outputs[0]).dtype;
        if from_matmul && out == DType::BF16 {
            bias_adds += 1;
        }
        if out == DType::F32 && input_types(&r, node).len() == 2 {
            residuals += 1;
        }
    }
    // qkv, attention out, two MLP matmuls and the head have a bias each
    // (in this zoo model); the two residual adds stay in f32.
    assert!(bias_adds >= 4, "{bias_adds}");
    assert!(residuals >= 2, "{residuals}");
}

#[test]
fn with_exact_casts_the_rewrite_keeps_loss_and_gradients() {
    for (name, g) in models() {
        let f = feeds(&g);
        let want = loss_and_grads(&g, &f, false);
        for precision in [Precision::Bf16, Precision::Fp16] {
            let r = apply(&g, precision).unwrap();
            let got = loss_and_grads(&r, &f, true);
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let rel = max_rel(a, b);
                assert!(rel <= 1e-12, "{name} {precision} output {i}: rel {rel}");
            }
        }
    }
}

#[test]
fn rounded_bf16_stays_near_f32_but_does_round() {
    for (name, g) in models() {
        let f = feeds(&g);
        let want = loss_and_grads(&g, &f, false);
        let got = loss_and_grads(&apply(&g, Precision::Bf16).unwrap(), &f, false);
        let rel = max_rel(&got[0], &want[0]);
        assert!(rel > 0.0 && rel < 1e-3, "{name}: loss rel {rel}");
        // The tiny MLP's ReLUs flip on rounding (one sample of four moves
        // a whole column), so its gradients are not compared.
        if name == "mlp" {
            continue;
        }
        for (i, (a, b)) in got.iter().zip(&want).enumerate().skip(1) {
            let rel = max_rel(a, b);
            assert!(rel < 2e-2, "{name}: gradient {i} rel {rel}");
        }
    }
}

#[test]
fn gradients_check_against_finite_differences_through_the_casts() {
    let g = &models()[0].1;
    let r = apply(g, Precision::Bf16).unwrap();
    let casts = r
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Unary(Unary::Cast(_))))
        .count();
    assert!(casts >= 4, "{casts}");
    let opts = Options {
        eval: cx(true),
        ..Options::default()
    };
    let wrt = r.trainable_params();
    let report = gradcheck::check(&r, &wrt, &feeds(&r), &opts).unwrap();
    assert!(report.passed(), "{report}");
}

#[test]
fn f64_graphs_are_left_alone() {
    let mut b = crate::Builder::new("f64");
    let x = b
        .input(
            "x",
            DType::F64,
            crate::Shape::of(&[2, 3]),
            crate::InputRole::Data,
        )
        .unwrap();
    let w = b
        .input(
            "w",
            DType::F64,
            crate::Shape::of(&[3, 2]),
            crate::InputRole::Data,
        )
        .unwrap();
    let y = b.matmul(x, w).unwrap();
    b.output(y);
    let g = b.finish().unwrap();
    assert_eq!(apply(&g, Precision::Bf16).unwrap(), g);
}
