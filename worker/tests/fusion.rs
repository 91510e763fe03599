//! The fusion rewrites (`program::fuse`) change no result: on every
//! workload model (mlp, transformer, moe, moe-transformer, chain) the loss
//! and every gradient of the joint graph with the rewrites on equal those
//! with them off (the fused kernels reuse the unfused ones' scalar math,
//! so they are equal bit for bit; the check allows 1e-6 relative), also
//! with freed buffers poisoned. And the rewrites do fire where they should.

mod common;

use std::collections::BTreeMap;

use adjoint_graph::interp::Tensor;
use adjoint_graph::zoo::{
    self, ChainConfig, MlpConfig, MoeConfig, MoeLayerConfig, MoeTransformerConfig,
    TransformerConfig,
};
use adjoint_graph::{Graph, ValueId};
use adjoint_kernels::CpuBackend;
use adjoint_worker::program::FuseReport;
use adjoint_worker::{ExecOptions, Executor, StepKey};
use common::*;

/// Inputs: ints below `classes` by a fixed pattern, floats from a sine.
fn feeds(g: &Graph, joint: &Graph, classes: usize) -> BTreeMap<ValueId, Tensor> {
    let mut feeds = joint_feeds(g, joint, &values(g, 5));
    for (k, i) in g.inputs.iter().enumerate() {
        let shape = g.static_shape(i.value);
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|j| {
                if g.ty(i.value).dtype.is_int() {
                    ((j * 7 + k * 3 + j / 5) % classes) as f64
                } else {
                    ((j as f64) * 0.37 + k as f64).sin() as f32 as f64
                }
            })
            .collect();
        let v = joint.find(g.name_of(i.value)).unwrap();
        feeds.insert(v, Tensor::new(shape, data));
    }
    feeds
}

/// The loss, every gradient and what fusion did, with `opts`.
fn run(
    j: &adjoint_graph::autodiff::GradGraph,
    feeds: &BTreeMap<ValueId, Tensor>,
    opts: ExecOptions,
) -> (Vec<Vec<f32>>, FuseReport) {
    let mut exec = Executor::new(CpuBackend::new(), j.graph.clone(), &j.grads, opts).unwrap();
    for (&v, t) in feeds {
        exec.write_values(v, &t.data).unwrap();
    }
    let key = StepKey {
        seed: 3,
        step: 1,
        rank: 0,
    };
    // Twice: a second run must not see the first's leftovers.
    for _ in 0..2 {
        exec.run(key, &mut |_, _| {}).unwrap();
    }
    let mut outs = vec![vec![exec.loss().unwrap()]];
    for &(p, _) in &j.grads {
        outs.push(exec.grad(p).unwrap());
    }
    (outs, exec.fusion())
}

fn assert_equal(name: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{name}: output {k}");
        for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
            let tol = 1e-6 * f64::from(b.abs());
            assert!(
                (f64::from(a) - f64::from(b)).abs() <= tol || (a.is_nan() && b.is_nan()),
                "{name}: output {k}[{i}]: fused {a}, unfused {b}"
            );
        }
    }
}

/// Fused against unfused on `g`; returns what fusion did.
fn check(g: &Graph, classes: usize) -> FuseReport {
    let j = joint(g);
    let feeds = feeds(g, &j.graph, classes);
    let off = ExecOptions {
        fuse: false,
        ..ExecOptions::default()
    };
    let (want, none) = run(&j, &feeds, off);
    assert_eq!(
        none,
        FuseReport::default(),
        "{}: fusion ran while off",
        g.name
    );
    let (got, report) = run(&j, &feeds, ExecOptions::default());
    assert_equal(&g.name, &got, &want);
    let poisoned = ExecOptions {
        poison_freed: true,
        ..ExecOptions::default()
    };
    let (got, _) = run(&j, &feeds, poisoned);
    assert_equal(&format!("{} (poisoned)", g.name), &got, &want);
    eprintln!("{}: {report:?}", g.name);
    report
}

#[test]
fn mlp_fused_equals_unfused() {
    // The workload's sizes: ReLU's backward (compare, select) fuses.
    let g = zoo::mlp(&MlpConfig {
        batch: Some(64),
        ..MlpConfig::default()
    })
    .unwrap();
    let r = check(&g, 10);
    assert!(r.chains >= 2, "mlp: {r:?}");
}

#[test]
fn transformer_fused_equals_unfused() {
    let g = zoo::transformer(&TransformerConfig {
        vocab: 17,
        d_model: 16,
        layers: 2,
        heads: 4,
        seq: 8,
        batch: Some(3),
    })
    .unwrap();
    let r = check(&g, 17);
    assert!(r.chains >= 1, "transformer: {r:?}");
}

fn small_layer() -> MoeLayerConfig {
    MoeLayerConfig {
        experts: 4,
        top_k: 2,
        hidden: 24,
        capacity_factor: 0.0,
        aux_weight: 0.01,
        z_weight: 0.0,
    }
}

#[test]
fn moe_fused_equals_unfused() {
    let g = zoo::moe(&MoeConfig {
        d_model: 16,
        layer: small_layer(),
        tokens: Some(40),
    })
    .unwrap();
    let r = check(&g, 1);
    assert_eq!(r.grouped_acts, 1, "moe: {r:?}");
    assert_eq!(r.grouped_gelu_grads, 1, "moe: {r:?}");
}

#[test]
fn moe_transformer_fused_equals_unfused() {
    let g = zoo::moe_transformer(&MoeTransformerConfig {
        transformer: TransformerConfig {
            vocab: 17,
            d_model: 16,
            layers: 2,
            heads: 4,
            seq: 8,
            batch: Some(2),
        },
        layer: small_layer(),
    })
    .unwrap();
    let r = check(&g, 17);
    assert_eq!(r.grouped_acts, 2, "moe-transformer: {r:?}");
    assert_eq!(r.grouped_gelu_grads, 2, "moe-transformer: {r:?}");
}

#[test]
fn chain_fused_equals_unfused() {
    let g = zoo::chain(&ChainConfig {
        layers: 4,
        width: 24,
        batch: Some(5),
    })
    .unwrap();
    check(&g, 1);
}

#[test]
fn env_switch_turns_fusion_off() {
    // Read, not set: tests run in parallel threads of one process.
    let off = adjoint_worker::program::fusion_disabled_by_env();
    assert_eq!(off, std::env::var("ADJOINT_FUSE").is_ok_and(|v| v == "0"));
}
