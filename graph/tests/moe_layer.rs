//! The MoE layer's numbers on the f64 interpreter: outputs and every
//! parameter gradient equal a dense reference (every expert on every token
//! by batched matmul over E, masked by the routing one-hot, the weights and
//! slot_keep), dropless and under capacity; an expert that gets no token
//! gets an exactly-zero gradient slice; a symbolic token count gives the
//! fixed one's numbers.

mod moe_common;

use std::collections::BTreeMap;

use adjoint_graph::interp::{EvalCx, Tensor, run};
use adjoint_graph::ops::GeluApprox;
use adjoint_graph::zoo::{MoeLayerConfig, MoeOut, moe, moe_layer};
use adjoint_graph::{Builder, DType, Dim, Graph, InputRole, Shape, ValueId};
use moe_common::{feeds, loss_and_grads, max_rel_diff, normal, small_layer, small_moe};

const T: usize = 12;
const D: usize = 3;

/// `Σ_e mask[t, e] · W2_e(gelu(W1_e x_t))`, every expert on every token.
fn dense(b: &mut Builder, x: ValueId, out: &MoeOut, cfg: &MoeLayerConfig) -> ValueId {
    let g = b.graph();
    let (w1, w2) = (g.find("moe.w1").unwrap(), g.find("moe.w2").unwrap());
    let e = cfg.experts;
    let x1 = b.reshape(x, Shape::of(&[1, T, D])).unwrap();
    let h = b.matmul(x1, w1).unwrap();
    let h = b.gelu(h, GeluApprox::Tanh).unwrap();
    let ye = b.matmul(h, w2).unwrap();
    assert_eq!(b.shape(ye), &Shape::of(&[e, T, D]));
    // mask [T, E] = Σ_k one_hot(ids)·weight·keep.
    let hot = b.one_hot(out.ids, e, DType::F64).unwrap();
    let cw = b.mul(out.weights, out.slot_keep).unwrap();
    let cw = b.reshape(cw, Shape::of(&[T, cfg.top_k, 1])).unwrap();
    let mask = b.mul(hot, cw).unwrap();
    let mask = b.sum(mask, &[1], false).unwrap();
    let mask = b.transpose(mask, &[1, 0]).unwrap();
    let mask = b.reshape(mask, Shape::of(&[e, T, 1])).unwrap();
    let y = b.mul(ye, mask).unwrap();
    b.sum(y, &[0], false).unwrap()
}

/// `⟨u, y⟩ + aux` for a fixed random `u`.
fn probe(b: &mut Builder, y: ValueId, aux: ValueId) -> ValueId {
    let u = b
        .input("u", DType::F64, Shape::of(&[T, D]), InputRole::Data)
        .unwrap();
    let p = b.mul(y, u).unwrap();
    let p = b.sum_all(p).unwrap();
    b.add(p, aux).unwrap()
}

/// The layer and its dense reference on one graph: outputs the two `y`,
/// `slot_keep` and `offsets`; returns the graph and the two losses.
fn layer_and_dense(cfg: &MoeLayerConfig) -> (Graph, ValueId, ValueId) {
    let mut b = Builder::new("moe-vs-dense");
    let x = b
        .input("x", DType::F64, Shape::of(&[T, D]), InputRole::Data)
        .unwrap();
    let out = moe_layer(&mut b, "moe", x, cfg).unwrap();
    let y_dense = dense(&mut b, x, &out, cfg);
    let aux = out.aux_loss.unwrap();
    let loss = probe(&mut b, out.y, aux);
    let u = b.graph().find("u").unwrap();
    let p = b.mul(y_dense, u).unwrap();
    let p = b.sum_all(p).unwrap();
    let loss_dense = b.add(p, aux).unwrap();
    for v in [out.y, y_dense, out.slot_keep, out.offsets] {
        b.output(v);
    }
    (b.finish().unwrap(), loss, loss_dense)
}

/// Checks the layer against the dense reference; returns slot_keep.
fn check_against_dense(cfg: &MoeLayerConfig) -> Tensor {
    let (g, loss, loss_dense) = layer_and_dense(cfg);
    let f = feeds(&g, 1);
    let env = run(&g, &f, &EvalCx::default()).unwrap();
    let get = |i: usize| env[g.outputs[i].index()].clone().unwrap();
    let (y, y_dense, keep) = (get(0), get(1), get(2));
    assert!(max_rel_diff(&y, &y_dense) <= 1e-10, "{y:?} vs {y_dense:?}");
    assert!(y.data.iter().any(|&v| v != 0.0));
    let (l, grads) = loss_and_grads(&g, loss, &f);
    let (l_dense, grads_dense) = loss_and_grads(&g, loss_dense, &f);
    assert!(max_rel_diff(&l, &l_dense) <= 1e-10);
    assert_eq!(grads.len(), 3);
    for (name, gr) in &grads {
        let diff = max_rel_diff(gr, &grads_dense[name]);
        assert!(
            diff <= 1e-10,
            "{name}: {diff:e}\n{gr:?}\n{:?}",
            grads_dense[name]
        );
        assert!(gr.data.iter().any(|&v| v != 0.0), "{name} is all zero");
    }
    keep
}

#[test]
fn dropless_layer_equals_the_dense_reference() {
    let keep = check_against_dense(&small_layer(0.0));
    assert!(keep.data.iter().all(|&k| k == 1.0));
}

#[test]
fn layer_under_capacity_equals_the_masked_dense_reference() {
    // R = 24 slots over 4 experts at factor 0.5: 3 rows per expert, so at
    // least 12 slots drop.
    let keep = check_against_dense(&small_layer(0.5));
    let dropped = keep.data.iter().filter(|&&k| k == 0.0).count();
    assert!(dropped >= 12, "{dropped} dropped");
    // Factor 1: some drop, most are kept.
    let keep = check_against_dense(&small_layer(1.0));
    let dropped = keep.data.iter().filter(|&&k| k == 0.0).count();
    assert!(dropped > 0 && dropped < 12, "{dropped} dropped");
}

