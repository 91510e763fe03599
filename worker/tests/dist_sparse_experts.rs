//! Sparse all-reduce of expert gradients: with a router that only ever
//! picks 3 of 16 experts, two ranks over the TCP ring end with exactly the
//! weights of a dense all-reduce, while the bytes on the wire shrink to
//! the touched experts' share.

use std::collections::BTreeMap;
use std::thread;

use adjoint_graph::{Builder, DType, Graph, Init, InputRole, Shape, TensorData};
use adjoint_kernels::CpuBackend;
use adjoint_worker::OptimizerConfig;
use adjoint_worker::collective::{Collective, RingCollective, RingOptions};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::{DistConfig, DistTrainer};

const EXPERTS: usize = 16;
const FAVOURED: [usize; 3] = [2, 7, 11];
const TOKENS: usize = 8;
const D: usize = 8;
const H: usize = 32;

/// One MoE layer over `TOKENS` tokens (static), top-2 of `EXPERTS`, whose
/// router adds a frozen bias of -30 to every expert but `FAVOURED`.
fn moe_model() -> Graph {
    let mut b = Builder::new("moe");
    let shape = Shape::of(&[TOKENS, D]);
    let x = b
        .input("x", DType::F32, shape.clone(), InputRole::Data)
        .unwrap();
    let target = b
        .input("target", DType::F32, shape, InputRole::Label)
        .unwrap();
    let normal = |std| Init::Normal { mean: 0.0, std };
    let gate = b
        .param("gate", DType::F32, &[D, EXPERTS], normal(0.5))
        .unwrap();
    let bias: Vec<u8> = (0..EXPERTS)
        .flat_map(|e| if FAVOURED.contains(&e) { 0f32 } else { -30f32 }.to_le_bytes())
        .collect();
    let bias = b
        .frozen_param(
            "router_bias",
            DType::F32,
            &[EXPERTS],
            Init::Values(TensorData {
                dtype: DType::F32,
                shape: vec![EXPERTS],
                bytes: bias,
            }),
        )
        .unwrap();
    let w1 = b
        .param("w1", DType::F32, &[EXPERTS, D, H], normal(0.3))
        .unwrap();
    let w2 = b
        .param("w2", DType::F32, &[EXPERTS, H, D], normal(0.2))
        .unwrap();
    let logits = b.matmul(x, gate).unwrap();
    let logits = b.add(logits, bias).unwrap();
    let probs = b.softmax(logits, -1).unwrap();
    let ids = b.top_k(probs, 2).unwrap();
    let hot = b.one_hot(ids, EXPERTS, DType::F32).unwrap();
    let p3 = b.reshape(probs, Shape::of(&[TOKENS, 1, EXPERTS])).unwrap();
    let picked = b.mul(hot, p3).unwrap();
    let chosen = b.sum(picked, &[2], false).unwrap();
    let total = b.sum(chosen, &[1], true).unwrap();
    let weights = b.div(chosen, total).unwrap();
    let [row_token, slot_row, slot_keep, offsets] = b.moe_route(ids, EXPERTS, 0.0).unwrap();
    let rows = b.reshape(row_token, Shape::of(&[TOKENS * 2])).unwrap();
    let packed = b.gather(x, rows, 0).unwrap();
    let h = b.grouped_matmul(packed, w1, offsets, false).unwrap();
    let h = b.tanh(h).unwrap();
    let y = b.grouped_matmul(h, w2, offsets, false).unwrap();
    let slots = b.reshape(slot_row, Shape::of(&[TOKENS * 2])).unwrap();
    let per_slot = b.gather(y, slots, 0).unwrap();
    let per_slot = b.reshape(per_slot, Shape::of(&[TOKENS, 2, D])).unwrap();
    let w = b.mul(weights, slot_keep).unwrap();
    let w = b.reshape(w, Shape::of(&[TOKENS, 2, 1])).unwrap();
    let weighted = b.mul(per_slot, w).unwrap();
    let out = b.sum(weighted, &[1], false).unwrap();
    let loss = b.mse(out, target).unwrap();
    b.loss(loss);
    b.finish().unwrap()
}

fn dataset(g: &Graph, samples: usize) -> Dataset {
    let n = samples * D;
    let x: Vec<f32> = (0..n).map(|j| ((j as f32) * 0.37).sin()).collect();
    let t: Vec<f32> = (0..n).map(|j| ((j as f32) * 0.11).cos()).collect();
    Dataset::new(
        g,
        BTreeMap::from([
            ("x".to_owned(), HostTensor::from_f32(vec![samples, D], &x)),
            (
                "target".to_owned(),
                HostTensor::from_f32(vec![samples, D], &t),
            ),
        ]),
    )
    .unwrap()
}

struct Run {
    initial: BTreeMap<String, HostTensor>,
    params: BTreeMap<String, HostTensor>,
    /// Bytes rank 0 handed to all-reduce per step, and wrote to the socket
    /// in all.
    handed: Vec<u64>,
    socket: u64,
}

