//! End-to-end tests of adjoint.
//!
//! The tests under `tests/tests/` start a real `adjoint-server` and real
//! `adjoint-worker` processes on loopback (through
//! `adjoint_client::local::LocalCluster`) and drive them through the CLI
//! and the Rust client, waiting on conditions, never fixed sleeps. This
//! library holds what they share: a small model and a dataset it can learn,
//! the `adjoint` CLI as a function, waiting with a deadline, watching a job
//! to its end, comparing weights, and the cluster's logs for assertion
//! messages.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use adjoint_client::Client;
use adjoint_client::local::{LocalCluster, binary};
use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_proto::v1::{JobState, StepMetrics, job_event};
use adjoint_worker::data::{HostTensor, write_safetensors};
use anyhow::{Context, Result, bail};
use tokio_stream::StreamExt;

pub mod fuzz_entry;

/// Features of the example model.
pub const FEATURES: usize = 16;
/// Classes of the example model.
pub const CLASSES: usize = 4;

/// Writes `model.json` (an MLP with a symbolic batch) and `train.safetensors`
/// (`samples` samples whose label is the argmax of the first 4 features)
/// into `dir`.
pub fn write_example(dir: &Path, samples: usize) -> Result<()> {
    write_mlp(&dir.join("model.json"), &[32])?;
    let mut x = Vec::with_capacity(samples * FEATURES);
    let mut labels = Vec::with_capacity(samples);
    for s in 0..samples {
        let row: Vec<f32> = (0..FEATURES)
            .map(|f| (((s * 31 + f * 17) % 97) as f32 / 48.0) - 1.0)
            .collect();
        let best = (0..CLASSES)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        labels.push(best as i64);
        x.extend(row);
    }
    let tensors = BTreeMap::from([
        (
            "x".to_owned(),
            HostTensor::from_f32(vec![samples, FEATURES], &x),
        ),
        (
            "labels".to_owned(),
            HostTensor::from_i64(vec![samples], &labels),
        ),
    ]);
    std::fs::write(dir.join("train.safetensors"), write_safetensors(&tensors)?)?;
    Ok(())
}

/// Writes an MLP graph with a symbolic batch, [`FEATURES`] inputs, the
/// given hidden widths and [`CLASSES`] classes to `path` (it takes the data
/// of [`write_example`]). Its parameters are `fc1.weight`, `fc1.bias`, ...
pub fn write_mlp(path: &Path, hidden: &[usize]) -> Result<()> {
    let graph = zoo::mlp(&MlpConfig {
        input: FEATURES,
        hidden: hidden.to_vec(),
        classes: CLASSES,
        batch: None,
    })?;
    adjoint_client::graph_file::save(path, &graph)
}

