//! A job that asks for more workers than there are stays QUEUED, survives a
//! coordinator restart with the same id and state, and runs to SUCCEEDED
//! once the old workers have reconnected and a third one joins.

use std::time::Duration;

use adjoint_client::Client;
use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::JobState;
use adjoint_tests::{connect, logs, runtime, wait_until, watch_to_end, write_example};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Workers that are not lost, as (name, status).
async fn live_workers(client: &mut Client) -> anyhow::Result<Vec<(String, String)>> {
    Ok(client
        .workers()
        .await?
        .into_iter()
        .filter(|w| w.status != "lost")
        .map(|w| (w.name, w.status))
        .collect())
}

#[test]
fn a_queued_job_survives_a_restart_and_runs_when_a_third_worker_joins() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 256).unwrap();
    let mut cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let rt = runtime();

    let id = rt.block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let spec = SpecFields {
            graph: Some(dir.path().join("model.json")),
            data: Some(dir.path().join("train.safetensors")),
            workers: Some(3),
            batch_size: Some(8),
            steps: Some(10),
            optimizer: Some("sgd:lr=0.1,momentum=0.9".into()),
            ..SpecFields::default()
        }
        .build(&mut client)
        .await
        .unwrap();
        let job = client.submit(spec).await.unwrap();
        assert_eq!(job.state(), JobState::Queued, "{job:?}");

        // While it waits, several looks at it and at the workers agree: the
        // job is queued at step 0 with no workers, both workers are idle.
        for _ in 0..5 {
            let now = client.get_job(&job.id).await.unwrap();
            assert_eq!(now.state(), JobState::Queued, "{now:?}{}", logs(&cluster));
            assert_eq!(now.step, 0, "{now:?}");
            assert!(now.workers.is_empty(), "{now:?}");
            assert!(
                now.reason.contains("waiting for 3 workers"),
                "reason {:?}",
                now.reason
            );
            let workers = live_workers(&mut client).await.unwrap();
            assert_eq!(workers.len(), 2, "{workers:?}");
            assert!(
                workers.iter().all(|(_, status)| status == "idle"),
                "{workers:?}"
            );
        }
        job.id
    });

    cluster.restart_server().unwrap();

    rt.block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let job = client.get_job(&id).await.unwrap();
        assert_eq!(job.state(), JobState::Queued, "{job:?}{}", logs(&cluster));
        assert_eq!(job.spec.as_ref().map(|s| s.workers), Some(3));
        let queued = client.list_jobs(&[JobState::Queued]).await.unwrap();
        assert_eq!(
            queued.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            [id.as_str()],
            "queued jobs after the restart"
        );
        let all = client.list_jobs(&[]).await.unwrap();
        assert_eq!(all.len(), 1, "jobs after the restart: {all:?}");

        // The two old workers register again with the new coordinator.
        let back = wait_until("the two workers to re-register", TIMEOUT, async || {
            let live = live_workers(&mut client.clone()).await?;
            Ok((live.len() == 2).then_some(live))
        })
        .await;
        let back = match back {
            Ok(b) => b,
            Err(e) => panic!("{e:#}{}", logs(&cluster)),
        };
        let mut names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["worker-0", "worker-1"]);
        let still = client.get_job(&id).await.unwrap();
        assert_eq!(still.state(), JobState::Queued, "{still:?}");
    });

    cluster.add_worker("worker-2").unwrap();

    rt.block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let watched = match watch_to_end(&mut client, &id, TIMEOUT).await {
            Ok(w) => w,
            Err(e) => panic!("{e:#}{}", logs(&cluster)),
        };
        assert_eq!(
            watched.last_state(),
            JobState::Succeeded,
            "{watched:?}{}",
            logs(&cluster)
        );
        // The whole history: no metrics before the job started running.
        let running = watched
            .kinds
            .char_indices()
            .filter(|&(_, k)| k == 's')
            .zip(&watched.states)
            .find(|(_, (s, _))| *s == JobState::Running)
            .map(|((at, _), _)| at);
        let first_metrics = watched.kinds.find('m');
        assert!(
            matches!((running, first_metrics), (Some(r), Some(m)) if r < m),
            "events {} with states {:?}",
            watched.kinds,
            watched.states
        );
        assert_eq!(watched.losses().len(), 10, "{watched:?}");
        // Metrics come from rank 0; every rank leaves its event log.
        for rank in 0..3 {
            let name = format!("events/rank-{rank}.jsonl");
            let log = client.download(&id, &name).await;
            let lines = log.as_ref().map_or(0, |b| {
                b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count()
            });
            assert_eq!(lines, 10, "{name}: {log:?}");
        }
        let job = client.get_job(&id).await.unwrap();
        assert_eq!(job.workers.len(), 3, "{job:?}");
    });
}
