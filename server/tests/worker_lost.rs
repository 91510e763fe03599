//! Lost workers: a worker whose stream drops, or who stops heartbeating,
//! fails its job with a reason naming its rank, and the other ranks are
//! aborted.

mod common;

use adjoint_proto::v1::{JobState, ListWorkersRequest, SubmitJobRequest};
use common::{Sandbox, small_mlp, spec, wait_for};

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_fails_the_job_naming_the_rank() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    let data = sandbox.upload_dataset().await;
    let mut a = sandbox.worker("alpha", GIB).await;
    let mut b = sandbox.worker("beta", GIB).await;
    let job = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&small_mlp(), &data, 2)),
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
            spec: Some(spec(&small_mlp(), &data, 1)),
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
