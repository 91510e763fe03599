//! The coordinator's command line, shared by the `adjoint-server` binary
//! and `adjoint server`: flags, logging, serving until ctrl-c or SIGTERM.
//!
//! Prints `adjoint-server listening on ADDR` on stdout once it takes calls
//! (logs go to stderr, filtered by `RUST_LOG`), and shuts down gracefully.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// The adjoint coordinator: job API, worker control, scheduler.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, env = "ADJOINT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Folder for the job database (jobs.sqlite) and, by default, the blob
    /// store.
    #[arg(long, env = "ADJOINT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Blob store root: a folder shared with the workers, or
    /// s3://bucket/prefix (needs the `s3` feature). Default: DATA_DIR/store.
    #[arg(long, env = "ADJOINT_STORE")]
    pub store: Option<String>,
    /// Heartbeat period asked of workers, in milliseconds; a worker silent
    /// for three periods is lost.
    #[arg(long, env = "ADJOINT_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free
    /// port; the address is printed). Off when not given.
    #[arg(long, env = "ADJOINT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as `text` or `json` (one object per line), on stderr;
    /// `RUST_LOG` filters them. Spans also go out by OTLP when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[arg(long, env = "ADJOINT_LOG_FORMAT", default_value = "text")]
    pub log_format: adjoint_telemetry::LogFormat,
}

impl ServerArgs {
    fn into_config(self) -> anyhow::Result<crate::Config> {
        if self.heartbeat_ms == 0 {
            bail!("--heartbeat-ms must be at least 1");
        }
        Ok(crate::Config {
            data_dir: self.data_dir,
            store: self.store,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            metrics_listen: self.metrics_listen,
        })
    }
}

/// Serves until the server fails, ctrl-c or SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let telemetry = {
        let _in_runtime = runtime.enter();
        adjoint_telemetry::init("adjoint-server", args.log_format)
    };
    let result = runtime.block_on(serve(args));
    // Flushes the last spans while the runtime still runs.
    drop(telemetry);
    result
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let listen = args.listen;
    let config = args.into_config()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mut server = crate::serve(listener, config).await?;
    // The metrics line first: whoever reads the listening line may stop
    // reading there.
    if let Some(metrics) = server.metrics_addr() {
        println!("adjoint-server metrics on {metrics}");
    }
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
pub async fn shutdown_signal() {
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
