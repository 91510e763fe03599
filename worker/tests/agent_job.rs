//! The agent's job function, without gRPC: an assignment built here (world
//! 1, a temporary store folder) trains, writes checkpoints and
//! `weights.safetensors`, and streams metrics whose loss falls; a wrong plan
//! hash and an abort fail the job with a clear error.

use std::sync::Arc;

use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_graph::{Graph, serialize};
use adjoint_proto::v1::{self, job_spec::Model, worker_message::Kind};
use adjoint_worker::ExecOptions;
use adjoint_worker::agent::{AbortSignal, JobContext, run_job};
use adjoint_worker::collective::RingOptions;
use adjoint_worker::data::{HostTensor, read_safetensors, write_safetensors};
use adjoint_worker::dist::checkpoint::Checkpoint;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStoreExt, PutPayload, path::Path};
use tokio::sync::mpsc;

fn graph() -> Graph {
    zoo::mlp(&MlpConfig {
        input: 4,
        hidden: vec![16],
        classes: 3,
        batch: None,
    })
    .unwrap()
}

/// A learnable task: the class is the index of the largest of the first
/// three features.
fn dataset(n: usize) -> Vec<u8> {
    let x: Vec<f32> = (0..n * 4).map(|j| ((j as f32) * 1.37).sin()).collect();
    let y: Vec<i64> = (0..n)
        .map(|i| {
            let row = &x[i * 4..i * 4 + 3];
            (0..3).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as i64
        })
        .collect();
    write_safetensors(
        &[
            ("x".to_owned(), HostTensor::from_f32(vec![n, 4], &x)),
            ("labels".to_owned(), HostTensor::from_i64(vec![n], &y)),
        ]
        .into_iter()
        .collect(),
    )
    .unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    ctx: JobContext,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let store = Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
    store
        .put(
            &Path::from("blobs/graph"),
            PutPayload::from(serialize::encode(&graph())),
        )
        .await
        .unwrap();
    store
        .put(&Path::from("blobs/data"), PutPayload::from(dataset(64)))
        .await
        .unwrap();
    store
        .put(&Path::from("blobs/eval"), PutPayload::from(dataset(40)))
        .await
        .unwrap();
    let ctx = JobContext {
        store,
        ring_listener: None,
        ring: RingOptions::default(),
        exec: ExecOptions::default(),
        metrics: adjoint_worker::agent::metrics::registry(),
        trace_steps_every: 0,
        device: Default::default(),
    };
    Setup {
        _dir: dir,
        root,
        ctx,
    }
}

fn assignment(job: &str, plan_hash: String) -> v1::Assignment {
    v1::Assignment {
        job_id: job.into(),
        rank: 0,
        world: 1,
        spec: Some(v1::JobSpec {
            name: "agent-test".into(),
            model: Some(Model::GraphBlob("blobs/graph".into())),
            dataset_blob: "blobs/data".into(),
            workers: 1,
            batch_size: 16,
            steps: 40,
            checkpoint_every: 15,
            seed: 7,
            optimizer: Some(v1::OptimizerSpec {
                name: "adamw".into(),
                lr: 0.02,
                ..Default::default()
            }),
            schedule: Some(v1::LrSchedule {
                kind: "cosine".into(),
                warmup_steps: 3,
                min_lr: 0.001,
            }),
            ..Default::default()
        }),
        plan_hash,
        peers: Vec::new(),
        traceparent: String::new(),
        resume_job: String::new(),
    }
}

