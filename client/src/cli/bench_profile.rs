//! `adjoint bench --profile`: where a training step's time goes, per
//! instruction kind and for the slowest instructions, with the FLOP/s of
//! the nodes that do arithmetic. Printed to stderr, so the JSON line on
//! stdout stays one line.

use std::collections::BTreeMap;

use adjoint_kernels::Backend;
use adjoint_worker::Executor;

/// Prints the profile of `steps` runs whose per-instruction seconds are
/// `secs` (from [`Executor::take_profile`]).
pub fn print<B: Backend>(exec: &Executor<B>, secs: &[f64], steps: usize) {
    let graph = exec.graph();
    let program = exec.program();
    let steps = steps.max(1) as f64;
    // The node of each instruction, and each node's FLOPs shared out over
    // its instructions by time.
    let mut node_of = Vec::with_capacity(program.instrs.len());
    let mut start = 0;
    for (n, &end) in program.node_end.iter().enumerate() {
        node_of.extend(std::iter::repeat_n(n, end - start));
        start = end;
    }
    let node_secs = |n: usize| -> f64 {
        let begin = if n == 0 { 0 } else { program.node_end[n - 1] };
        secs[begin..program.node_end[n]].iter().sum()
    };
    let flops_of = |i: usize| -> f64 {
        let n = node_of[i];
        let total = node_secs(n);
        let flops = graph.node_cost(&graph.nodes[n]).flops as f64;
        if total > 0.0 {
            flops * secs[i] / total
        } else {
            0.0
        }
    };

    let total: f64 = secs.iter().sum();
    let mut kinds: BTreeMap<&str, (f64, usize, f64)> = BTreeMap::new();
    for (i, instr) in program.instrs.iter().enumerate() {
        let e = kinds.entry(instr.kind()).or_default();
        e.0 += secs[i];
        e.1 += 1;
        e.2 += flops_of(i);
    }
    let mut rows: Vec<_> = kinds.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    eprintln!(
        "profile: {:.2} ms per step in {} instructions",
        total * 1e3 / steps,
        program.instrs.len()
    );
    eprintln!(
        "{:<26} {:>9} {:>6} {:>6} {:>9}",
        "kind", "ms/step", "share", "count", "GFLOP/s"
    );
    for (kind, (s, count, flops)) in &rows {
        eprintln!(
            "{kind:<26} {:>9.3} {:>5.1}% {count:>6} {}",
            s * 1e3 / steps,
            100.0 * s / total.max(1e-12),
            gflops(*flops, *s / steps),
        );
    }
    let mut slow: Vec<usize> = (0..secs.len()).collect();
    slow.sort_by(|&a, &b| secs[b].total_cmp(&secs[a]));
    eprintln!("slowest instructions:");
    for &i in slow.iter().take(12) {
        let node = &graph.nodes[node_of[i]];
        eprintln!(
            "  {:>8.3} ms  {:<22} {:<40} {}",
            secs[i] * 1e3 / steps,
            program.instrs[i].kind(),
            node.name,
            gflops(flops_of(i), secs[i] / steps),
        );
    }
}

fn gflops(flops: f64, secs: f64) -> String {
    if flops > 0.0 && secs > 0.0 {
        format!("{:>9.1}", flops / secs / 1e9)
    } else {
        format!("{:>9}", "")
    }
}
