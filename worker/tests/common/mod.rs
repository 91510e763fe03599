//! Shared helpers: run a graph on the CPU engine and on the f64 reference
//! interpreter with the same parameter values, and compare.

#![allow(dead_code)]

use std::collections::BTreeMap;

use adjoint_graph::autodiff::{GradGraph, grad};
use adjoint_graph::interp::{EvalCx, Tensor, run};
use adjoint_graph::{Graph, ValueId, init};
use adjoint_kernels::CpuBackend;
use adjoint_worker::{ExecOptions, Executor, StepKey};

/// Parameter and input values as f64, rounded to f32 so both sides see the
/// same numbers.
pub fn values(graph: &Graph, seed: u64) -> BTreeMap<ValueId, Tensor> {
    let mut out = BTreeMap::new();
    for p in &graph.params {
        let t = init::materialize(graph, p.value, &p.init, seed).unwrap();
        out.insert(p.value, t.map(|x| x as f32 as f64));
    }
    out
}

/// The joint graph of `graph` w.r.t. its trainable parameters.
pub fn joint(graph: &Graph) -> GradGraph {
    grad(graph, graph.loss.unwrap(), &graph.trainable_params()).unwrap()
}

/// Runs `joint` on the executor with `feeds` (by value id of `joint`).
pub fn run_engine(
    joint: &GradGraph,
    feeds: &BTreeMap<ValueId, Tensor>,
    opts: ExecOptions,
) -> Vec<Vec<f32>> {
    let mut exec =
        Executor::new(CpuBackend::new(), joint.graph.clone(), &joint.grads, opts).unwrap();
    for (&v, t) in feeds {
        exec.write_values(v, &t.data).unwrap();
    }
    exec.run(
        StepKey {
            seed: 3,
            step: 1,
            rank: 0,
        },
        &mut |_, _| {},
    )
    .unwrap();
    let mut outs = vec![vec![exec.loss().unwrap()]];
    for &(p, _) in &joint.grads {
        outs.push(exec.grad(p).unwrap());
    }
    outs
}

/// Runs `joint` on the interpreter: the loss and each gradient.
pub fn run_reference(joint: &GradGraph, feeds: &BTreeMap<ValueId, Tensor>) -> Vec<Vec<f64>> {
    let env = run(
        &joint.graph,
        feeds,
        &EvalCx {
            seed: 3,
            step: 1,
            rank: 0,
            exact_float_casts: false,
        },
    )
    .unwrap();
    let mut outs = vec![env[joint.loss.index()].as_ref().unwrap().data.clone()];
    for &(_, g) in &joint.grads {
        outs.push(env[g.index()].as_ref().unwrap().data.clone());
    }
    outs
}

/// Two-sided closeness: |got − want| ≤ atol + rtol·|want| everywhere.
pub fn assert_close(what: &str, got: &[Vec<f32>], want: &[Vec<f64>], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: number of outputs");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: output {k} length");
        for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
            let tol = atol + rtol * b.abs();
            assert!(
                (f64::from(a) - b).abs() <= tol || (a.is_nan() && b.is_nan()),
                "{what}: output {k} (0 = loss, then gradients) element {i}: engine {a} vs reference {b} (tolerance {tol:e})"
            );
        }
    }
}

/// Feeds for `joint`: parameter values from `forward`'s ids moved to
/// `joint`'s ids by name, plus extra inputs.
pub fn joint_feeds(
    forward: &Graph,
    joint: &Graph,
    values: &BTreeMap<ValueId, Tensor>,
) -> BTreeMap<ValueId, Tensor> {
    values
        .iter()
        .filter_map(|(&v, t)| joint.find(forward.name_of(v)).map(|j| (j, t.clone())))
        .collect()
}

/// Engine vs interpreter on the joint graph of `graph`: loss and every
/// gradient, with extra inputs (indices, routing biases) fed by name; then
/// the same with freed buffers poisoned, which must change nothing.
pub fn check_engine(graph: Graph, extra: &[(&str, Vec<f64>)]) {
    let vals = values(&graph, 11);
    let j = joint(&graph);
    let mut feeds = joint_feeds(&graph, &j.graph, &vals);
    for (name, data) in extra {
        let v = j.graph.find(name).unwrap();
        feeds.insert(v, Tensor::new(j.graph.static_shape(v), data.clone()));
    }
    let want = run_reference(&j, &feeds);
    let got = run_engine(&j, &feeds, ExecOptions::default());
    assert_close(&graph.name, &got, &want, 2e-4, 2e-5);
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
        "{}: results changed when freed buffers were poisoned",
        graph.name
    );
}
