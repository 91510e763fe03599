//! The worker half of the coordinator: registration, liveness, and what
//! workers report on their `WorkerControl` stream.
//!
//! A worker is known from its `Register` message until it is lost: its
//! stream ends, it breaks the protocol, or it stays silent (no message of
//! any kind) for three heartbeat periods. A lost worker's running job
//! fails with a reason naming the rank and the worker, and the other ranks
//! get an Abort. A reconnecting worker registers anew and gets a new id.
//!
//! After an Abort (cancel, a failed or lost peer rank, or a reconnect that
//! names a job the coordinator no longer runs there) a worker is
//! *draining*: listed as busy with that job and given no assignment until
//! it sends `JobFinished` for the aborted job (ok or not), so a new job
//! never meets a worker still tearing down the old one.
//!
//! Device kinds: every worker can run "cpu" jobs, with its `memory_bytes`;
//! a worker with devices of kind "gpu" (or "cuda") can run "gpu" jobs, with
//! the memory of its largest such device. A memory of 0 means unknown and
//! is assumed to fit.

use std::time::{Duration, Instant};

use adjoint_proto::v1::coordinator_message::Kind as ToWorker;
use adjoint_proto::v1::worker_message::Kind as FromWorker;
use adjoint_proto::v1::{
    Abort, CoordinatorMessage, JobFinished, JobState, NcclId, Register, Registered, StepMetrics,
    WorkerInfo, WorkerMessage,
};
use tokio::sync::{MutexGuard, mpsc};

use crate::coordinator::{Coordinator, State, closed, now_ms};
use crate::db::Transition;
use crate::{Error, Result, names};

/// Lost workers kept for `ListWorkers`.
const LOST_KEPT: usize = 64;

/// Where the coordinator's messages to one worker go: the response stream
/// of its `Connect` call.
pub type WorkerSender = mpsc::UnboundedSender<Result<CoordinatorMessage, tonic::Status>>;

/// What a worker is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerStatus {
    Idle,
    Busy {
        job: String,
        rank: u32,
    },
    /// Aborted from `job`; idle once it reports `JobFinished` for it.
    Draining {
        job: String,
    },
    Lost,
}

/// A registered worker.
#[derive(Debug)]
pub struct Worker {
    pub id: String,
    pub register: Register,
    pub status: WorkerStatus,
    /// `None` once lost (which ends its response stream).
    pub tx: Option<WorkerSender>,
    pub last_seen: Instant,
    pub last_heartbeat_unix_ms: u64,
}

impl Worker {
    /// Sends `message` if the worker is still connected.
    pub fn send(&self, message: CoordinatorMessage) {
        if let Some(tx) = &self.tx {
            // A closed stream is noticed by the reader task.
            let _ = tx.send(Ok(message));
        }
    }

    /// The device kinds it can run, with the memory it has for each.
    pub fn devices(&self) -> Vec<(String, u64)> {
        let gpu_memory = self
            .register
            .devices
            .iter()
            .filter(|d| matches!(d.kind.as_str(), "gpu" | "cuda"))
            .map(|d| d.memory_bytes)
            .max();
        let mut kinds = vec![("cpu".to_owned(), self.register.memory_bytes)];
        kinds.extend(gpu_memory.map(|m| ("gpu".to_owned(), m)));
        kinds
    }

    fn info(&self) -> WorkerInfo {
        let (status, job_id) = match &self.status {
            WorkerStatus::Idle => ("idle", String::new()),
            WorkerStatus::Busy { job, .. } | WorkerStatus::Draining { job } => {
                ("busy", job.clone())
            }
            WorkerStatus::Lost => ("lost", String::new()),
        };
        WorkerInfo {
            id: self.id.clone(),
            name: self.register.name.clone(),
            cores: self.register.cores,
            memory_bytes: self.register.memory_bytes,
            devices: self.register.devices.clone(),
            status: status.into(),
            job_id,
            last_heartbeat_unix_ms: self.last_heartbeat_unix_ms,
            metrics_address: self.register.metrics_address.clone(),
        }
    }
}

/// Ranks of running job `job` past rank 0.
fn running_ranks(state: &State, job: &str) -> usize {
    state
        .running
        .get(job)
        .map_or(0, |r| r.ranks.len().saturating_sub(1))
}

fn abort(job_id: &str, reason: &str) -> CoordinatorMessage {
    CoordinatorMessage {
        kind: Some(ToWorker::Abort(Abort {
            job_id: job_id.to_owned(),
            reason: reason.to_owned(),
            traceparent: String::new(),
        })),
    }
}

