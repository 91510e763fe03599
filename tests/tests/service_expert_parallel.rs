//! Expert parallelism through the service, on one cluster of four worker
//! processes: an MoE model trained with `expert_parallel` 2 and 4 (each
//! worker holding 4 or 2 of its 8 experts, tokens crossing processes by
//! all-to-all over the TCP ring) ends with the weights of one worker
//! holding every expert; its checkpoint holds every expert by global id,
//! and a job resumed from it under another `expert_parallel` ends where an
//! uninterrupted run does.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use adjoint_client::Client;
use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_graph::zoo::{MoeConfig, MoeLayerConfig, moe};
use adjoint_proto::v1::JobState;
use adjoint_tests::{
    Watched, connect, logs, max_rel_diff, read_weights, runtime, watch_to_end, weights_differ,
};
use adjoint_worker::data::{HostTensor, write_safetensors};

const TIMEOUT: Duration = Duration::from_secs(120);
const STEPS: u64 = 10;
const REL: f64 = 1e-5;
const D: usize = 12;

/// `model.json`: the `moe` workload, small (E 8, top-2, d 12, h 20, no
/// Switch loss so one rank's step over the whole batch is the same
/// computation), and `train.safetensors` of `samples` samples.
fn write_moe_example(dir: &Path, samples: usize) {
    let graph = moe(&MoeConfig {
        d_model: D,
        layer: MoeLayerConfig {
            experts: 8,
            top_k: 2,
            hidden: 20,
            capacity_factor: 0.0,
            aux_weight: 0.0,
            z_weight: 0.0,
        },
        tokens: None,
    })
    .unwrap();
    adjoint_client::graph_file::save(&dir.join("model.json"), &graph).unwrap();
    let wave = |phase: f32| -> Vec<f32> {
        (0..samples * D)
            .map(|j| ((j as f32) * phase).sin() + 0.3 * ((j / D) as f32 * 0.13).cos())
            .collect()
    };
    let tensors = BTreeMap::from([
        (
            "x".to_owned(),
            HostTensor::from_f32(vec![samples, D], &wave(0.37)),
        ),
        (
            "target".to_owned(),
            HostTensor::from_f32(vec![samples, D], &wave(0.91)),
        ),
    ]);
    std::fs::write(
        dir.join("train.safetensors"),
        write_safetensors(&tensors).unwrap(),
    )
    .unwrap();
}

async fn submit(client: &mut Client, fields: SpecFields) -> String {
    let spec = fields.build(client).await.unwrap();
    client.submit(spec).await.unwrap().id
}

async fn weights_of(
    client: &mut Client,
    cluster: &LocalCluster,
    id: &str,
    name: &str,
) -> (BTreeMap<String, HostTensor>, Watched) {
    let watched = match watch_to_end(client, id, TIMEOUT).await {
        Ok(w) => w,
        Err(e) => panic!("{name}: {e:#}{}", logs(cluster)),
    };
    assert_eq!(
        watched.last_state(),
        JobState::Succeeded,
        "{name} ({id}): {:?}{}",
        watched.states,
        logs(cluster)
    );
    let weights = read_weights(&client.download(id, "weights.safetensors").await.unwrap()).unwrap();
    (weights, watched)
}

/// Bytes rank 0 sent by expert all-to-all over the job.
fn alltoall_bytes(w: &Watched) -> u64 {
    w.metrics
        .iter()
        .filter(|m| m.rank == 0)
        .map(|m| m.alltoall_bytes)
        .sum()
}

#[test]
fn experts_spread_over_processes_train_like_one_process_holding_them_all() {
    let dir = tempfile::tempdir().unwrap();
    write_moe_example(dir.path(), 320);
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 4).unwrap();
    let job = |workers: u32, ep: u32, steps: u64| SpecFields {
        graph: Some(dir.path().join("model.json")),
        data: Some(dir.path().join("train.safetensors")),
        workers: Some(workers),
        batch_size: Some(16 / u64::from(workers)),
        steps: Some(steps),
        seed: Some(3),
        optimizer: Some("sgd:lr=0.05,momentum=0.9".into()),
        expert_parallel: Some(ep),
        checkpoint_every: Some(STEPS),
        ..SpecFields::default()
    };

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let one = submit(&mut client, job(1, 1, STEPS)).await;
        let ep2 = submit(&mut client, job(2, 2, STEPS)).await;
        let ep4 = submit(&mut client, job(4, 4, STEPS)).await;
        let long = submit(&mut client, job(4, 1, STEPS + 5)).await;
        let (one_w, one_run) = weights_of(&mut client, &cluster, &one, "1 worker").await;
        let (ep2_w, ep2_run) = weights_of(&mut client, &cluster, &ep2, "expert_parallel 2").await;
        let (ep4_w, ep4_run) = weights_of(&mut client, &cluster, &ep4, "expert_parallel 4").await;
        // Rows really crossed processes, and the workers said how the
        // experts were spread.
        assert_eq!(alltoall_bytes(&one_run), 0);
        for (run, ranks) in [(&ep2_run, 2), (&ep4_run, 4)] {
            assert!(alltoall_bytes(run) > 0, "no all-to-all bytes: {:?}", run.metrics);
            let said = format!("expert parallel over {ranks} ranks");
            assert!(
                run.logs.iter().any(|l| l.contains(&said)),
                "no '{said}' in {:?}",
                run.logs
            );
        }
        assert_eq!(one_w["moe.w1"].shape, vec![8, D, 20]);
        println!(
            "max rel diff vs 1 worker × 16: 2 workers, expert_parallel 2: {:.2e}; 4 workers, expert_parallel 4: {:.2e}",
            max_rel_diff(&ep2_w, &one_w),
            max_rel_diff(&ep4_w, &one_w)
        );
        for (w, name) in [(&ep2_w, "expert_parallel 2"), (&ep4_w, "expert_parallel 4")] {
            if let Some(diff) = weights_differ(w, &one_w, REL) {
                panic!("{name} vs one worker: {diff}");
            }
        }

        // The checkpoint of the expert-parallel-4 job holds every expert;
        // resumed under expert_parallel 2 it ends where a run of
        // STEPS + 5 steps does.
        let ckpt = client
            .download(&ep4, &format!("checkpoints/step-{STEPS}.safetensors"))
            .await
            .unwrap();
        let ckpt = read_weights(&ckpt).unwrap();
        assert_eq!(ckpt["moe.w2"].shape, vec![8, 20, D]);
        assert_eq!(ckpt["optim.momentum_buffer.moe.w1"].shape, vec![8, D, 20]);
        let resumed = submit(
            &mut client,
            SpecFields {
                resume_from: Some(ep4.clone()),
                ..job(4, 2, STEPS + 5)
            },
        )
        .await;
        let (long_w, _) = weights_of(&mut client, &cluster, &long, "15 steps").await;
        let (resumed_w, resumed_run) = weights_of(&mut client, &cluster, &resumed, "resumed").await;
        assert!(alltoall_bytes(&resumed_run) > 0);
        println!(
            "resumed under expert_parallel 2 vs uninterrupted: {:.2e}",
            max_rel_diff(&resumed_w, &long_w)
        );
        if let Some(diff) = weights_differ(&resumed_w, &long_w, REL) {
            panic!("resumed vs uninterrupted: {diff}");
        }
    });
}
