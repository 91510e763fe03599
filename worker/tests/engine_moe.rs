//! The mixture-of-experts ops on the CPU engine against the f64 reference
//! interpreter: TopK and MoeRoute outputs exactly (ties, skewed routing,
//! capacity drops, empty experts), the grouped matmuls forward and backward
//! in both weight layouts, and the gradient of a whole MoE layer (router,
//! top-k, routing, gathered rows, two grouped matmuls, gated combine).

mod common;

use std::collections::BTreeMap;

use adjoint_graph::interp::{EvalCx, Tensor, run};
use adjoint_graph::{Builder, DType, Graph, Init, InputRole, Shape, ValueId};
use adjoint_kernels::CpuBackend;
use adjoint_worker::{ExecOptions, Executor, StepKey};
use common::*;

const NORMAL: Init = Init::Normal {
    mean: 0.0,
    std: 1.0,
};

const KEY: StepKey = StepKey {
    seed: 3,
    step: 1,
    rank: 0,
};

/// A tiny LCG.
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    fn below(&mut self, bound: usize) -> usize {
        self.next_u32() as usize % bound
    }
}

fn input(b: &mut Builder, name: &str, dtype: DType, shape: &[usize]) -> ValueId {
    b.input(name, dtype, Shape::of(shape), InputRole::Data)
        .unwrap()
}

/// Every graph output, from the engine and from the interpreter.
type Outputs = (Vec<Vec<f32>>, Vec<Vec<f64>>);

/// Runs a forward-only `graph` on the engine and on the interpreter with
/// `feeds` (by input name): every graph output from both, or the engine's
/// error.
fn forward(graph: &Graph, feeds: &[(&str, Vec<f64>)]) -> Result<Outputs, String> {
    let by_id: BTreeMap<ValueId, Tensor> = feeds
        .iter()
        .map(|(name, data)| {
            let v = graph.find(name).unwrap();
            (v, Tensor::new(graph.static_shape(v), data.clone()))
        })
        .collect();
    let mut exec = Executor::new(
        CpuBackend::new(),
        graph.clone(),
        &[],
        ExecOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    for (&v, t) in &by_id {
        exec.write_values(v, &t.data).unwrap();
    }
    exec.run(KEY, &mut |_, _| {}).map_err(|e| e.to_string())?;
    let got = graph
        .outputs
        .iter()
        .map(|&o| exec.read_f32(o).unwrap())
        .collect();
    let cx = EvalCx {
        seed: KEY.seed,
        step: KEY.step,
        rank: KEY.rank,
        exact_float_casts: false,
    };
    let env = run(graph, &by_id, &cx).unwrap();
    let want = graph
        .outputs
        .iter()
        .map(|o| env[o.index()].as_ref().unwrap().data.clone())
        .collect();
    Ok((got, want))
}

/// Engine and interpreter outputs equal exactly (integer outputs).
fn assert_exact(what: &str, got: &[Vec<f32>], want: &[Vec<f64>]) {
    assert_eq!(got.len(), want.len(), "{what}: outputs");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let g: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        assert_eq!(&g, w, "{what}: output {k}");
    }
}

/// `loss = sum(out · w)` with a frozen random `w` shaped like `out`.
fn weighted_loss(b: &mut Builder, out: ValueId) {
    let shape = b.graph().static_shape(out);
    let w = b.frozen_param("w_out", DType::F32, &shape, NORMAL).unwrap();
    let prod = b.mul(out, w).unwrap();
    let loss = b.sum_all(prod).unwrap();
    b.loss(loss);
}

#[test]
fn top_k_equals_the_interpreter_with_ties() {
    let mut rng = Lcg(1);
    let (lead, experts) = ([3usize, 5], 8usize);
    // Small integers: most rows hold ties.
    let x: Vec<f64> = (0..lead[0] * lead[1] * experts)
        .map(|_| rng.below(4) as f64)
        .collect();
    for k in [1, 2, experts] {
        let mut b = Builder::new("top_k");
        let xv = input(&mut b, "x", DType::F32, &[lead[0], lead[1], experts]);
        let ids = b.top_k(xv, k).unwrap();
        b.output(ids);
        let graph = b.finish().unwrap();
        let (got, want) = forward(&graph, &[("x", x.clone())]).unwrap();
        assert_exact("top_k", &got, &want);
    }
}

/// Skewed expert ids for `slots` slots: expert e with weight about 2^-e,
/// never the last expert (so it is empty).
fn skewed_ids(rng: &mut Lcg, slots: usize, experts: usize) -> Vec<f64> {
    (0..slots)
        .map(|_| (rng.next_u32().leading_zeros() as usize - 1).min(experts - 2) as f64)
        .collect()
}

