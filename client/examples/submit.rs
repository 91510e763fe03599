//! Submitting a job from another Rust program with `adjoint_client`.
//!
//! ```sh
//! adjoint up --workers 2 &        # prints the address; or any coordinator
//! cargo run -p adjoint-client --example submit -- 127.0.0.1:PORT model.json train.safetensors
//! ```
//!
//! Builds a job spec (uploading the dataset as a blob), asks for an estimate,
//! submits, follows the job's events to the end and downloads the weights.

use adjoint_client::Client;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::{JobState, job_event};
use anyhow::{Context, Result, bail};
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, graph, data] = args.as_slice() else {
        bail!("usage: submit COORDINATOR_ADDR GRAPH_FILE DATA_SAFETENSORS");
    };
    let mut client = Client::connect(addr).await?;
    let fields = SpecFields {
        graph: Some(graph.into()),
        data: Some(data.into()),
        workers: Some(1),
        batch_size: Some(32),
        steps: Some(50),
        optimizer: Some("adamw:lr=1e-3".into()),
        ..SpecFields::default()
    };
    let spec = fields.build(&mut client).await?;
    let estimate = client.estimate(spec.clone()).await?;
    println!(
        "planned: {} bytes per worker, {} FLOPs per step",
        estimate.total_bytes, estimate.flops_per_step
    );
    let job = client.submit(spec).await?;
    println!("submitted {}", job.id);
    let mut events = client.watch(&job.id, 0).await?;
    let mut state = JobState::Queued;
    while let Some(event) = events.next().await {
        match event?.kind {
            Some(job_event::Kind::Metrics(m)) => println!("step {:>4}  loss {:.4}", m.step, m.loss),
            Some(job_event::Kind::State(s)) => state = s.state(),
            _ => {}
        }
    }
    if state != JobState::Succeeded {
        let job = client.get_job(&job.id).await?;
        bail!("{} ended {:?}: {}", job.id, job.state(), job.reason);
    }
    let weights = client.download(&job.id, "weights.safetensors").await?;
    std::fs::write("weights.safetensors", &weights).context("writing weights.safetensors")?;
    println!("wrote weights.safetensors ({} bytes)", weights.len());
    Ok(())
}
