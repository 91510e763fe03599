//! Prometheus metrics during a job: the coordinator's `/metrics` and each
//! worker's (found through `ListWorkers`) are scraped while a two-worker
//! job trains and parsed as the text exposition format; the jobs and
//! workers by state, the steps, step-time histogram, loss and all-reduce
//! bytes are there with the values the job implies, and after a cancel the
//! job counts as cancelled and the workers as idle.

use std::net::SocketAddr;
use std::time::Duration;

use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::JobState;
use adjoint_telemetry::http::get;
use adjoint_telemetry::metrics::{Exposition, parse};
use adjoint_tests::{connect, logs, runtime, wait_until, write_example};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn scrape(addr: &str) -> anyhow::Result<Exposition> {
    let addr: SocketAddr = addr.parse()?;
    let (status, body) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics: {status}: {body}");
    parse(&body).map_err(anyhow::Error::msg)
}

#[test]
fn coordinator_and_workers_serve_metrics_during_a_job() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 256).unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let coordinator = cluster
        .metrics_addr
        .clone()
        .expect("the local cluster serves the coordinator's metrics");

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let spec = SpecFields {
            graph: Some(dir.path().join("model.json")),
            data: Some(dir.path().join("train.safetensors")),
            workers: Some(2),
            batch_size: Some(16),
            steps: Some(1_000_000),
            optimizer: Some("sgd:lr=0.1".into()),
            ..SpecFields::default()
        }
        .build(&mut client)
        .await
        .unwrap();
        let id = client.submit(spec).await.unwrap().id;
        let job = [("job", id.as_str())];

        // While it trains: the coordinator sees rank 0's steps.
        let e = wait_until(
            "rank 0's steps in the coordinator's metrics",
            TIMEOUT,
            async || {
                let e = scrape(&coordinator).await?;
                Ok((e.value("adjoint_steps_total", &job).unwrap_or(0.0) >= 3.0).then_some(e))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}{}", logs(&cluster)));
        assert_eq!(e.types["adjoint_step_seconds"], "histogram");
        assert_eq!(e.types["adjoint_jobs"], "gauge");
        assert_eq!(e.value("adjoint_jobs", &[("state", "running")]), Some(1.0));
        assert_eq!(e.value("adjoint_workers", &[("state", "busy")]), Some(2.0));
        let steps = e.value("adjoint_steps_total", &job).unwrap();
        let timed = e.value("adjoint_step_seconds_count", &job).unwrap();
        assert!(
            timed >= steps - 1.0 && timed <= steps + 1.0,
            "{timed} vs {steps}"
        );
        let loss = e.value("adjoint_loss", &job).unwrap();
        assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
        assert!(e.value("adjoint_allreduce_bytes_total", &job).unwrap() > 0.0);

        // Each worker serves its own rank's metrics.
        let workers = client.workers().await.unwrap();
        assert_eq!(workers.len(), 2);
        for w in &workers {
            assert!(
                !w.metrics_address.is_empty(),
                "{} has no metrics address",
                w.name
            );
            let e = scrape(&w.metrics_address).await.unwrap();
            assert_eq!(
                e.value("adjoint_worker_jobs_running", &[]),
                Some(1.0),
                "{}",
                w.name
            );
            assert!(e.value("adjoint_worker_steps_total", &job).unwrap() >= 1.0);
            assert!(e.value("adjoint_worker_arena_bytes", &job).unwrap() > 0.0);
            assert!(
                e.value("adjoint_worker_allreduce_bytes_total", &job)
                    .unwrap()
                    > 0.0
            );
            assert!(e.value("adjoint_worker_step_seconds_count", &job).unwrap() >= 1.0);
        }

        // After a cancel: the job counts as cancelled, the workers as idle.
        client.cancel(&id).await.unwrap();
        wait_until("the cancel in the metrics", TIMEOUT, async || {
            let e = scrape(&coordinator).await?;
            let done = client.get_job(&id).await?.state() == JobState::Cancelled
                && e.value("adjoint_jobs", &[("state", "cancelled")]) == Some(1.0)
                && e.value("adjoint_workers", &[("state", "idle")]) == Some(2.0);
            Ok(done.then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}{}", logs(&cluster)));
        for w in &workers {
            let e = scrape(&w.metrics_address).await.unwrap();
            assert_eq!(
                e.value("adjoint_worker_jobs_running", &[]),
                Some(0.0),
                "{}",
                w.name
            );
        }
    });
}