fn hash() -> String {
    adjoint_worker::dist::plan_hash(&graph(), 16, &adjoint_graph::checkpoint::Policy::None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_rank_job_trains_and_writes_its_weights() {
    let s = setup().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut a = assignment("job1", hash());
    let spec = a.spec.as_mut().unwrap();
    spec.eval_blob = "blobs/eval".into();
    spec.eval_every = 10;
    let done = run_job(&a, &s.ctx, Arc::new(AbortSignal::default()), &tx).await;
    assert!(done.ok, "the job failed: {}", done.error);
    assert_eq!((done.job_id.as_str(), done.rank), ("job1", 0));
    assert_eq!(
        done.artifacts,
        ["events/rank-0.jsonl", "weights.safetensors"]
    );

    drop(tx);
    let (mut losses, mut logs, mut evals) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(m) = rx.recv().await {
        match m.kind.unwrap() {
            Kind::Metrics(m) => {
                losses.push((m.step, m.loss));
                if let Some(e) = m.eval_loss {
                    evals.push((m.step, e));
                }
            }
            Kind::Log(l) => logs.push(l),
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert_eq!(
        losses.iter().map(|l| l.0).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>(),
        "metrics every step"
    );
    let first: f64 = losses[..5].iter().map(|l| l.1).sum::<f64>() / 5.0;
    let last: f64 = losses[35..].iter().map(|l| l.1).sum::<f64>() / 5.0;
    assert!(
        last < 0.7 * first,
        "the loss did not fall: {first} → {last}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("wrote jobs/job1/weights.safetensors")),
        "{logs:#?}"
    );
    // Evaluation every 10 steps on the held-out split; it improves too.
    assert_eq!(
        evals.iter().map(|e| e.0).collect::<Vec<_>>(),
        [10, 20, 30, 40],
        "{evals:?}"
    );
    assert!(evals[3].1 < 0.8 * evals[0].1, "eval loss: {evals:?}");
    // One event-log line per step, in order.
    let events = std::fs::read_to_string(s.root.join("jobs/job1/events/rank-0.jsonl")).unwrap();
    let steps: Vec<u64> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (0..40).collect::<Vec<_>>());

    let weights =
        read_safetensors(&std::fs::read(s.root.join("jobs/job1/weights.safetensors")).unwrap())
            .unwrap();
    let names: Vec<&str> = weights.keys().map(String::as_str).collect();
    assert_eq!(names, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
    assert_eq!(weights["fc1.weight"].shape, vec![4, 16]);
    for step in [15, 30] {
        let path = s
            .root
            .join(format!("jobs/job1/checkpoints/step-{step}.safetensors"));
        let ckpt = Checkpoint::decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            (ckpt.meta.step, ckpt.meta.seed, ckpt.meta.optimizer.as_str()),
            (step, 7, "adamw")
        );
        assert!(ckpt.tensors.contains_key("optim.exp_avg_sq.fc2.weight"));
    }
    assert!(
        !s.root
            .join("jobs/job1/checkpoints/step-40.safetensors")
            .exists()
    );

    // A second job resumes from the first one's newest checkpoint (step 30)
    // with the graph inline and runs its remaining 10 steps.
    let mut a = assignment("job2", hash());
    let spec = a.spec.as_mut().unwrap();
    spec.model = Some(Model::Graph(serialize::to_proto(&graph())));
    spec.resume_from_job = "job1".into();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let done = run_job(&a, &s.ctx, Arc::new(AbortSignal::default()), &tx).await;
    assert!(done.ok, "{}", done.error);
    drop(tx);
    let mut steps = Vec::new();
    while let Some(m) = rx.recv().await {
        if let Some(Kind::Metrics(m)) = m.kind {
            steps.push(m.step);
        }
    }
    assert_eq!(steps, (31..=40).collect::<Vec<_>>());
    assert!(s.root.join("jobs/job2/weights.safetensors").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_plan_hash_fails_the_job_naming_both() {
    let s = setup().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let done = run_job(
        &assignment("job3", "f00d".into()),
        &s.ctx,
        Arc::new(AbortSignal::default()),
        &tx,
    )
    .await;
    assert!(!done.ok);
    assert!(
        done.error.contains("f00d") && done.error.contains(&hash()),
        "{}",
        done.error
    );
    assert!(!s.root.join("jobs/job3").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_job_stops_and_says_why() {
    let s = setup().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let abort = Arc::new(AbortSignal::default());
    abort.abort("cancelled by the user");
    let done = run_job(&assignment("job4", hash()), &s.ctx, abort, &tx).await;
    assert!(!done.ok);
    assert_eq!(done.error, "aborted: cancelled by the user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_inputs_fail_with_the_key() {
    let s = setup().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut a = assignment("job5", hash());
    a.spec.as_mut().unwrap().dataset_blob = "blobs/nope".into();
    let done = run_job(&a, &s.ctx, Arc::new(AbortSignal::default()), &tx).await;
    assert!(
        !done.ok && done.error.contains("blobs/nope"),
        "{}",
        done.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_job_trains_to_the_same_weights_and_checks_its_hash() {
    use adjoint_graph::checkpoint::Policy;
    let s = setup().await;
    // Deep enough that recomputing the hidden layers lowers the peak.
    let deep = zoo::mlp(&MlpConfig {
        input: 4,
        hidden: vec![64, 64, 64, 64],
        classes: 3,
        batch: None,
    })
    .unwrap();
    let plan_hash = |p: &Policy| adjoint_worker::dist::plan_hash(&deep, 16, p).unwrap();
    let run = async |job: &str, checkpoint: &str, hash: String| {
        let mut a = assignment(job, hash);
        let spec = a.spec.as_mut().unwrap();
        spec.model = Some(Model::Graph(serialize::to_proto(&deep)));
        spec.checkpoint = checkpoint.into();
        let (tx, _rx) = mpsc::unbounded_channel();
        run_job(&a, &s.ctx, Arc::new(AbortSignal::default()), &tx).await
    };
    let (none_hash, sqrt_hash) = (plan_hash(&Policy::None), plan_hash(&Policy::Sqrt));
    assert_ne!(sqrt_hash, none_hash, "sqrt must change the planned graph");
    let plain = run("job6", "none", none_hash.clone()).await;
    assert!(plain.ok, "{}", plain.error);
    let sqrt = run("job7", "sqrt", sqrt_hash.clone()).await;
    assert!(sqrt.ok, "{}", sqrt.error);
    let weights =
        |job: &str| std::fs::read(s.root.join(format!("jobs/{job}/weights.safetensors"))).unwrap();
    assert_eq!(
        weights("job6"),
        weights("job7"),
        "recomputation changed the weights"
    );
    // A worker asked for sqrt but handed none's hash refuses to run.
    let wrong = run("job8", "sqrt", none_hash).await;
    assert!(
        !wrong.ok && wrong.error.contains("plan hash mismatch") && wrong.error.contains(&sqrt_hash),
        "{}",
        wrong.error
    );
}
