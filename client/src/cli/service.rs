//! What the commands that talk to a coordinator share: the address flag and
//! a runtime to run the async client on.

use adjoint_client::Client;
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
            let mut client = Client::connect(&addr.addr).await?;
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
