//! `adjoint up`: a coordinator and N workers on this machine, until Ctrl-C
//! or SIGTERM (either stops the processes it started).

use std::path::PathBuf;

use adjoint_client::local::{LocalCluster, LocalDevice};
use anyhow::{Result, bail};
use clap::Args;

/// Start a coordinator and N local workers; stop them with Ctrl-C.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Folder for the job database and the store.
    #[arg(long, default_value = ".adjoint")]
    dir: PathBuf,
    /// The workers' device: `auto` (each worker's default: the first GPU,
    /// else the CPU), `cpu`, `cuda` (the GPUs shared out in turn: worker
    /// i on cuda:i mod GPUs) or `cuda:N` (every worker on GPU N). Jobs
    /// with `device = "gpu"` run on the GPU workers, with NCCL.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// The workers' `--device` for `adjoint up --device D`; `cuda` without a
/// GPU fails here, with the probe's reason.
pub fn local_device(device: &str) -> Result<Option<LocalDevice>> {
    match device.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(None),
        "cuda" | "gpu" => match adjoint_worker::agent::device::gpus() {
            Ok(gpus) => Ok(Some(LocalDevice::Cuda { gpus: gpus.len() })),
            Err(why) => bail!("--device cuda: {why}"),
        },
        other => {
            other
                .parse::<adjoint_worker::agent::DeviceChoice>()
                .map_err(anyhow::Error::msg)?;
            Ok(Some(LocalDevice::Same(other.to_owned())))
        }
    }
}

pub fn run(args: UpArgs) -> Result<()> {
    let device = local_device(&args.device)?;
    let cluster = LocalCluster::start_on(&args.dir, args.workers, &[], device)?;
    println!(
        "coordinator on {} with {} workers (data in {}, logs in {}); export ADJOINT_ADDR={} ; Ctrl-C stops them",
        cluster.addr,
        args.workers,
        args.dir.display(),
        args.dir.join("logs").display(),
        cluster.addr
    );
    if let Some(metrics) = &cluster.metrics_addr {
        println!("metrics: coordinator http://{metrics}/metrics; workers' in `adjoint workers`");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(adjoint_server::cli::shutdown_signal());
    drop(cluster);
    Ok(())
}
