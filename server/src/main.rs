//! `adjoint-server`: the coordinator binary.
//!
//! Prints `adjoint-server listening on ADDR` on stdout once it takes calls
//! (logs go to stderr, filtered by `RUST_LOG`), and shuts down gracefully on
//! ctrl-c or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use std::io::Write;

/// The adjoint coordinator: job API, worker control, scheduler.
#[derive(Debug, Parser)]
#[command(name = "adjoint-server", version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, env = "ADJOINT_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Folder for the job database (jobs.sqlite) and, by default, the blob
    /// store.
    #[arg(long, env = "ADJOINT_DATA_DIR")]
    data_dir: PathBuf,
    /// Blob store root: a folder shared with the workers, or
    /// s3://bucket/prefix (needs the `s3` feature). Default: DATA_DIR/store.
    #[arg(long, env = "ADJOINT_STORE")]
    store: Option<String>,
    /// Heartbeat period asked of workers, in milliseconds; a worker silent
    /// for three periods is lost.
    #[arg(long, env = "ADJOINT_HEARTBEAT_MS", default_value_t = 1000)]
    heartbeat_ms: u64,
}

impl Args {
    fn into_config(self) -> anyhow::Result<adjoint_server::Config> {
        if self.heartbeat_ms == 0 {
            bail!("--heartbeat-ms must be at least 1");
        }
        Ok(adjoint_server::Config {
            data_dir: self.data_dir,
            store: self.store,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listen = args.listen;
    let config = args.into_config()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mut server = adjoint_server::serve(listener, config).await?;
    println!("adjoint-server listening on {}", server.local_addr());
    std::io::stdout().flush()?;
    tokio::select! {
        result = server.wait() => return Ok(result?),
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await?;
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
