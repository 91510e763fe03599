//! The sandbox of the server's integration tests: a real server on
//! `127.0.0.1:0` in this process, real tonic clients, and fake workers that
//! are real `WorkerControl` peers (a gRPC client stream that registers,
//! heartbeats and reports like a worker, driven by the test).
//!
//! Waits poll a condition until a deadline; nothing sleeps a fixed time.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adjoint_graph::autodiff::grad;
use adjoint_graph::plan::{PlanOptions, plan_hash, plan_memory};
use adjoint_graph::zoo::{MlpConfig, mlp};
use adjoint_graph::{Graph, serialize};
use adjoint_proto::v1::coordinator_client::CoordinatorClient;
use adjoint_proto::v1::coordinator_message::Kind as ToWorker;
use adjoint_proto::v1::worker_control_client::WorkerControlClient;
use adjoint_proto::v1::worker_message::Kind as FromWorker;
use adjoint_proto::v1::{
    Abort, Assignment, BlobChunk, CoordinatorMessage, Device, GetJobRequest, Heartbeat, Job,
    JobFinished, JobSpec, JobState, Register, StepMetrics, WorkerMessage, job_spec,
};
use adjoint_server::{Config, ServerHandle};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The small MLP of the tests: 4 → 8 → 3, batch symbolic.
pub fn small_mlp() -> Graph {
    mlp(&MlpConfig {
        input: 4,
        hidden: vec![8],
        classes: 3,
        batch: None,
    })
    .unwrap()
}

/// A safetensors dataset for [`small_mlp`]: `x` [samples, 4] f32 and
/// `labels` [samples] i64 (names overridable to test mismatches).
pub fn dataset(samples: usize, x_name: &str, labels_name: &str) -> Vec<u8> {
    let x: Vec<u8> = (0..samples * 4)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect();
    let labels: Vec<u8> = (0..samples)
        .flat_map(|i| ((i % 3) as i64).to_le_bytes())
        .collect();
    let mut tensors = BTreeMap::new();
    tensors.insert(
        x_name.to_owned(),
        TensorView::new(Dtype::F32, vec![samples, 4], &x).unwrap(),
    );
    tensors.insert(
        labels_name.to_owned(),
        TensorView::new(Dtype::I64, vec![samples], &labels).unwrap(),
    );
    safetensors::serialize(tensors, None).unwrap()
}

/// A job spec training `graph` (inline) on `dataset_blob`.
pub fn spec(graph: &Graph, dataset_blob: &str, workers: u32) -> JobSpec {
    JobSpec {
        name: "test".into(),
        model: Some(job_spec::Model::Graph(serialize::to_proto(graph))),
        dataset_blob: dataset_blob.to_owned(),
        workers,
        batch_size: 4,
        steps: 3,
        ..JobSpec::default()
    }
}

/// The plan hash a worker computes for `graph` at `batch`: bind, grad with
/// respect to the trainable parameters, plan, hash.
pub fn worker_plan_hash(graph: &Graph, batch: usize) -> String {
    let bound = graph.bind_batch(batch);
    let loss = bound.loss.unwrap();
    let joint = grad(&bound, loss, &bound.trainable_params()).unwrap();
    let plan = plan_memory(&joint.graph, &PlanOptions::with_grads(&joint.grads)).unwrap();
    plan_hash(&joint.graph, &plan)
}

/// Polls `check` until it returns `Some`, failing the test after
/// [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server in a temporary data folder.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub server: ServerHandle,
}

impl Sandbox {
    /// A server with a heartbeat period of `heartbeat_ms`.
    pub async fn start(heartbeat_ms: u64) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path(), heartbeat_ms).await;
        Sandbox { dir, server }
    }

    /// Stops the server and starts a new one on the same data folder.
    pub async fn restart(self) -> Sandbox {
        let Sandbox { dir, server } = self;
        server.shutdown().await.unwrap();
        let server = start_server(dir.path(), 60_000).await;
        Sandbox { dir, server }
    }

    pub async fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(channel(&self.server.url()).await)
    }

    /// Uploads `bytes` through `UploadBlob` in small chunks; returns the
    /// blob id.
    pub async fn upload(&self, name: &str, bytes: &[u8]) -> String {
        let mut chunks: Vec<BlobChunk> = bytes
            .chunks(1000)
            .map(|c| BlobChunk {
                name: String::new(),
                data: c.to_vec(),
            })
            .collect();
        if let Some(first) = chunks.first_mut() {
            first.name = name.to_owned();
        }
        let mut client = self.client().await;
        let response = client
            .upload_blob(tokio_stream::iter(chunks))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.bytes, bytes.len() as u64);
        response.blob_id
    }

    /// Uploads a dataset for the small MLP.
    pub async fn upload_dataset(&self) -> String {
        self.upload("train.safetensors", &dataset(16, "x", "labels"))
            .await
    }

    /// The blob store's root folder.
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub async fn job(&self, id: &str) -> Job {
        let request = GetJobRequest { id: id.to_owned() };
        self.client()
            .await
            .get_job(request)
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until job `id` is in `state`; returns it.
    pub async fn wait_state(&self, id: &str, state: JobState) -> Job {
        wait_for(&format!("{id} to be {state:?}"), || async {
            let job = self.job(id).await;
            (job.state() == state).then_some(job)
        })
        .await
    }

    /// Waits until job `id` is QUEUED with `reason`; a registration's
    /// scheduling pass may still run when the worker sees `Registered`.
    pub async fn wait_reason(&self, id: &str, reason: &str) -> Job {
        wait_for(&format!("{id} to wait with {reason:?}"), || async {
            let job = self.job(id).await;
            (job.state() == JobState::Queued && job.reason == reason).then_some(job)
        })
        .await
    }

    /// Registers a fake CPU worker with `memory` bytes.
    pub async fn worker(&self, name: &str, memory: u64) -> FakeWorker {
        FakeWorker::connect(&self.server.url(), name, memory).await
    }
}

