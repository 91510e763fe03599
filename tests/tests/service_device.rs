//! Device choice through the real binaries: `--device cuda:0` on a
//! machine without a GPU fails at start with "no CUDA device found" (and
//! `adjoint up --device cuda:0` with it, at once); `--device auto`
//! registers a CPU worker (no devices, "cpu" in `adjoint workers`), which
//! trains CPU jobs while a GPU job waits for a GPU worker. On a GPU
//! machine the no-GPU checks are skipped with a printed reason and the
//! worker registers its GPU instead.

use std::process::Command;
use std::time::Duration;

use adjoint_client::local::{LocalCluster, LocalDevice, binary};
use adjoint_tests::{adjoint, write_example};

/// `Some(reason)` when this machine has no usable GPU.
fn no_gpu() -> Option<String> {
    adjoint_worker::agent::device::gpus().err()
}

#[test]
fn cuda_without_a_gpu_fails_with_the_reason() {
    let Some(why) = no_gpu() else {
        eprintln!("skipped: this machine has a GPU, so --device cuda:0 starts");
        return;
    };
    eprintln!("no GPU here ({why}); checking the failure");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("adjoint-worker"))
        .args([
            "--device",
            "cuda:0",
            "--coordinator",
            "http://127.0.0.1:1",
            "--store",
        ])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device cuda:0: no CUDA device found"),
        "{err}"
    );

    // A local cluster of such workers fails at once, saying why.
    let start = std::time::Instant::now();
    let err = LocalCluster::start_on(
        &dir.path().join("cluster"),
        1,
        &[],
        Some(LocalDevice::Same("cuda:0".into())),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no CUDA device found"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn auto_registers_a_cpu_worker_and_gpu_jobs_wait_for_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 64).unwrap();
    let cluster = LocalCluster::start_on(
        &dir.path().join("cluster"),
        1,
        &[],
        Some(LocalDevice::Same("auto".into())),
    )
    .unwrap();
    let listed = adjoint(&cluster.addr, &["workers"]);
    assert!(listed.ok, "{listed}");
    let row = listed.stdout.lines().nth(1).unwrap_or_default().to_owned();
    let gpu = no_gpu().is_none();
    if gpu {
        eprintln!("this machine has a GPU: the auto worker registered it: {row}");
        assert!(!row.contains(" cpu "), "{row}");
        return;
    }
    assert!(row.contains(" cpu "), "{}", listed.stdout);
    let log = std::fs::read_to_string(cluster.dir.join("logs/worker-0.log")).unwrap();
    assert!(
        log.contains("no CUDA device found") && log.contains("using the CPU"),
        "{log}"
    );

    let (model, data) = (
        dir.path().join("model.json"),
        dir.path().join("train.safetensors"),
    );
    let submit = |device: &str| {
        adjoint(
            &cluster.addr,
            &[
                "submit",
                "--graph",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--batch-size",
                "16",
                "--steps",
                "2",
                "--device",
                device,
            ],
        )
    };
    // A GPU job ("cuda" is read as "gpu") waits: no worker has a GPU.
    let gpu_job = submit("cuda");
    assert!(gpu_job.ok, "{gpu_job}");
    let gpu_id = gpu_job.stdout.trim().to_owned();
    let cpu_job = submit("cpu");
    assert!(cpu_job.ok, "{cpu_job}");
    std::thread::sleep(Duration::from_secs(1));
    let status = adjoint(&cluster.addr, &["status", &gpu_id]);
    assert!(status.ok, "{status}");
    assert!(status.stdout.contains("queued"), "{}", status.stdout);
    assert!(
        status.stdout.contains("waiting for 1 workers (have 0)"),
        "{}",
        status.stdout
    );
    // The CPU job queued behind it does not jump the queue (FIFO); cancel
    // the GPU job and it runs.
    assert!(adjoint(&cluster.addr, &["cancel", &gpu_id]).ok);
    let cpu_id = cpu_job.stdout.trim().to_owned();
    let watched = adjoint(&cluster.addr, &["watch", &cpu_id]);
    assert!(watched.ok, "{watched}");
}

/// Writes the example job (`model.json`, `train.safetensors`: the MLP
/// the service tests train) into `$ADJOINT_EXAMPLE_DIR`, for
/// scripts/gpu-bundle.sh (the GPU machine has no Rust to write it).
#[test]
#[ignore = "run by scripts/gpu-bundle.sh"]
fn write_bundle_example() {
    let dir = std::env::var("ADJOINT_EXAMPLE_DIR").expect("set ADJOINT_EXAMPLE_DIR");
    std::fs::create_dir_all(&dir).unwrap();
    write_example(std::path::Path::new(&dir), 512).unwrap();
}
