//! What the commands that talk to a coordinator share: the address and
//! credential flags, and a runtime to run the async client on.

use std::path::PathBuf;

use adjoint_client::{Client, Credentials};
use anyhow::Result;
use clap::Args;
use tracing::Instrument;

/// Where the coordinator is.
#[derive(Debug, Clone, Args)]
pub struct Addr {
    /// Coordinator address (`host:port` or `http://host:port`).
    #[arg(
        long,
        env = "ADJOINT_ADDR",
        default_value = "127.0.0.1:7070",
        global = true
    )]
    pub addr: String,
    /// A file holding your bearer token (the token itself may instead be in
    /// ADJOINT_TOKEN, which wins).
    #[arg(long, env = "ADJOINT_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Speak TLS, trusting the CA certificate (PEM) in this file.
    #[arg(long, env = "ADJOINT_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate carries, when it is not the
    /// address's host.
    #[arg(long, env = "ADJOINT_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
}

impl Addr {
    /// A coordinator on loopback without authentication (`adjoint up`).
    pub fn local(addr: &str) -> Addr {
        Addr {
            addr: addr.to_owned(),
            token_file: None,
            ca_file: None,
            tls_domain: None,
        }
    }

    /// The token and CA these flags and the environment give. The token
    /// itself comes only from ADJOINT_TOKEN or the token file, so it stays
    /// out of shell history and `ps`.
    pub fn credentials(&self) -> Result<Credentials> {
        Credentials::load(
            std::env::var("ADJOINT_TOKEN").ok(),
            self.token_file.as_deref(),
            self.ca_file.as_deref(),
            self.tls_domain.clone(),
        )
        .map_err(anyhow::Error::msg)
    }
}

/// Runs `f` with a connected client on a fresh runtime.
pub fn with_client<T>(addr: &Addr, f: impl AsyncFnOnce(&mut Client) -> Result<T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Spans go out by OTLP when the OTEL_* variables say so; the
    // coordinator's spans for this call join the command's trace.
    let telemetry = {
        let _in_runtime = runtime.enter();
        adjoint_telemetry::init_with("adjoint-cli", adjoint_telemetry::LogFormat::Text, "warn")
    };
    let command = std::env::args().nth(1).unwrap_or_default();
    let span = tracing::info_span!("cli", command = %command);
    let result = runtime.block_on(
        async {
            let mut client = Client::connect_with(&addr.addr, &addr.credentials()?).await?;
            f(&mut client).await
        }
        .instrument(span),
    );
    drop(telemetry);
    result
}

/// Bytes for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
