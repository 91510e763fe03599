//! Finite-difference checks of the whole `moe` model at a small size,
//! first and second order, with respect to every parameter and the input
//! tokens, dropless and under capacity. The feeds are checked to leave a
//! wide top-k margin (the k-th and (k+1)-th router probabilities of every
//! token far apart next to the FD step), so no perturbation reroutes.

mod moe_common;

use adjoint_graph::gradcheck::{self, Options};
use adjoint_graph::interp::{EvalCx, run};
use adjoint_graph::zoo::moe;
use moe_common::{feeds, small_moe};

const T: usize = 8;

/// The smallest gap between the k-th and the (k+1)-th probability of a
/// row of `probs` `[T, E]`.
fn top_k_margin(probs: &[f64], experts: usize, k: usize) -> f64 {
    probs
        .chunks(experts)
        .map(|row| {
            let mut r = row.to_vec();
            r.sort_by(|a, b| b.total_cmp(a));
            r[k - 1] - r[k]
        })
        .fold(f64::INFINITY, f64::min)
}

fn check_model(capacity_factor: f64) {
    let cfg = small_moe(Some(T), capacity_factor);
    let g = moe(&cfg).unwrap();
    let f = feeds(&g, 1);
    // The router's probabilities: the Softmax node's output.
    let env = run(&g, &f, &EvalCx::default()).unwrap();
    let softmax = g.nodes.iter().find(|n| n.op.name() == "Softmax").unwrap();
    let probs = env[softmax.outputs[0].index()].as_ref().unwrap();
    let margin = top_k_margin(&probs.data, cfg.layer.experts, cfg.layer.top_k);
    assert!(margin > 1e-3, "top-k margin {margin:e} is too thin");
    let mut wrt = g.trainable_params();
    wrt.push(g.find("x").unwrap());
    let opts = Options::default();
    let first = gradcheck::check(&g, &wrt, &f, &opts).unwrap();
    assert!(first.passed(), "factor {capacity_factor}: {first}");
    let second = gradcheck::check_second_order(&g, &wrt, &f, &opts).unwrap();
    assert!(second.passed(), "factor {capacity_factor}: {second}");
}

#[test]
fn dropless_moe_passes_first_and_second_order_checks() {
    check_model(0.0);
}

#[test]
fn moe_under_capacity_passes_first_and_second_order_checks() {
    check_model(0.5);
}
