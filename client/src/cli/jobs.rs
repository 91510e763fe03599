//! `adjoint jobs`, `status`, `cancel`, `pull` and `workers`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use adjoint_graph::TensorData;
use adjoint_proto::v1::JobState;
use adjoint_server::coordinator::ONNX_ARTIFACT;
use adjoint_worker::data::read_safetensors;
use anyhow::{Context, Result, bail};
use clap::Args;

use super::service::{Addr, human_bytes, with_client};

/// List jobs, newest last.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state (queued, running, succeeded, failed, cancelled).
    #[arg(long)]
    state: Vec<String>,
    #[command(flatten)]
    addr: Addr,
}

/// Show one job.
#[derive(Debug, Args)]
pub struct StatusArgs {
    job: String,
    #[command(flatten)]
    addr: Addr,
}

/// Cancel a queued or running job.
#[derive(Debug, Args)]
pub struct CancelArgs {
    job: String,
    #[command(flatten)]
    addr: Addr,
}

/// Download a job's artifact (by default its final weights, named as the
/// graph's parameters: an ONNX model's initializer names), or with
/// `--onnx` the job's ONNX model with the trained weights in it.
#[derive(Debug, Args)]
pub struct PullArgs {
    job: String,
    /// Where to write it.
    #[arg(short, long)]
    output: PathBuf,
    /// Which artifact (the weights with `--onnx`).
    #[arg(long, default_value = "weights.safetensors")]
    artifact: String,
    /// Write the ONNX model the job was submitted with, its initializers
    /// replaced by the trained weights (one self-contained file).
    #[arg(long)]
    onnx: bool,
    #[command(flatten)]
    addr: Addr,
}

/// List the registered workers.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    addr: Addr,
}

fn parse_state(s: &str) -> Result<JobState> {
    JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase())).with_context(|| {
        format!("unknown state '{s}': use queued, running, succeeded, failed or cancelled")
    })
}

pub fn jobs(args: JobsArgs) -> Result<()> {
    let states = args
        .state
        .iter()
        .map(|s| parse_state(s))
        .collect::<Result<Vec<_>>>()?;
    let jobs = with_client(&args.addr, async |c| c.list_jobs(&states).await)?;
    println!(
        "{:<14} {:<10} {:>8} {:>10}  {:<20} reason",
        "id", "state", "step", "loss", "name"
    );
    for j in jobs {
        let name = j.spec.as_ref().map_or("", |s| s.name.as_str()).to_owned();
        println!(
            "{:<14} {:<10} {:>8} {:>10.4}  {:<20} {}",
            j.id,
            state_name(j.state()),
            j.step,
            j.last_loss,
            name,
            j.reason
        );
    }
    Ok(())
}

fn state_name(s: JobState) -> String {
    s.as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_lowercase()
}

pub fn status(args: StatusArgs) -> Result<()> {
    let j = with_client(&args.addr, async |c| c.get_job(&args.job).await)?;
    println!("job {}: {}", j.id, state_name(j.state()));
    if !j.reason.is_empty() {
        println!("  reason: {}", j.reason);
    }
    if let Some(s) = &j.spec {
        println!(
            "  name {}, {} worker(s), batch {} per worker, {} steps",
            s.name, s.workers, s.batch_size, s.steps
        );
    }
    println!("  step {}, last loss {:.6}", j.step, j.last_loss);
    if let Some(e) = &j.estimate {
        println!(
            "  memory per worker {}, plan {}",
            human_bytes(e.total_bytes),
            e.plan_hash
        );
    }
    if !j.workers.is_empty() {
        println!("  workers: {}", j.workers.join(", "));
    }
    if !j.artifacts.is_empty() {
        println!("  artifacts: {}", j.artifacts.join(", "));
    }
    Ok(())
}

pub fn cancel(args: CancelArgs) -> Result<()> {
    let j = with_client(&args.addr, async |c| c.cancel(&args.job).await)?;
    println!("{}: {}", j.id, state_name(j.state()));
    Ok(())
}

pub fn pull(args: PullArgs) -> Result<()> {
    if args.onnx {
        return pull_onnx(&args);
    }
    let bytes = with_client(&args.addr, async |c| {
        c.download(&args.job, &args.artifact).await
    })?;
    if bytes.is_empty() {
        bail!("artifact '{}' of {} is empty", args.artifact, args.job);
    }
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {} ({}) to {}",
        args.artifact,
        human_bytes(bytes.len() as u64),
        args.output.display()
    );
    Ok(())
}

/// `pull --onnx`: the job's `model.onnx` with the pulled weights in it.
fn pull_onnx(args: &PullArgs) -> Result<()> {
    let (model, weights) = with_client(&args.addr, async |c| {
        let job = c.get_job(&args.job).await?;
        if job.spec.as_ref().is_none_or(|s| s.onnx_blob.is_empty()) {
            bail!(
                "job {} was not submitted as an ONNX model: there is no model to export into (pull the weights without --onnx)",
                args.job
            );
        }
        let model = c
            .download(&args.job, ONNX_ARTIFACT)
            .await
            .with_context(|| format!("downloading the ONNX model of {}", args.job))?;
        let weights = c
            .download(&args.job, &args.artifact)
            .await
            .with_context(|| format!("downloading {} of {}", args.artifact, args.job))?;
        Ok((model, weights))
    })?;
    let tensors = read_safetensors(&weights)
        .with_context(|| format!("artifact '{}' of {}", args.artifact, args.job))?;
    let weights: BTreeMap<String, TensorData> = tensors
        .into_iter()
        .map(|(name, t)| {
            let data = TensorData {
                dtype: t.dtype,
                shape: t.shape,
                bytes: t.bytes,
            };
            (name, data)
        })
        .collect();
    // The importer's callback type: the graph crate's (large) error.
    #[allow(clippy::result_large_err)]
    let no_files = |location: &str| -> adjoint_graph::Result<Vec<u8>> {
        Err(adjoint_graph::Error::Unsupported(format!(
            "the stored model should have no external data, but names '{location}'"
        )))
    };
    let out =
        adjoint_graph::onnx::with_weights(&model, &weights, &no_files).with_context(|| {
            format!(
                "exporting the trained weights of {} into its ONNX model",
                args.job
            )
        })?;
    std::fs::write(&args.output, &out)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote the ONNX model of {} with {} trained weights ({}) to {}",
        args.job,
        weights.len(),
        human_bytes(out.len() as u64),
        args.output.display()
    );
    Ok(())
}

pub fn workers(args: WorkersArgs) -> Result<()> {
    let workers = with_client(&args.addr, async |c| c.workers().await)?;
    println!(
        "{:<12} {:<16} {:>5} {:>10}  {:<28} {:<6} {:<14} {:<21}",
        "id", "name", "cores", "memory", "device", "status", "job", "metrics"
    );
    for w in workers {
        // The GPUs a worker trains on ("NVIDIA H100 80GB HBM3 (79.1 GiB)"),
        // else "cpu".
        let device = if w.devices.is_empty() {
            "cpu".to_owned()
        } else {
            w.devices
                .iter()
                .map(|d| format!("{} ({})", d.name, human_bytes(d.memory_bytes)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<12} {:<16} {:>5} {:>10}  {:<28} {:<6} {:<14} {:<21}",
            w.id,
            w.name,
            w.cores,
            human_bytes(w.memory_bytes),
            device,
            w.status,
            if w.job_id.is_empty() { "-" } else { &w.job_id },
            if w.metrics_address.is_empty() {
                "-".to_owned()
            } else {
                format!("http://{}/metrics", w.metrics_address)
            },
        );
    }
    Ok(())
}
