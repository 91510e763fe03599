//! The agent against a stand-in coordinator (a WorkerControl server in the
//! test): it keeps retrying until the coordinator is up, registers with its
//! real ring address, heartbeats, runs an assignment to `JobFinished`, and
//! registers again after the coordinator drops the stream.

use std::net::TcpListener as StdListener;
use std::time::Duration;

use adjoint_graph::serialize;
use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_proto::v1::worker_control_server::{WorkerControl, WorkerControlServer};
use adjoint_proto::v1::{self, coordinator_message, job_spec::Model, worker_message::Kind};
use adjoint_worker::agent::{Agent, AgentConfig};
use adjoint_worker::data::{HostTensor, write_safetensors};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// One accepted stream: what the worker sends, and a handle to answer.
struct Conn {
    inbound: Streaming<v1::WorkerMessage>,
    outbound: mpsc::Sender<Result<v1::CoordinatorMessage, Status>>,
}

struct Mock {
    conns: mpsc::UnboundedSender<Conn>,
}

#[tonic::async_trait]
impl WorkerControl for Mock {
    type ConnectStream = ReceiverStream<Result<v1::CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        req: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.conns.send(Conn {
            inbound: req.into_inner(),
            outbound: tx,
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn send(kind: coordinator_message::Kind) -> Result<v1::CoordinatorMessage, Status> {
    Ok(v1::CoordinatorMessage { kind: Some(kind) })
}

async fn next(conn: &mut Conn) -> Kind {
    let m = timeout(Duration::from_secs(30), conn.inbound.message())
        .await
        .expect("the worker went quiet");
    m.expect("stream error")
        .expect("stream ended")
        .kind
        .expect("empty message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_runs_a_job_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let g = zoo::mlp(&MlpConfig {
        input: 4,
        hidden: vec![8],
        classes: 2,
        batch: None,
    })
    .unwrap();
    let x: Vec<f32> = (0..32 * 4).map(|j| (j as f32 * 0.9).sin()).collect();
    let y: Vec<i64> = (0..32).map(|i| i64::from(x[i * 4] > 0.0)).collect();
    let data = write_safetensors(
        &[
            ("x".to_owned(), HostTensor::from_f32(vec![32, 4], &x)),
            ("labels".to_owned(), HostTensor::from_i64(vec![32], &y)),
        ]
        .into_iter()
        .collect(),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    std::fs::write(dir.path().join("blobs/data"), data).unwrap();

    // The coordinator's port, chosen now; it comes up only later.
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = AgentConfig::new(format!("http://127.0.0.1:{port}"), dir.path());
    cfg.name = "w1".into();
    cfg.memory_bytes = 12345;
    cfg.min_backoff = Duration::from_millis(50);
    cfg.max_backoff = Duration::from_millis(200);
    let agent = Agent::new(cfg).unwrap();
    let ring = agent.ring_address();
    assert_ne!(ring.port(), 0);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async {
        let _ = stop_rx.await;
    }));

    tokio::time::sleep(Duration::from_millis(400)).await;
    let (conns_tx, mut conns) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerControlServer::new(Mock { conns: conns_tx }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut conn = timeout(Duration::from_secs(30), conns.recv())
        .await
        .unwrap()
        .unwrap();
    let Kind::Register(r) = next(&mut conn).await else {
        panic!("the first message is not Register")
    };
    assert_eq!(
        (r.name.as_str(), r.memory_bytes, r.ring_address.clone()),
        ("w1", 12345, ring.to_string())
    );
    assert!(r.cores >= 1 && !r.version.is_empty() && r.running_job.is_empty());
    conn.outbound
        .send(send(coordinator_message::Kind::Registered(
            v1::Registered {
                worker_id: "w-1".into(),
                heartbeat_ms: 50,
            },
        )))
        .await
        .unwrap();
    let spec = v1::JobSpec {
        model: Some(Model::Graph(serialize::to_proto(&g))),
        dataset_blob: "blobs/data".into(),
        batch_size: 8,
        epochs: 3,
        optimizer: Some(v1::OptimizerSpec {
            name: "sgd".into(),
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        }),
        ..Default::default()
    };
    let plan_hash =
        adjoint_worker::dist::plan_hash(&g, 8, &adjoint_graph::checkpoint::Policy::None).unwrap();
    let assignment = v1::Assignment {
        job_id: "j1".into(),
        world: 1,
        spec: Some(spec),
        plan_hash,
        ..Default::default()
    };
    conn.outbound
        .send(send(coordinator_message::Kind::Assignment(assignment)))
        .await
        .unwrap();

    let (mut heartbeats, mut metrics) = (0, Vec::new());
    let finished = loop {
        match next(&mut conn).await {
            Kind::Heartbeat(h) => {
                assert!(h.unix_ms > 0);
                heartbeats += 1;
            }
            Kind::Metrics(m) => metrics.push(m.step),
            Kind::Log(_) => {}
            Kind::NcclId(_) => panic!("a CPU job sent an NCCL id"),
            Kind::Finished(f) => break f,
            Kind::Register(_) => panic!("registered twice on one stream"),
        }
    };
    assert!(finished.ok, "{}", finished.error);
    assert_eq!(
        finished.artifacts,
        ["events/rank-0.jsonl", "weights.safetensors"]
    );
    assert_eq!(
        metrics,
        (1..=12).collect::<Vec<_>>(),
        "3 epochs of 32 samples by 8"
    );
    assert!(dir.path().join("jobs/j1/weights.safetensors").exists());
    // Heartbeats keep coming.
    while heartbeats < 3 {
        if let Kind::Heartbeat(_) = next(&mut conn).await {
            heartbeats += 1;
        }
    }

    // The coordinator drops the stream: the worker comes back.
    drop(conn);
    let mut again = timeout(Duration::from_secs(30), conns.recv())
        .await
        .unwrap()
        .unwrap();
    let Kind::Register(r) = next(&mut again).await else {
        panic!("no Register after reconnecting")
    };
    assert_eq!(r.name, "w1");

    stop_tx.send(()).unwrap();
    timeout(Duration::from_secs(10), agent_task)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}
