//! `adjoint submit` and `adjoint estimate`: a job spec to the coordinator.

use std::path::PathBuf;

use adjoint_client::onnx_file;
use adjoint_client::spec::SpecFields;
use anyhow::{Result, bail};
use clap::Args;

use super::service::{Addr, human_bytes, with_client};

/// Submit a training job (a TOML spec and/or flags); prints its id.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A TOML job spec (flags override its fields), or an `.onnx` model.
    spec: Option<PathBuf>,
    #[command(flatten)]
    fields: SpecFields,
    /// Watch the job after submitting it.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    addr: Addr,
}

/// Validate and plan a job without running it: memory per worker, FLOPs.
#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// A TOML job spec (flags override its fields), or an `.onnx` model.
    spec: Option<PathBuf>,
    #[command(flatten)]
    fields: SpecFields,
    #[command(flatten)]
    addr: Addr,
}

/// The spec file's fields with the flags over them; an `.onnx` file in
/// the spec's place is the graph.
fn fields(spec: &Option<PathBuf>, flags: &SpecFields) -> Result<SpecFields> {
    Ok(match spec {
        Some(path) if onnx_file::is_onnx(path) => {
            if flags.graph.is_some() {
                bail!(
                    "{} is the graph: drop --graph, or give a TOML spec instead",
                    path.display()
                );
            }
            SpecFields {
                graph: Some(path.clone()),
                ..SpecFields::default()
            }
            .merged(flags)
        }
        Some(path) => SpecFields::from_file(path)?.merged(flags),
        None => flags.clone(),
    })
}

pub fn submit(args: SubmitArgs) -> Result<()> {
    let fields = fields(&args.spec, &args.fields)?;
    let job = with_client(&args.addr, async |client| {
        let spec = fields.build(client).await?;
        client.submit(spec).await
    })?;
    println!("{}", job.id);
    if args.watch {
        super::watch::watch_job(&args.addr, &job.id)?;
    }
    Ok(())
}

pub fn estimate(args: EstimateArgs) -> Result<()> {
    let fields = fields(&args.spec, &args.fields)?;
    let e = with_client(&args.addr, async |client| {
        let spec = fields.build(client).await?;
        client.estimate(spec).await
    })?;
    println!("per worker:");
    println!(
        "  activations (planned arena peak)  {}",
        human_bytes(e.arena_bytes)
    );
    println!(
        "  parameters                        {}",
        human_bytes(e.param_bytes)
    );
    println!(
        "  gradients                         {}",
        human_bytes(e.grad_bytes)
    );
    println!(
        "  optimizer state                   {}",
        human_bytes(e.optimizer_bytes)
    );
    println!(
        "  inputs                            {}",
        human_bytes(e.input_bytes)
    );
    println!(
        "  total                             {}",
        human_bytes(e.total_bytes)
    );
    println!(
        "  FLOPs per step                    {:.3} GFLOP",
        e.flops_per_step as f64 / 1e9
    );
    println!(
        "  checkpoint                        {} (recomputes {:.3} GFLOP per step)",
        e.checkpoint,
        e.recompute_flops as f64 / 1e9
    );
    println!("plan hash {}", e.plan_hash);
    println!(
        "\n{:<22} {:>12} {:>14} {:>12} {:>16}",
        "checkpoint policy", "kept", "activations", "total", "recompute"
    );
    for p in &e.policies {
        println!(
            "{:<22} {:>12} {:>14} {:>12} {:>9.2} GFLOP ({:.1}%)",
            p.policy,
            human_bytes(p.kept_bytes),
            human_bytes(p.arena_bytes),
            human_bytes(p.total_bytes),
            p.recompute_flops as f64 / 1e9,
            100.0 * p.recompute_share
        );
    }
    Ok(())
}
