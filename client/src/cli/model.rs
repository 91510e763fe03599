//! `adjoint model`: writes a reference workload model from the zoo.

use std::path::PathBuf;

use adjoint_client::graph_file;
use adjoint_graph::{autodiff, zoo};
use anyhow::{Context, Result, bail};
use clap::Args;

/// Write a reference workload model (WORKLOADS.md) as a graph file.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Which model: mlp, transformer or chain.
    name: String,
    /// Output file: `.json` for proto3 JSON, anything else for binary protobuf.
    #[arg(short, long)]
    output: PathBuf,
    /// Bind the batch dimension to this size (default: left symbolic, or
    /// the workload's batch with --grad).
    #[arg(long)]
    batch: Option<usize>,
    /// Write the joint training graph: loss and the gradient of every
    /// trainable parameter.
    #[arg(long)]
    grad: bool,
}

pub fn run(args: ModelArgs) -> Result<()> {
    let Some(graph) = zoo::by_name(&args.name) else {
        bail!(
            "unknown model '{}': choose one of {}",
            args.name,
            zoo::MODELS.join(", ")
        );
    };
    let mut graph = graph.with_context(|| format!("building model '{}'", args.name))?;
    let batch = match (args.batch, args.grad) {
        (Some(b), _) => Some(b),
        (None, true) => zoo::workload_batch(&args.name),
        (None, false) => None,
    };
    if let Some(batch) = batch {
        if batch == 0 {
            bail!("--batch must be at least 1");
        }
        graph = graph.bind_batch(batch);
    }
    if args.grad {
        let loss = graph.loss.context("the model has no loss")?;
        let params = graph.trainable_params();
        graph = autodiff::grad(&graph, loss, &params)
            .context("differentiating the model")?
            .graph;
    }
    graph_file::save(&args.output, &graph)?;
    println!(
        "wrote {} ({} nodes, {} parameters) to {}",
        graph.name,
        graph.nodes.len(),
        graph.params.len(),
        args.output.display()
    );
    Ok(())
}