async fn start_server(dir: &Path, heartbeat_ms: u64) -> ServerHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::new(dir);
    config.heartbeat = Duration::from_millis(heartbeat_ms);
    adjoint_server::serve(listener, config).await.unwrap()
}

pub async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A worker played by the test over a real `WorkerControl.Connect` stream.
pub struct FakeWorker {
    pub id: String,
    pub name: String,
    pub heartbeat_ms: u64,
    tx: Option<mpsc::Sender<WorkerMessage>>,
    inbound: Streaming<CoordinatorMessage>,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl FakeWorker {
    /// Connects, registers (ring address `NAME:7000`) and waits for
    /// `Registered`; then heartbeats at the period the server asked for.
    pub async fn connect(url: &str, name: &str, memory: u64) -> FakeWorker {
        let (tx, rx) = mpsc::channel(16);
        let register = Register {
            name: name.to_owned(),
            cores: 2,
            memory_bytes: memory,
            devices: vec![Device {
                kind: "cpu".into(),
                name: "cpu".into(),
                memory_bytes: memory,
            }],
            ring_address: format!("{name}:7000"),
            version: "test".into(),
            running_job: String::new(),
            metrics_address: String::new(),
        };
        tx.send(message(FromWorker::Register(register)))
            .await
            .unwrap();
        let mut client = WorkerControlClient::new(channel(url).await);
        let mut inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = next_message(&mut inbound).await;
        let Some(ToWorker::Registered(registered)) = first.kind else {
            panic!("expected Registered, got {first:?}");
        };
        let weak = tx.downgrade();
        let period = Duration::from_millis(registered.heartbeat_ms.max(1));
        let heartbeats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(tx) = weak.upgrade() else { return };
                let beat = message(FromWorker::Heartbeat(Heartbeat { unix_ms: 1 }));
                if tx.send(beat).await.is_err() {
                    return;
                }
            }
        });
        FakeWorker {
            id: registered.worker_id,
            name: name.to_owned(),
            heartbeat_ms: registered.heartbeat_ms,
            tx: Some(tx),
            inbound,
            heartbeats,
        }
    }

    /// The next message from the coordinator.
    pub async fn next(&mut self) -> CoordinatorMessage {
        next_message(&mut self.inbound).await
    }

    /// Whether the coordinator ended this worker's stream (within the
    /// deadline).
    pub async fn stream_ends(&mut self) -> bool {
        matches!(
            tokio::time::timeout(DEADLINE, self.inbound.next()).await,
            Ok(None | Some(Err(_)))
        )
    }

    pub async fn assignment(&mut self) -> Assignment {
        match self.next().await.kind {
            Some(ToWorker::Assignment(a)) => a,
            other => panic!("{}: expected an Assignment, got {other:?}", self.name),
        }
    }

    pub async fn abort(&mut self) -> Abort {
        match self.next().await.kind {
            Some(ToWorker::Abort(a)) => a,
            other => panic!("{}: expected an Abort, got {other:?}", self.name),
        }
    }

    pub async fn send(&self, kind: FromWorker) {
        let tx = self.tx.as_ref().expect("worker still connected");
        tx.send(message(kind)).await.unwrap();
    }

    pub async fn metrics(&self, step: u64, rank: u32, loss: f64) {
        self.send(FromWorker::Metrics(StepMetrics {
            step,
            rank,
            loss,
            step_ms: 1.0,
            ..StepMetrics::default()
        }))
        .await;
    }

    pub async fn finished(
        &self,
        job_id: &str,
        rank: u32,
        ok: bool,
        error: &str,
        artifacts: &[&str],
    ) {
        self.send(FromWorker::Finished(JobFinished {
            job_id: job_id.to_owned(),
            rank,
            ok,
            error: error.to_owned(),
            artifacts: artifacts.iter().map(|a| a.to_string()).collect(),
            retryable: false,
        }))
        .await;
    }

    /// Stops heartbeating but keeps the stream open.
    pub fn go_silent(&self) {
        self.heartbeats.abort();
    }

    /// Ends the request stream, as a worker process that dies.
    pub fn disconnect(mut self) {
        self.heartbeats.abort();
        self.tx = None;
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

fn message(kind: FromWorker) -> WorkerMessage {
    WorkerMessage { kind: Some(kind) }
}

async fn next_message(inbound: &mut Streaming<CoordinatorMessage>) -> CoordinatorMessage {
    match tokio::time::timeout(DEADLINE, inbound.next()).await {
        Ok(Some(Ok(message))) => message,
        Ok(other) => panic!("worker stream ended: {other:?}"),
        Err(_) => panic!("no message from the coordinator within {DEADLINE:?}"),
    }
}