fn route_graph(shape: &[usize], experts: usize, capacity_factor: f64) -> Graph {
    let mut b = Builder::new("moe_route");
    let ids = input(&mut b, "ids", DType::I64, shape);
    for out in b.moe_route(ids, experts, capacity_factor).unwrap() {
        b.output(out);
    }
    b.finish().unwrap()
}

#[test]
fn moe_route_equals_the_interpreter_with_drops_and_empty_experts() {
    let mut rng = Lcg(2);
    let (shape, experts) = ([3usize, 4, 2], 6usize);
    let ids = skewed_ids(&mut rng, 24, experts);
    for factor in [0.0, 0.5, 1.0, 1.25, 4.0] {
        let graph = route_graph(&shape, experts, factor);
        let (got, want) = forward(&graph, &[("ids", ids.clone())]).unwrap();
        assert_exact(&format!("moe_route {factor}"), &got, &want);
    }
    // The hand case of the kernel tests: C = ceil(0.5·12/3) = 2.
    let ids = [0., 1., 0., 2., 0., 1., 1., 0., 0., 2., 1., 2.];
    let graph = route_graph(&[6, 2], 3, 0.5);
    let (got, want) = forward(&graph, &[("ids", ids.to_vec())]).unwrap();
    assert_exact("moe_route hand case", &got, &want);
    assert_eq!(got[3], [0.0, 2.0, 4.0, 6.0]);
}

#[test]
fn moe_route_rejects_an_expert_id_out_of_range() {
    let graph = route_graph(&[2, 2], 3, 0.0);
    let err = forward(&graph, &[("ids", vec![0.0, 2.0, 3.0, 1.0])]).unwrap_err();
    assert!(err.contains('3') && err.contains("[0, 3)"), "{err}");
}

/// Offsets with an empty expert (1) and two dropped tail rows, for R = 12.
const OFFSETS: [f64; 5] = [0.0, 3.0, 3.0, 8.0, 10.0];

#[test]
fn grouped_matmul_forward_and_backward_in_both_layouts() {
    let (d, h) = (5usize, 7usize);
    for transpose_w in [false, true] {
        let mut b = Builder::new("grouped_matmul");
        let x = b.param("x", DType::F32, &[4, 3, d], NORMAL).unwrap();
        let w_shape = if transpose_w { [4, h, d] } else { [4, d, h] };
        let w = b.param("w", DType::F32, &w_shape, NORMAL).unwrap();
        let offsets = input(&mut b, "offsets", DType::I64, &[5]);
        let y = b.grouped_matmul(x, w, offsets, transpose_w).unwrap();
        weighted_loss(&mut b, y);
        check_engine(b.finish().unwrap(), &[("offsets", OFFSETS.to_vec())]);
    }
}

#[test]
fn gather_and_scatter_rows_forward_and_backward() {
    // Rows of x [2, 3, 4] (6 rows) picked with repeats; the scatter puts
    // them back into 2 × 3 rows, so both ops and both VJPs run.
    let idx = vec![5.0, 0.0, 5.0, 2.0];
    let mut b = Builder::new("rows");
    let x = b.param("x", DType::F32, &[2, 3, 4], NORMAL).unwrap();
    let i = input(&mut b, "idx", DType::I64, &[4]);
    let picked = b.gather_rows(x, i).unwrap();
    let back = b
        .scatter_add_rows(picked, i, adjoint_graph::Shape::of(&[2, 3]))
        .unwrap();
    let both = b.mul(back, x).unwrap();
    weighted_loss(&mut b, both);
    check_engine(b.finish().unwrap(), &[("idx", idx)]);
}

#[test]
fn grouped_matmul_grad_w_forward_and_backward_in_both_layouts() {
    let (d, h) = (6usize, 3usize);
    for transpose in [false, true] {
        let mut b = Builder::new("grouped_matmul_grad_w");
        let x = b.param("x", DType::F32, &[12, d], NORMAL).unwrap();
        let dy = b.param("dy", DType::F32, &[12, h], NORMAL).unwrap();
        let offsets = input(&mut b, "offsets", DType::I64, &[5]);
        let dw = b.grouped_matmul_grad_w(x, dy, offsets, transpose).unwrap();
        weighted_loss(&mut b, dw);
        check_engine(b.finish().unwrap(), &[("offsets", OFFSETS.to_vec())]);
    }
}

/// Tokens `[2, 4]`, `k = 2` of `E = 4` experts, model width `D`, expert
/// width `H`.
const TOKENS: [usize; 2] = [2, 4];
const K: usize = 2;
const E: usize = 4;
const D: usize = 4;
const H: usize = 6;