impl Coordinator {
    /// Registers a worker whose messages go to `tx`: sends it `Registered`
    /// first, then whatever the scheduling pass assigns it. A worker that
    /// says it runs a job the coordinator no longer runs on it gets an
    /// Abort for that job.
    pub async fn register(&self, register: Register, tx: WorkerSender) -> Result<String> {
        let mut state = self.inner.state.lock().await;
        state.next_worker += 1;
        let id = format!("worker-{:06}", state.next_worker);
        let heartbeat_ms = self.config().heartbeat.as_millis() as u64;
        let _ = tx.send(Ok(CoordinatorMessage {
            kind: Some(ToWorker::Registered(Registered {
                worker_id: id.clone(),
                heartbeat_ms,
            })),
        }));
        let status = if register.running_job.is_empty() {
            WorkerStatus::Idle
        } else {
            let _ = tx.send(Ok(abort(
                &register.running_job,
                "the coordinator no longer runs this job on this worker",
            )));
            WorkerStatus::Draining {
                job: register.running_job.clone(),
            }
        };
        tracing::info!(
            worker = %id, name = %register.name, cores = register.cores,
            memory_bytes = register.memory_bytes, ring = %register.ring_address,
            "worker registered"
        );
        state.workers.push(Worker {
            id: id.clone(),
            register,
            status,
            tx: Some(tx),
            last_seen: Instant::now(),
            last_heartbeat_unix_ms: now_ms(),
        });
        self.schedule_pass(&mut state).await?;
        Ok(id)
    }

