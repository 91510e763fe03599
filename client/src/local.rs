//! A coordinator and N workers as child processes on this machine: what
//! `adjoint up` and `adjoint demo` start, and what end-to-end tests use.
//!
//! From the `adjoint` executable, the processes are that executable itself
//! (`adjoint server`, `adjoint worker`), so one installed binary is enough
//! and versions always match; from any other program (tests), the binaries
//! `adjoint-server` and `adjoint-worker` next to it (where cargo puts
//! them), else on `PATH`. The server listens on an OS-chosen loopback
//! port; workers share the store folder with it, and split the machine's
//! cores between them. Their logs go to `<dir>/logs/<process>.log`
//! ([`LocalCluster::log_files`]), not to the terminal. Dropping a
//! [`LocalCluster`] kills its processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Client;

/// Running coordinator and worker processes.
#[derive(Debug)]
pub struct LocalCluster {
    /// `127.0.0.1:PORT` of the coordinator.
    pub addr: String,
    /// The folder holding the job database and the store.
    pub dir: PathBuf,
    /// `127.0.0.1:PORT` of the coordinator's Prometheus metrics (workers'
    /// are in `ListWorkers`).
    pub metrics_addr: Option<String>,
    server: Child,
    workers: Vec<Child>,
    /// Workers the cores are split between.
    planned_workers: usize,
    /// Times the coordinator was restarted.
    restarts: usize,
    /// Environment variables every process of the cluster gets on top of
    /// this one's.
    env: Vec<(String, String)>,
    /// Each worker's `--device` (`None`: the worker's default, `auto`).
    device: Option<LocalDevice>,
}

/// What `--device` the workers of a [`LocalCluster`] get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDevice {
    /// This value for every worker (`cpu`, `auto`, `cuda:N`).
    Same(String),
    /// Worker `i` gets `cuda:{i % gpus}`: the GPUs shared out in turn.
    Cuda { gpus: usize },
}

impl LocalDevice {
    /// `--device` of worker `index`.
    fn of(&self, index: usize) -> String {
        match self {
            LocalDevice::Same(d) => d.clone(),
            LocalDevice::Cuda { gpus } => format!("cuda:{}", index % gpus.max(&1)),
        }
    }
}

/// A command running `adjoint-<role>` (`server` or `worker`): `adjoint
/// <role>` when this process is `adjoint` (the same build, whatever else
/// lies around), else the sibling binary, else the binary on `PATH`.
fn role_command(role: &str) -> Command {
    if let Ok(exe) = std::env::current_exe()
        && exe.file_stem().is_some_and(|s| s == "adjoint")
    {
        let mut cmd = Command::new(exe);
        cmd.arg(role);
        return cmd;
    }
    Command::new(binary(&format!("adjoint-{role}")))
}

/// Starts a coordinator on `listen` with its data in `dir`, logging to
/// `<dir>/logs/<log>.log`; returns it and the address it listens on.
fn spawn_server(
    dir: &Path,
    listen: &str,
    log: &str,
    env: &[(String, String)],
) -> Result<(Child, String, Option<String>)> {
    let mut server = role_command("server")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args([
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(log_file(dir, log)?)
        .spawn()
        .context("cannot start adjoint-server (build it with `cargo build -p adjoint-server`)")?;
    let stdout = server.stdout.take().context("server stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let mut metrics = None;
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .context("reading the server's first lines")?;
        match line.trim().strip_prefix("adjoint-server metrics on ") {
            Some(addr) => metrics = Some(addr.to_owned()),
            None => break,
        }
    }
    match line.trim().strip_prefix("adjoint-server listening on ") {
        Some(addr) => Ok((server, addr.to_owned(), metrics)),
        None => {
            let _ = server.kill();
            let _ = server.wait();
            let path = dir.join("logs").join(format!("{log}.log"));
            let log = std::fs::read_to_string(path).unwrap_or_default();
            bail!("adjoint-server did not start: {line:?}\n{log}");
        }
    }
}

/// A new log file `<dir>/logs/<name>.log` for a child's stderr.
fn log_file(dir: &Path, name: &str) -> Result<Stdio> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let path = logs.join(format!("{name}.log"));
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Stdio::from(file))
}

