//! Activation checkpointing on the CPU engine leaves a step's results
//! unchanged, bit for bit: for every policy (`none`, `every:1`, `every:2`,
//! `sqrt`, `selective`, and a budget half-way between the smallest feasible
//! one and `none`'s planned peak) and every workload model at small sizes,
//! the loss and every gradient of one step equal `none`'s exactly (f32
//! bits), with the same parameters, inputs and step key. A model with
//! dropout gives the same gradients when the dropout is recomputed (the
//! clone replays the mask from the step key and its site key), and other
//! gradients at another step. Ten SGD-with-momentum steps through
//! `Trainer::with_checkpoint` under `sqrt` end at the same parameters as
//! under `none`.
//!
//! Exact equality holds because a recompute runs the same kernels on the
//! same inputs in the same order; the kernels are deterministic whatever
//! the thread count (each output element is computed by one task, in a
//! fixed order), and the arena places every value on the plan's aligned
//! offsets, so where a value lives does not change how it is computed.

// Errors carry names and messages; their size does not matter here.
#![allow(clippy::result_large_err)]

use adjoint_graph::checkpoint::{Policy, checkpoint_keeping};
use adjoint_graph::plan::PlanOptions;
use adjoint_graph::training::{TrainingGraph, training_graph};
use adjoint_graph::zoo::{self, ChainConfig, MlpConfig, TransformerConfig};
use adjoint_graph::{Builder, DType, Error, Graph, Init, InputRole, Shape, ValueId};
use adjoint_kernels::CpuBackend;
use adjoint_worker::{ExecOptions, Executor, OptimizerConfig, StepKey, Trainer};

const SEED: u64 = 7;

fn key(step: u64) -> StepKey {
    StepKey {
        seed: 3,
        step,
        rank: 0,
    }
}

fn mlp(batch: Option<usize>) -> Graph {
    zoo::mlp(&MlpConfig {
        input: 32,
        hidden: vec![64, 64],
        classes: 10,
        batch,
    })
    .unwrap()
}

/// The workload models at small sizes with a symbolic batch, the batch to
/// bind, and the class count integer inputs are drawn below.
fn workloads() -> Vec<(Graph, usize, usize)> {
    let transformer = zoo::transformer(&TransformerConfig {
        vocab: 17,
        d_model: 16,
        layers: 2,
        heads: 2,
        seq: 8,
        batch: None,
    })
    .unwrap();
    let chain = zoo::chain(&ChainConfig {
        layers: 12,
        width: 32,
        batch: None,
    })
    .unwrap();
    vec![(mlp(None), 8, 10), (transformer, 4, 17), (chain, 8, 1)]
}

/// One batch for the inputs of a bound graph: ints below `classes` by a
/// fixed pattern, floats from a sine (exact in f32).
fn batch_values(g: &Graph, inputs: &[ValueId], classes: usize) -> Vec<Vec<f64>> {
    inputs
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let n: usize = g.static_shape(v).iter().product();
            (0..n)
                .map(|j| {
                    if g.ty(v).dtype.is_int() {
                        ((j * 7 + k * 3 + j / 5) % classes) as f64
                    } else {
                        ((j as f64) * 0.37 + k as f64).sin() as f32 as f64
                    }
                })
                .collect()
        })
        .collect()
}

/// The loss and the gradients (in `joint.grads` order, with parameter
/// names) of one step.
#[derive(Debug, PartialEq)]
struct StepResult {
    loss: f32,
    grads: Vec<(String, Vec<f32>)>,
}

