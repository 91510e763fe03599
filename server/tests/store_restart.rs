//! The job database survives a restart: queued jobs stay queued, running
//! jobs go back to the queue, and WatchJob replays the history.

mod common;

use adjoint_proto::v1::{JobState, SubmitJobRequest, WatchJobRequest};
use common::{Sandbox, small_mlp, spec, worker_plan_hash};
use tokio_stream::StreamExt;

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_running_jobs_survive_a_restart() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    let data = sandbox.upload_dataset().await;
    let mut w = sandbox.worker("w", GIB).await;
    let running = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&small_mlp(), &data, 1)),
        })
        .await
        .unwrap()
        .into_inner();
    w.assignment().await;
    let queued = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec(&small_mlp(), &data, 1)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(queued.state(), JobState::Queued);
    drop(client);

    let sandbox = sandbox.restart().await;
    drop(w);
    let was_running = sandbox.job(&running.id).await;
    assert_eq!(was_running.state(), JobState::Queued);
    assert_eq!(was_running.reason, "coordinator restarted");
    let still_queued = sandbox.job(&queued.id).await;
    assert_eq!(still_queued.state(), JobState::Queued);
    assert_eq!(still_queued.spec, queued.spec);

    // The history is replayed from the database, then goes on live.
    let mut client = sandbox.client().await;
    let mut events = client
        .watch_job(WatchJobRequest {
            id: running.id.clone(),
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(events.next().await.unwrap().unwrap().seq);
    }
    assert_eq!(seen, [1, 2, 3]);

    // A new worker picks the oldest job first, with the same plan.
    let mut w = sandbox.worker("w-again", GIB).await;
    let assignment = w.assignment().await;
    assert_eq!(assignment.job_id, running.id);
    assert_eq!(assignment.plan_hash, worker_plan_hash(&small_mlp(), 4));
    let next = events.next().await.unwrap().unwrap();
    assert_eq!(next.seq, 4);
    w.finished(&running.id, 0, true, "", &[]).await;
    let rest: Vec<_> = events.collect::<Vec<_>>().await;
    assert_eq!(rest.len(), 1, "the stream ends with SUCCEEDED");
    let next_job = w.assignment().await;
    assert_eq!(next_job.job_id, queued.id);
    sandbox.server.shutdown().await.unwrap();
}
