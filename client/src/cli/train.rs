//! `adjoint train`: trains a graph on a dataset in one process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use adjoint_client::graph_file;
use adjoint_client::onnx_file::{self, OnnxOptions};
use adjoint_graph::Dim;
use adjoint_kernels::CpuBackend;
use adjoint_worker::data::{
    Dataset, HostTensor, params_by_name, read_safetensors, write_safetensors,
};
use adjoint_worker::{ExecOptions, OptimizerConfig, Trainer};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::engine::load_tensors;

/// Train a graph on a dataset on the CPU engine, with a progress bar.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The graph file (`.json` or binary protobuf; it must have a loss), or
    /// an ONNX model (`.onnx`; give it a loss with --loss).
    graph: PathBuf,
    /// A safetensors file with one tensor per graph input, `[samples, ...]`.
    #[arg(long)]
    data: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Samples per step (default: the graph's batch if it fixes one, else 32).
    #[arg(long)]
    batch_size: Option<usize>,
    /// `sgd`, `adamw`, with options: `sgd:lr=0.01,momentum=0.9`,
    /// `adamw:lr=1e-3,wd=0.01,beta1=0.9,beta2=0.999,eps=1e-8`.
    #[arg(long, default_value = "sgd:lr=0.01")]
    optimizer: String,
    /// Initial parameter values (safetensors); others from initializers.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Seed for initializers and random ops.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the trained parameters here (safetensors).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// ONNX model: the loss to add, `cross_entropy` or `mse`.
    #[arg(long)]
    loss: Option<String>,
    /// ONNX model: the output the loss reads (default: the only output).
    #[arg(long)]
    loss_output: Option<String>,
    /// ONNX model: the label input the loss compares with (default `labels`).
    #[arg(long)]
    label: Option<String>,
    /// ONNX model: initializers to keep frozen (`*` globs; repeatable).
    #[arg(long)]
    freeze: Vec<String>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let graph = if onnx_file::is_onnx(&args.graph) {
        let opts = OnnxOptions {
            batch: args.batch_size,
            freeze: args.freeze.clone(),
            loss: args.loss.clone(),
            loss_output: args.loss_output.clone(),
            label: args.label.clone(),
        };
        onnx_file::load_for_training(&args.graph, &opts)?.graph
    } else {
        if args.loss.is_some()
            || args.loss_output.is_some()
            || args.label.is_some()
            || !args.freeze.is_empty()
        {
            bail!("--loss, --loss-output, --label and --freeze apply to ONNX models only");
        }
        graph_file::load(&args.graph)?
    };
    let optimizer = OptimizerConfig::parse(&args.optimizer)?;
    let fixed = graph
        .inputs
        .first()
        .and_then(|i| graph.ty(i.value).shape.dims().first().copied())
        .and_then(Dim::fixed);
    let batch = match (args.batch_size, fixed) {
        (Some(b), Some(f)) if b != f => {
            bail!("--batch-size {b}, but the graph fixes its batch at {f}")
        }
        (Some(b), _) | (None, Some(b)) => b,
        (None, None) => 32,
    };
    if batch == 0 {
        bail!("--batch-size must be at least 1");
    }
    let dataset = Dataset::new(&graph, load_tensors(&args.data)?)
        .with_context(|| format!("in {}", args.data.display()))?;
    let bound = graph.bind_batch(batch);
    let mut trainer = Trainer::new(
        CpuBackend::new(),
        &bound,
        optimizer,
        ExecOptions::default(),
        args.seed,
    )?;
    if let Some(path) = &args.params {
        let tensors = read_safetensors(
            &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )?;
        let exec = trainer.executor_mut();
        for (v, t) in params_by_name(exec.graph(), &tensors)? {
            exec.write_bytes(v, &t.bytes)?;
        }
    }
    let bar = ProgressBar::new(args.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .context("progress bar template")?,
    );
    let started = Instant::now();
    let mut last_loss = f32::NAN;
    trainer.train(&dataset, batch, args.steps, &mut |r| {
        last_loss = r.loss;
        let rate = (r.step as f64 * batch as f64) / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4}  {rate:.0} samples/s", r.loss));
        bar.inc(1);
    })?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "trained {} steps of {batch} samples in {secs:.2}s ({:.0} samples/s); final loss {last_loss:.6}",
        args.steps,
        args.steps as f64 * batch as f64 / secs.max(1e-9)
    );
    if let Some(path) = &args.output {
        let exec = trainer.executor();
        let g = exec.graph();
        // Parameters and state (BatchNorm's running statistics), by name.
        let values = g
            .params
            .iter()
            .map(|p| p.value)
            .chain(g.state.iter().map(|s| s.value));
        let mut out = BTreeMap::new();
        for v in values {
            let shape = g.static_shape(v);
            out.insert(
                g.name_of(v).to_owned(),
                HostTensor::from_f32(shape, &exec.read_f32(v)?),
            );
        }
        std::fs::write(path, write_safetensors(&out)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let state = if g.state.is_empty() {
            String::new()
        } else {
            format!(" and {} state tensors", g.state.len())
        };
        println!(
            "wrote {} parameters{state} to {}",
            g.params.len(),
            path.display()
        );
    }
    Ok(())
}
