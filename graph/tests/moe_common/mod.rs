//! Data, feeds and gradient runs shared by the MoE tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use adjoint_graph::autodiff::grad;
use adjoint_graph::interp::{EvalCx, Tensor, run};
use adjoint_graph::rng::Stream;
use adjoint_graph::zoo::{MoeConfig, MoeLayerConfig, MoeTransformerConfig, TransformerConfig};
use adjoint_graph::{Graph, ValueId};

/// Standard normal values, deterministic in `site`.
pub fn normal(shape: &[usize], site: u64) -> Tensor {
    let s = Stream {
        seed: 23,
        step: 0,
        rank: 0,
        site,
    };
    let n = shape.iter().product::<usize>();
    Tensor::new(shape.to_vec(), (0..n as u64).map(|i| s.normal(i)).collect())
}

/// Feeds for every float input and parameter of `g` (normal values times
/// `scale` of the parameter's name, or 1), keyed by value; int inputs get
/// `i mod classes`.
pub fn feeds(g: &Graph, classes: usize) -> BTreeMap<ValueId, Tensor> {
    let mut f = BTreeMap::new();
    for (k, i) in g.inputs.iter().enumerate() {
        let shape = g.static_shape(i.value);
        let t = if g.ty(i.value).dtype.is_int() {
            let n = shape.iter().product::<usize>();
            let v = (0..n).map(|j| ((j * 7 + k * 3) % classes) as f64).collect();
            Tensor::new(shape, v)
        } else {
            normal(&shape, 100 + k as u64)
        };
        f.insert(i.value, t);
    }
    for p in &g.params {
        let t = normal(&g.static_shape(p.value), 200 + p.value.0 as u64);
        f.insert(p.value, t.map(|v| 0.5 * v));
    }
    f
}

/// The value of `loss` and the gradients of every trainable parameter,
/// by name, on the interpreter.
pub fn loss_and_grads(
    g: &Graph,
    loss: ValueId,
    feeds: &BTreeMap<ValueId, Tensor>,
) -> (Tensor, BTreeMap<String, Tensor>) {
    let params = g.trainable_params();
    let joint = grad(g, loss, &params).unwrap();
    // The joint graph numbers values anew: re-key the feeds by name.
    let feeds: BTreeMap<ValueId, Tensor> = feeds
        .iter()
        .filter_map(|(&v, t)| Some((joint.graph.find(g.name_of(v))?, t.clone())))
        .collect();
    let env = run(&joint.graph, &feeds, &EvalCx::default()).unwrap();
    let value = env[joint.loss.index()].clone().unwrap();
    let grads = joint
        .grads
        .iter()
        .map(|&(p, gv)| {
            let name = joint.graph.name_of(p).to_owned();
            (name, env[gv.index()].clone().unwrap())
        })
        .collect();
    (value, grads)
}

/// Largest `|a - b| / (1 + |b|)` over two tensors of one shape.
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    (a.data.iter().zip(&b.data))
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f64::max)
}

/// A small layer: E 4, top-2, hidden 5, the given capacity factor,
/// aux 0.01 and z 0.001.
pub fn small_layer(capacity_factor: f64) -> MoeLayerConfig {
    MoeLayerConfig {
        experts: 4,
        top_k: 2,
        hidden: 5,
        capacity_factor,
        aux_weight: 0.01,
        z_weight: 0.001,
    }
}

/// The `moe` model at d 3 and the layer of [`small_layer`].
pub fn small_moe(tokens: Option<usize>, capacity_factor: f64) -> MoeConfig {
    MoeConfig {
        d_model: 3,
        layer: small_layer(capacity_factor),
        tokens,
    }
}

/// A 2-block moe-transformer: vocab 11, d 8, 2 heads, seq 4, batch 2;
/// E 4, top-2, experts 8→6→8.
pub fn small_moe_transformer() -> MoeTransformerConfig {
    MoeTransformerConfig {
        transformer: TransformerConfig {
            vocab: 11,
            d_model: 8,
            layers: 2,
            heads: 2,
            seq: 4,
            batch: Some(2),
        },
        layer: MoeLayerConfig {
            hidden: 6,
            ..small_layer(0.0)
        },
    }
}