/// What one run of the `adjoint` CLI printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// It exited with status 0.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            if self.ok { "ok" } else { "failed" },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs the `adjoint` binary (next to the test executable) with `args`
/// against the coordinator at `addr` (through `ADJOINT_ADDR`).
pub fn adjoint(addr: &str, args: &[&str]) -> CliOutput {
    let out = Command::new(binary("adjoint"))
        .args(args)
        .env("ADJOINT_ADDR", addr)
        .output()
        .expect("the adjoint binary runs (build it with `cargo build --bins`)");
    CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Bytes kept from the end of each log by [`logs`].
const LOG_TAIL: usize = 6000;

/// The cluster's server and worker logs (the last few KiB of each), to put
/// in an assertion message.
pub fn logs(cluster: &LocalCluster) -> String {
    let mut out = String::new();
    for path in cluster.log_files() {
        let text = strip_ansi(&std::fs::read_to_string(&path).unwrap_or_default());
        let mut from = text.len().saturating_sub(LOG_TAIL);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        out.push_str(&format!(
            "\n===== {}{} =====\n{}",
            path.display(),
            if from > 0 { " (tail)" } else { "" },
            &text[from..]
        ));
    }
    out
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which the
/// processes' tracing output may contain.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A multi-threaded tokio runtime for a test's async half.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Calls `check` every 50 ms until it returns `Some`, or fails after
/// `timeout` saying what it waited for. Errors of `check` count as "not
/// yet" (the last one is reported).
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects to the coordinator at `addr`, retrying (e.g. while it
/// restarts) for up to `timeout`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<Client> {
    wait_until(
        "the coordinator to accept connections",
        timeout,
        async || Client::connect(addr).await.map(Some),
    )
    .await
}

/// The events of a watched job.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// Every state change, in order, with its reason.
    pub states: Vec<(JobState, String)>,
    /// Every metrics event, of every rank.
    pub metrics: Vec<StepMetrics>,
    /// Log lines.
    pub logs: Vec<String>,
    /// For each event, in order: `'s'` state, `'m'` metrics, `'l'` log.
    pub kinds: String,
}

impl Watched {
    /// The last state change (`Unspecified` if none).
    pub fn last_state(&self) -> JobState {
        self.states
            .last()
            .map_or(JobState::Unspecified, |(s, _)| *s)
    }

    /// Losses of rank 0, in order.
    pub fn losses(&self) -> Vec<f64> {
        self.metrics
            .iter()
            .filter(|m| m.rank == 0)
            .map(|m| m.loss)
            .collect()
    }
}

/// Watches job `id` from its first event until the stream ends (after the
/// terminal state change); fails after `timeout`.
pub async fn watch_to_end(client: &mut Client, id: &str, timeout: Duration) -> Result<Watched> {
    let mut watched = Watched::default();
    let mut events = client.watch(id, 0).await?;
    let read = async {
        while let Some(event) = events.next().await {
            match event.context("the watch stream failed")?.kind {
                Some(job_event::Kind::State(s)) => {
                    watched.states.push((s.state(), s.reason.clone()));
                    watched.kinds.push('s');
                }
                Some(job_event::Kind::Metrics(m)) => {
                    watched.metrics.push(m);
                    watched.kinds.push('m');
                }
                Some(job_event::Kind::Log(line)) => {
                    watched.logs.push(line);
                    watched.kinds.push('l');
                }
                None => {}
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result.map(|()| watched),
        Err(_) => bail!(
            "job {id} did not end within {timeout:?}; states so far {:?}, {} metrics",
            watched.states,
            watched.metrics.len()
        ),
    }
}

/// Reads a safetensors file of weights.
pub fn read_weights(bytes: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    Ok(adjoint_worker::data::read_safetensors(bytes)?)
}

/// Where `got` and `want` differ beyond float rounding, or `None` if they
/// match: the same parameter names and shapes, and every element within
/// `|a − b| ≤ rel · (|b| + rms(b))`, `rms(b)` the root mean square of the
/// whole tensor standing in for elements near zero (so the test tolerates
/// rounding noise on elements that cross zero, but not a real difference).
pub fn weights_differ(
    got: &BTreeMap<String, HostTensor>,
    want: &BTreeMap<String, HostTensor>,
    rel: f64,
) -> Option<String> {
    let (names_got, names_want): (Vec<_>, Vec<_>) = (got.keys().collect(), want.keys().collect());
    if names_got != names_want {
        return Some(format!("parameters {names_got:?} vs {names_want:?}"));
    }
    for (name, w) in want {
        let (a, b) = match (got[name].to_f32(), w.to_f32()) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => return Some(format!("{name}: not f32: {a:?} / {b:?}")),
        };
        if a.len() != b.len() || got[name].shape != w.shape {
            return Some(format!(
                "{name}: shape {:?} vs {:?}",
                got[name].shape, w.shape
            ));
        }
        let rms =
            (b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / b.len().max(1) as f64).sqrt();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let tol = rel * (f64::from(y.abs()) + rms);
            let diff = f64::from((x - y).abs());
            if diff.is_nan() || diff > tol {
                return Some(format!(
                    "{name}[{i}]: {x} vs {y} (|diff| {diff:e} > tolerance {tol:e})"
                ));
            }
        }
    }
    None
}

/// The largest `max|a − b| / max(max|b|, 1e-6)` over the tensors both have,
/// for printing how close two sets of weights are.
pub fn max_rel_diff(
    got: &BTreeMap<String, HostTensor>,
    want: &BTreeMap<String, HostTensor>,
) -> f64 {
    let mut worst = 0f64;
    for (name, w) in want {
        let (Some(g), Ok(b)) = (got.get(name), w.to_f32()) else {
            continue;
        };
        let Ok(a) = g.to_f32() else { continue };
        let scale = b.iter().map(|y| f64::from(y.abs())).fold(1e-6, f64::max);
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from((x - y).abs()))
            .fold(0.0, f64::max);
        worst = worst.max(diff / scale);
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_escapes_are_stripped_from_logs() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m job=1 é"),
            "2026  INFO job=1 é"
        );
    }
}
