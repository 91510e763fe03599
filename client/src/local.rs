//! A coordinator and N workers as child processes on this machine: what
//! `adjoint up` and `adjoint demo` start, and what end-to-end tests use.
//!
//! The binaries `adjoint-server` and `adjoint-worker` are looked up next to
//! the running executable (where cargo puts them), then on `PATH`. The
//! server listens on an OS-chosen loopback port; workers share the store
//! folder with it. Dropping a [`LocalCluster`] kills its processes.

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
    server: Child,
    workers: Vec<Child>,
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
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut server = Command::new(binary("adjoint-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context(
                "cannot start adjoint-server (build it with `cargo build -p adjoint-server`)",
            )?;
        let stdout = server.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the server's first line")?;
        let Some(addr) = line.trim().strip_prefix("adjoint-server listening on ") else {
            let _ = server.kill();
            bail!("adjoint-server did not start: {line:?}");
        };
        let mut cluster = LocalCluster {
            addr: addr.to_owned(),
            dir: dir.to_path_buf(),
            server,
            workers: Vec::new(),
        };
        for i in 0..workers {
            cluster.add_worker(&format!("worker-{i}"))?;
        }
        cluster.wait_for_workers(workers, Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Starts one more worker process.
    pub fn add_worker(&mut self, name: &str) -> Result<()> {
        let child = Command::new(binary("adjoint-worker"))
            .args([
                "--coordinator",
                &format!("http://{}", self.addr),
                "--name",
                name,
                "--store",
            ])
            .arg(self.dir.join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context(
                "cannot start adjoint-worker (build it with `cargo build -p adjoint-worker`)",
            )?;
        self.workers.push(child);
        Ok(())
    }

    /// Polls the coordinator until `n` workers are registered.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + timeout;
        runtime.block_on(async {
            loop {
                if let Ok(mut c) = Client::connect(&self.addr).await {
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

    /// Kills worker `i` (to test losing one).
    pub fn kill_worker(&mut self, i: usize) -> Result<()> {
        self.workers[i].kill().context("killing a worker")?;
        let _ = self.workers[i].wait();
        Ok(())
    }

    /// Stops the coordinator (workers keep running and reconnect).
    pub fn kill_server(&mut self) -> Result<()> {
        self.server.kill().context("killing the server")?;
        let _ = self.server.wait();
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
