//! A coordinator and two workers as real processes on 127.0.0.1: a job
//! submitted through the CLI and one through the Rust client both train to
//! SUCCEEDED, the loss falls, the weights can be pulled, and the workers'
//! logs and the job's timeline can be read back.

use adjoint_client::Client;
use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::{JobState, job_event};
use adjoint_tests::{adjoint, write_example};
use tokio_stream::StreamExt;

#[test]
fn two_workers_train_a_job_from_the_cli_and_from_the_client() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 256).unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let model = dir.path().join("model.json");
    let data = dir.path().join("train.safetensors");

    // Through the CLI: submit, watch to the end, pull the weights.
    let submitted = adjoint(
        &cluster.addr,
        &[
            "submit",
            "--graph",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--workers",
            "2",
            "--batch-size",
            "16",
            "--steps",
            "40",
            "--optimizer",
            "sgd:lr=0.1,momentum=0.9",
        ],
    );
    assert!(submitted.ok, "submit failed: {submitted}");
    let id = submitted.stdout.trim().to_owned();
    let watched = adjoint(&cluster.addr, &["watch", &id]);
    assert!(watched.ok, "watch failed: {watched}");
    let weights = dir.path().join("weights.safetensors");
    let pulled = adjoint(
        &cluster.addr,
        &["pull", &id, "-o", weights.to_str().unwrap()],
    );
    assert!(pulled.ok, "pull failed: {pulled}");
    let pulled = adjoint_worker::data::read_safetensors(&std::fs::read(&weights).unwrap()).unwrap();
    assert!(
        pulled.contains_key("fc1.weight") && pulled.contains_key("fc2.bias"),
        "{:?}",
        pulled.keys()
    );

    // The workers' log lines, one rank's only.
    let logs = adjoint(&cluster.addr, &["logs", &id, "--rank", "1"]);
    assert!(logs.ok, "logs failed: {logs}");
    let lines: Vec<&str> = logs.stdout.lines().collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.starts_with("rank 1: ")),
        "{logs}"
    );
    assert!(
        lines.iter().any(|l| l.contains("compiled on cpu")),
        "{logs}"
    );

    // The timeline: both ranks' 40 steps and their bucket all-reduces.
    let trace = dir.path().join("trace.json");
    let timeline = adjoint(
        &cluster.addr,
        &["timeline", &id, "-o", trace.to_str().unwrap()],
    );
    assert!(timeline.ok, "timeline failed: {timeline}");
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    for rank in 0..2u64 {
        let named = |prefix: &str| {
            events
                .iter()
                .filter(|e| {
                    e["ph"] == "X"
                        && e["pid"] == rank
                        && e["name"].as_str().is_some_and(|n| n.starts_with(prefix))
                })
                .count()
        };
        assert_eq!(named("step "), 40, "rank {rank}");
        assert_eq!(named("forward"), 40, "rank {rank}");
        assert_eq!(named("backward"), 40, "rank {rank}");
        assert_eq!(named("optimizer"), 40, "rank {rank}");
        assert!(named("bucket ") >= 40, "rank {rank}");
        // The sampled (first) step's ops, on a track of their own, each
        // naming its node.
        let ops: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"] == rank && e["tid"] == 2)
            .collect();
        assert!(
            ops.iter().any(|e| e["name"] == "MatMul"),
            "rank {rank}: {ops:?}"
        );
        assert!(
            ops.iter()
                .all(|e| e["args"]["step"] == 0 && e["args"]["node"].is_string()),
            "rank {rank}: {ops:?}"
        );
    }

    // Through the Rust client: the loss falls.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = Client::connect(&cluster.addr).await.unwrap();
        let fields = SpecFields {
            graph: Some(model.clone()),
            data: Some(data.clone()),
            workers: Some(2),
            batch_size: Some(16),
            steps: Some(40),
            optimizer: Some("adamw:lr=3e-3".into()),
            ..SpecFields::default()
        };
        let spec = fields.build(&mut client).await.unwrap();
        let job = client.submit(spec).await.unwrap();
        let mut events = client.watch(&job.id, 0).await.unwrap();
        let (mut losses, mut last_state) = (Vec::new(), JobState::Unspecified);
        while let Some(event) = events.next().await {
            match event.unwrap().kind {
                Some(job_event::Kind::Metrics(m)) if m.rank == 0 => losses.push(m.loss),
                Some(job_event::Kind::State(s)) => last_state = s.state(),
                _ => {}
            }
        }
        assert_eq!(
            last_state,
            JobState::Succeeded,
            "{:?}",
            client.get_job(&job.id).await.unwrap()
        );
        assert!(losses.len() >= 10, "too few metrics: {losses:?}");
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        assert!(
            last < 0.7 * first,
            "the loss did not fall: {first} -> {last}"
        );
    });
}
