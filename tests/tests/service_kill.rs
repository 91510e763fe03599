//! Processes SIGKILLed in the middle of a job, and the job still ends with
//! the weights of an uninterrupted run, bit for bit:
//!
//! - a worker: the survivors do not hang (the job is back in the queue
//!   within seconds, far below any collective timeout), the job waits for a
//!   second worker, re-forms its gang when one joins and resumes from its
//!   newest checkpoint;
//! - the coordinator: restarted on the same address and database, it
//!   requeues the job, the workers reconnect (their old ranks are told to
//!   stop) and the job resumes from its newest checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use adjoint_client::Client;
use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::JobState;
use adjoint_tests::{
    connect, logs, read_weights, runtime, wait_until, weights_differ, write_example,
};
use adjoint_worker::data::HostTensor;

const TIMEOUT: Duration = Duration::from_secs(90);
/// Long enough (a few seconds) to kill a worker in the middle.
const STEPS: u64 = 3000;

/// A job of a few seconds on the two workers, checkpointed every 100 steps.
fn job(dir: &Path) -> SpecFields {
    SpecFields {
        graph: Some(dir.join("model.json")),
        data: Some(dir.join("train.safetensors")),
        workers: Some(2),
        batch_size: Some(16),
        steps: Some(STEPS),
        seed: Some(5),
        optimizer: Some("sgd:lr=0.05,momentum=0.9".into()),
        checkpoint_every: Some(100),
        ..SpecFields::default()
    }
}

async fn run(client: &mut Client, fields: &SpecFields) -> String {
    let spec = fields.build(client).await.unwrap();
    client.submit(spec).await.unwrap().id
}

/// Waits for job `id` to succeed and reads its weights.
async fn finish(client: &mut Client, id: &str) -> BTreeMap<String, HostTensor> {
    let job = wait_until("the job to end", TIMEOUT, async || {
        let job = client.get_job(id).await?;
        let done = matches!(
            job.state(),
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        );
        Ok(done.then_some(job))
    })
    .await
    .unwrap();
    assert_eq!(job.state(), JobState::Succeeded, "{id}: {}", job.reason);
    read_weights(&client.download(id, "weights.safetensors").await.unwrap()).unwrap()
}

/// Waits until job `id` is past a few checkpoints.
async fn past_checkpoints(client: &mut Client, cluster: &LocalCluster, id: &str) {
    wait_until("the job to pass a few checkpoints", TIMEOUT, async || {
        Ok((client.get_job(id).await?.step >= 450).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}{}", logs(cluster)));
}

#[test]
fn a_killed_worker_costs_a_restart_not_the_job() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 512).unwrap();
    let mut cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let job = job(dir.path());

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let whole = run(&mut client, &job).await;
        let whole_w = finish(&mut client, &whole).await;

        let id = run(&mut client, &job).await;
        past_checkpoints(&mut client, &cluster, &id).await;
        cluster.kill_worker(1).unwrap();
        let killed = Instant::now();
        let queued = wait_until("the job back in the queue", TIMEOUT, async || {
            let job = client.get_job(&id).await?;
            Ok((job.state() == JobState::Queued).then_some(job))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}{}", logs(&cluster)));
        let took = killed.elapsed();
        println!(
            "back in the queue {took:?} after the kill: {}",
            queued.reason
        );
        assert!(
            took < Duration::from_secs(15),
            "survivors took {took:?} to give up"
        );

        cluster.add_worker("worker-2").unwrap();
        let resumed_w = finish(&mut client, &id).await;
        if let Some(diff) = weights_differ(&resumed_w, &whole_w, 0.0) {
            panic!("the restarted job differs from the uninterrupted one: {diff}");
        }
        let log = logs(&cluster);
        assert!(
            log.contains("resumed at step"),
            "no resume in the logs{log}"
        );
    });
}

#[test]
fn a_killed_coordinator_costs_a_restart_not_the_job() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 512).unwrap();
    let mut cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let job = job(dir.path());

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let whole = run(&mut client, &job).await;
        let whole_w = finish(&mut client, &whole).await;

        let id = run(&mut client, &job).await;
        past_checkpoints(&mut client, &cluster, &id).await;
        cluster.restart_server().unwrap();
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let resumed_w = finish(&mut client, &id).await;
        if let Some(diff) = weights_differ(&resumed_w, &whole_w, 0.0) {
            panic!("the job resumed after the restart differs: {diff}");
        }
        let log = logs(&cluster);
        assert!(
            log.contains("resumed at step"),
            "no resume in the logs{log}"
        );
    });
}
