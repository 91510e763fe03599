//! `adjoint demo`: what adjoint does today, on its embedded defaults.
//!
//! Builds the reference workload models at their workload batch sizes,
//! differentiates each into one joint forward+backward graph and prints its
//! size, FLOPs and content hash; checks a small transformer's gradients
//! (first and second order) against finite differences on the f64
//! reference interpreter; then trains a GPT-style transformer on the CPU
//! engine to learn a synthetic sequence rule, with a progress bar. Exits
//! non-zero if a check fails or the loss does not fall.

use std::collections::BTreeMap;
use std::time::Instant;

use adjoint_graph::gradcheck::{self, Options, Report};
use adjoint_graph::interp::Tensor;
use adjoint_graph::rng::Stream;
use adjoint_graph::zoo::{self, TransformerConfig};
use adjoint_graph::{Graph, ValueId, autodiff, init, serialize};
use adjoint_kernels::{Backend, CpuBackend};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::{ExecOptions, OptimizerConfig, Trainer};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// Run the demo on the embedded defaults.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed for the data, the initial weights and the check directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: DemoArgs) -> Result<()> {
    println!("adjoint demo: the graph layer and the CPU engine\n");
    workload_table()?;
    println!();
    let passed = check_small_transformer(args.seed)?;
    if !passed {
        bail!("a gradient check failed (see above)");
    }
    println!("\nall gradient checks passed\n");
    train_transformer(args.seed)
}

/// Trains a small GPT on sequences following `next = (5·t + 7) mod vocab`.
fn train_transformer(seed: u64) -> Result<()> {
    let cfg = TransformerConfig {
        vocab: 64,
        d_model: 128,
        layers: 2,
        heads: 4,
        seq: 64,
        batch: Some(16),
    };
    let (samples, steps) = (256usize, 120u64);
    let graph = zoo::transformer(&cfg)?;
    let mut tokens = Vec::with_capacity(samples * cfg.seq);
    let mut targets = Vec::with_capacity(samples * cfg.seq);
    let start = Stream {
        seed,
        step: 0,
        rank: 0,
        site: 99,
    };
    for s in 0..samples {
        let mut t = (start.uniform(s as u64) * cfg.vocab as f64) as i64;
        for _ in 0..cfg.seq {
            let next = (5 * t + 7) % cfg.vocab as i64;
            tokens.push(t);
            targets.push(next);
            t = next;
        }
    }
    let shape = vec![samples, cfg.seq];
    let data = BTreeMap::from([
        (
            "tokens".to_owned(),
            HostTensor::from_i64(shape.clone(), &tokens),
        ),
        ("targets".to_owned(), HostTensor::from_i64(shape, &targets)),
    ]);
    let dataset = Dataset::new(&graph, data)?;
    println!(
        "training: GPT with d {}, {} layers, {} heads, seq {}, batch {} on the CPU engine ({}), AdamW lr 3e-3, {steps} steps",
        cfg.d_model,
        cfg.layers,
        cfg.heads,
        cfg.seq,
        16,
        CpuBackend::new().name()
    );
    let mut trainer = Trainer::new(
        CpuBackend::new(),
        &graph,
        OptimizerConfig::adamw(3e-3),
        ExecOptions::default(),
        seed,
    )?;
    let plan = trainer.executor().plan();
    println!(
        "  memory plan: arena {:.1} MiB (live lower bound {:.1} MiB), parameters {:.1} MiB, gradients {:.1} MiB",
        mib(plan.arena_bytes),
        mib(plan.live_peak_bytes),
        mib(plan.param_bytes),
        mib(plan.grad_bytes)
    );
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("  {bar:30} {pos}/{len}  {msg}")
            .context("progress bar template")?,
    );
    let started = Instant::now();
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    trainer.train(&dataset, 16, steps, &mut |r| {
        if r.step == 1 {
            first = r.loss;
        }
        last = r.loss;
        let rate = r.step as f64 * 16.0 * 64.0 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4}  {rate:.0} tokens/s", r.loss));
        bar.inc(1);
    })?;
    bar.finish();
    println!(
        "  loss {first:.4} -> {last:.4} in {:.1}s (chance: ln {} = {:.4})",
        started.elapsed().as_secs_f64(),
        cfg.vocab,
        (cfg.vocab as f64).ln()
    );
    let fell = last < 0.5 * first;
    if !fell {
        bail!("the loss did not fall: {first} -> {last}");
    }
    Ok(())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
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