#[test]
fn an_expert_without_tokens_gets_an_exactly_zero_gradient() {
    let cfg = small_layer(0.0);
    let (g, loss, _) = layer_and_dense(&cfg);
    let mut f = feeds(&g, 1);
    // Positive tokens and a gate column of -5 for the last expert: its
    // logit is far below every other, so no token picks it.
    let x = g.find("x").unwrap();
    let xs = f[&x].map(|v| v.abs() + 0.1);
    f.insert(x, xs);
    let gate = g.find("moe.gate.weight").unwrap();
    let mut w = f[&gate].clone();
    let e = cfg.experts;
    for row in 0..D {
        w.data[row * e + e - 1] = -5.0;
    }
    f.insert(gate, w);
    let env = run(&g, &f, &EvalCx::default()).unwrap();
    let offsets = env[g.outputs[3].index()].clone().unwrap();
    assert_eq!(offsets.data[e - 1], offsets.data[e], "{offsets:?}");
    let (_, grads) = loss_and_grads(&g, loss, &f);
    for (name, width) in [("moe.w1", D * cfg.hidden), ("moe.w2", cfg.hidden * D)] {
        let gr = &grads[name];
        let (idle, busy) = gr.data.split_at((e - 1) * width);
        assert!(busy.iter().all(|&v| v.to_bits() == 0), "{name}: {busy:?}");
        assert!(idle.iter().any(|&v| v != 0.0), "{name}");
    }
}

/// The `moe` model's loss and gradients with `x` and `target` fed.
fn model_numbers(g: &Graph, x: &Tensor, target: &Tensor) -> (Tensor, BTreeMap<String, Tensor>) {
    let mut f = feeds(g, 1);
    f.insert(g.find("x").unwrap(), x.clone());
    f.insert(g.find("target").unwrap(), target.clone());
    loss_and_grads(g, g.loss.unwrap(), &f)
}

#[test]
fn a_symbolic_token_count_gives_the_fixed_numbers() {
    for capacity_factor in [0.0, 0.5] {
        let fixed = moe(&small_moe(Some(T), capacity_factor)).unwrap();
        let symbolic = moe(&small_moe(None, capacity_factor)).unwrap();
        let x = symbolic.find("x").unwrap();
        assert_eq!(symbolic.ty(x).shape.dims()[0], Dim::Batch);
        let bound = symbolic.bind_batch(T);
        let (x, target) = (normal(&[T, D], 1), normal(&[T, D], 2));
        let (l_fixed, g_fixed) = model_numbers(&fixed, &x, &target);
        let (l_sym, g_sym) = model_numbers(&bound, &x, &target);
        assert!(max_rel_diff(&l_sym, &l_fixed) <= 1e-12);
        assert_eq!(g_fixed.len(), 3);
        for (name, gr) in &g_fixed {
            let diff = max_rel_diff(&g_sym[name], gr);
            assert!(diff <= 1e-12, "{name} (factor {capacity_factor}): {diff:e}");
        }
    }
}

#[test]
fn router_values_match_their_formulas() {
    let cfg = small_layer(0.0);
    let mut b = Builder::new("router");
    let x = b
        .input("x", DType::F64, Shape::of(&[T, D]), InputRole::Data)
        .unwrap();
    let out = moe_layer(&mut b, "moe", x, &cfg).unwrap();
    let values = [
        out.logits,
        out.probs,
        out.ids,
        out.weights,
        out.switch_loss.unwrap(),
        out.z_loss.unwrap(),
        out.aux_loss.unwrap(),
    ];
    for v in values {
        b.output(v);
    }
    let g = b.finish().unwrap();
    let env = run(&g, &feeds(&g, 1), &EvalCx::default()).unwrap();
    let [logits, probs, ids, weights, switch, z, aux] =
        values.map(|v| env[v.index()].clone().unwrap());
    let (e, k) = (cfg.experts, cfg.top_k);
    let (mut share, mut mean_prob, mut z_want) = (vec![0.0; e], vec![0.0; e], 0.0);
    for t in 0..T {
        let row = &probs.data[t * e..(t + 1) * e];
        let chosen: Vec<usize> = (0..k).map(|j| ids.data[t * k + j] as usize).collect();
        // The ids are the k largest probabilities, best first.
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        assert_eq!(chosen, order[..k]);
        let total: f64 = chosen.iter().map(|&c| row[c]).sum();
        for (j, &c) in chosen.iter().enumerate() {
            let w = weights.data[t * k + j];
            assert!((w - row[c] / total).abs() < 1e-15);
        }
        share[chosen[0]] += 1.0 / T as f64;
        for (m, p) in mean_prob.iter_mut().zip(row) {
            *m += p / T as f64;
        }
        let l = &logits.data[t * e..(t + 1) * e];
        let lse = l.iter().map(|v| v.exp()).sum::<f64>().ln();
        z_want += lse * lse / T as f64;
    }
    let switch_want = e as f64
        * share
            .iter()
            .zip(&mean_prob)
            .map(|(f, p)| f * p)
            .sum::<f64>();
    assert!(
        (switch.data[0] - switch_want).abs() < 1e-14,
        "{switch:?} vs {switch_want}"
    );
    assert!(
        (z.data[0] - z_want).abs() < 1e-12 * z_want.max(1.0),
        "{z:?} vs {z_want}"
    );
    let aux_want = cfg.aux_weight * switch_want + cfg.z_weight * z_want;
    assert!((aux.data[0] - aux_want).abs() < 1e-14);
}
