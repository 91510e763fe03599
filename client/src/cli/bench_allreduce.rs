//! `adjoint bench allreduce`: the `allreduce` workload of WORKLOADS.md —
//! sum-all-reduce of one `f32` buffer of `--mb` MiB across `--world` worker
//! processes on loopback, over the TCP ring.
//!
//! The command starts `world` copies of this binary as workers
//! (`adjoint bench allreduce --rank R --world N --peers a,b,...`, hidden
//! flags), one per rank, each listening on a port picked here: bound to
//! `127.0.0.1:0`, read and released. Another process may grab such a port
//! before the worker binds it; the worker then reports `port_taken` and the
//! whole launch is retried with new ports. Each worker prints one JSON line
//! (`rank`, `median_ms`, `gbps`); this prints one for the run, with the
//! slowest rank's median:
//! `{"workload":"allreduce","impl":"adjoint","world":2,"mb":64,"median_ms":..,"gbps":..}`.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adjoint_worker::collective::{BenchResult, RingCollective, RingOptions, bench_all_reduce};
use anyhow::{Context, Result, bail};

/// Workers hear the job token through this variable.
const TOKEN_ENV: &str = "ADJOINT_BENCH_TOKEN";
const LAUNCH_TRIES: usize = 5;

/// What `adjoint bench allreduce` was asked.
#[derive(Debug, Clone)]
pub struct Config {
    /// MiB per worker.
    pub mb: usize,
    pub world: usize,
    /// Timed all-reduces (the median is reported).
    pub iters: usize,
    /// Set in worker processes only.
    pub rank: Option<usize>,
    /// Set in worker processes only: every rank's address, comma-separated.
    pub peers: Option<String>,
}

pub fn run(cfg: Config) -> Result<()> {
    if cfg.world == 0 || cfg.mb == 0 {
        bail!("--world and --mb must be at least 1");
    }
    match (cfg.rank, cfg.peers.as_deref()) {
        (Some(rank), Some(peers)) => worker(&cfg, rank, peers),
        (None, None) => launch(&cfg),
        _ => bail!("--rank and --peers go together (the launcher passes them to its workers)"),
    }
}

/// One rank: join the ring, time, print `{"rank", "median_ms", "gbps"}`.
fn worker(cfg: &Config, rank: usize, peers: &str) -> Result<()> {
    let peers: Vec<SocketAddr> = peers
        .split(',')
        .map(|p| p.parse().with_context(|| format!("peer address '{p}'")))
        .collect::<Result<_>>()?;
    if peers.len() != cfg.world || rank >= cfg.world {
        bail!(
            "rank {rank} with {} peer addresses for a world of {}",
            peers.len(),
            cfg.world
        );
    }
    let listener = match TcpListener::bind(peers[rank]) {
        Ok(l) => l,
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            println!(
                "{}",
                serde_json::json!({ "rank": rank, "error": "port_taken" })
            );
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("binding {}", peers[rank])),
    };
    let opts = RingOptions {
        token: std::env::var(TOKEN_ENV).unwrap_or_default(),
        // All workers start together; a missing one (its port was taken)
        // should not hold the launch up for long.
        connect_timeout: Duration::from_secs(10),
        ..RingOptions::default()
    };
    let mut ring = RingCollective::connect(rank, cfg.world, listener, &peers, opts)?;
    let r = bench_all_reduce(&mut ring, cfg.mb, cfg.iters)?;
    let line = serde_json::json!({ "rank": rank, "median_ms": r.median_ms, "gbps": r.algbw_gbps });
    println!("{line}");
    Ok(())
}

/// Picks `n` distinct free loopback ports (all bound at once, then
/// released).
fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let held = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("picking free ports")?;
    Ok(held
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<_>>()?)
}

/// Starts the workers, gathers their lines, prints the run's.
fn launch(cfg: &Config) -> Result<()> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let token = format!(
        "bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    for _ in 0..LAUNCH_TRIES {
        let addrs = free_addrs(cfg.world)?;
        let peers = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let children = (0..cfg.world)
            .map(|rank| {
                Command::new(&exe)
                    .args(["bench", "allreduce", "--mb", &cfg.mb.to_string()])
                    .args([
                        "--world",
                        &cfg.world.to_string(),
                        "--steps",
                        &cfg.iters.to_string(),
                    ])
                    .args(["--rank", &rank.to_string(), "--peers", &peers])
                    .env(TOKEN_ENV, &token)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("starting worker {rank}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = children
            .into_iter()
            .map(|c| c.wait_with_output().context("waiting for a worker"))
            .collect::<Result<Vec<_>>>()?;
        if outputs
            .iter()
            .any(|o| last_json(o).is_ok_and(|l| l["error"] == "port_taken"))
        {
            continue;
        }
        let lines = outputs.iter().map(last_json).collect::<Result<Vec<_>>>()?;
        let slowest = lines
            .iter()
            .map(|l| {
                l["median_ms"]
                    .as_f64()
                    .context("a worker reported no median_ms")
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .fold(0.0, f64::max);
        let r = BenchResult::new(cfg.mb << 20, slowest);
        let line = serde_json::json!({
            "workload": "allreduce",
            "impl": "adjoint",
            "world": cfg.world,
            "mb": cfg.mb,
            "median_ms": round(r.median_ms),
            "gbps": round(r.algbw_gbps),
        });
        println!("{line}");
        return Ok(());
    }
    bail!(
        "could not find free ports for {} workers in {LAUNCH_TRIES} tries",
        cfg.world
    )
}

/// A worker's JSON line, or why there is none.
fn last_json(out: &Output) -> Result<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    match line {
        Some(l) if out.status.success() => {
            serde_json::from_str(l).with_context(|| format!("worker printed '{l}'"))
        }
        _ => bail!("a worker failed ({}); its errors are above", out.status),
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
