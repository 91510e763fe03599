//! `adjoint check`: validates a graph file and prints what it holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use adjoint_client::graph_file;
use adjoint_graph::{Graph, Init, InputRole, serialize};
use anyhow::Result;
use clap::Args;

use super::service::human_bytes;

/// Validate a graph file (shape inference included) and print its inputs,
/// parameters, outputs and ops.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A graph file: `.json` (proto3 JSON) or binary protobuf.
    file: PathBuf,
    /// Also print every node.
    #[arg(long)]
    nodes: bool,
}

pub fn run(args: CheckArgs) -> Result<()> {
    let graph = graph_file::load(&args.file)?;
    print!("{}", summary(&graph, args.nodes));
    Ok(())
}

fn summary(g: &Graph, with_nodes: bool) -> String {
    let mut out = String::new();
    let param_elems: usize = g
        .params
        .iter()
        .map(|p| g.ty(p.value).shape.numel_with_batch(1))
        .sum();
    let param_bytes: usize = g
        .params
        .iter()
        .map(|p| g.ty(p.value).shape.numel_with_batch(1) * g.ty(p.value).dtype.size_bytes())
        .sum();
    let _ = writeln!(
        out,
        "graph '{}': valid; {} nodes, {} parameters ({} elements, {}), content hash {}",
        g.name,
        g.nodes.len(),
        g.params.len(),
        param_elems,
        human_bytes(param_bytes as u64),
        serialize::content_hash(g)
    );
    let _ = writeln!(out, "inputs:");
    for i in &g.inputs {
        let role = match i.role {
            InputRole::Data => "data",
            InputRole::Label => "label",
            InputRole::Direction => "direction",
        };
        let _ = writeln!(
            out,
            "  {:<28} {:<22} {role}",
            g.name_of(i.value),
            g.ty(i.value).to_string()
        );
    }
    let _ = writeln!(out, "parameters:");
    for p in &g.params {
        let status = if p.trainable { "trainable" } else { "frozen" };
        let _ = writeln!(
            out,
            "  {:<28} {:<22} {:<10} {}",
            g.name_of(p.value),
            g.ty(p.value).to_string(),
            status,
            describe_init(&p.init)
        );
    }
    if !g.state.is_empty() {
        let _ = writeln!(out, "state:");
        for s in &g.state {
            let update = s.update.map_or("never updated".to_owned(), |u| {
                format!("updated by {}", g.name_of(u))
            });
            let _ = writeln!(
                out,
                "  {:<28} {:<22} {update}",
                g.name_of(s.value),
                g.ty(s.value).to_string()
            );
        }
    }
    let _ = writeln!(out, "outputs:");
    for &o in &g.outputs {
        let mark = if g.loss == Some(o) { " (loss)" } else { "" };
        let _ = writeln!(out, "  {:<28} {}{mark}", g.name_of(o), g.ty(o));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &g.nodes {
        *counts.entry(n.op.name()).or_default() += 1;
    }
    let ops: Vec<String> = counts.iter().map(|(op, n)| format!("{op} x{n}")).collect();
    let _ = writeln!(out, "ops: {}", ops.join(", "));
    let flops = g.flops();
    let per = if g.is_static() { "" } else { " per sample" };
    let _ = writeln!(out, "flops{per}: {flops}");
    if with_nodes {
        let _ = writeln!(out, "nodes:");
        for n in &g.nodes {
            let ins: Vec<&str> = n.inputs.iter().map(|&v| g.name_of(v)).collect();
            let outs: Vec<String> = n.outputs.iter().map(|&v| g.ty(v).to_string()).collect();
            let _ = writeln!(
                out,
                "  {:<40} {:<24} ({}) -> {}",
                n.name,
                n.op.name(),
                ins.join(", "),
                outs.join(", ")
            );
        }
    }
    out
}

fn describe_init(init: &Init) -> String {
    match init {
        Init::Values(t) => format!("values ({} bytes)", t.bytes.len()),
        Init::Zeros => "zeros".into(),
        Init::Constant(c) => format!("constant {c}"),
        Init::Normal { mean, std } => format!("normal(mean {mean}, std {std})"),
        Init::Uniform { low, high } => format!("uniform({low}, {high})"),
        Init::FanScaled {
            mode,
            distribution,
            gain,
        } => format!("{distribution:?} by fan {mode:?}, gain {gain:.4}").to_lowercase(),
    }
}
