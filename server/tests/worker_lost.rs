//! Lost workers: a worker whose stream drops, or who stops heartbeating,
//! sends its job back to the queue to resume from its newest checkpoint
//! (the other ranks are aborted), up to `max_restarts` times; past that,
//! or with `max_restarts = 0`, the job fails with a reason naming the rank.

mod common;

use adjoint_proto::v1::{JobState, ListWorkersRequest, SubmitJobRequest};
use common::{Sandbox, small_mlp, spec, wait_for};

const GIB: u64 = 1 << 30;

/// The job's state changes so far, with their reasons.
async fn state_history(
    client: &mut adjoint_proto::v1::coordinator_client::CoordinatorClient<
        tonic::transport::Channel,
    >,
    id: &str,
) -> Vec<(JobState, String)> {
    use adjoint_proto::v1::{WatchJobRequest, job_event};
    let mut stream = client
        .watch_job(WatchJobRequest {
            id: id.to_owned(),
            after_seq: 0,
            history_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(job_event::Kind::State(s)) = event.kind {
            out.push((s.state(), s.reason));
        }
    }
    out
}

fn no_restarts(mut spec: adjoint_proto::v1::JobSpec) -> adjoint_proto::v1::JobSpec {
    spec.max_restarts = Some(0);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_fails_the_job_naming_the_rank() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    let data = sandbox.upload_dataset().await;
    let mut a = sandbox.worker("alpha", GIB).await;
    let mut b = sandbox.worker("beta", GIB).await;
    let job = client
        .submit_job(SubmitJobRequest {
            spec: Some(no_restarts(spec(&small_mlp(), &data, 2))),
        })
        .await
        .unwrap()
        .into_inner();
    a.assignment().await;
    assert_eq!(b.assignment().await.rank, 1);
    let b_id = b.id.clone();
    b.disconnect();

    let failed = sandbox.wait_state(&job.id, JobState::Failed).await;
    assert!(failed.reason.contains("rank 1"), "{}", failed.reason);
    assert!(failed.reason.contains(&b_id), "{}", failed.reason);
    assert!(failed.reason.contains("beta"), "{}", failed.reason);
    let abort = a.abort().await;
    assert_eq!(abort.job_id, job.id);
    assert!(abort.reason.contains("rank 1"), "{}", abort.reason);

    let workers = client
        .list_workers(ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    let statuses: Vec<_> = workers.workers.iter().map(|w| w.status.as_str()).collect();
    assert_eq!(statuses, ["busy", "lost"], "alpha drains the aborted job");
    a.finished(&job.id, 0, false, &abort.reason, &[]).await;
    wait_for("alpha to be idle", || async {
        let mut client = sandbox.client().await;
        let workers = client
            .list_workers(ListWorkersRequest {})
            .await
            .unwrap()
            .into_inner();
        (workers.workers[0].status == "idle").then_some(())
    })
    .await;
    let failed_again = sandbox.job(&job.id).await;
    assert_eq!(
        failed_again.reason, failed.reason,
        "a drained rank changes nothing"
    );
    sandbox.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_lost_after_three_heartbeats() {
    let sandbox = Sandbox::start(100).await;
    let mut client = sandbox.client().await;
    let data = sandbox.upload_dataset().await;
    let mut w = sandbox.worker("quiet", GIB).await;
    assert_eq!(w.heartbeat_ms, 100);
    let job = client
        .submit_job(SubmitJobRequest {
            spec: Some(no_restarts(spec(&small_mlp(), &data, 1))),
        })
        .await
        .unwrap()
        .into_inner();
    w.assignment().await;
    w.go_silent();
    let failed = sandbox.wait_state(&job.id, JobState::Failed).await;
    assert!(failed.reason.contains("rank 0"), "{}", failed.reason);
    assert!(failed.reason.contains("no heartbeat"), "{}", failed.reason);
    assert!(
        w.stream_ends().await,
        "the coordinator closes a lost worker's stream"
    );
    wait_for("the worker to be listed as lost", || async {
        let mut client = sandbox.client().await;
        let workers = client
            .list_workers(ListWorkersRequest {})
            .await
            .unwrap()
            .into_inner();
        (workers.workers[0].status == "lost").then_some(())
    })
    .await;
    sandbox.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_sends_the_job_back_to_resume_on_the_next_gang() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    let data = sandbox.upload_dataset().await;
    let mut a = sandbox.worker("alpha", GIB).await;
    let b = sandbox.worker("beta", GIB).await;
    let mut spec = spec(&small_mlp(), &data, 2);
    spec.max_restarts = Some(1);
    let job = client
        .submit_job(SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner();
    let first = a.assignment().await;
    assert_eq!(first.resume_job, "", "a first run starts as submitted");
    let b_id = b.id.clone();
    b.disconnect();

    // Back in the queue, waiting for a second worker; the history says why.
    sandbox.wait_state(&job.id, JobState::Queued).await;
    let history = state_history(&mut client, &job.id).await;
    assert!(
        history.iter().any(|(s, r)| *s == JobState::Queued
            && r.contains(&b_id)
            && r.contains("restart 1 of 1")),
        "{history:?}"
    );
    let abort = a.abort().await;
    assert_eq!(abort.job_id, job.id);
    a.finished(&job.id, 0, false, &abort.reason, &[]).await;
    wait_for("the job to wait for a second worker", || async {
        let job = sandbox.job(&job.id).await;
        (job.state() == JobState::Queued && job.reason.starts_with("waiting for 2 workers"))
            .then_some(())
    })
    .await;

    // A new worker joins: the gang re-forms and resumes from the job's own
    // checkpoints.
    let mut c = sandbox.worker("gamma", GIB).await;
    let (ra, rc) = (a.assignment().await, c.assignment().await);
    assert_eq!(
        (ra.resume_job.as_str(), rc.resume_job.as_str()),
        (job.id.as_str(), job.id.as_str())
    );
    assert_eq!(sandbox.job(&job.id).await.state(), JobState::Running);

    // A rank failing because of its peers counts as a restart too; this
    // job has used its one restart, so now it fails, with its history.
    c.send(adjoint_proto::v1::worker_message::Kind::Finished(
        adjoint_proto::v1::JobFinished {
            job_id: job.id.clone(),
            rank: rc.rank,
            ok: false,
            error: "all-reduce: rank 1: lost rank 0 during all_reduce_sum #12".into(),
            artifacts: Vec::new(),
            retryable: true,
        },
    ))
    .await;
    let failed = sandbox.wait_state(&job.id, JobState::Failed).await;
    assert!(
        failed
            .reason
            .contains("not restarted again after 1 restart"),
        "{}",
        failed.reason
    );
    sandbox.server.shutdown().await.unwrap();
}
