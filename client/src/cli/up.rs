//! `adjoint up`: a coordinator and N workers on this machine, until Ctrl-C
//! or SIGTERM (either stops the processes it started).

use std::path::PathBuf;

use adjoint_client::local::LocalCluster;
use anyhow::Result;
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
}

pub fn run(args: UpArgs) -> Result<()> {
    let cluster = LocalCluster::start(&args.dir, args.workers)?;
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
