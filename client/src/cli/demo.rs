//! `adjoint demo`: what adjoint does today, on its embedded defaults.
//!
//! Builds the reference workload models at their workload batch sizes,
//! differentiates each into one joint forward+backward graph and prints its
//! size, FLOPs and content hash; checks a small transformer's gradients
//! (first and second order) against finite differences on the f64
//! reference interpreter; then starts a coordinator and worker processes
//! on this machine (`adjoint up`), submits the bundled example
//! ([`adjoint_client::example`]: a GPT-style transformer learning a
//! synthetic sequence rule, with a held-out split), watches it train
//! data-parallel with a progress bar, and pulls the trained weights. Exits
//! non-zero if a check fails, the job fails or the loss does not fall.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use adjoint_client::example::write_moe_gpt_example;
use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_graph::gradcheck::{self, Options, Report};
use adjoint_graph::interp::Tensor;
use adjoint_graph::rng::Stream;
use adjoint_graph::zoo::{self, TransformerConfig};
use adjoint_graph::{Graph, ValueId, autodiff, init, serialize};
use anyhow::{Context, Result, bail};
use clap::Args;

use super::service::{Addr, human_bytes, with_client};
use super::watch::watch_job;

/// Run the demo on the embedded defaults.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed for the data, the initial weights and the check directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker processes (data-parallel ranks) to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Optimizer steps of the training job.
    #[arg(long, default_value_t = 120)]
    steps: u64,
    /// Folder for the example, the coordinator's data and the pulled
    /// weights (default: a new folder under the system's temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> Result<()> {
    println!("adjoint demo: the graph layer, the CPU engine and the service\n");
    workload_table()?;
    println!();
    let passed = check_small_transformer(args.seed)?;
    if !passed {
        bail!("a gradient check failed (see above)");
    }
    println!("\nall gradient checks passed\n");
    train_on_service(&args)
}

/// Starts a coordinator and workers on this machine, submits the bundled
/// example, watches it train and pulls the weights.
fn train_on_service(args: &DemoArgs) -> Result<()> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("adjoint-demo-{}", std::process::id())),
    };
    let batch = (16 / args.workers.max(1)).max(1);
    let example = write_moe_gpt_example(&dir.join("example"), args.seed, 512, 128)?;
    let (cfg, moe) = (&example.config.transformer, &example.config.layer);
    println!(
        "service: a coordinator and {} workers on this machine (data in {})",
        args.workers,
        dir.display()
    );
    let started = Instant::now();
    let cluster = LocalCluster::start(&dir.join("cluster"), args.workers)?;
    println!(
        "  coordinator on {}, {} workers registered in {:.1}s",
        cluster.addr,
        args.workers,
        started.elapsed().as_secs_f64()
    );
    let fields = SpecFields {
        name: Some("demo-gpt".into()),
        graph: Some(example.graph.clone()),
        data: Some(example.train.clone()),
        eval: Some(example.eval.clone()),
        eval_every: Some(args.steps.div_ceil(4)),
        workers: Some(args.workers as u32),
        batch_size: Some(batch as u64),
        steps: Some(args.steps),
        optimizer: Some("adamw:lr=3e-3".into()),
        schedule: Some(format!("cosine:warmup={},min_lr=3e-4", args.steps / 10)),
        clip_grad_norm: Some(1.0),
        checkpoint_every: Some(args.steps.div_ceil(2)),
        seed: Some(args.seed),
        ..SpecFields::default()
    };
    let addr = Addr::local(&cluster.addr);
    println!(
        "  job: GPT with mixture-of-experts MLPs (d {}, {} layers, {} heads, {} experts top-{}, seq {}, vocab {}) learning next = (5t + 7) mod {}; {} workers x batch {batch}, AdamW, warm-up + cosine, {} steps",
        cfg.d_model,
        cfg.layers,
        cfg.heads,
        moe.experts,
        moe.top_k,
        cfg.seq,
        cfg.vocab,
        cfg.vocab,
        args.workers,
        args.steps
    );
    let (job, estimate) = with_client(&addr, async |client| {
        let spec = fields.build(client).await?;
        let estimate = client.estimate(spec.clone()).await?;
        Ok((client.submit(spec).await?, estimate))
    })?;
    println!(
        "  submitted {}: per worker {} planned (activations {}, parameters {}, optimizer state {}), {:.2} GFLOP per step",
        job.id,
        human_bytes(estimate.total_bytes),
        human_bytes(estimate.arena_bytes),
        human_bytes(estimate.param_bytes),
        human_bytes(estimate.optimizer_bytes),
        estimate.flops_per_step as f64 / 1e9
    );
    let training = Instant::now();
    let watched = watch_job(&addr, &job.id)?;
    let weights = dir.join("weights.safetensors");
    let bytes = with_client(&addr, async |client| {
        client.download(&job.id, "weights.safetensors").await
    })?;
    std::fs::write(&weights, &bytes)
        .with_context(|| format!("cannot write {}", weights.display()))?;
    let (first, last) = (
        watched.first_loss.context("the job reported no step")?,
        watched.last_loss.context("the job reported no step")?,
    );
    println!(
        "  loss {first:.4} -> {last:.4} in {:.1}s (chance: ln {} = {:.4}){}",
        training.elapsed().as_secs_f64(),
        cfg.vocab,
        (cfg.vocab as f64).ln(),
        watched
            .last_eval
            .map(|(step, e)| format!("; held-out loss {e:.4} at step {step}"))
            .unwrap_or_default()
    );
    if !watched.expert_rows.is_empty() {
        println!(
            "  rows per expert in the last step (rank 0, both layers): {:?}; the sparse all-reduce skipped {} of expert gradients over the job",
            watched.expert_rows,
            human_bytes(watched.bytes_saved)
        );
    }
    println!(
        "  pulled {} ({}); `adjoint check {}` shows the model",
        weights.display(),
        human_bytes(bytes.len() as u64),
        example.graph.display()
    );
    drop(cluster);
    // Written so that a NaN loss fails too.
    let fell = last < 0.5 * first;
    if !fell {
        bail!("the loss did not fall: {first} -> {last}");
    }
    Ok(())
}

