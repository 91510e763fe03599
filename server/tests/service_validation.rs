//! What SubmitJob, UploadBlob, DownloadArtifact and WorkerControl reject,
//! with which code and message.

mod common;

use adjoint_graph::serialize;
use adjoint_proto::v1::worker_control_client::WorkerControlClient;
use adjoint_proto::v1::worker_message::Kind as FromWorker;
use adjoint_proto::v1::{
    BlobChunk, DownloadArtifactRequest, GetJobRequest, Heartbeat, JobSpec, SubmitJobRequest,
    WatchJobRequest, WorkerMessage, job_spec,
};
use common::{Sandbox, dataset, small_mlp, spec};

async fn submit_err(sandbox: &Sandbox, spec: JobSpec) -> tonic::Status {
    sandbox
        .client()
        .await
        .submit_job(SubmitJobRequest { spec: Some(spec) })
        .await
        .expect_err("the job must be rejected")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_with_an_unknown_op_is_rejected_naming_the_node() {
    let sandbox = Sandbox::start(60_000).await;
    let data = sandbox.upload_dataset().await;
    let mut proto = serialize::to_proto(&small_mlp());
    let node = proto.nodes[1].name.clone();
    proto.nodes[1].op = "Frobnicate".into();
    let mut bad = spec(&small_mlp(), &data, 1);
    bad.model = Some(job_spec::Model::Graph(proto.clone()));
    let status = submit_err(&sandbox, bad).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains(&node), "{}", status.message());
    assert!(
        status.message().contains("Frobnicate"),
        "{}",
        status.message()
    );

    // The same graph as a blob.
    let blob = sandbox
        .upload("bad.pb", &prost::Message::encode_to_vec(&proto))
        .await;
    let mut bad = spec(&small_mlp(), &data, 1);
    bad.model = Some(job_spec::Model::GraphBlob(blob));
    let status = submit_err(&sandbox, bad).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains(&node), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_that_does_not_match_the_inputs_is_rejected_naming_the_tensor() {
    let sandbox = Sandbox::start(60_000).await;
    let renamed = sandbox
        .upload("d.safetensors", &dataset(16, "pixels", "labels"))
        .await;
    let status = submit_err(&sandbox, spec(&small_mlp(), &renamed, 1)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("tensor 'x'"),
        "{}",
        status.message()
    );

    let not_safetensors = sandbox.upload("d.bin", b"hello, world").await;
    let status = submit_err(&sandbox, spec(&small_mlp(), &not_safetensors, 1)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("safetensors"),
        "{}",
        status.message()
    );

    let missing = format!("blobs/{}", "0".repeat(64));
    let status = submit_err(&sandbox, spec(&small_mlp(), &missing, 1)).await;
    assert_eq!(status.code(), tonic::Code::NotFound);

    let ok = sandbox.upload_dataset().await;
    let status = submit_err(
        &sandbox,
        JobSpec {
            batch_size: 0,
            ..spec(&small_mlp(), &ok, 1)
        },
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("batch_size"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_too_big_for_every_worker_names_the_numbers() {
    let sandbox = Sandbox::start(60_000).await;
    let data = sandbox.upload_dataset().await;
    let _small = sandbox.worker("small", 1000).await;
    let _smaller = sandbox.worker("smaller", 500).await;
    let status = submit_err(&sandbox, spec(&small_mlp(), &data, 1)).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let message = status.message();
    assert!(
        message.contains("largest cpu worker has 1000 bytes"),
        "{message}"
    );
    let needed: u64 = message
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {message}"));
    assert!(needed > 1000, "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_could_escape_the_store_are_rejected() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = sandbox.client().await;
    for name in ["../../etc/passwd", "/abs", "a/../b", ".."] {
        let status = client
            .download_artifact(DownloadArtifactRequest {
                job_id: "job-000001".into(),
                name: name.into(),
            })
            .await
            .expect_err(name);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
    }
    let status = client
        .download_artifact(DownloadArtifactRequest {
            job_id: "../job-000001".into(),
            name: "w".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .download_artifact(DownloadArtifactRequest {
            job_id: "job-000001".into(),
            name: "missing.safetensors".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let chunk = BlobChunk {
        name: "../escape".into(),
        data: b"x".to_vec(),
    };
    let status = client
        .upload_blob(tokio_stream::iter(vec![chunk]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let data = sandbox.upload_dataset().await;
    for blob in ["blobs/../jobs/x", "/etc/passwd", "blobs/abc"] {
        let mut bad = spec(&small_mlp(), &data, 1);
        bad.model = Some(job_spec::Model::GraphBlob(blob.into()));
        let status = submit_err(&sandbox, bad).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{blob}");
        let status = submit_err(&sandbox, spec(&small_mlp(), blob, 1)).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{blob}");
    }
    let status = client
        .get_job(GetJobRequest {
            id: "job-000001/../x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .watch_job(WatchJobRequest {
            id: "job-000042".into(),
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_must_register_first() {
    let sandbox = Sandbox::start(60_000).await;
    let mut client = WorkerControlClient::new(common::channel(&sandbox.server.url()).await);
    let heartbeat = WorkerMessage {
        kind: Some(FromWorker::Heartbeat(Heartbeat { unix_ms: 1 })),
    };
    let status = client
        .connect(tokio_stream::iter(vec![heartbeat]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("Register"),
        "{}",
        status.message()
    );
}
