//! `adjoint plan`: which activations a checkpoint policy keeps for backward
//! and what the step then costs, for a person to read.

use std::path::PathBuf;

use adjoint_client::graph_file;
use adjoint_graph::checkpoint::{Policy, format_bytes};
use adjoint_graph::training::training_graph;
use adjoint_graph::zoo;
use anyhow::{Context, Result, bail};
use clap::Args;

/// Show what a checkpoint policy keeps and recomputes for a graph (a graph
/// file, or a workload model by name).
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A graph file, or mlp, transformer or chain.
    graph: String,
    /// none, every:K, sqrt, selective or budget:BYTES (e.g. budget:512MiB).
    #[arg(long, default_value = "none")]
    checkpoint: String,
    /// Samples per step (default: the workload's batch for a model name;
    /// required for a graph file with a symbolic batch).
    #[arg(long)]
    batch: Option<usize>,
    /// Print the totals only, not every kept value.
    #[arg(long)]
    summary: bool,
}

pub fn run(args: PlanArgs) -> Result<()> {
    let policy: Policy = args.checkpoint.parse()?;
    let (graph, batch) = match zoo::by_name(&args.graph) {
        Some(g) => (g?, args.batch.or(zoo::workload_batch(&args.graph))),
        None => (graph_file::load(&PathBuf::from(&args.graph))?, args.batch),
    };
    let batch = match (batch, graph.is_static()) {
        (Some(b), _) => b,
        (None, true) => graph
            .inputs
            .first()
            .and_then(|i| graph.static_shape(i.value).first().copied())
            .unwrap_or(1),
        (None, false) => bail!("'{}' has a symbolic batch: pass --batch N", args.graph),
    };
    let t = training_graph(&graph, batch, &policy)
        .with_context(|| format!("planning '{}' with checkpoint {policy}", args.graph))?;
    let plan = &t.plan;
    println!(
        "{} at batch {batch}: {} nodes per step; arena {}, parameters {}, gradients {}, inputs {}",
        graph.name,
        t.joint.graph.nodes.len(),
        format_bytes(plan.arena_bytes),
        format_bytes(plan.param_bytes),
        format_bytes(plan.grad_bytes),
        format_bytes(plan.input_bytes),
    );
    if args.summary {
        println!("{}", t.checkpoint.summary());
    } else {
        print!("{}", t.checkpoint.render_kept());
    }
    Ok(())
}