/// Two ranks over the loopback TCP ring, 5 SGD steps.
fn train(sparse: bool) -> Run {
    train_with(sparse, false, "sgd:lr=0.1,momentum=0.9")
}

fn train_with(sparse: bool, lazy: bool, optimizer: &'static str) -> Run {
    let g = moe_model();
    let rings = RingCollective::loopback(2, RingOptions::default()).unwrap();
    let handles: Vec<_> = rings
        .into_iter()
        .enumerate()
        .map(|(rank, mut ring)| {
            let g = g.clone();
            // Plain threads, not the kernel pool: a rank blocked in a
            // collective must not hold a pool thread the others need.
            thread::spawn(move || {
                let cfg = DistConfig {
                    optimizer: OptimizerConfig::parse(optimizer).unwrap(),
                    sparse_experts: sparse,
                    lazy_experts: lazy,
                    seed: 3,
                    ..DistConfig::new(rank, 2, TOKENS)
                };
                let mut t = DistTrainer::new(CpuBackend::new(), &g, dataset(&g, 64), cfg).unwrap();
                let initial = t.params().unwrap();
                let handed = (0..5)
                    .map(|_| {
                        t.step(&mut ring as &mut dyn Collective)
                            .unwrap()
                            .allreduce_bytes
                    })
                    .collect();
                Run {
                    initial,
                    params: t.params().unwrap(),
                    handed,
                    socket: ring.bytes_sent(),
                }
            })
        })
        .collect();
    let mut runs: Vec<Run> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(runs[0].params, runs[1].params, "the ranks disagree");
    runs.swap_remove(0)
}

#[test]
fn sparse_all_reduce_matches_dense_and_moves_only_touched_experts() {
    let dense = train(false);
    let sparse = train(true);
    // Two ranks: each sum is one addition either way, so bitwise equal.
    assert_eq!(
        sparse.params, dense.params,
        "sparse and dense all-reduce differ"
    );
    // Experts no token chose kept their initial weights (zero gradient,
    // no weight decay); the chosen ones trained.
    for name in ["w1", "w2"] {
        let (now, before) = (
            sparse.params[name].to_f32().unwrap(),
            sparse.initial[name].to_f32().unwrap(),
        );
        let per = now.len() / EXPERTS;
        for e in 0..EXPERTS {
            let moved = now[e * per..(e + 1) * per] != before[e * per..(e + 1) * per];
            assert_eq!(moved, FAVOURED.contains(&e), "{name}: expert {e}");
        }
    }
    // Per step: the dense buffers hold gate (D·E), w1 and w2 (E·(2·D·H))
    // and the loss; sparse moves the gate, 3 of 16 experts' slices, the
    // 16 touched marks and the loss.
    let expert = 2 * D * H * 4;
    let dense_step = (D * EXPERTS * 4 + EXPERTS * expert + 4) as u64;
    let sparse_step = (D * EXPERTS * 4 + FAVOURED.len() * expert + EXPERTS * 4 + 4) as u64;
    for (&d, &s) in dense.handed.iter().zip(&sparse.handed) {
        assert!(
            d >= dense_step,
            "dense handed {d}, expected at least {dense_step}"
        );
        assert!(
            s <= sparse_step + 1024,
            "sparse handed {s}, expected about {sparse_step}"
        );
    }
    // On the wire: bytes follow the touched share (framing aside).
    let ratio = sparse.socket as f64 / dense.socket as f64;
    let expected = sparse_step as f64 / dense_step as f64;
    println!(
        "socket bytes: sparse {} dense {} ratio {ratio:.3} (payload ratio {expected:.3})",
        sparse.socket, dense.socket
    );
    assert!(
        ratio < expected * 1.25 + 0.02,
        "sparse sent {} bytes, dense {}: ratio {ratio:.3}, payload ratio {expected:.3}",
        sparse.socket,
        dense.socket
    );
}

#[test]
fn lazy_experts_keep_untouched_weights_and_update_the_rest_the_same() {
    // AdamW with weight decay moves every weight each step, gradient or not.
    let adamw = "adamw:lr=1e-2,wd=0.1";
    let eager = train_with(true, false, adamw);
    let lazy = train_with(true, true, adamw);
    assert_eq!(
        lazy.params["gate"], eager.params["gate"],
        "dense parameters differ"
    );
    for name in ["w1", "w2"] {
        let (l, e, before) = (
            lazy.params[name].to_f32().unwrap(),
            eager.params[name].to_f32().unwrap(),
            lazy.initial[name].to_f32().unwrap(),
        );
        let per = l.len() / EXPERTS;
        for x in 0..EXPERTS {
            let r = x * per..(x + 1) * per;
            if FAVOURED.contains(&x) {
                assert_eq!(l[r.clone()], e[r], "{name}: touched expert {x} differs");
            } else {
                assert_eq!(
                    l[r.clone()],
                    before[r.clone()],
                    "{name}: lazy expert {x} moved"
                );
                assert_ne!(
                    e[r.clone()],
                    before[r],
                    "{name}: eager expert {x} did not decay"
                );
            }
        }
    }
}
