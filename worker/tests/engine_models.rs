//! Whole workload models (small sizes) on the CPU engine against the f64
//! reference interpreter: the loss and every gradient of the joint graph,
//! and a short training run that lowers the loss.

mod common;

use adjoint_graph::Graph;
use adjoint_graph::interp::Tensor;
use adjoint_graph::zoo::{self, ChainConfig, MlpConfig, TransformerConfig};
use adjoint_kernels::CpuBackend;
use adjoint_worker::{ExecOptions, OptimizerConfig, Trainer};
use common::*;

fn small_mlp() -> Graph {
    zoo::mlp(&MlpConfig {
        input: 20,
        hidden: vec![16, 12],
        classes: 5,
        batch: Some(8),
    })
    .unwrap()
}

fn small_transformer() -> Graph {
    zoo::transformer(&TransformerConfig {
        vocab: 17,
        d_model: 16,
        layers: 2,
        heads: 4,
        seq: 8,
        batch: Some(3),
    })
    .unwrap()
}

/// Inputs: ints below `classes` by a fixed pattern, floats from a sine.
fn inputs(g: &Graph, classes: usize) -> Vec<(String, Tensor)> {
    g.inputs
        .iter()
        .enumerate()
        .map(|(k, i)| {
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
            (g.name_of(i.value).to_owned(), Tensor::new(shape, data))
        })
        .collect()
}

fn compare(g: &Graph, classes: usize, rtol: f64, atol: f64) {
    let vals = values(g, 5);
    let j = joint(g);
    let mut feeds = joint_feeds(g, &j.graph, &vals);
    for (name, t) in inputs(g, classes) {
        feeds.insert(j.graph.find(&name).unwrap(), t);
    }
    let want = run_reference(&j, &feeds);
    let got = run_engine(&j, &feeds, ExecOptions::default());
    assert_close(&g.name, &got, &want, rtol, atol);
    let poisoned = run_engine(
        &j,
        &feeds,
        ExecOptions {
            poison_freed: true,
            ..ExecOptions::default()
        },
    );
    assert_eq!(
        got, poisoned,
        "{}: poisoning freed buffers changed the results",
        g.name
    );
}

#[test]
fn mlp_loss_and_gradients_match_the_reference() {
    compare(&small_mlp(), 5, 1e-4, 1e-6);
}

#[test]
fn transformer_loss_and_gradients_match_the_reference() {
    compare(&small_transformer(), 17, 1e-3, 1e-5);
}

#[test]
fn chain_loss_and_gradients_match_the_reference() {
    let g = zoo::chain(&ChainConfig {
        layers: 4,
        width: 24,
        batch: Some(5),
    })
    .unwrap();
    compare(&g, 1, 1e-4, 1e-5);
}

fn train_losses(g: &Graph, classes: usize, opt: OptimizerConfig, steps: usize) -> Vec<f32> {
    let mut t = Trainer::new(CpuBackend::new(), g, opt, ExecOptions::default(), 1).unwrap();
    let data: Vec<Vec<u8>> = inputs(g, classes)
        .into_iter()
        .zip(&g.inputs)
        .map(|((_, t), i)| {
            adjoint_worker::executor::encode(
                adjoint_worker::program::elem_type(g.ty(i.value).dtype).unwrap(),
                &t.data,
            )
        })
        .collect();
    let feed: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    (0..steps).map(|_| t.step(&feed).unwrap().loss).collect()
}

#[test]
fn training_lowers_the_loss() {
    let sgd = OptimizerConfig::parse("sgd:lr=0.1,momentum=0.9").unwrap();
    let losses = train_losses(&small_mlp(), 5, sgd, 30);
    assert!(losses[29] < 0.5 * losses[0], "mlp losses {losses:?}");
    let losses = train_losses(&small_transformer(), 17, OptimizerConfig::adamw(3e-3), 30);
    assert!(
        losses[29] < 0.8 * losses[0],
        "transformer losses {losses:?}"
    );
}

#[test]
fn steps_are_deterministic() {
    let a = train_losses(&small_transformer(), 17, OptimizerConfig::adamw(1e-3), 5);
    let b = train_losses(&small_transformer(), 17, OptimizerConfig::adamw(1e-3), 5);
    assert_eq!(a, b);
}
