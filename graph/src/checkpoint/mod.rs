//! Activation checkpointing as a rewrite of the joint (forward + backward)
//! graph: forward values a plan does not keep are recomputed by cloning
//! their forward subgraph just before their first backward use, so the
//! originals die at the end of their forward use and the clones live only
//! through their backward.
//!
//! - [`Policy`]: `none`, `every:K`, `sqrt`, `selective`, `budget:BYTES`
//!   (parsed from and printed to strings; [`parse_bytes`] for sizes).
//! - [`checkpoint`]: applies a policy to a [`GradGraph`] and reports the
//!   result ([`Checkpointed`]: kept values, planned peak, recompute FLOPs);
//!   [`checkpoint_keeping`] applies an explicit keep set.
//! - Modules: `analysis` (forward/backward split, checkpoint boundaries),
//!   `rewrite` (the cloning), `keep` (masks of the fixed policies),
//!   `budget` (the search under a memory budget), `report`, `policy`.
//!
//! Invariants: the rewritten graph computes bit-identical outputs (the
//! clones run the same ops, attributes included, on the same inputs);
//! values of `Recompute::Never` ops, graph outputs, the loss, state updates
//! and gradients are always kept; inputs, parameters and state are never
//! recomputed; value ids of the input joint graph are preserved; the result
//! is deterministic.

mod analysis;
mod budget;
mod keep;
mod policy;
mod report;
mod rewrite;

pub use policy::{POLICY_FORMS, Policy, format_bytes, parse_bytes};
pub use report::{Checkpointed, KeptValue};

use analysis::Structure;

use crate::autodiff::GradGraph;
use crate::plan::{PlanOptions, plan_memory};
use crate::{Error, Result, ValueId};

/// Applies `policy` to the joint graph `joint` (from
/// [`crate::autodiff::grad`], batch bound) and plans the result's memory
/// with `opts` (normally [`PlanOptions::with_grads`] of `joint.grads`).
///
/// `budget:BYTES` fails with [`Error::BudgetTooSmall`] when no plan's
/// planned peak fits; the error carries the smallest peak that does. A
/// fixed policy whose plan would not lower the planned peak keeps
/// everything instead (no recompute for nothing).
pub fn checkpoint(joint: &GradGraph, policy: &Policy, opts: &PlanOptions) -> Result<Checkpointed> {
    let s = Structure::of(joint);
    let g = &joint.graph;
    let keep = match *policy {
        Policy::None => keep::none(&s),
        Policy::Every(k) => keep::every(&s, k),
        Policy::Sqrt => keep::sqrt(&s),
        Policy::Selective => keep::selective(g, &s),
        Policy::Budget(bytes) => return under_budget(joint, &s, bytes, opts),
    };
    let mut out = apply(joint, &s, &keep, opts)?;
    if *policy != Policy::None {
        // A fixed policy can recompute values whose clones cost as much
        // memory as they free (selective on a chain of matmul + tanh, whose
        // matmul outputs are as big as the activations): never return a
        // plan that pays recompute for no lower peak.
        let plain = apply(joint, &s, &keep::none(&s), opts)?;
        if out.peak_bytes() >= plain.peak_bytes() && out.recompute_flops > 0 {
            out = plain;
        }
    }
    out.policy = Some(*policy);
    Ok(out)
}

/// Keeps exactly the forward values in `keep` (plus the forced ones:
/// outputs of never-recomputed ops, outputs, loss, gradients) and
/// recomputes every other forward value backward reads. Values that are
/// not forward values of `joint` are ignored.
pub fn checkpoint_keeping(
    joint: &GradGraph,
    keep: &[ValueId],
    opts: &PlanOptions,
) -> Result<Checkpointed> {
    let s = Structure::of(joint);
    let mut mask = vec![false; joint.graph.values.len()];
    for &v in keep {
        if let Some(m) = mask.get_mut(v.index()) {
            *m = true;
        }
    }
    apply(joint, &s, &mask, opts)
}

/// The forward values a keep set may name for `joint`: those backward
/// reads, in forward order (the universe of [`checkpoint_keeping`] that
/// matters; other forward values only serve as recompute sources).
pub fn candidates(joint: &GradGraph) -> Vec<ValueId> {
    let s = Structure::of(joint);
    (0..joint.graph.values.len() as u32)
        .map(ValueId)
        .filter(|v| s.needed[v.index()] && !s.forced[v.index()])
        .collect()
}

/// The checkpoint boundaries of `joint`, in forward order: forward values
/// backward reads through which all later forward computation flows.
/// `every:K` keeps every K-th of them.
pub fn boundaries(joint: &GradGraph) -> Vec<ValueId> {
    Structure::of(joint).boundaries
}

fn apply(
    joint: &GradGraph,
    s: &Structure,
    keep: &[bool],
    opts: &PlanOptions,
) -> Result<Checkpointed> {
    let rewritten = rewrite::rewrite(joint, s, keep)?;
    let joint = rewritten.joint;
    let plan = plan_memory(&joint.graph, opts)?;
    let g = &joint.graph;
    let recompute_flops = rewritten
        .clones
        .iter()
        .map(|&p| g.node_cost(&g.nodes[p]).flops)
        .sum();
    let kept = report::kept_values(&joint, s);
    Ok(Checkpointed {
        policy: None,
        kept_bytes: kept.iter().map(|k| k.bytes).sum(),
        kept,
        recompute_flops,
        step_flops: g.flops(),
        recomputed_nodes: rewritten.clones.len(),
        plan,
        joint,
    })
}

/// `budget:BYTES`; see [`budget`]'s docs. The search's plans are joined by
/// the fixed policies' (selective, sqrt, every:2), which the segment model
/// cannot express on branching graphs (selective keeps matmul outputs
/// inside a segment): the answer is the plan of least recompute FLOPs among
/// all that fit, so it still never recomputes more as the budget grows.
fn under_budget(
    joint: &GradGraph,
    s: &Structure,
    bytes: usize,
    opts: &PlanOptions,
) -> Result<Checkpointed> {
    let plain = plan_memory(&joint.graph, opts)?;
    let search = budget::Search::new(budget::Model::new(joint, s, &plain));
    let mut model_budget = usize::MAX;
    let mut smallest = usize::MAX;
    let mut best: Option<Checkpointed> = None;
    while let Some(candidate) = search.best(model_budget) {
        let out = apply(joint, s, &candidate.keep, opts)?;
        if out.peak_bytes() <= bytes {
            best = Some(out);
            break;
        }
        smallest = smallest.min(out.peak_bytes());
        let Some(next) = candidate.model_peak.checked_sub(1) else {
            break;
        };
        model_budget = next;
    }
    let g = &joint.graph;
    for keep in [keep::selective(g, s), keep::sqrt(s), keep::every(s, 2)] {
        let out = apply(joint, s, &keep, opts)?;
        if out.peak_bytes() > bytes {
            smallest = smallest.min(out.peak_bytes());
        } else if best.as_ref().is_none_or(|b| {
            (out.recompute_flops, out.peak_bytes()) < (b.recompute_flops, b.peak_bytes())
        }) {
            best = Some(out);
        }
    }
    match best {
        Some(out) => Ok(Checkpointed {
            policy: Some(Policy::Budget(bytes)),
            ..out
        }),
        None => Err(Error::BudgetTooSmall {
            budget: bytes,
            minimum: smallest,
        }),
    }
}