/// An MoE layer: `logits = x·wg + bias`, `probs = softmax(logits)`, the
/// top-k experts of each token routed, their rows gathered, `tanh(x·w1_e)`
/// then `·w2_eᵀ` (w2 stored `[E, D, H]`, read transposed), and each slot's
/// output weighted by its probability (zero when dropped) summed per token.
fn moe_layer(capacity_factor: f64) -> Graph {
    let [t0, t1] = TOKENS;
    let mut b = Builder::new("moe_layer");
    let small = Init::Normal {
        mean: 0.0,
        std: 0.1,
    };
    let x = b.param("x", DType::F32, &[t0, t1, D], NORMAL).unwrap();
    let wg = b.param("wg", DType::F32, &[D, E], small).unwrap();
    let w1 = b.param("w1", DType::F32, &[E, D, H], NORMAL).unwrap();
    let w2 = b.param("w2", DType::F32, &[E, D, H], NORMAL).unwrap();
    let bias = input(&mut b, "bias", DType::F32, &[t0, t1, E]);
    let scores = b.matmul(x, wg).unwrap();
    let logits = b.add(scores, bias).unwrap();
    let probs = b.softmax(logits, -1).unwrap();
    let ids = b.top_k(logits, K).unwrap();
    let [row_token, slot_row, slot_keep, offsets] = b.moe_route(ids, E, capacity_factor).unwrap();
    // Gate of each slot: the probability of its expert, zero if dropped.
    let hot = b.one_hot(ids, E, DType::F32).unwrap();
    let probs4 = b.reshape(probs, Shape::of(&[t0, t1, 1, E])).unwrap();
    let picked = b.mul(hot, probs4).unwrap();
    let gate = b.sum(picked, &[-1], false).unwrap();
    let gate = b.mul(gate, slot_keep).unwrap();
    // Expert MLP over the packed rows.
    let flat = b.reshape(x, Shape::of(&[t0 * t1, D])).unwrap();
    let rows = b.gather(flat, row_token, 0).unwrap();
    let hidden = b.grouped_matmul(rows, w1, offsets, false).unwrap();
    let hidden = b.tanh(hidden).unwrap();
    let y = b.grouped_matmul(hidden, w2, offsets, true).unwrap();
    // Back to slots, gated, summed over each token's slots.
    let y_flat = b.reshape(y, Shape::of(&[t0 * t1 * K, D])).unwrap();
    let per_slot = b.gather(y_flat, slot_row, 0).unwrap();
    let gate4 = b.reshape(gate, Shape::of(&[t0, t1, K, 1])).unwrap();
    let weighted = b.mul(per_slot, gate4).unwrap();
    let out = b.sum(weighted, &[2], false).unwrap();
    weighted_loss(&mut b, out);
    b.finish().unwrap()
}

/// Router bias with margins of 4 between consecutive preferences (the
/// learned part of the logits is about N(0, 0.2²), so rounding cannot flip
/// a choice): tokens 0..6 prefer experts 0 then 1, tokens 6..8 experts 1
/// then 2; expert 3 is never picked. With capacity factor 1 (C = 4)
/// experts 0 and 1 drop slots.
fn router_bias() -> Vec<f64> {
    let mut bias = Vec::new();
    for t in 0..TOKENS[0] * TOKENS[1] {
        let rank: [f64; E] = if t < 6 {
            [3.0, 2.0, 1.0, 0.0]
        } else {
            [1.0, 3.0, 2.0, 0.0]
        };
        bias.extend(rank.iter().map(|r| 4.0 * r));
    }
    bias
}

#[test]
fn moe_layer_gradients_equal_the_interpreter() {
    for factor in [0.0, 1.0] {
        check_engine(moe_layer(factor), &[("bias", router_bias())]);
    }
}

#[test]
fn moe_layer_routes_as_planned() {
    // The routing the gradient test relies on: drops at factor 1, an
    // empty expert either way.
    let [t0, t1] = TOKENS;
    let mut b = Builder::new("router");
    let logits = input(&mut b, "logits", DType::F32, &[t0, t1, E]);
    let ids = b.top_k(logits, K).unwrap();
    let [_, _, keep, offsets] = b.moe_route(ids, E, 1.0).unwrap();
    b.output(keep);
    b.output(offsets);
    let graph = b.finish().unwrap();
    let (got, want) = forward(&graph, &[("logits", router_bias())]).unwrap();
    assert_exact("router", &got, &want);
    assert_eq!(got[1], [0.0, 4.0, 8.0, 10.0, 10.0]);
    assert_eq!(got[0].iter().filter(|&&k| k == 0.0).count(), 6);
}
