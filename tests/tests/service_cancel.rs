//! Cancelling a running two-worker job through the CLI: the job ends
//! CANCELLED (on the watch stream and in `adjoint status`), and the gang is
//! released — the next job on the same two workers runs to SUCCEEDED.

use std::collections::BTreeSet;
use std::time::Duration;

use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::{JobState, job_event};
use adjoint_tests::{adjoint, connect, logs, runtime, wait_until, watch_to_end, write_example};
use tokio_stream::StreamExt;

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_cancelled_job_releases_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 256).unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let model = dir.path().join("model.json");
    let data = dir.path().join("train.safetensors");

    // A job that would run for a very long time, submitted through the CLI.
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
            "1000000",
            "--optimizer",
            "sgd:lr=0.1,momentum=0.9",
        ],
    );
    assert!(submitted.ok, "submit failed: {submitted}{}", logs(&cluster));
    let id = submitted.stdout.trim().to_owned();

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let mut events = client.watch(&id, 0).await.unwrap();

        // It trains: at least two Metrics events arrive.
        let mut states = Vec::new();
        let mut metrics = 0;
        let started = tokio::time::timeout(TIMEOUT, async {
            while metrics < 2 {
                match events.next().await {
                    Some(Ok(e)) => match e.kind {
                        Some(job_event::Kind::Metrics(_)) => metrics += 1,
                        Some(job_event::Kind::State(s)) => states.push(s.state()),
                        _ => {}
                    },
                    other => return Err(format!("the watch stream ended: {other:?}")),
                }
            }
            Ok(())
        })
        .await;
        assert!(
            matches!(started, Ok(Ok(()))),
            "no 2 metrics events: {started:?}, states {states:?}, job {:?}{}",
            client.get_job(&id).await,
            logs(&cluster)
        );
        assert_eq!(
            client.get_job(&id).await.unwrap().state(),
            JobState::Running
        );
        let gang: BTreeSet<String> = client
            .workers()
            .await
            .unwrap()
            .into_iter()
            .filter(|w| w.job_id == id)
            .map(|w| w.id)
            .collect();
        assert_eq!(gang.len(), 2, "workers busy with {id}: {gang:?}");

        // Cancel through the CLI.
        let cancelled = adjoint(&cluster.addr, &["cancel", &id]);
        assert!(cancelled.ok, "cancel failed: {cancelled}{}", logs(&cluster));
        assert_eq!(
            cancelled.stdout.trim(),
            format!("{id}: cancelled"),
            "{cancelled}"
        );

        // The watch stream ends, with CANCELLED as the last state.
        let ended = tokio::time::timeout(TIMEOUT, async {
            while let Some(event) = events.next().await {
                if let Some(job_event::Kind::State(s)) = event.map_err(|e| e.to_string())?.kind {
                    states.push(s.state());
                }
            }
            Ok::<_, String>(())
        })
        .await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "the watch stream did not end after the cancel: {ended:?}{}",
            logs(&cluster)
        );
        assert_eq!(
            states.last(),
            Some(&JobState::Cancelled),
            "states {states:?}{}",
            logs(&cluster)
        );
        let status = adjoint(&cluster.addr, &["status", &id]);
        assert!(status.ok, "status failed: {status}");
        assert!(
            status.stdout.starts_with(&format!("job {id}: cancelled\n")),
            "{status}"
        );
        let job = client.get_job(&id).await.unwrap();
        assert_eq!(job.state(), JobState::Cancelled);
        assert!(
            job.step < 1_000_000,
            "the job ran to the end: step {}",
            job.step
        );

        // Both workers come back idle...
        let idle = wait_until("both workers idle", TIMEOUT, async || {
            let workers = client.clone().workers().await?;
            let idle = workers.iter().filter(|w| w.status == "idle").count();
            Ok((idle == 2).then_some(workers))
        })
        .await;
        assert!(idle.is_ok(), "{idle:?}{}", logs(&cluster));

        // ...and a short job on the same two workers succeeds.
        let spec = SpecFields {
            graph: Some(model.clone()),
            data: Some(data.clone()),
            workers: Some(2),
            batch_size: Some(16),
            steps: Some(10),
            optimizer: Some("sgd:lr=0.1,momentum=0.9".into()),
            ..SpecFields::default()
        }
        .build(&mut client)
        .await
        .unwrap();
        let second = client.submit(spec).await.unwrap();
        let watched = watch_to_end(&mut client, &second.id, TIMEOUT).await;
        let watched = match watched {
            Ok(w) => w,
            Err(e) => panic!("{e:#}{}", logs(&cluster)),
        };
        assert_eq!(
            watched.last_state(),
            JobState::Succeeded,
            "{watched:?}{}",
            logs(&cluster)
        );
        assert_eq!(watched.losses().len(), 10, "{watched:?}");
        let second = client.get_job(&second.id).await.unwrap();
        let ran_on: BTreeSet<String> = second.workers.iter().cloned().collect();
        assert_eq!(ran_on, gang, "the second job ran on other workers");
    });
}
