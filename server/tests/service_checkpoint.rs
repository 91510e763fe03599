//! Automatic checkpointing at submit: a job that does not fit the only
//! worker with every activation kept gets the least recompute that fits
//! it; the assignment carries the settled policy and a plan hash a worker
//! reproduces from it; a worker too small for any plan gets the numbers.

mod common;

use adjoint_graph::checkpoint::Policy;
use adjoint_graph::training::training_graph;
use adjoint_graph::zoo::{ChainConfig, chain};
use adjoint_proto::v1::{EstimateJobRequest, SubmitJobRequest};
use common::{Sandbox, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_too_big_for_its_worker_is_checkpointed_to_fit() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    // A chain (no labels) with its own data: x [16 samples, 16]; its
    // activations are big enough (256 B) to be worth recomputing.
    let graph = chain(&ChainConfig {
        layers: 12,
        width: 16,
        batch: None,
    })
    .unwrap();
    let x: Vec<u8> = (0..16 * 16)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect();
    let header = format!(
        r#"{{"x":{{"dtype":"F32","shape":[16,16],"data_offsets":[0,{}]}}}}"#,
        x.len()
    );
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&x);
    let data = sandbox.upload("chain.safetensors", &file).await;
    let job_spec = spec(&graph, &data, 1);

    // With no worker registered the job plans with everything kept.
    let plain = client
        .estimate_job(EstimateJobRequest {
            spec: Some(job_spec.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plain.checkpoint.as_str(), plain.recompute_flops),
        ("none", 0)
    );
    let sqrt = plain
        .policies
        .iter()
        .find(|p| p.policy == "sqrt")
        .expect("a sqrt row");
    assert!(sqrt.total_bytes < plain.total_bytes, "{plain:?}");

    // A worker with sqrt's memory: the job no longer fits with none.
    let memory = sqrt.total_bytes;
    let mut worker = sandbox.worker("w0", memory).await;
    let job = client
        .submit_job(SubmitJobRequest {
            spec: Some(job_spec.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let estimate = job.estimate.clone().unwrap();
    assert!(
        estimate.checkpoint.starts_with("budget:"),
        "{}",
        estimate.checkpoint
    );
    assert!(estimate.total_bytes <= memory, "{estimate:?}");
    assert!(estimate.recompute_flops > 0);
    let assignment = worker.assignment().await;
    let settled = assignment.spec.as_ref().unwrap().checkpoint.clone();
    assert_eq!(settled, estimate.checkpoint);
    let policy: Policy = settled.parse().unwrap();
    let ours = training_graph(&graph, 4, &policy).unwrap().plan_hash();
    assert_eq!(assignment.plan_hash, ours);

    // A worker too small for any plan: the numbers, not a queued job.
    let tiny = Sandbox::start(60_000).await;
    let data = tiny.upload("chain.safetensors", &file).await;
    let _w = tiny
        .worker("tiny", plain.total_bytes - plain.arena_bytes + 64)
        .await;
    let status = tiny
        .client()
        .await
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&graph, &data, 1)),
        })
        .await
        .expect_err("nothing fits");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("at least"),
        "{}",
        status.message()
    );
}
