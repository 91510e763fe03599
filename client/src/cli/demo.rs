//! `adjoint demo`: what adjoint does today, on its embedded defaults.
//!
//! Builds the reference workload models at their workload batch sizes,
//! differentiates each into one joint forward+backward graph and prints its
//! size, FLOPs and content hash; then checks a small transformer's
//! gradients (first and second order) against finite differences on the
//! f64 reference interpreter. Exits non-zero if any check fails.

use std::collections::BTreeMap;
use std::time::Instant;

use adjoint_graph::gradcheck::{self, Options, Report};
use adjoint_graph::interp::Tensor;
use adjoint_graph::rng::Stream;
use adjoint_graph::zoo::{self, TransformerConfig};
use adjoint_graph::{Graph, ValueId, autodiff, init, serialize};
use anyhow::{Context, Result, bail};
use clap::Args;

/// Run the demo on the embedded defaults.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed for the data, the initial weights and the check directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: DemoArgs) -> Result<()> {
    println!("adjoint demo: the graph layer (IR, autodiff, reference interpreter)\n");
    workload_table()?;
    println!();
    let passed = check_small_transformer(args.seed)?;
    if !passed {
        bail!("a gradient check failed (see above)");
    }
    println!("\nall gradient checks passed");
    Ok(())
}

fn total_flops(g: &Graph) -> u64 {
    g.nodes
        .iter()
        .map(|n| {
            let ins: Vec<_> = n.inputs.iter().map(|&v| g.ty(v)).collect();
            let outs: Vec<_> = n.outputs.iter().map(|&v| g.ty(v)).collect();
            n.op.cost(&ins, &outs).flops
        })
        .sum()
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
        let (fwd, step) = (total_flops(&graph) as f64, total_flops(&joint) as f64);
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
