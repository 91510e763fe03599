//! The coordinator's command line, shared by the `adjoint-server` binary
//! and `adjoint server`: flags, logging, serving until ctrl-c or SIGTERM.
//!
//! Prints `adjoint-server listening on ADDR` on stdout once it takes calls
//! (logs go to stderr, filtered by `RUST_LOG`), and shuts down gracefully.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::settings::{ServerFile, ServerSettings};

/// The adjoint coordinator: job API, worker control, scheduler.
///
/// Each setting comes from its flag, else its environment variable, else
/// the config file, else its default.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// A TOML config file with any of the settings below (keys named as
    /// the flags, `_` for `-`).
    #[arg(long, env = "ADJOINT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the settings in effect as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address to listen on (port 0: any free port) [default:
    /// 127.0.0.1:50051].
    #[arg(long, env = "ADJOINT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Folder for the job database (jobs.sqlite) and, by default, the blob
    /// store (required).
    #[arg(long, env = "ADJOINT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Blob store root: a folder shared with the workers, or
    /// s3://bucket/prefix (needs the `s3` feature) [default:
    /// DATA_DIR/store].
    #[arg(long, env = "ADJOINT_STORE")]
    pub store: Option<String>,
    /// Heartbeat period asked of workers, in milliseconds; a worker silent
    /// for three periods is lost [default: 1000].
    #[arg(long, env = "ADJOINT_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free
    /// port; the address is printed). Off when not given.
    #[arg(long, env = "ADJOINT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as `text` or `json` (one object per line), on stderr;
    /// `RUST_LOG` filters them. Spans also go out by OTLP when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set [default: text].
    #[arg(long, env = "ADJOINT_LOG_FORMAT")]
    pub log_format: Option<adjoint_telemetry::LogFormat>,
    /// Bearer tokens: `on`, `off`, or `auto` (on unless listening on a
    /// loopback address) [default: auto].
    #[arg(long, env = "ADJOINT_AUTH", value_parser = ["on", "off", "auto"])]
    pub auth: Option<String>,
    /// The tokens file (TOML: `worker_token` and `[[users]]` with `name`,
    /// `token` or `token_sha256`, `admin`). Needed when auth is on.
    #[arg(long, env = "ADJOINT_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Serve gRPC over TLS with this PEM certificate chain (with
    /// --tls-key).
    #[arg(long, env = "ADJOINT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "ADJOINT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl ServerArgs {
    /// The settings in effect: these flags (and env), over the config file,
    /// over the defaults.
    pub fn settings(&self) -> anyhow::Result<ServerSettings> {
        let flags = ServerFile {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            heartbeat_ms: self.heartbeat_ms,
            metrics_listen: self.metrics_listen,
            log_format: self.log_format.map(|f| f.to_string()),
            auth: self.auth.clone(),
            tokens: self.tokens.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        };
        let file = match &self.config {
            Some(path) => ServerFile::read(path)?,
            None => ServerFile::default(),
        };
        ServerSettings::resolve(flags.or(file))
    }
}

/// Serves until the server fails, ctrl-c or SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    if args.print_config {
        print!("{}", settings.to_toml());
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let telemetry = {
        let _in_runtime = runtime.enter();
        adjoint_telemetry::init("adjoint-server", settings.log_format())
    };
    let result = runtime.block_on(serve(settings));
    // Flushes the last spans while the runtime still runs.
    drop(telemetry);
    result
}

async fn serve(settings: ServerSettings) -> anyhow::Result<()> {
    let listen = settings.listen;
    let config = settings.config()?;
    if config.auth.is_on() && config.tls.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "bearer tokens will cross the network in plain text: give --tls-cert and --tls-key"
        );
    }
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
