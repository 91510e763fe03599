//! `adjoint-loadtest`: one coordinator process under the control-plane load
//! of a large cluster. It starts `adjoint-server` (the sibling binary),
//! connects `--workers` simulated workers ([`adjoint_worker::agent::simulated`]:
//! register, heartbeat, answer assignments without training), submits
//! `--jobs` small jobs of 1 to 4 ranks from `--clients` concurrent clients,
//! waits for every job to end, and prints one JSON line: submit latency
//! (p50, p99, max), jobs per second, the coordinator's CPU seconds and
//! peak memory, and the checks: every job succeeded and every rank of every
//! job was assigned exactly once.
//!
//! ```text
//! adjoint-loadtest --workers 200 --jobs 1000
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adjoint_graph::serialize;
use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_proto::dial::Credentials;
use adjoint_proto::v1::coordinator_client::CoordinatorClient;
use adjoint_proto::v1::{
    BlobChunk, GetJobRequest, JobSpec, JobState, ListJobsRequest, SubmitJobRequest, job_spec,
};
use adjoint_worker::agent::simulated;
use adjoint_worker::data::{HostTensor, write_safetensors};
use clap::Parser;
use tonic::transport::Channel;

/// Puts one coordinator under the load of many workers and jobs.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated workers.
    #[arg(long, default_value_t = 200)]
    workers: usize,
    /// Jobs to submit.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long a simulated rank "trains", in milliseconds.
    #[arg(long, default_value_t = 20)]
    work_ms: u64,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("adjoint-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let server_bin = exe
        .parent()
        .map(|d| d.join("adjoint-server"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("adjoint-server"));
    let mut server = Command::new(server_bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting adjoint-server: {e}"))?;
    let pid = server.id();
    let mut line = String::new();
    BufReader::new(server.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("adjoint-server listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let result = runtime.block_on(load(&args, &format!("http://{addr}"), pid));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    println!("{report}");
    Ok(())
}

/// utime + stime of a process, in seconds, and its peak resident memory.
fn cpu_and_peak(pid: u32) -> (f64, u64) {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let user: f64 = rest.get(11)?.parse().ok()?;
            let sys: f64 = rest.get(12)?.parse().ok()?;
            Some((user + sys) / ticks)
        })
        .unwrap_or(f64::NAN);
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024);
    (cpu, peak)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn load(args: &Args, url: &str, pid: u32) -> Result<serde_json::Value, String> {
    let assigned: simulated::Assigned = Arc::default();
    let work = Duration::from_millis(args.work_ms);
    // Set once the report is made: the workers' streams then end with the
    // coordinator, which is no failure.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for i in 0..args.workers {
        let (url, assigned, done) = (url.to_owned(), assigned.clone(), done.clone());
        tokio::spawn(async move {
            let name = format!("sim-{i:04}");
            if let Err(e) = simulated::run(&url, &Credentials::none(), &name, work, assigned).await
                && !done.load(std::sync::atomic::Ordering::Relaxed)
            {
                eprintln!("{e}");
            }
        });
    }
    let channel = Channel::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = CoordinatorClient::new(channel.clone());
    // Wait for every worker to register.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = client
            .list_workers(adjoint_proto::v1::ListWorkersRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .workers
            .len();
        if n >= args.workers {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {n} of {} workers registered", args.workers));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One small model and dataset for every job.
    let graph = zoo::mlp(&MlpConfig {
        input: 8,
        hidden: vec![8],
        classes: 2,
        batch: None,
    })
    .map_err(|e| e.to_string())?;
    let samples = 64;
    let data = write_safetensors(&BTreeMap::from([
        (
            "x".to_owned(),
            HostTensor::from_f32(vec![samples, 8], &vec![0.5; samples * 8]),
        ),
        (
            "labels".to_owned(),
            HostTensor::from_i64(vec![samples], &vec![1; samples]),
        ),
    ]))
    .map_err(|e| e.to_string())?;
    let upload = tokio_stream::iter(vec![BlobChunk {
        name: "load.safetensors".into(),
        data,
    }]);
    let blob = client
        .upload_blob(upload)
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .blob_id;
    let proto = serialize::to_proto(&graph);

    let (cpu0, _) = cpu_and_peak(pid);
    let started = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.jobs)));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(args.jobs)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (mut client, next) = (CoordinatorClient::new(channel.clone()), next.clone());
        let (latencies, ids, blob, proto) =
            (latencies.clone(), ids.clone(), blob.clone(), proto.clone());
        let jobs = args.jobs;
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<(), String>(());
                }
                let spec = JobSpec {
                    name: format!("load-{i}"),
                    model: Some(job_spec::Model::Graph(proto.clone())),
                    dataset_blob: blob.clone(),
                    workers: 1 + (i % 4) as u32,
                    batch_size: 4,
                    steps: 1,
                    ..JobSpec::default()
                };
                let t = Instant::now();
                let job = client
                    .submit_job(SubmitJobRequest { spec: Some(spec) })
                    .await
                    .map_err(|e| format!("submit {i}: {e}"))?
                    .into_inner();
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t.elapsed().as_secs_f64() * 1e3);
                ids.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((job.id, 1 + (i % 4) as u32));
            }
        }));
    }
    for c in clients {
        c.await.map_err(|e| e.to_string())??;
    }
    let submitted = started.elapsed().as_secs_f64();

    // Every job to an end.
    let ids = ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = client
            .list_jobs(ListJobsRequest::default())
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .jobs;
        let open = jobs
            .iter()
            .filter(|j| matches!(j.state(), JobState::Queued | JobState::Running))
            .count();
        if open == 0 && jobs.len() >= ids.len() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{open} jobs still open after 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, peak) = cpu_and_peak(pid);

    // The checks: every job succeeded; every rank assigned exactly once.
    let mut failed = Vec::new();
    for (id, _) in &ids {
        let job = client
            .get_job(GetJobRequest { id: id.clone() })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if job.state() != JobState::Succeeded {
            failed.push(format!("{id}: {:?} {}", job.state(), job.reason));
        }
    }
    let mut counts: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for a in assigned.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        *counts.entry(a.clone()).or_default() += 1;
    }
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    let missing = ids
        .iter()
        .flat_map(|(id, world)| (0..*world).map(move |r| (id.clone(), r)))
        .filter(|k| !counts.contains_key(k))
        .count();
    let mut lat = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lat.sort_by(f64::total_cmp);
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let report = serde_json::json!({
        "workers": args.workers,
        "jobs": ids.len(),
        "ranks": counts.len(),
        "clients": args.clients,
        "submit_ms_p50": round(percentile(&lat, 0.5)),
        "submit_ms_p99": round(percentile(&lat, 0.99)),
        "submit_ms_max": round(lat.last().copied().unwrap_or(f64::NAN)),
        "submit_seconds": round(submitted),
        "all_done_seconds": round(wall),
        "jobs_per_second": round(ids.len() as f64 / wall),
        "coordinator_cpu_seconds": round(cpu1 - cpu0),
        "coordinator_cpu_share": round((cpu1 - cpu0) / wall),
        "coordinator_peak_rss_bytes": peak,
        "failed_jobs": failed.len(),
        "duplicated_ranks": duplicated,
        "missing_ranks": missing,
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if !failed.is_empty() || duplicated > 0 || missing > 0 {
        return Err(format!(
            "{report}\nfailed: {:?}",
            &failed[..failed.len().min(10)]
        ));
    }
    Ok(report)
}
