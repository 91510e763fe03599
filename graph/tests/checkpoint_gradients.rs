//! Checkpointing changes memory, never numbers: on every zoo model (small
//! sizes) and a residual MLP with dropout, every policy's rewritten graph
//! gives bit-identical loss and gradients on the f64 interpreter, and a
//! recomputed dropout replays its mask.

mod checkpoint_common;

use adjoint_graph::Graph;
use adjoint_graph::autodiff::GradGraph;
use adjoint_graph::checkpoint::{Checkpointed, Policy, checkpoint};
use adjoint_graph::interp::Tensor;
use adjoint_graph::plan::PlanOptions;
use adjoint_graph::validate::validate;
use checkpoint_common::{
    feeds, joint_of, residual_dropout_mlp, run_all, small_chain, small_mlp, small_transformer,
};

fn bits(t: &Tensor) -> Vec<u64> {
    t.data.iter().map(|x| x.to_bits()).collect()
}

/// The policies under test: the fixed ones and a budget halfway between
/// the smallest feasible peak and `none`'s.
fn policies(joint: &GradGraph) -> Vec<Policy> {
    let opts = PlanOptions::with_grads(&joint.grads);
    let none = checkpoint(joint, &Policy::None, &opts)
        .unwrap()
        .peak_bytes();
    let min = match checkpoint(joint, &Policy::Budget(1), &opts) {
        Err(adjoint_graph::Error::BudgetTooSmall { minimum, .. }) => minimum,
        other => panic!("budget 1 B should be impossible: {other:?}"),
    };
    let mut p: Vec<Policy> = ["none", "every:1", "every:2", "sqrt", "selective"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    p.push(Policy::Budget((min + none) / 2));
    p
}

/// Checks every policy on `g`; returns how many recomputed dropout nodes
/// were seen.
fn check_model(g: &Graph, classes: usize) -> usize {
    let joint = joint_of(g);
    let f = feeds(&joint.graph, classes);
    let plain = run_all(&joint.graph, &f);
    let opts = PlanOptions::with_grads(&joint.grads);
    let mut dropouts = 0;
    let mut recomputed = 0;
    for policy in policies(&joint) {
        let c: Checkpointed = checkpoint(&joint, &policy, &opts).unwrap();
        let what = format!("{} with {policy}", g.name);
        validate(&c.joint.graph).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(c.joint.graph.outputs, joint.graph.outputs, "{what}");
        assert_eq!(c.joint.grads, joint.grads, "{what}");
        for (&(p, gv), &(p2, gv2)) in joint.grads.iter().zip(&c.joint.grads) {
            assert_eq!(joint.graph.name_of(p), c.joint.graph.name_of(p2));
            assert_eq!(joint.graph.name_of(gv), c.joint.graph.name_of(gv2));
        }
        recomputed += c.recomputed_nodes;
        let env = run_all(&c.joint.graph, &f);
        for &o in &joint.graph.outputs {
            let (a, b) = (plain[o.index()].as_ref(), env[o.index()].as_ref());
            assert_eq!(
                bits(a.unwrap()),
                bits(b.unwrap()),
                "{what}: output '{}' differs",
                joint.graph.name_of(o)
            );
        }
        dropouts += check_dropout_replays(&c, &env, &what);
    }
    assert!(recomputed > 0, "{}: no policy recomputed anything", g.name);
    dropouts
}

/// Every cloned Dropout produces exactly its original's output.
fn check_dropout_replays(c: &Checkpointed, env: &[Option<Tensor>], what: &str) -> usize {
    let g = &c.joint.graph;
    let mut seen = 0;
    for node in g.nodes.iter().filter(|n| n.op.name() == "Dropout") {
        let Some(original) = node.name.strip_prefix("remat/") else {
            continue;
        };
        let orig = g.nodes.iter().find(|n| n.name == original).unwrap();
        assert_eq!(orig.op, node.op, "{what}: attributes differ");
        let (a, b) = (&env[orig.outputs[0].index()], &env[node.outputs[0].index()]);
        assert_eq!(
            bits(a.as_ref().unwrap()),
            bits(b.as_ref().unwrap()),
            "{what}: recomputed '{original}' draws a different mask"
        );
        seen += 1;
    }
    seen
}

#[test]
fn mlp_gradients_are_bit_identical() {
    check_model(&small_mlp(), 3);
}

#[test]
fn transformer_gradients_are_bit_identical() {
    check_model(&small_transformer(2), 11);
}

#[test]
fn chain_gradients_are_bit_identical() {
    check_model(&small_chain(9, 6, 3), 1);
}

#[test]
fn dropout_masks_replay_when_recomputed() {
    let dropouts = check_model(&residual_dropout_mlp(), 1);
    assert!(dropouts > 0, "no policy recomputed a dropout");
}