/// One line per workload: forward and joint graph sizes and FLOPs.
fn workload_table() -> Result<()> {
    println!(
        "{:<12} {:>6} {:>11} {:>10} {:>11} {:>10} {:>11} {:>8}  content hash",
        "model",
        "batch",
        "parameters",
        "fwd nodes",
        "step nodes",
        "fwd GFLOP",
        "step GFLOP",
        "bwd/fwd"
    );
    for name in zoo::MODELS {
        let started = Instant::now();
        let batch = zoo::workload_batch(name).context("every zoo model has a workload batch")?;
        let graph = zoo::by_name(name).context("zoo model")??.bind_batch(batch);
        let loss = graph.loss.context("zoo models have a loss")?;
        let params = graph.trainable_params();
        let joint = autodiff::grad(&graph, loss, &params)?.graph;
        let elements: usize = params
            .iter()
            .map(|&p| graph.ty(p).shape.numel_with_batch(1))
            .sum();
        let (fwd, step) = (graph.flops() as f64, joint.flops() as f64);
        let hash = serialize::content_hash(&joint);
        println!(
            "{:<12} {:>6} {:>11} {:>10} {:>11} {:>10.2} {:>11.2} {:>8.2}  {}…  ({} ms)",
            name,
            batch,
            elements,
            graph.nodes.len(),
            joint.nodes.len(),
            fwd / 1e9,
            step / 1e9,
            (step - fwd) / fwd,
            &hash[..16],
            started.elapsed().as_millis()
        );
    }
    Ok(())
}

/// Gradient checks of every parameter of a small transformer.
fn check_small_transformer(seed: u64) -> Result<bool> {
    let cfg = TransformerConfig {
        vocab: 13,
        d_model: 8,
        layers: 2,
        heads: 2,
        seq: 5,
        batch: Some(2),
    };
    let graph = zoo::transformer(&cfg)?;
    let params = graph.trainable_params();
    println!(
        "gradient check: transformer with vocab {}, d {}, {} layers, {} heads, seq {}, batch 2 ({} parameter tensors), f64 interpreter",
        cfg.vocab,
        cfg.d_model,
        cfg.layers,
        cfg.heads,
        cfg.seq,
        params.len()
    );
    let feeds = feeds(&graph, cfg.vocab, seed)?;
    let opts = Options {
        seed,
        ..Options::default()
    };
    let mut passed = true;
    let first = gradcheck::check(&graph, &params, &feeds, &opts).map_err(anyhow::Error::msg)?;
    passed &= show("first order (VJP and JVP vs finite differences)", &first);
    let second = gradcheck::check_second_order(&graph, &params, &feeds, &opts)
        .map_err(anyhow::Error::msg)?;
    passed &= show(
        "second order (the gradient graph, differentiated again)",
        &second,
    );
    Ok(passed)
}

fn show(what: &str, report: &Report) -> bool {
    let verdict = if report.passed() { "pass" } else { "FAIL" };
    let worst = report
        .fd_vs_jvp
        .worst
        .as_ref()
        .map_or(0.0, |w| w.error / w.allowed.max(f64::MIN_POSITIVE));
    println!(
        "  {what}: {verdict}\n    {} elements, worst error {:.3} of tolerance; <u, FD> {:.12e} vs <J^T u, v> {:.12e}; adjoint identity |diff| {:.1e}",
        report.fd_vs_jvp.elements,
        worst,
        report.fd_vs_vjp.lhs,
        report.fd_vs_vjp.rhs,
        report.adjoint.error
    );
    if !report.passed() {
        println!("{report}");
    }
    report.passed()
}

/// Random tokens and targets; parameters from their initializers.
fn feeds(graph: &Graph, vocab: usize, seed: u64) -> Result<BTreeMap<ValueId, Tensor>> {
    let mut feeds = BTreeMap::new();
    for (k, input) in graph.inputs.iter().enumerate() {
        let shape = graph.static_shape(input.value);
        let stream = Stream {
            seed,
            step: 0,
            rank: 0,
            site: k as u64,
        };
        let n: usize = shape.iter().product();
        let data = (0..n as u64)
            .map(|i| (stream.uniform(i) * vocab as f64).floor())
            .collect();
        feeds.insert(input.value, Tensor::new(shape, data));
    }
    for p in &graph.params {
        feeds.insert(p.value, init::materialize(graph, p.value, &p.init, seed)?);
    }
    Ok(feeds)
}
