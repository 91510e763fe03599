//! Models, feeds and runs shared by the checkpoint tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use adjoint_graph::autodiff::{GradGraph, grad};
use adjoint_graph::interp::{EvalCx, Tensor, run};
use adjoint_graph::rng::Stream;
use adjoint_graph::zoo::{self, ChainConfig, MlpConfig, TransformerConfig};
use adjoint_graph::{Builder, DType, Graph, Init, InputRole, Shape, ValueId, init};

pub fn joint_of(g: &Graph) -> GradGraph {
    grad(g, g.loss.unwrap(), &g.trainable_params()).unwrap()
}

pub fn small_chain(layers: usize, width: usize, batch: usize) -> Graph {
    zoo::chain(&ChainConfig {
        layers,
        width,
        batch: Some(batch),
    })
    .unwrap()
}

pub fn small_mlp() -> Graph {
    zoo::mlp(&MlpConfig {
        input: 6,
        hidden: vec![5, 4],
        classes: 3,
        batch: Some(4),
    })
    .unwrap()
}

pub fn small_transformer(layers: usize) -> Graph {
    zoo::transformer(&TransformerConfig {
        vocab: 11,
        d_model: 8,
        layers,
        heads: 2,
        seq: 4,
        batch: Some(2),
    })
    .unwrap()
}

/// A residual MLP with dropout: `h = dropout(relu(x·W1 + b1))`,
/// `y = tanh(h·W2 + b2 + x)`, then a second such block, loss = MSE to a
/// target. The residual makes the forward pass a DAG; dropout draws from
/// the counter-based RNG, so a recompute must replay its mask.
pub fn residual_dropout_mlp() -> Graph {
    let (batch, d, hidden) = (4, 6, 5);
    let mut b = Builder::new("residual_dropout_mlp");
    let x = b
        .input("x", DType::F64, Shape::of(&[batch, d]), InputRole::Data)
        .unwrap();
    let target = b
        .input(
            "target",
            DType::F64,
            Shape::of(&[batch, d]),
            InputRole::Label,
        )
        .unwrap();
    let normal = Init::Normal {
        mean: 0.0,
        std: 0.5,
    };
    let mut h = x;
    for block in 0..2 {
        let w1 = b
            .param(
                &format!("b{block}.w1"),
                DType::F64,
                &[d, hidden],
                normal.clone(),
            )
            .unwrap();
        let b1 = b
            .param(
                &format!("b{block}.b1"),
                DType::F64,
                &[hidden],
                normal.clone(),
            )
            .unwrap();
        let w2 = b
            .param(
                &format!("b{block}.w2"),
                DType::F64,
                &[hidden, d],
                normal.clone(),
            )
            .unwrap();
        let b2 = b
            .param(&format!("b{block}.b2"), DType::F64, &[d], normal.clone())
            .unwrap();
        b.push_scope(&format!("b{block}"));
        let a = b.matmul(h, w1).unwrap();
        let a = b.add(a, b1).unwrap();
        let a = b.relu(a).unwrap();
        let a = b.dropout(a, 0.5, 17 + block as u64).unwrap();
        let y = b.matmul(a, w2).unwrap();
        let y = b.add(y, b2).unwrap();
        let y = b.add(y, h).unwrap();
        h = b.tanh(y).unwrap();
        b.pop_scope();
    }
    let loss = b.mse(h, target).unwrap();
    b.rename(loss, "loss").unwrap();
    b.loss(loss);
    b.finish().unwrap()
}

fn random(shape: &[usize], site: u64) -> Tensor {
    let s = Stream {
        seed: 11,
        step: 0,
        rank: 0,
        site,
    };
    let n = shape.iter().product::<usize>();
    Tensor::new(shape.to_vec(), (0..n as u64).map(|i| s.normal(i)).collect())
}

/// Feeds for every input (normal data; integer inputs in `[0, classes)`)
/// and parameter (its initializer plus noise), keyed by value id of `g`.
pub fn feeds(g: &Graph, classes: usize) -> BTreeMap<ValueId, Tensor> {
    let mut f = BTreeMap::new();
    for (k, i) in g.inputs.iter().enumerate() {
        let shape = g.static_shape(i.value);
        let t = if g.ty(i.value).dtype.is_int() {
            let n = shape.iter().product::<usize>();
            Tensor::new(
                shape,
                (0..n).map(|j| ((j * 7 + k * 3) % classes) as f64).collect(),
            )
        } else {
            random(&shape, 100 + k as u64)
        };
        f.insert(i.value, t);
    }
    for p in &g.params {
        let mut t = init::materialize(g, p.value, &p.init, 3).unwrap();
        let noise = random(&t.shape, 200 + p.value.0 as u64);
        for (x, n) in t.data.iter_mut().zip(&noise.data) {
            *x += 0.3 * n;
        }
        f.insert(p.value, t);
    }
    f
}

/// Every value of `g` after one run with `feeds` and RNG seed 5, step 2.
pub fn run_all(g: &Graph, feeds: &BTreeMap<ValueId, Tensor>) -> Vec<Option<Tensor>> {
    let cx = EvalCx {
        seed: 5,
        step: 2,
        rank: 0,
        exact_float_casts: false,
    };
    run(g, feeds, &cx).unwrap()
}