/// Compiles `t` and runs one step with parameters from `SEED` and `batch`.
fn run_step(t: &TrainingGraph, batch: &[Vec<f64>], key: StepKey) -> StepResult {
    let mut exec = Executor::new(
        CpuBackend::new(),
        t.joint.graph.clone(),
        &t.joint.grads,
        ExecOptions::default(),
    )
    .unwrap();
    assert_eq!(
        exec.plan().arena_bytes,
        t.plan.arena_bytes,
        "the executor plans what training_graph planned"
    );
    exec.init_params(SEED).unwrap();
    for (&v, data) in t.inputs.iter().zip(batch) {
        exec.write_values(v, data).unwrap();
    }
    exec.run(key, &mut |_, _| {}).unwrap();
    let g = &t.joint.graph;
    StepResult {
        loss: exec.loss().unwrap(),
        grads: t
            .joint
            .grads
            .iter()
            .map(|&(p, _)| (g.name_of(p).to_owned(), exec.grad(p).unwrap()))
            .collect(),
    }
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

/// `got` equals `want` bit for bit: the loss, the gradient names and every
/// gradient element.
fn assert_bitwise(what: &str, got: &StepResult, want: &StepResult) {
    assert_eq!(
        got.loss.to_bits(),
        want.loss.to_bits(),
        "{what}: loss {} vs none's {}",
        got.loss,
        want.loss
    );
    let names = |r: &StepResult| r.grads.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: gradient parameters");
    for ((name, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        if bits(g) != bits(w) {
            let (i, (a, b)) = g
                .iter()
                .zip(w)
                .enumerate()
                .find(|(_, (a, b))| a.to_bits() != b.to_bits())
                .unwrap();
            panic!("{what}: gradient of '{name}' element {i}: {a:e} vs none's {b:e}");
        }
    }
}

/// The smallest feasible `budget:BYTES`, from the error of an impossible one.
fn smallest_budget(g: &Graph, batch: usize) -> usize {
    match training_graph(g, batch, &Policy::Budget(1)) {
        Err(Error::BudgetTooSmall { budget, minimum }) => {
            assert_eq!(budget, 1);
            minimum
        }
        other => panic!("{}: budget:1 gave {other:?}", g.name),
    }
}

#[test]
fn every_policy_gives_none_s_loss_and_gradients_bit_for_bit() {
    for (g, batch, classes) in workloads() {
        let none = training_graph(&g, batch, &Policy::None).unwrap();
        let smallest = smallest_budget(&g, batch);
        assert!(
            smallest < none.plan.arena_bytes,
            "{}: the smallest budget {smallest} does not undercut none's peak {}",
            g.name,
            none.plan.arena_bytes
        );
        let budget = (smallest + none.plan.arena_bytes) / 2;
        println!(
            "{}: none's planned peak {} B, the smallest feasible budget {smallest} B",
            g.name, none.plan.arena_bytes
        );
        let data = batch_values(&none.joint.graph, &none.inputs, classes);
        let want = run_step(&none, &data, key(1));
        assert!(want.loss.is_finite(), "{}: loss {}", g.name, want.loss);
        assert!(
            want.grads
                .iter()
                .all(|(_, v)| v.iter().any(|&x| x != 0.0) && v.iter().all(|x| x.is_finite())),
            "{}: a gradient is all zero or not finite",
            g.name
        );
        let policies = [
            Policy::Every(1),
            Policy::Every(2),
            Policy::Sqrt,
            Policy::Selective,
            Policy::Budget(budget),
        ];
        let none_nodes = none.joint.graph.nodes.len();
        for policy in policies {
            let what = format!("{} under {policy}", g.name);
            let t = training_graph(&g, batch, &policy).unwrap();
            println!("{what}: {}", t.checkpoint.summary());
            if let Policy::Budget(b) = policy {
                assert!(t.plan.arena_bytes <= b, "{what}: planned peak over budget");
            }
            let trivial =
                policy == Policy::Every(1) || (policy == Policy::Selective && g.name == "chain");
            if !trivial {
                // Every policy recomputes something on these models, so the
                // comparison is not vacuous, except every:1 (which keeps
                // every boundary: on the mlp and the chain, all backward
                // reads) and selective on the chain (its matmul outputs are
                // as big as the tanh outputs it would free, so the plan
                // would not lower the peak and everything is kept).
                assert!(
                    t.checkpoint.recomputed_nodes > 0 && t.joint.graph.nodes.len() > none_nodes,
                    "{what}: nothing recomputed",
                );
            }
            assert_eq!(t.inputs, none.inputs, "{what}: input ids");
            let got = run_step(&t, &data, key(1));
            assert_bitwise(&what, &got, &want);
        }
    }
}

/// x `[8, 12]` → linear → dropout(0.5) → tanh → linear → dropout(0.5) →
/// tanh → linear → softmax cross-entropy against `labels` `[8]` (5
/// classes). Two dropout sites (keys 101 and 102). Backward reads the
/// tanh outputs (tanh's own gradient, the next matmul's weight gradient);
/// a plan that recomputes one clones the dropout before it, which must
/// draw the same mask as the forward pass did.
fn dropout_model() -> Graph {
    let (batch, d, hidden, classes) = (8, 12, 16, 5);
    let mut b = Builder::new("dropout_mlp");
    let x = b
        .input("x", DType::F32, Shape::of(&[batch, d]), InputRole::Data)
        .unwrap();
    let labels = b
        .input("labels", DType::I64, Shape::of(&[batch]), InputRole::Label)
        .unwrap();
    let normal = Init::Normal {
        mean: 0.0,
        std: 0.4,
    };
    let mut h = x;
    let mut width = d;
    for layer in 0..2 {
        let w = b
            .param(
                &format!("w{layer}"),
                DType::F32,
                &[width, hidden],
                normal.clone(),
            )
            .unwrap();
        let y = b.matmul(h, w).unwrap();
        let y = b.dropout(y, 0.5, 101 + layer as u64).unwrap();
        h = b.tanh(y).unwrap();
        width = hidden;
    }
    let w = b
        .param("head", DType::F32, &[hidden, classes], normal)
        .unwrap();
    let logits = b.matmul(h, w).unwrap();
    let loss = b.softmax_cross_entropy(logits, labels).unwrap();
    b.rename(loss, "loss").unwrap();
    b.loss(loss);
    b.finish().unwrap()
}

fn dropout_nodes(t: &TrainingGraph) -> usize {
    t.joint
        .graph
        .nodes
        .iter()
        .filter(|n| n.op.name() == "Dropout")
        .count()
}

/// `g` bound to `batch` with nothing kept for backward but what must be
/// (an explicit empty keep set): every forward value backward reads is
/// recomputed.
fn keep_nothing(g: &Graph, batch: usize) -> TrainingGraph {
    let none = training_graph(g, batch, &Policy::None).unwrap();
    let c = checkpoint_keeping(
        &none.joint,
        &[],
        &PlanOptions::with_grads(&none.joint.grads),
    )
    .unwrap();
    TrainingGraph {
        joint: c.joint.clone(),
        inputs: none.inputs,
        plan: c.plan.clone(),
        checkpoint: c,
        expert_grads: none.expert_grads,
        loss_scale: None,
    }
}

#[test]
fn recomputed_dropout_replays_its_mask() {
    let g = dropout_model();
    let none = training_graph(&g, 8, &Policy::None).unwrap();
    let data = batch_values(&none.joint.graph, &none.inputs, 5);
    let want = run_step(&none, &data, key(1));
    let want2 = run_step(&none, &data, key(2));
    // The mask depends on the step: another step, other gradients.
    for ((name, a), (_, b)) in want2.grads.iter().zip(&want.grads) {
        assert_ne!(
            bits(a),
            bits(b),
            "step 2's gradient of '{name}' equals step 1's"
        );
    }
    let cases = [
        ("sqrt", training_graph(&g, 8, &Policy::Sqrt).unwrap(), true),
        // every:1 keeps every boundary (the tanh outputs): no recompute here.
        (
            "every:1",
            training_graph(&g, 8, &Policy::Every(1)).unwrap(),
            false,
        ),
        (
            "every:2",
            training_graph(&g, 8, &Policy::Every(2)).unwrap(),
            true,
        ),
        ("an empty keep set", keep_nothing(&g, 8), true),
    ];
    for (policy, t, recomputes_dropout) in cases {
        let what = format!("dropout model under {policy}");
        println!("{what}: {}", t.checkpoint.summary());
        if recomputes_dropout {
            assert!(
                dropout_nodes(&t) > dropout_nodes(&none),
                "{what}: no dropout is recomputed ({} dropout nodes, none has {})",
                dropout_nodes(&t),
                dropout_nodes(&none)
            );
        }
        assert_bitwise(&what, &run_step(&t, &data, key(1)), &want);
        assert_bitwise(
            &format!("{what} at step 2"),
            &run_step(&t, &data, key(2)),
            &want2,
        );
    }
}

/// The mlp's parameters after `steps` SGD-with-momentum steps on one batch.
fn trained_params(policy: &Policy, steps: usize) -> Vec<(String, Vec<f32>)> {
    let g = mlp(Some(8));
    let opt = OptimizerConfig::parse("sgd:lr=0.05,momentum=0.9").unwrap();
    let mut t = Trainer::with_checkpoint(
        CpuBackend::new(),
        &g,
        opt,
        ExecOptions::default(),
        5,
        policy,
    )
    .unwrap();
    let inputs: Vec<ValueId> = g
        .inputs
        .iter()
        .map(|i| t.executor().graph().find(g.name_of(i.value)).unwrap())
        .collect();
    let batch: Vec<Vec<u8>> = batch_values(t.executor().graph(), &inputs, 10)
        .iter()
        .zip(&inputs)
        .map(|(data, &v)| {
            let elem = adjoint_worker::program::elem_type(t.executor().graph().ty(v).dtype);
            adjoint_worker::executor::encode(elem.unwrap(), data)
        })
        .collect();
    let feed: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    let mut losses = Vec::new();
    for _ in 0..steps {
        losses.push(t.step(&feed).unwrap().loss);
    }
    assert!(
        steps < 2 || losses.last() < losses.first(),
        "{policy}: the loss did not fall: {losses:?}"
    );
    let exec = t.executor();
    g.params
        .iter()
        .map(|p| {
            let name = g.name_of(p.value);
            let v = exec.graph().find(name).unwrap();
            (name.to_owned(), exec.read_f32(v).unwrap())
        })
        .collect()
}

#[test]
fn ten_sgd_momentum_steps_under_sqrt_end_at_none_s_parameters() {
    let none = trained_params(&Policy::None, 10);
    let sqrt = trained_params(&Policy::Sqrt, 10);
    assert_eq!(none.len(), 6, "three linear layers");
    for ((name, a), (_, b)) in sqrt.iter().zip(&none) {
        assert_eq!(bits(a), bits(b), "'{name}' after 10 steps: sqrt vs none");
    }
    // The parameters moved, so equal parameters mean equal updates.
    let init = trained_params(&Policy::None, 1);
    assert!(
        init.iter()
            .zip(&none)
            .all(|((_, a), (_, b))| bits(a) != bits(b)),
        "some parameter did not move between step 1 and step 10"
    );
}
