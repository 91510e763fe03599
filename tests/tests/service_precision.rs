//! Mixed precision through the service, on one cluster of two worker
//! processes: the same two-worker job in f32, bf16 and fp16 (with a loss
//! scale far too large) succeeds; bf16 and fp16 track the f32 losses and
//! end near its weights, which stay f32, with the bf16 job's gradients
//! all-reduced in bf16 over the ring (half the bytes); fp16 reports its
//! overflows (skipped steps, the scale halving, a log line each). A precision the service
//! does not know is refused at submit, naming the field.

use std::time::Duration;

use adjoint_client::Client;
use adjoint_client::local::LocalCluster;
use adjoint_client::spec::SpecFields;
use adjoint_graph::DType;
use adjoint_proto::v1::JobState;
use adjoint_tests::{Watched, connect, logs, read_weights, runtime, watch_to_end, write_example};

const TIMEOUT: Duration = Duration::from_secs(90);
const STEPS: u64 = 30;

async fn run(client: &mut Client, cluster: &LocalCluster, fields: SpecFields) -> (String, Watched) {
    let spec = fields.build(client).await.unwrap();
    let id = client.submit(spec).await.unwrap().id;
    let watched = match watch_to_end(client, &id, TIMEOUT).await {
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
    (id, watched)
}

#[test]
fn bf16_and_fp16_jobs_train_beside_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 512).unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 2).unwrap();
    let job = |precision: &str, loss_scale: Option<f64>| SpecFields {
        // bf16 jobs all-reduce their gradients in bf16 too.
        grad_reduce: (precision == "bf16").then(|| "bf16".into()),
        graph: Some(dir.path().join("model.json")),
        data: Some(dir.path().join("train.safetensors")),
        workers: Some(2),
        batch_size: Some(16),
        steps: Some(STEPS),
        optimizer: Some("adamw:lr=1e-2".into()),
        seed: Some(3),
        precision: Some(precision.into()),
        loss_scale,
        ..SpecFields::default()
    };
    runtime().block_on(async {
        let mut client = connect(&cluster.addr, TIMEOUT).await.unwrap();
        let spec = job("int4", None).build(&mut client).await.unwrap();
        let err = client.submit(spec).await.unwrap_err().to_string();
        assert!(err.contains("precision") && err.contains("int4"), "{err}");

        let (f32_id, f32_run) = run(&mut client, &cluster, job("f32", None)).await;
        let (bf16_id, bf16_run) = run(&mut client, &cluster, job("bf16", None)).await;
        let (_, fp16_run) = run(&mut client, &cluster, job("fp16", Some(2f64.powi(36)))).await;

        let (a, b) = (f32_run.losses(), bf16_run.losses());
        assert_eq!(a.len() as u64, STEPS);
        assert!(a[a.len() - 1] < 0.7 * a[0], "f32 learns: {a:?}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(((x - y) / x).abs() < 0.02, "step {i}: f32 {x}, bf16 {y}");
        }
        let w32 = read_weights(
            &client
                .download(&f32_id, "weights.safetensors")
                .await
                .unwrap(),
        )
        .unwrap();
        let w16 = read_weights(
            &client
                .download(&bf16_id, "weights.safetensors")
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            w32.keys().collect::<Vec<_>>(),
            w16.keys().collect::<Vec<_>>()
        );
        for (name, t) in &w16 {
            assert_eq!(t.dtype, DType::F32, "{name}: master weights are f32");
        }

        // fp16 from 2^36: the first steps overflow on both ranks alike,
        // each halving the scale, and say so; then it learns.
        let rank0: Vec<_> = fp16_run.metrics.iter().filter(|m| m.rank == 0).collect();
        let overflows = rank0.iter().take_while(|m| m.skipped).count();
        assert!(overflows >= 3, "{overflows} overflows");
        assert_eq!(rank0[0].loss_scale, 2f64.powi(36));
        assert_eq!(
            rank0[overflows].loss_scale,
            2f64.powi(36 - overflows as i32)
        );
        let said = fp16_run
            .logs
            .iter()
            .filter(|l| l.contains("gradient overflow at loss scale"))
            .count();
        assert!(said >= overflows, "{:?}", fp16_run.logs);
        let l = fp16_run.losses();
        assert!(l[l.len() - 1] < 0.7 * l[overflows], "fp16 learns: {l:?}");
        assert!(
            bf16_run
                .metrics
                .iter()
                .all(|m| m.loss_scale == 0.0 && !m.skipped)
        );
        // The bf16 all-reduce hands the ring half the gradient bytes.
        let bytes = |w: &Watched| {
            w.metrics
                .iter()
                .find(|m| m.rank == 0)
                .unwrap()
                .allreduce_bytes
        };
        let (full, half) = (bytes(&f32_run), bytes(&bf16_run));
        assert!(
            half < full * 52 / 100 && half > full * 48 / 100,
            "bf16 all-reduce bytes {half}, f32 {full}"
        );
    });
}
