//! `adjoint timeline`: a job's step phases on every rank as Chrome
//! trace-event JSON, for Perfetto or `chrome://tracing`.
//!
//! Built from the per-rank event logs the workers leave as artifacts
//! (`events/rank-<r>.jsonl`, one JSON object per step). Each rank is a
//! process of the trace with three tracks: the step (forward, backward,
//! then the optimizer), its bucket all-reduces, each carrying the bucket's
//! bytes and its sequence number within the step, so a bucket that one
//! rank reached late stands out, and, for the steps the workers sample
//! (the first and every `--trace-steps-every`-th), every op. Times are microseconds since
//! each rank started the job (ranks start within a few milliseconds of
//! each other).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use super::service::{Addr, with_client};

/// Write a job's timeline (every rank's step phases and all-reduces) as
/// Chrome trace-event JSON.
#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// The job id.
    job: String,
    /// Output file (open it in https://ui.perfetto.dev).
    #[arg(short, long, default_value = "trace.json")]
    output: PathBuf,
    #[command(flatten)]
    addr: Addr,
}

pub fn run(args: TimelineArgs) -> Result<()> {
    let logs = with_client(&args.addr, async |client| {
        let job = client.get_job(&args.job).await?;
        let mut names: Vec<&String> = job
            .artifacts
            .iter()
            .filter(|a| a.starts_with("events/rank-"))
            .collect();
        names.sort_by_key(|n| rank_of(n));
        if names.is_empty() {
            bail!(
                "{} has no event logs yet (they are written when a rank finishes)",
                args.job
            );
        }
        let mut logs = Vec::new();
        for name in names {
            let bytes = client.download(&args.job, name).await?;
            logs.push((rank_of(name), bytes));
        }
        Ok(logs)
    })?;
    let mut events = Vec::new();
    for (rank, bytes) in &logs {
        let text = std::str::from_utf8(bytes).context("an event log is not UTF-8")?;
        rank_events(*rank, text, &mut events)?;
    }
    let trace = json!({ "traceEvents": events, "displayTimeUnit": "ms" });
    std::fs::write(&args.output, serde_json::to_vec(&trace)?)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {} ({} events from {} ranks); open it in https://ui.perfetto.dev",
        args.output.display(),
        events.len(),
        logs.len()
    );
    Ok(())
}

fn rank_of(name: &str) -> u64 {
    name.trim_start_matches("events/rank-")
        .trim_end_matches(".jsonl")
        .parse()
        .unwrap_or(u64::MAX)
}

/// Appends the trace events of one rank's log.
pub fn rank_events(rank: u64, log: &str, out: &mut Vec<Value>) -> Result<()> {
    let meta = |tid: u64, name: &str| json!({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": name}});
    out.push(json!({"ph": "M", "name": "process_name", "pid": rank, "args": {"name": format!("rank {rank}")}}));
    out.push(meta(0, "step"));
    out.push(meta(1, "all-reduce"));
    out.push(meta(2, "ops"));
    for (i, line) in log.lines().enumerate() {
        let step: Value = serde_json::from_str(line)
            .with_context(|| format!("rank {rank}, line {}: not JSON", i + 1))?;
        let at = |key: &str| step[key].as_u64();
        let (Some(start), Some(end)) = (at("start_us"), at("end_us")) else {
            bail!("rank {rank}, line {}: no start_us/end_us", i + 1);
        };
        let n = at("step").unwrap_or(i as u64);
        let span = |name: &str, tid: u64, from: u64, to: u64, args: Value| {
            json!({"ph": "X", "name": name, "pid": rank, "tid": tid, "ts": from,
                   "dur": to.saturating_sub(from), "args": args})
        };
        out.push(span(
            &format!("step {n}"),
            0,
            start,
            end,
            json!({"step": n}),
        ));
        if let Some(bwd) = at("backward_end_us") {
            match at("backward_start_us") {
                Some(mid) => {
                    out.push(span("forward", 0, start, mid, json!({"step": n})));
                    out.push(span("backward", 0, mid, bwd, json!({"step": n})));
                }
                None => out.push(span(
                    "forward + backward",
                    0,
                    start,
                    bwd,
                    json!({"step": n}),
                )),
            }
            out.push(span("optimizer", 0, bwd, end, json!({"step": n})));
        }
        for node in step["nodes"].as_array().into_iter().flatten() {
            let (Some(from), Some(to)) = (node["start_us"].as_u64(), node["end_us"].as_u64())
            else {
                continue;
            };
            let op = node["op"].as_str().unwrap_or("op");
            out.push(span(
                op,
                2,
                from,
                to,
                json!({"step": n, "node": node["node"]}),
            ));
        }
        for (seq, b) in step["buckets"].as_array().into_iter().flatten().enumerate() {
            let (Some(from), Some(to)) = (b["start_us"].as_u64(), b["end_us"].as_u64()) else {
                continue;
            };
            out.push(span(
                &format!("bucket {}", b["bucket"]),
                1,
                from,
                to,
                json!({"step": n, "seq": seq, "bytes": b["bytes"], "ready_after": b["ready_after"]}),
            ));
        }
    }
    Ok(())
}
