//! `budget:BYTES` against the planner and against brute force: planned
//! peaks fit the budget, recompute never rises as the budget grows, an
//! impossible budget names the smallest feasible one (which succeeds), the
//! search is exactly optimal on chains and never beats the optimum on a
//! small DAG with a residual branch.

// Errors carry names and messages; their size does not matter here.
#![allow(clippy::result_large_err)]

mod checkpoint_common;

use adjoint_graph::autodiff::GradGraph;
use adjoint_graph::checkpoint::format_bytes;
use adjoint_graph::checkpoint::{self, Checkpointed, Policy, checkpoint, checkpoint_keeping};
use adjoint_graph::plan::PlanOptions;
use adjoint_graph::{Error, ValueId};
use checkpoint_common::{joint_of, residual_dropout_mlp, small_chain, small_transformer};

fn run(joint: &GradGraph, policy: Policy) -> adjoint_graph::Result<Checkpointed> {
    checkpoint(joint, &policy, &PlanOptions::with_grads(&joint.grads))
}

/// Every keep set over the values backward reads: (planned peak, FLOPs).
fn brute_force(joint: &GradGraph) -> Vec<(usize, u64)> {
    let universe = checkpoint::candidates(joint);
    assert!(
        universe.len() <= 14,
        "{} candidates: too many",
        universe.len()
    );
    let opts = PlanOptions::with_grads(&joint.grads);
    (0..1u32 << universe.len())
        .map(|mask| {
            let keep: Vec<ValueId> = (0..universe.len())
                .filter(|i| mask >> i & 1 == 1)
                .map(|i| universe[i])
                .collect();
            let c = checkpoint_keeping(joint, &keep, &opts).unwrap();
            (c.peak_bytes(), c.recompute_flops)
        })
        .collect()
}

/// The least FLOPs of any brute-force plan whose peak fits `budget`.
fn optimum(all: &[(usize, u64)], budget: usize) -> Option<u64> {
    all.iter()
        .filter(|(p, _)| *p <= budget)
        .map(|&(_, f)| f)
        .min()
}

/// Sweeps budgets from below the smallest feasible peak to `none`'s peak:
/// every answer fits, FLOPs never rise, and the search matches (`exact`)
/// or never beats brute force.
fn check_against_brute_force(joint: &GradGraph, exact: bool) {
    let all = brute_force(joint);
    let mut budgets: Vec<usize> = all.iter().map(|&(p, _)| p).collect();
    budgets.sort();
    budgets.dedup();
    let none = run(joint, Policy::None).unwrap().peak_bytes();
    let mut last_flops = u64::MAX;
    for &budget in &budgets {
        let best = optimum(&all, budget).unwrap();
        match run(joint, Policy::Budget(budget)) {
            Ok(c) => {
                assert!(
                    c.peak_bytes() <= budget,
                    "{}: peak {} > budget {budget}",
                    joint.graph.name,
                    c.peak_bytes()
                );
                assert!(
                    c.recompute_flops >= best,
                    "{}: {} beats the optimum {best}",
                    joint.graph.name,
                    c.recompute_flops
                );
                if exact {
                    assert_eq!(
                        c.recompute_flops, best,
                        "{}: budget {budget}: not optimal",
                        joint.graph.name
                    );
                }
                assert!(
                    c.recompute_flops <= last_flops,
                    "{}: FLOPs rose at budget {budget}",
                    joint.graph.name
                );
                last_flops = c.recompute_flops;
            }
            Err(e) => {
                assert!(
                    !exact,
                    "{}: budget {budget} fits brute force ({best} FLOPs) but: {e}",
                    joint.graph.name
                );
                last_flops = u64::MAX;
            }
        }
        if budget >= none {
            assert_eq!(
                run(joint, Policy::Budget(budget)).unwrap().recompute_flops,
                0
            );
        }
    }
}

#[test]
fn exactly_optimal_on_a_chain() {
    for (l, w, b) in [(7, 8, 4), (10, 16, 4), (9, 4, 3), (10, 32, 2)] {
        check_against_brute_force(&joint_of(&small_chain(l, w, b)), true);
    }
}

#[test]
fn never_beats_brute_force_on_a_residual_dag() {
    check_against_brute_force(&joint_of(&residual_dropout_mlp()), false);
}

/// Sweeps budgets from the smallest feasible one (read from the error of
/// an impossible budget) up to `none`'s peak.
fn sweep(joint: &GradGraph) {
    let name = &joint.graph.name;
    let none = run(joint, Policy::None).unwrap().peak_bytes();
    let err = run(joint, Policy::Budget(1)).unwrap_err();
    let Error::BudgetTooSmall { budget, minimum } = err else {
        panic!("{name}: expected BudgetTooSmall, got {err}");
    };
    assert_eq!(budget, 1);
    let message = err.to_string();
    assert!(
        message.contains(&minimum.to_string()) && message.contains(&format_bytes(minimum)),
        "{name}: the message does not name the smallest budget {minimum}: {message}"
    );
    assert!(
        minimum < none,
        "{name}: checkpointing saves nothing ({minimum} vs {none})"
    );
    let at_min = run(joint, Policy::Budget(minimum)).unwrap();
    assert!(at_min.peak_bytes() <= minimum);
    assert!(at_min.recompute_flops > 0);
    match run(joint, Policy::Budget(minimum - 1)).unwrap_err() {
        Error::BudgetTooSmall { minimum: m, .. } => assert_eq!(m, minimum),
        other => panic!("{name}: {other}"),
    }
    let steps = 16;
    let mut last = u64::MAX;
    for i in 0..=steps {
        let budget = minimum + (none - minimum) * i / steps;
        let c = run(joint, Policy::Budget(budget)).unwrap();
        assert!(
            c.peak_bytes() <= budget,
            "{name}: peak {} > budget {budget}",
            c.peak_bytes()
        );
        assert!(
            c.recompute_flops <= last,
            "{name}: recompute rose from {last} to {} at budget {budget}",
            c.recompute_flops
        );
        assert_eq!(c.policy, Some(Policy::Budget(budget)));
        last = c.recompute_flops;
    }
    assert_eq!(last, 0, "{name}: at none's peak nothing needs recomputing");
}

#[test]
fn budget_sweep_on_a_transformer() {
    sweep(&joint_of(&small_transformer(2)));
}

#[test]
fn budget_sweep_on_a_chain_and_a_residual_dag() {
    sweep(&joint_of(&small_chain(24, 16, 8)));
    sweep(&joint_of(&residual_dropout_mlp()));
}
