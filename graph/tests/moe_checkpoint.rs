//! Checkpointing × MoE on a small moe-transformer: every policy (sqrt,
//! selective, every:1, a budget between the floor and `none`) gives
//! bit-identical loss and gradients on the f64 interpreter, and routing is
//! kept, never recomputed: the rewritten graph has exactly as many TopK and
//! MoeRoute nodes as the original and no clone of one. Without aux losses
//! the expert GEMMs downstream of routing are recomputed from the kept
//! offsets.

mod moe_common;

use adjoint_graph::autodiff::{GradGraph, grad};
use adjoint_graph::checkpoint::{Policy, checkpoint};
use adjoint_graph::interp::{EvalCx, Tensor, run};
use adjoint_graph::plan::PlanOptions;
use adjoint_graph::validate::validate;
use adjoint_graph::zoo::moe_transformer;
use adjoint_graph::{Error, Graph};
use moe_common::{feeds, small_moe_transformer};

fn bits(t: &Tensor) -> Vec<u64> {
    t.data.iter().map(|x| x.to_bits()).collect()
}

fn count(g: &Graph, op: &str) -> usize {
    g.nodes.iter().filter(|n| n.op.name() == op).count()
}

fn policies(joint: &GradGraph) -> Vec<Policy> {
    let opts = PlanOptions::with_grads(&joint.grads);
    let none = checkpoint(joint, &Policy::None, &opts)
        .unwrap()
        .peak_bytes();
    let min = match checkpoint(joint, &Policy::Budget(1), &opts) {
        Err(Error::BudgetTooSmall { minimum, .. }) => minimum,
        other => panic!("budget 1 B should be impossible: {other:?}"),
    };
    let mut p: Vec<Policy> = ["sqrt", "selective", "every:1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    p.push(Policy::Budget((min + none) / 2));
    p.push(Policy::Budget(min));
    p
}

/// Checks every policy on `g`; returns how many expert GEMMs the
/// policies cloned in all.
fn check(g: &Graph) -> usize {
    let joint = grad(g, g.loss.unwrap(), &g.trainable_params()).unwrap();
    let (top_k, route) = (count(&joint.graph, "TopK"), count(&joint.graph, "MoeRoute"));
    assert_eq!((top_k, route), (2, 2), "one router per block");
    let gmm = count(&joint.graph, "GroupedMatMul");
    let f = feeds(&joint.graph, 11);
    let cx = EvalCx::default();
    let plain = run(&joint.graph, &f, &cx).unwrap();
    let opts = PlanOptions::with_grads(&joint.grads);
    let (mut recomputed, mut expert_clones) = (0, 0);
    for policy in policies(&joint) {
        let c = checkpoint(&joint, &policy, &opts).unwrap();
        let cg = &c.joint.graph;
        validate(cg).unwrap_or_else(|e| panic!("{policy}: {e}"));
        assert_eq!(count(cg, "TopK"), top_k, "{policy} cloned a TopK");
        assert_eq!(count(cg, "MoeRoute"), route, "{policy} cloned a MoeRoute");
        for n in &cg.nodes {
            let routing = matches!(n.op.name(), "TopK" | "MoeRoute");
            assert!(
                !(routing && n.name.starts_with("remat/")),
                "{policy}: {}",
                n.name
            );
        }
        recomputed += c.recomputed_nodes;
        expert_clones += count(cg, "GroupedMatMul") - gmm;
        let env = run(cg, &f, &cx).unwrap();
        assert_eq!(cg.outputs, joint.graph.outputs, "{policy}");
        for &o in &joint.graph.outputs {
            let (a, b) = (plain[o.index()].as_ref(), env[o.index()].as_ref());
            assert_eq!(
                bits(a.unwrap()),
                bits(b.unwrap()),
                "{policy}: output '{}' differs",
                joint.graph.name_of(o)
            );
        }
    }
    assert!(recomputed > 0, "no policy recomputed anything");
    expert_clones
}

#[test]
fn every_policy_keeps_routing_and_the_gradients_bitwise() {
    check(&moe_transformer(&small_moe_transformer()).unwrap());
}

/// Without aux losses the blocks segment as in the dense transformer: the
/// expert GEMMs are recomputed (from the kept offsets), routing still not.
#[test]
fn without_aux_losses_expert_gemms_are_recomputed_but_routing_is_not() {
    let mut cfg = small_moe_transformer();
    (cfg.layer.aux_weight, cfg.layer.z_weight) = (0.0, 0.0);
    let g = moe_transformer(&cfg).unwrap();
    assert_eq!(
        count(&g, "Softmax"),
        2 + 2,
        "attention and router softmaxes only"
    );
    assert!(check(&g) > 0, "no policy recomputed an expert GEMM");
}
