//! A worker SIGKILLed in the middle of a job: the survivors do not hang
//! (the job is back in the queue within seconds, far below any collective
//! timeout), the job waits for a second worker, re-forms its gang when one
//! joins, resumes from its newest checkpoint and ends with the weights of
//! an uninterrupted run, bit for bit.

use std::time::{Duration, Instant};

use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::JobState;
use adjoint_tests::{
    connect, logs, read_weights, runtime, wait_until, weights_differ, write_example,
};

const TIMEOUT: Duration = Duration::from_secs(90);
/// Long enough (a few seconds) to kill a worker in the middle.
const STEPS: u64 = 3000;

#[test]
fn a_killed_worker_costs_a_restart_not_the_job() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 512).unwrap();
    let mut cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let job = SpecFields {
        graph: Some(dir.path().join("model.json")),
        data: Some(dir.path().join("train.safetensors")),
        workers: Some(2),
        batch_size: Some(16),
        steps: Some(STEPS),
        seed: Some(5),
        optimizer: Some("sgd:lr=0.05,momentum=0.9".into()),
        checkpoint_every: Some(100),
        ..SpecFields::default()
    };

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let run = async |client: &mut adjoint_client::Client, fields: &SpecFields| {
            let spec = fields.build(client).await.unwrap();
            client.submit(spec).await.unwrap().id
        };
        let finish = async |client: &mut adjoint_client::Client, id: &str| {
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
        };

        let whole = run(&mut client, &job).await;
        let whole_w = finish(&mut client, &whole).await;

        let id = run(&mut client, &job).await;
        wait_until("the job to pass a few checkpoints", TIMEOUT, async || {
            Ok((client.get_job(&id).await?.step >= 450).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}{}", logs(&cluster)));
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
