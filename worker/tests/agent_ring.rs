//! Two `adjoint-worker` processes and a stand-in coordinator (a
//! WorkerControl server in the test): both register with their ring
//! addresses, get rank 0 and rank 1 of one job, connect the TCP ring and
//! train; rank 0 writes weights equal to those of one rank with twice the
//! batch.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use adjoint_graph::serialize;
use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_kernels::CpuBackend;
use adjoint_proto::v1::worker_control_server::{WorkerControl, WorkerControlServer};
use adjoint_proto::v1::{self, coordinator_message, job_spec::Model, worker_message::Kind};
use adjoint_worker::OptimizerConfig;
use adjoint_worker::collective::LocalGroup;
use adjoint_worker::data::{Dataset, HostTensor, read_safetensors, write_safetensors};
use adjoint_worker::dist::{DistConfig, DistTrainer};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

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

/// Kills the worker processes however the test ends.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn next(conn: &mut Conn) -> Kind {
    let m = timeout(Duration::from_secs(60), conn.inbound.message())
        .await
        .expect("a worker went quiet");
    m.expect("stream error")
        .expect("stream ended")
        .kind
        .expect("empty message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_train_one_job_over_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let g = zoo::mlp(&MlpConfig {
        input: 5,
        hidden: vec![12],
        classes: 3,
        batch: None,
    })
    .unwrap();
    let n = 48;
    let x: Vec<f32> = (0..n * 5).map(|j| (j as f32 * 0.77).sin()).collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    let tensors: std::collections::BTreeMap<_, _> = [
        ("x".to_owned(), HostTensor::from_f32(vec![n, 5], &x)),
        ("labels".to_owned(), HostTensor::from_i64(vec![n], &y)),
    ]
    .into_iter()
    .collect();
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    std::fs::write(
        dir.path().join("blobs/data"),
        write_safetensors(&tensors).unwrap(),
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (conns_tx, mut conns) = mpsc::unbounded_channel();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerControlServer::new(Mock { conns: conns_tx }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let _workers = Workers(
        (0..2)
            .map(|k| {
                Command::new(env!("CARGO_BIN_EXE_adjoint-worker"))
                    .args([
                        "--coordinator",
                        &url,
                        "--name",
                        &format!("w{k}"),
                        "--threads",
                        "1",
                    ])
                    .arg("--store")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );

    let mut ranks = Vec::new();
    for _ in 0..2 {
        let mut conn = timeout(Duration::from_secs(60), conns.recv())
            .await
            .unwrap()
            .unwrap();
        let Kind::Register(r) = next(&mut conn).await else {
            panic!("no Register")
        };
        conn.outbound
            .send(Ok(v1::CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Registered(v1::Registered {
                    worker_id: r.name.clone(),
                    heartbeat_ms: 200,
                })),
            }))
            .await
            .unwrap();
        ranks.push((conn, r.ring_address));
    }
    let peers: Vec<String> = ranks.iter().map(|r| r.1.clone()).collect();
    let spec = v1::JobSpec {
        model: Some(Model::Graph(serialize::to_proto(&g))),
        dataset_blob: "blobs/data".into(),
        batch_size: 4,
        steps: 15,
        seed: 9,
        optimizer: Some(v1::OptimizerSpec {
            name: "sgd".into(),
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        }),
        ..Default::default()
    };
    let plan_hash =
        adjoint_worker::dist::plan_hash(&g, 4, &adjoint_graph::checkpoint::Policy::None).unwrap();
    for (rank, (conn, _)) in ranks.iter().enumerate() {
        let a = v1::Assignment {
            job_id: "ringjob".into(),
            rank: rank as u32,
            world: 2,
            spec: Some(spec.clone()),
            plan_hash: plan_hash.clone(),
            peers: peers.clone(),
            traceparent: String::new(),
            resume_job: String::new(),
        };
        conn.outbound
            .send(Ok(v1::CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Assignment(a)),
            }))
            .await
            .unwrap();
    }
    let mut finished = Vec::new();
    let mut rank0_steps = Vec::new();
    for (rank, (conn, _)) in ranks.iter_mut().enumerate() {
        let f = loop {
            match next(conn).await {
                Kind::Finished(f) => break f,
                Kind::Metrics(m) => {
                    assert_eq!((rank, m.rank), (0, 0), "only rank 0 reports metrics");
                    assert!(m.allreduce_bytes > 0);
                    rank0_steps.push(m.step);
                }
                _ => {}
            }
        };
        assert!(f.ok, "rank {rank}: {}", f.error);
        assert_eq!(f.rank, rank as u32);
        finished.push(f);
    }
    assert_eq!(rank0_steps, (1..=15).collect::<Vec<_>>());
    // Every rank leaves its event log; rank 0 the weights too.
    assert_eq!(
        finished[0].artifacts,
        ["events/rank-0.jsonl", "weights.safetensors"]
    );
    assert_eq!(finished[1].artifacts, ["events/rank-1.jsonl"]);

    // The same job on one rank with batch 8, in this process.
    let data = Dataset::new(&g, tensors).unwrap();
    let cfg = DistConfig {
        optimizer: OptimizerConfig::parse("sgd:lr=0.1,momentum=0.9").unwrap(),
        seed: 9,
        ..DistConfig::new(0, 1, 8)
    };
    let mut one = DistTrainer::new(CpuBackend::new(), &g, data, cfg).unwrap();
    one.train(&mut LocalGroup::new(1).pop().unwrap(), 15, &mut |_| true)
        .unwrap();
    let want = one.params().unwrap();
    let got = read_safetensors(
        &std::fs::read(dir.path().join("jobs/ringjob/weights.safetensors")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want {
        for (a, b) in got[name].to_f32().unwrap().iter().zip(w.to_f32().unwrap()) {
            assert!(
                (a - b).abs() <= 1e-5 * (b.abs() + 0.1),
                "{name}: {a} vs {b}"
            );
        }
    }
    server.abort();
}
