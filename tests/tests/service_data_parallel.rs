//! Data parallelism through the service: on one cluster of two workers,
//! 2 workers × batch 8, 1 worker × batch 16 and 1 worker × batch 8 ×
//! grad_accum 2 train to the same weights (SGD with momentum and AdamW),
//! and with small gradient buckets the rank-0 event log shows bucket
//! all-reduces starting while backward still runs.

use std::collections::BTreeMap;
use std::time::Duration;

use adjoint_client::Client;
use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_proto::v1::JobState;
use adjoint_tests::{
    connect, logs, max_rel_diff, read_weights, runtime, watch_to_end, weights_differ,
    write_example, write_mlp,
};
use adjoint_worker::data::HostTensor;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
const STEPS: u64 = 20;
/// Elementwise: |a − b| ≤ REL · (|b| + rms(b)) (see
/// `adjoint_tests::weights_differ`).
const REL: f64 = 1e-5;

/// Submits a job of `fields` and returns its id.
async fn submit(client: &mut Client, fields: SpecFields) -> String {
    let spec = fields.build(client).await.unwrap();
    client.submit(spec).await.unwrap().id
}

/// Waits for job `id` to succeed, then downloads its weights.
async fn weights_of(
    client: &mut Client,
    cluster: &LocalCluster,
    id: &str,
) -> BTreeMap<String, HostTensor> {
    let watched = match watch_to_end(client, id, TIMEOUT).await {
        Ok(w) => w,
        Err(e) => panic!("{e:#}{}", logs(cluster)),
    };
    assert_eq!(
        watched.last_state(),
        JobState::Succeeded,
        "job {id}: {:?}{}",
        watched.states,
        logs(cluster)
    );
    assert_eq!(watched.losses().len() as u64, STEPS, "job {id}");
    read_weights(&client.download(id, "weights.safetensors").await.unwrap()).unwrap()
}

#[test]
fn two_workers_one_big_batch_and_grad_accum_give_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 512).unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let base = SpecFields {
        graph: Some(dir.path().join("model.json")),
        data: Some(dir.path().join("train.safetensors")),
        steps: Some(STEPS),
        seed: Some(7),
        ..SpecFields::default()
    };
    let layout = |workers: u32, batch: u64, accum: u32, optimizer: &str| SpecFields {
        workers: Some(workers),
        batch_size: Some(batch),
        grad_accum: Some(accum),
        optimizer: Some(optimizer.to_owned()),
        ..base.clone()
    };

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        for optimizer in ["sgd:lr=0.1,momentum=0.9", "adamw:lr=1e-2"] {
            // All four queued at once; the FIFO scheduler runs them as the
            // two workers free up.
            let two = submit(&mut client, layout(2, 8, 1, optimizer)).await;
            let one = submit(&mut client, layout(1, 16, 1, optimizer)).await;
            let accum = submit(&mut client, layout(1, 8, 2, optimizer)).await;
            // A control that sees other samples: it must differ.
            let half = submit(&mut client, layout(1, 8, 1, optimizer)).await;

            let one_w = weights_of(&mut client, &cluster, &one).await;
            let two_w = weights_of(&mut client, &cluster, &two).await;
            let accum_w = weights_of(&mut client, &cluster, &accum).await;
            let half_w = weights_of(&mut client, &cluster, &half).await;
            assert_eq!(
                one_w.keys().collect::<Vec<_>>(),
                ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
            );
            println!(
                "{optimizer}: max rel diff vs 1×16: 2×8 {:.2e}, 1×8×accum2 {:.2e}, control 1×8 {:.2e}",
                max_rel_diff(&two_w, &one_w),
                max_rel_diff(&accum_w, &one_w),
                max_rel_diff(&half_w, &one_w),
            );
            if let Some(diff) = weights_differ(&two_w, &one_w, REL) {
                panic!("{optimizer}: 2 workers × 8 vs 1 × 16: {diff}");
            }
            if let Some(diff) = weights_differ(&accum_w, &one_w, REL) {
                panic!("{optimizer}: 1 worker × 8 × grad_accum 2 vs 1 × 16: {diff}");
            }
            assert!(
                weights_differ(&half_w, &one_w, REL).is_some(),
                "{optimizer}: batch 8 gave the weights of batch 16: the comparison sees nothing"
            );
        }
    });
}

