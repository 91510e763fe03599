//! The graph a training step runs, derived the same way everywhere (the
//! coordinator at submit, each worker before it runs, the CLI's `train`,
//! `bench` and `plan`): bind the batch, differentiate the loss with respect
//! to the trainable parameters, apply the checkpoint policy, plan memory.
//! The coordinator hashes the result and every worker must reproduce the
//! hash, so any drift between them shows before a step runs. A precision
//! other than f32 rewrites the bound forward graph first ([`precision`]);
//! under fp16 the backward is seeded with a `loss_scale` input.
//!
//! [`precision`]: crate::precision

use crate::autodiff::{self, GradGraph};
use crate::checkpoint::{self, Checkpointed, Policy};
use crate::ops::Moe;
use crate::plan::{MemoryPlan, PlanOptions, plan_hash};
use crate::precision::{self, Precision};
use crate::{Error, Graph, Op, Result, ValueId};

/// The name of the fp16 loss-scale input of a joint graph.
pub const LOSS_SCALE_INPUT: &str = "loss_scale";

/// The joint graph of one training step and its memory plan.
#[derive(Debug, Clone)]
pub struct TrainingGraph {
    /// Loss and gradients, checkpointed as the policy says.
    pub joint: GradGraph,
    /// The joint graph's data inputs, in the forward graph's input order.
    pub inputs: Vec<ValueId>,
    /// Its memory plan (default alignment, gradients in the flat buffer).
    pub plan: MemoryPlan,
    /// What the step keeps for backward and recomputes (for `none`: keeps
    /// everything backward reads, recomputes nothing).
    pub checkpoint: Checkpointed,
    /// Parameters whose gradient comes straight from a
    /// `GroupedMatMulGradW`, one slice per expert: their all-reduce can
    /// skip the experts no token chose.
    pub expert_grads: Vec<ExpertGrad>,
    /// Under fp16: the f32 scalar input backward is seeded with (the
    /// gradients come out multiplied by it; the loss does not).
    pub loss_scale: Option<ValueId>,
}

/// A per-expert gradient and the routing offsets that say which experts
/// got rows this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertGrad {
    pub param: ValueId,
    pub grad: ValueId,
    /// `offsets [E+1]` of the `MoeRoute` that grouped the rows; a graph
    /// output of the joint graph, so it lives to the end of the step.
    pub offsets: ValueId,
    pub experts: usize,
}

impl TrainingGraph {
    /// [`plan_hash`] of the joint graph and its plan.
    pub fn plan_hash(&self) -> String {
        plan_hash(&self.joint.graph, &self.plan)
    }
}

/// `graph` bound to `batch` samples (a static graph must already have
/// `batch` as every input's leading dimension), differentiated and
/// checkpointed with `policy`.
pub fn training_graph(graph: &Graph, batch: usize, policy: &Policy) -> Result<TrainingGraph> {
    training_graph_with(graph, batch, policy, Precision::F32)
}

/// As [`training_graph`], with the forward graph rewritten for `precision`
/// once bound.
pub fn training_graph_with(
    graph: &Graph,
    batch: usize,
    policy: &Policy,
    precision: Precision,
) -> Result<TrainingGraph> {
    let bound;
    let graph = if graph.is_static() {
        for input in &graph.inputs {
            let lead = graph.static_shape(input.value).first().copied();
            if lead != Some(batch) {
                return Err(Error::InvalidValue {
                    value: graph.name_of(input.value).to_owned(),
                    message: format!(
                        "the graph fixes the batch at {lead:?}, but the job's batch is {batch}"
                    ),
                });
            }
        }
        graph
    } else {
        bound = graph.bind_batch(batch);
        &bound
    };
    let rewritten;
    let graph = if precision == Precision::F32 {
        graph
    } else {
        rewritten = precision::apply(graph, precision)?;
        &rewritten
    };
    let loss = graph.loss.ok_or_else(|| {
        Error::Unsupported(format!("graph '{}' has no loss to train", graph.name))
    })?;
    let wrt = graph.trainable_params();
    let mut joint = if precision.needs_loss_scale() {
        autodiff::grad_seeded(graph, loss, &wrt, LOSS_SCALE_INPUT)?
    } else {
        autodiff::grad(graph, loss, &wrt)?
    };
    let expert_grads = expert_grads(&joint);
    for e in &expert_grads {
        if !joint.graph.outputs.contains(&e.offsets) {
            joint.graph.outputs.push(e.offsets);
        }
    }
    let opts = PlanOptions::with_grads(&joint.grads);
    // For `none` the rewrite keeps everything and adds no node, so its
    // graph and plan are the differentiated graph's.
    let checkpoint = checkpoint::checkpoint(&joint, policy, &opts)?;
    let (joint, plan) = (checkpoint.joint.clone(), checkpoint.plan.clone());
    let inputs = graph
        .inputs
        .iter()
        .map(|i| {
            let name = graph.name_of(i.value);
            joint.graph.find(name).ok_or_else(|| Error::InvalidValue {
                value: name.to_owned(),
                message: "the input is not used by the loss".into(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let loss_scale = precision
        .needs_loss_scale()
        .then(|| joint.graph.find(LOSS_SCALE_INPUT))
        .flatten();
    Ok(TrainingGraph {
        joint,
        inputs,
        plan,
        checkpoint,
        expert_grads,
        loss_scale,
    })
}

/// The gradients of `joint` produced directly by a `GroupedMatMulGradW`.
fn expert_grads(joint: &GradGraph) -> Vec<ExpertGrad> {
    let g = &joint.graph;
    let producers = g.producers();
    joint
        .grads
        .iter()
        .filter_map(|&(param, grad)| {
            let node = g.node(producers[grad.index()]?);
            matches!(node.op, Op::Moe(Moe::GroupedMatMulGradW { .. })).then_some(())?;
            let offsets = *node.inputs.get(2)?;
            let experts = g.static_shape(offsets).first()?.checked_sub(1)?;
            Some(ExpertGrad {
                param,
                grad,
                offsets,
                experts,
            })
        })
        .collect()
}
