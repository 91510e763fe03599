//! `adjoint grad`: the loss and every parameter's gradient for one batch.

use std::collections::BTreeMap;
use std::path::PathBuf;

use adjoint_client::graph_file;
use adjoint_graph::autodiff;
use adjoint_kernels::CpuBackend;
use adjoint_worker::data::{HostTensor, params_by_name, read_safetensors, write_safetensors};
use adjoint_worker::{ExecOptions, Executor, StepKey};
use anyhow::{Context, Result, bail};
use clap::Args;

use super::engine::{bind_to_data, load_tensors};

/// Compute the loss and the gradient of every trainable parameter for one
/// batch, on the CPU engine.
#[derive(Debug, Args)]
pub struct GradArgs {
    /// The graph file (`.json` or binary protobuf); it must have a loss.
    graph: PathBuf,
    /// A safetensors file with one tensor per graph input, named as the inputs.
    #[arg(long)]
    batch: PathBuf,
    /// Parameter values (safetensors, named as the parameters); parameters
    /// not in the file come from their initializers.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Seed for initializers and random ops.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output safetensors: `loss` and one gradient per parameter, named as the parameter.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: GradArgs) -> Result<()> {
    let graph = graph_file::load(&args.graph)?;
    let batch = load_tensors(&args.batch)?;
    let graph = bind_to_data(&graph, &batch)?;
    let Some(loss) = graph.loss else {
        bail!("graph '{}' has no loss to differentiate", graph.name);
    };
    let joint = autodiff::grad(&graph, loss, &graph.trainable_params())
        .context("differentiating the graph")?;
    let mut exec = Executor::new(
        CpuBackend::new(),
        joint.graph.clone(),
        &joint.grads,
        ExecOptions::default(),
    )?;
    exec.init_params(args.seed)?;
    if let Some(path) = &args.params {
        let tensors = read_safetensors(
            &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("reading {}", path.display()))?;
        for (v, t) in params_by_name(exec.graph(), &tensors)
            .with_context(|| format!("in {}", path.display()))?
        {
            exec.write_bytes(v, &t.bytes)?;
        }
    }
    for input in &graph.inputs {
        let name = graph.name_of(input.value);
        let t = &batch[name];
        let v = joint.graph.find(name).context("inputs keep their names")?;
        exec.write_bytes(v, &t.bytes)
            .with_context(|| format!("feeding '{name}'"))?;
    }
    exec.run(
        StepKey {
            seed: args.seed,
            step: 0,
            rank: 0,
        },
        &mut |_, _| {},
    )?;
    let mut out = BTreeMap::new();
    let loss_value = exec.loss()?;
    out.insert(
        "loss".to_owned(),
        HostTensor::from_f32(Vec::new(), &[loss_value]),
    );
    for &(param, _) in &joint.grads {
        let name = joint.graph.name_of(param).to_owned();
        let shape = joint.graph.static_shape(param);
        out.insert(name, HostTensor::from_f32(shape, &exec.grad(param)?));
    }
    std::fs::write(&args.output, write_safetensors(&out)?)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "loss {loss_value:.6}; wrote {} gradients to {}",
        joint.grads.len(),
        args.output.display()
    );
    Ok(())
}