/// One step of an `events/rank-<r>.jsonl` log.
#[derive(Debug)]
struct StepEvents {
    step: u64,
    backward_end_us: u64,
    /// (bucket, ready_after, bytes, start_us, end_us)
    buckets: Vec<(u64, Option<u64>, u64, u64, u64)>,
}

fn parse_events(text: &str) -> Vec<StepEvents> {
    let num = |v: &Value, key: &str| {
        v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no number {key} in {v}"))
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let buckets = v["buckets"]
                .as_array()
                .unwrap_or_else(|| panic!("no buckets in {line}"))
                .iter()
                .map(|b| {
                    (
                        num(b, "bucket"),
                        b["ready_after"].as_u64(),
                        num(b, "bytes"),
                        num(b, "start_us"),
                        num(b, "end_us"),
                    )
                })
                .collect();
            StepEvents {
                step: num(&v, "step"),
                backward_end_us: num(&v, "backward_end_us"),
                buckets,
            }
        })
        .collect()
}

#[test]
fn small_buckets_are_all_reduced_while_backward_runs() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 256).unwrap();
    let model = dir.path().join("wide.json");
    write_mlp(&model, &[256, 256]).unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    const OVERLAP_STEPS: u64 = 8;

    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let fields = SpecFields {
            graph: Some(model.clone()),
            data: Some(dir.path().join("train.safetensors")),
            workers: Some(2),
            batch_size: Some(32),
            steps: Some(OVERLAP_STEPS),
            optimizer: Some("sgd:lr=0.05,momentum=0.9".into()),
            bucket_mb: Some(0.0005),
            ..SpecFields::default()
        };
        let id = submit(&mut client, fields).await;
        let watched = match watch_to_end(&mut client, &id, TIMEOUT).await {
            Ok(w) => w,
            Err(e) => panic!("{e:#}{}", logs(&cluster)),
        };
        assert_eq!(
            watched.last_state(),
            JobState::Succeeded,
            "{:?}{}",
            watched.states,
            logs(&cluster)
        );
        let bytes = client.download(&id, "events/rank-0.jsonl").await.unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let steps = parse_events(&text);
        assert_eq!(steps.len() as u64, OVERLAP_STEPS, "{text}");

        let mut overlapped_steps = 0;
        for s in &steps {
            let early: Vec<_> = s
                .buckets
                .iter()
                .filter(|b| b.1.is_some() && b.3 < s.backward_end_us)
                .collect();
            println!(
                "step {}: {} buckets ({} bytes), backward ended at {} us, {} all-reduces started before: {:?}",
                s.step,
                s.buckets.len(),
                s.buckets.iter().map(|b| b.2).sum::<u64>(),
                s.backward_end_us,
                early.len(),
                early
                    .iter()
                    .map(|b| format!("bucket {} after instr {} at {} us", b.0, b.1.unwrap_or(0), b.3))
                    .collect::<Vec<_>>()
            );
            assert!(
                s.buckets.len() >= 3,
                "step {}: only {} buckets: {text}",
                s.step,
                s.buckets.len()
            );
            // Every parameter's gradient went through a bucket (the grads
            // buffer may pad each of the 6 tensors to an alignment).
            let params = 16 * 256 + 256 + 256 * 256 + 256 + 256 * 4 + 4;
            let total = s.buckets.iter().map(|b| b.2).sum::<u64>();
            assert!(
                (4 * params..=4 * params + 6 * 256).contains(&total),
                "step {}: buckets hold {total} bytes, the gradients {}",
                s.step,
                4 * params
            );
            if !early.is_empty() {
                overlapped_steps += 1;
            }
        }
        assert!(
            overlapped_steps > 0,
            "no bucket all-reduce started before backward ended:\n{text}"
        );
        println!("{overlapped_steps} of {OVERLAP_STEPS} steps overlapped");
    });
}
