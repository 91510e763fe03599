//! Strict FIFO gang scheduling against real workers: two 2-worker jobs on
//! three workers run one after the other, never as partial gangs, and a
//! later 1-worker job does not jump the queue.

mod common;

use adjoint_proto::v1::{JobState, SubmitJobRequest};
use common::{Sandbox, small_mlp, spec};

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_on_three_workers_run_in_order() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    let data = sandbox.upload_dataset().await;
    let mut submit = async |workers| {
        client
            .submit_job(SubmitJobRequest {
                spec: Some(spec(&small_mlp(), &data, workers)),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let first = submit(2).await;
    let second = submit(2).await;
    let third = submit(1).await;
    assert_eq!(first.reason, "waiting for 2 workers (have 0)");
    assert_eq!(second.reason, "waiting for 2 workers (have 0)");

    let mut w1 = sandbox.worker("w1", GIB).await;
    sandbox
        .wait_reason(&first.id, "waiting for 2 workers (have 1)")
        .await;
    let mut w2 = sandbox.worker("w2", GIB).await;
    let mut w3 = sandbox.worker("w3", GIB).await;

    let (a1, a2) = (w1.assignment().await, w2.assignment().await);
    assert_eq!((a1.job_id.as_str(), a1.rank), (first.id.as_str(), 0));
    assert_eq!((a2.job_id.as_str(), a2.rank), (first.id.as_str(), 1));
    assert_eq!(a1.peers, ["w1:7000", "w2:7000"]);

    // w3 is idle, but the second job needs two and the third must not jump
    // ahead of it.
    sandbox
        .wait_reason(&second.id, "waiting for 2 idle workers (have 1)")
        .await;
    let behind = format!("queued behind {}", second.id);
    sandbox.wait_reason(&third.id, &behind).await;

    // Rank 1 finishing alone does not finish the job, but frees w2: now the
    // second job has its two idle workers (w2, w3).
    w2.finished(&first.id, 1, true, "", &[]).await;
    let b2 = w2.assignment().await;
    let b3 = w3.assignment().await;
    assert_eq!((b2.job_id.as_str(), b2.rank), (second.id.as_str(), 0));
    assert_eq!((b3.job_id.as_str(), b3.rank), (second.id.as_str(), 1));
    assert_eq!(sandbox.job(&first.id).await.state(), JobState::Running);

    w1.finished(&first.id, 0, true, "", &[]).await;
    sandbox.wait_state(&first.id, JobState::Succeeded).await;
    let c1 = w1.assignment().await;
    assert_eq!((c1.job_id.as_str(), c1.world), (third.id.as_str(), 1));
    sandbox.server.shutdown().await.unwrap();
}
