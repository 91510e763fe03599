//! A job's life through the real gRPC API: submit, wait for a worker,
//! assignment, metrics, finish, watch (live and resumed), artifacts,
//! cancel.

mod common;

use adjoint_proto::v1::job_event::Kind;
use adjoint_proto::v1::{
    DownloadArtifactRequest, EstimateJobRequest, JobEvent, JobState, ListJobsRequest,
    ListWorkersRequest, SubmitJobRequest, WatchJobRequest,
};
use common::{Sandbox, small_mlp, spec, wait_for, worker_plan_hash};
use tokio_stream::StreamExt;

const GIB: u64 = 1 << 30;

/// Collects a WatchJob stream until it ends.
async fn watch_all(sandbox: &Sandbox, id: &str, after_seq: u64) -> Vec<JobEvent> {
    let mut client = sandbox.client().await;
    let request = WatchJobRequest {
        id: id.to_owned(),
        after_seq,
        ..Default::default()
    };
    let stream = client.watch_job(request).await.unwrap().into_inner();
    let all = tokio::time::timeout(common::DEADLINE, stream.collect::<Vec<_>>())
        .await
        .expect("the watch stream ends after the terminal state");
    all.into_iter().map(Result::unwrap).collect()
}

fn states(events: &[JobEvent]) -> Vec<JobState> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::State(s)) => Some(s.state()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_for_a_worker_runs_and_succeeds() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    let graph = small_mlp();
    let dataset = sandbox.upload_dataset().await;
    assert!(dataset.starts_with("blobs/"));

    let estimate = client
        .estimate_job(EstimateJobRequest {
            spec: Some(spec(&graph, &dataset, 1)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(estimate.plan_hash, worker_plan_hash(&graph, 4));
    assert!(estimate.total_bytes > estimate.param_bytes && estimate.flops_per_step > 0);

    let job = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&graph, &dataset, 1)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.id, "job-000001");
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.reason, "waiting for 1 workers (have 0)");
    assert_eq!(job.estimate.as_ref().unwrap(), &estimate);
    let stored = job.spec.as_ref().unwrap();
    assert_eq!((stored.device.as_str(), stored.grad_accum), ("cpu", 1));
    assert_eq!(stored.optimizer.as_ref().unwrap().name, "sgd");

    let mut worker = sandbox.worker("w0", GIB).await;
    let assignment = worker.assignment().await;
    assert_eq!(assignment.job_id, job.id);
    assert_eq!((assignment.rank, assignment.world), (0, 1));
    assert_eq!(assignment.peers, ["w0:7000"]);
    assert_eq!(assignment.plan_hash, worker_plan_hash(&graph, 4));
    assert_eq!(assignment.spec.as_ref(), Some(stored));
    let running = sandbox.wait_state(&job.id, JobState::Running).await;
    assert_eq!(running.workers, [worker.id.clone()]);

    let workers = client
        .list_workers(ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(workers.workers[0].status, "busy");
    assert_eq!(workers.workers[0].job_id, job.id);

    for step in 1..=3 {
        worker.metrics(step, 0, 1.0 / step as f64).await;
    }
    wait_for("step 3", || async {
        let job = sandbox.job(&job.id).await;
        (job.step == 3).then_some(())
    })
    .await;
    // The worker writes its artifact in the shared store, then reports it.
    let artifact_dir = sandbox.store().join("jobs").join(&job.id);
    std::fs::create_dir_all(&artifact_dir).unwrap();
    let weights: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    std::fs::write(artifact_dir.join("weights.safetensors"), &weights).unwrap();
    worker
        .finished(&job.id, 0, true, "", &["weights.safetensors"])
        .await;

    let done = sandbox.wait_state(&job.id, JobState::Succeeded).await;
    assert_eq!(done.artifacts, ["weights.safetensors"]);
    assert!((done.last_loss - 1.0 / 3.0).abs() < 1e-12);

    let events = watch_all(&sandbox, &job.id, 0).await;
    assert_eq!(
        states(&events),
        [
            JobState::Queued,
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let losses: Vec<f64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Metrics(m)) => Some(m.loss),
            _ => None,
        })
        .collect();
    assert_eq!(losses, [1.0, 0.5, 1.0 / 3.0]);

    // Resuming after the RUNNING event replays exactly what followed.
    let running_seq = events
        .iter()
        .find(|e| matches!(&e.kind, Some(Kind::State(s)) if s.state() == JobState::Running))
        .unwrap()
        .seq;
    let resumed = watch_all(&sandbox, &job.id, running_seq).await;
    assert_eq!(resumed, events[running_seq as usize..]);

    let chunks: Vec<_> = client
        .download_artifact(DownloadArtifactRequest {
            job_id: job.id.clone(),
            name: "weights.safetensors".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    let chunks: Vec<_> = chunks.into_iter().map(Result::unwrap).collect();
    assert_eq!(chunks.len(), 3, "1 MiB chunks");
    assert_eq!(chunks[0].name, "weights.safetensors");
    let downloaded: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
    assert_eq!(downloaded, weights);

    let listed = client
        .list_jobs(ListJobsRequest {
            states: vec![JobState::Succeeded as i32],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    let none = client
        .list_jobs(ListJobsRequest {
            states: vec![JobState::Running as i32],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.jobs.is_empty());
    sandbox.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_watch_sees_metrics_and_ends_with_the_job() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    let dataset = sandbox.upload_dataset().await;
    let mut worker = sandbox.worker("w0", GIB).await;
    let job = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&small_mlp(), &dataset, 1)),
        })
        .await
        .unwrap()
        .into_inner();
    let assignment = worker.assignment().await;
    let mut live = client
        .watch_job(WatchJobRequest {
            id: job.id.clone(),
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Replayed: QUEUED, RUNNING.
    for _ in 0..2 {
        live.next().await.unwrap().unwrap();
    }
    worker.metrics(1, 0, 2.5).await;
    let event = live.next().await.unwrap().unwrap();
    let Some(Kind::Metrics(metrics)) = event.kind else {
        panic!("expected metrics, got {event:?}");
    };
    assert_eq!(metrics.loss, 2.5);
    // While the job runs, a history-only watch gives what happened so far
    // and ends.
    let history = client
        .watch_job(WatchJobRequest {
            id: job.id.clone(),
            after_seq: 0,
            history_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    let history: Vec<JobEvent> =
        tokio::time::timeout(common::DEADLINE, history.collect::<Vec<_>>())
            .await
            .expect("a history-only watch ends while the job runs")
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert_eq!(states(&history), [JobState::Queued, JobState::Running]);
    assert!(matches!(
        history.last().unwrap().kind,
        Some(Kind::Metrics(_))
    ));
    worker
        .finished(&assignment.job_id, 0, false, "out of memory", &[])
        .await;
    let last = live.next().await.unwrap().unwrap();
    let Some(Kind::State(change)) = last.kind else {
        panic!("expected the terminal state, got {last:?}");
    };
    assert_eq!(change.state(), JobState::Failed);
    assert!(change.reason.contains("rank 0") && change.reason.contains("out of memory"));
    assert!(
        live.next().await.is_none(),
        "the stream ends after the terminal state"
    );
    sandbox.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_aborts_its_workers() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    let dataset = sandbox.upload_dataset().await;
    let mut a = sandbox.worker("a", GIB).await;
    let mut b = sandbox.worker("b", GIB).await;
    let job = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&small_mlp(), &dataset, 2)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state(), JobState::Running);
    let (ra, rb) = (a.assignment().await, b.assignment().await);
    assert_eq!((ra.rank, rb.rank, ra.world), (0, 1, 2));
    assert_eq!(ra.peers, ["a:7000", "b:7000"]);
    assert_eq!(rb.peers, ra.peers);

    let cancelled = client
        .cancel_job(adjoint_proto::v1::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    assert_eq!(a.abort().await.job_id, job.id);
    assert_eq!(b.abort().await.job_id, job.id);

    // A finished job cannot be cancelled again.
    let again = client
        .cancel_job(adjoint_proto::v1::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(again.message().contains("CANCELLED"), "{}", again.message());

    // Aborted workers drain: nothing new reaches them until they report
    // the end of the cancelled job.
    let next = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&small_mlp(), &dataset, 2)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.state(), JobState::Queued);
    assert_eq!(next.reason, "waiting for 2 idle workers (have 0)");
    a.finished(&job.id, 0, false, "aborted", &[]).await;
    sandbox
        .wait_reason(&next.id, "waiting for 2 idle workers (have 1)")
        .await;
    b.finished(&job.id, 1, false, "aborted", &[]).await;
    assert_eq!(a.assignment().await.job_id, next.id);
    assert_eq!(b.assignment().await.job_id, next.id);

    // A queued job cancels without workers.
    let queued = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&small_mlp(), &dataset, 1)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(queued.state(), JobState::Queued);
    let cancelled = client
        .cancel_job(adjoint_proto::v1::CancelJobRequest {
            id: queued.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    sandbox.server.shutdown().await.unwrap();
}