    /// Handles one message of worker `worker_id` (after its Register).
    /// Messages of a worker already lost are ignored; an error is a
    /// protocol violation, after which the caller drops the worker.
    pub async fn worker_message(&self, worker_id: &str, message: WorkerMessage) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        if self.is_closing() {
            return Ok(());
        }
        let Some(worker) = state.worker_mut(worker_id) else {
            return Ok(());
        };
        if worker.status == WorkerStatus::Lost {
            return Ok(());
        }
        worker.last_seen = Instant::now();
        let busy = match &worker.status {
            WorkerStatus::Busy { job, rank } => Some((job.clone(), *rank)),
            _ => None,
        };
        match message.kind {
            None => Ok(()),
            Some(FromWorker::Register(_)) => Err(Error::Protocol(format!(
                "worker {worker_id} sent Register twice"
            ))),
            Some(FromWorker::Heartbeat(beat)) => {
                worker.last_heartbeat_unix_ms = if beat.unix_ms > 0 {
                    beat.unix_ms
                } else {
                    now_ms()
                };
                Ok(())
            }
            Some(FromWorker::Metrics(metrics)) => {
                let Some((job, rank)) = busy else {
                    return Ok(());
                };
                self.metrics(&job, rank, metrics).await
            }
            Some(FromWorker::Log(line)) => {
                // Workers prefix their lines with their rank themselves.
                let Some((job, _)) = busy else {
                    tracing::info!(worker = %worker_id, "{line}");
                    return Ok(());
                };
                let event = self.inner.db.append_log(&job, line, now_ms()).await?;
                self.publish(&job, event);
                Ok(())
            }
            Some(FromWorker::NcclId(id)) => {
                self.nccl_id(&mut state, worker_id, busy, id);
                Ok(())
            }
            Some(FromWorker::Finished(finished)) => {
                let drained = matches!(
                    &worker.status,
                    WorkerStatus::Draining { job } if *job == finished.job_id
                );
                if drained {
                    worker.status = WorkerStatus::Idle;
                    return self.schedule_pass(&mut state).await;
                }
                self.finished(&mut state, worker_id, busy, finished).await
            }
        }
    }

    /// Rank 0 of a GPU job reports its NCCL unique id: forwarded to the
    /// job's other ranks, which wait for it before they create their
    /// communicator. Ids from other ranks, of a job the worker does not
    /// run, or not 128 bytes are ignored (the ranks then time out and the
    /// job fails naming rank 0).
    fn nccl_id(
        &self,
        state: &mut MutexGuard<'_, State>,
        worker_id: &str,
        busy: Option<(String, u32)>,
        id: NcclId,
    ) {
        let from_rank0 = busy.is_some_and(|(job, rank)| job == id.job_id && rank == 0);
        if !from_rank0 || id.id.len() != 128 {
            tracing::warn!(worker = %worker_id, job = %id.job_id, bytes = id.id.len(), "NCCL id ignored");
            return;
        }
        let Some(running) = state.running.get(&id.job_id) else {
            return;
        };
        let others: Vec<String> = running.ranks.iter().skip(1).cloned().collect();
        for other in others {
            if let Some(w) = state.worker_mut(&other) {
                w.send(CoordinatorMessage {
                    kind: Some(ToWorker::NcclId(id.clone())),
                });
            }
        }
        tracing::info!(job = %id.job_id, "NCCL id forwarded to {} rank(s)", running_ranks(state, &id.job_id));
    }

    /// Records a metrics event; rank 0's updates the job's step and loss.
    async fn metrics(&self, job: &str, rank: u32, mut metrics: StepMetrics) -> Result<()> {
        metrics.rank = rank;
        if rank == 0 {
            crate::metrics::record_step(&self.inner.metrics, job, &metrics);
        }
        let event = self
            .inner
            .db
            .record_metrics(job, metrics, rank == 0, now_ms())
            .await?;
        self.publish(job, event);
        Ok(())
    }

    /// A rank reports its end: a failure fails the job (Abort to the
    /// others); when every rank succeeded the job SUCCEEDED with the union
    /// of their artifacts. Other reports (for a job the worker does not
    /// run) are ignored.
    async fn finished(
        &self,
        state: &mut MutexGuard<'_, State>,
        worker_id: &str,
        busy: Option<(String, u32)>,
        finished: JobFinished,
    ) -> Result<()> {
        let Some((job, rank)) = busy.filter(|(job, _)| *job == finished.job_id) else {
            tracing::debug!(worker = %worker_id, job = %finished.job_id, "late JobFinished ignored");
            return Ok(());
        };
        if finished.rank != rank {
            return Err(Error::Protocol(format!(
                "worker {worker_id} runs rank {rank} of {job}, but reported rank {}",
                finished.rank
            )));
        }
        // This rank is done either way: its worker is idle again.
        let name = match state.worker_mut(worker_id) {
            Some(worker) => {
                worker.status = WorkerStatus::Idle;
                worker.register.name.clone()
            }
            None => String::new(),
        };
        let Some(running) = state.running.get_mut(&job) else {
            return self.schedule_pass(state).await;
        };
        running.finished[rank as usize] = true;
        if !finished.ok {
            let reason = format!(
                "rank {rank} (worker {worker_id} '{name}') failed: {}",
                finished.error
            );
            if finished.retryable {
                self.restart_or_fail(state, &job, reason).await?;
            } else {
                self.end_running(state, &job, Transition::to(JobState::Failed, reason))
                    .await?;
            }
            return self.schedule_pass(state).await;
        }
        for name in finished.artifacts {
            match names::check_name("artifact name", &name) {
                Ok(()) => {
                    running.artifacts.insert(name);
                }
                Err(e) => tracing::warn!(job = %job, rank, "artifact ignored: {e}"),
            }
        }
        if running.finished.iter().all(|&done| done) {
            let artifacts = running.artifacts.iter().cloned().collect();
            let mut change = Transition::to(JobState::Succeeded, "");
            change.artifacts = Some(artifacts);
            self.end_running(state, &job, change).await?;
        }
        self.schedule_pass(state).await
    }

    /// Declares worker `worker_id` lost (its stream ended, it broke the
    /// protocol or went silent): its job fails naming the rank and the
    /// worker, the other ranks get an Abort, and its stream is closed.
    /// While the coordinator shuts down nothing is lost: its running jobs
    /// stay RUNNING and are requeued when it starts again.
    pub async fn worker_lost(&self, worker_id: &str, why: &str) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        if self.is_closing() {
            return Ok(());
        }
        let Some(worker) = state.worker_mut(worker_id) else {
            return Ok(());
        };
        if worker.status == WorkerStatus::Lost {
            return Ok(());
        }
        let previous = std::mem::replace(&mut worker.status, WorkerStatus::Lost);
        worker.tx = None;
        let name = worker.register.name.clone();
        tracing::warn!(worker = %worker_id, name = %name, why, "worker lost");
        if let WorkerStatus::Busy { job, rank } = previous {
            let reason = format!("rank {rank} (worker {worker_id} '{name}') lost: {why}");
            self.restart_or_fail(&mut state, &job, reason).await?;
        }
        let lost: Vec<usize> = (0..state.workers.len())
            .filter(|&i| state.workers[i].status == WorkerStatus::Lost)
            .collect();
        if lost.len() > LOST_KEPT {
            let oldest = lost[0];
            state.workers.remove(oldest);
        }
        self.schedule_pass(&mut state).await
    }

    /// Every worker, in registration order.
    pub async fn list_workers(&self) -> Vec<WorkerInfo> {
        let state = self.inner.state.lock().await;
        state.workers.iter().map(Worker::info).collect()
    }

    /// Declares lost every worker silent for three heartbeat periods;
    /// runs until the coordinator closes.
    pub async fn run_liveness(&self) {
        let period = self.config().heartbeat.max(Duration::from_millis(10));
        let limit = period * 3;
        let mut closing = self.inner.closing.subscribe();
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = closed(&mut closing) => return,
                _ = tick.tick() => {}
            }
            let silent: Vec<String> = {
                let state = self.inner.state.lock().await;
                state
                    .workers
                    .iter()
                    .filter(|w| w.status != WorkerStatus::Lost && w.last_seen.elapsed() > limit)
                    .map(|w| w.id.clone())
                    .collect()
            };
            for id in silent {
                let why = format!("no heartbeat for {} ms", limit.as_millis());
                if let Err(e) = self.worker_lost(&id, &why).await {
                    tracing::error!(worker = %id, error = %e, "could not drop a silent worker");
                }
            }
        }
    }
}