/// Path of a sibling binary of the current executable, else the bare name.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dirs = exe.iter().flat_map(|e| {
        let dir = e.parent().map(Path::to_path_buf);
        // Test binaries live in target/<profile>/deps; the others one up.
        let up = dir.as_ref().and_then(|d| d.parent().map(Path::to_path_buf));
        [dir, up]
    });
    for dir in dirs.flatten() {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

impl LocalCluster {
    /// Starts a coordinator with its data in `dir` and `workers` workers, and
    /// waits until every worker has registered.
    pub fn start(dir: &Path, workers: usize) -> Result<LocalCluster> {
        LocalCluster::start_with_env(dir, workers, &[])
    }

    /// [`LocalCluster::start`] with extra environment variables for every
    /// process (`OTEL_EXPORTER_OTLP_ENDPOINT`, `RUST_LOG`, ...).
    pub fn start_with_env(
        dir: &Path,
        workers: usize,
        env: &[(&str, &str)],
    ) -> Result<LocalCluster> {
        LocalCluster::start_on(dir, workers, env, None)
    }

    /// [`LocalCluster::start_with_env`] with the workers' `--device`.
    pub fn start_on(
        dir: &Path,
        workers: usize,
        env: &[(&str, &str)],
        device: Option<LocalDevice>,
    ) -> Result<LocalCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (server, addr, metrics_addr) = spawn_server(dir, "127.0.0.1:0", "server", &env)?;
        let mut cluster = LocalCluster {
            addr,
            metrics_addr,
            dir: dir.to_path_buf(),
            server,
            workers: Vec::new(),
            planned_workers: workers,
            restarts: 0,
            env,
            device,
        };
        for i in 0..workers {
            cluster.add_worker(&format!("worker-{i}"))?;
        }
        // In short waits, so that a worker that exits at start fails this
        // at once, with its reason.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match cluster.wait_for_workers(workers, Duration::from_millis(500)) {
                Ok(()) => return Ok(cluster),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
            if let Some(why) = cluster.exited_worker() {
                bail!("{why}");
            }
        }
    }

    /// The first worker process that has exited, with its log's last
    /// lines (a worker that could not start: `--device cuda:0` without a
    /// GPU, say).
    fn exited_worker(&mut self) -> Option<String> {
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Ok(Some(status)) = w.try_wait() {
                let log = self.dir.join("logs").join(format!("worker-{i}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Some(format!("worker-{i} exited ({status}): {}", tail.join("\n")));
            }
        }
        None
    }

    /// Starts one more worker process.
    pub fn add_worker(&mut self, name: &str) -> Result<()> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / self.planned_workers.max(1)).max(1);
        let mut command = role_command("worker");
        if let Some(d) = &self.device {
            command.args(["--device", &d.of(self.workers.len())]);
        }
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args([
                "--threads",
                &threads.to_string(),
                "--coordinator",
                &self.url(),
                "--name",
                name,
                "--metrics-listen",
                "127.0.0.1:0",
                "--store",
            ])
            .arg(self.dir.join("store"))
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, name)?)
            .spawn()
            .context(
                "cannot start adjoint-worker (build it with `cargo build -p adjoint-worker`)",
            )?;
        self.workers.push(child);
        Ok(())
    }

    /// The coordinator's URL: `https://` when the cluster's environment
    /// gives it a TLS certificate (`ADJOINT_TLS_CERT`).
    pub fn url(&self) -> String {
        let tls = self.env.iter().any(|(k, _)| k == "ADJOINT_TLS_CERT");
        crate::client::endpoint(&self.addr, tls)
    }

    /// What this cluster's own calls present: `ADJOINT_TOKEN`,
    /// `ADJOINT_CA_FILE` and `ADJOINT_TLS_DOMAIN` of its environment.
    pub fn credentials(&self) -> Result<crate::Credentials> {
        let var = |name: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let ca = var("ADJOINT_CA_FILE").map(PathBuf::from);
        crate::Credentials::load(
            var("ADJOINT_TOKEN"),
            None,
            ca.as_deref(),
            var("ADJOINT_TLS_DOMAIN"),
        )
        .map_err(anyhow::Error::msg)
    }

    /// Polls the coordinator until `n` workers are registered.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<()> {
        let credentials = self.credentials()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + timeout;
        runtime.block_on(async {
            loop {
                if let Ok(mut c) = Client::connect_with(&self.url(), &credentials).await {
                    let live = c
                        .workers()
                        .await?
                        .iter()
                        .filter(|w| w.status != "lost")
                        .count();
                    if live >= n {
                        return Ok(());
                    }
                }
                if Instant::now() > deadline {
                    bail!("only some of {n} workers registered within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Kills the coordinator and starts a new one on the same address and
    /// data folder (its log is `server-<n>.log`); workers reconnect.
    pub fn restart_server(&mut self) -> Result<()> {
        self.kill_server()?;
        self.restarts += 1;
        let name = format!("server-{}", self.restarts + 1);
        let (server, addr, metrics_addr) = spawn_server(&self.dir, &self.addr, &name, &self.env)?;
        self.metrics_addr = metrics_addr;
        if addr != self.addr {
            bail!(
                "the restarted coordinator listens on {addr}, not {}",
                self.addr
            );
        }
        self.server = server;
        Ok(())
    }

    /// The log files of the coordinator and the workers.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Kills worker `i` (to test losing one).
    pub fn kill_worker(&mut self, i: usize) -> Result<()> {
        self.workers[i].kill().context("killing a worker")?;
        let _ = self.workers[i].wait();
        Ok(())
    }

    /// Freezes worker `i` (SIGSTOP): alive, sockets open, but silent, as a
    /// rank stuck in a kernel or a swap storm is. [`LocalCluster::resume_worker`]
    /// thaws it.
    pub fn pause_worker(&self, i: usize) -> Result<()> {
        signal(self.workers[i].id(), "-STOP")
    }

    /// Thaws a worker frozen by [`LocalCluster::pause_worker`] (SIGCONT).
    pub fn resume_worker(&self, i: usize) -> Result<()> {
        signal(self.workers[i].id(), "-CONT")
    }

    /// Stops the coordinator (workers keep running and reconnect).
    pub fn kill_server(&mut self) -> Result<()> {
        self.server.kill().context("killing the server")?;
        let _ = self.server.wait();
        Ok(())
    }
}

/// Sends a signal to a process with `kill(1)`.
fn signal(pid: u32, which: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill {which} {pid} failed: {status}");
    }
    Ok(())
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // A frozen worker is thawed so that it can die.
            let _ = signal(w.id(), "-CONT");
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
