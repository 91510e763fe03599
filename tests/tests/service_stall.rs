//! A rank that stalls inside a collective fails the job within the
//! collective timeout, and the failure names the silent rank and the
//! collective's sequence number, so an operator knows which worker to look
//! at. The stalled worker is frozen with SIGSTOP (alive, its sockets open,
//! silent), which is what a hung rank looks like to its peers.

use std::time::{Duration, Instant};

use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::JobState;
use adjoint_tests::{connect, logs, runtime, wait_until, write_example};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_stalled_rank_fails_the_job_naming_it_and_the_collective() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 256).unwrap();
    // Collectives give up after 2 s; heartbeats would call the worker lost
    // only after 3 × 3 s, so the collective timeout is what fails the job.
    let env = [
        ("ADJOINT_COLLECTIVE_TIMEOUT", "2"),
        ("ADJOINT_HEARTBEAT_MS", "3000"),
    ];
    let cluster = LocalCluster::start_with_env(&dir.path().join("cluster"), 2, &env).unwrap();

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let spec = SpecFields {
            graph: Some(dir.path().join("model.json")),
            data: Some(dir.path().join("train.safetensors")),
            workers: Some(2),
            batch_size: Some(16),
            steps: Some(1_000_000),
            optimizer: Some("sgd:lr=0.1".into()),
            // Fail rather than restart, to read the failure's reason.
            max_restarts: Some(0),
            ..SpecFields::default()
        }
        .build(&mut client)
        .await
        .unwrap();
        let id = client.submit(spec).await.unwrap().id;
        wait_until("the job to train", TIMEOUT, async || {
            Ok((client.get_job(&id).await?.step >= 3).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}{}", logs(&cluster)));

        // Which rank runs on worker-1?
        let workers = client.workers().await.unwrap();
        let job = client.get_job(&id).await.unwrap();
        let frozen_id = &workers.iter().find(|w| w.name == "worker-1").unwrap().id;
        let rank = job.workers.iter().position(|w| w == frozen_id).unwrap();

        cluster.pause_worker(1).unwrap();
        let frozen_at = Instant::now();
        let failed = wait_until("the job to fail", TIMEOUT, async || {
            let job = client.get_job(&id).await?;
            Ok((job.state() == JobState::Failed).then_some(job))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}{}", logs(&cluster)));
        let took = frozen_at.elapsed();
        cluster.resume_worker(1).unwrap();

        println!("failed {took:?} after the freeze: {}", failed.reason);
        assert!(
            took < Duration::from_secs(8),
            "the job took {took:?} to fail (timeout 2 s)"
        );
        let reason = &failed.reason;
        assert!(reason.contains("timed out"), "{reason}");
        assert!(
            reason.contains(&format!("waiting for rank {rank}")),
            "the reason names rank {rank}: {reason}"
        );
        let seq = reason
            .split('#')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse::<u64>().ok());
        assert!(
            seq.is_some_and(|s| s > 0),
            "the reason gives the sequence number: {reason}"
        );
    });
}
