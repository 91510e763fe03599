//! The coordinator's state machine: jobs from submit to their end.
//!
//! [`Coordinator`] owns the job database ([`JobDb`]), the blob store
//! ([`BlobStore`]) and the in-memory `State`: the FIFO queue, the running
//! jobs and the workers (`crate::workers` holds the worker half). Every
//! change happens under the one state lock, in this order: write the job
//! row and its event in one database transaction, publish the event to
//! watchers, then tell the workers. So the database is always the truth for
//! jobs and events, and an event is never seen live before it can be
//! replayed.
//!
//! Job states: QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED, or QUEUED
//! → CANCELLED. After every change that frees workers or adds a job, a
//! scheduling pass ([`crate::scheduler::schedule`]) starts what can start
//! and refreshes the reasons of the jobs that wait.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adjoint_proto::v1::{
    Abort, Assignment, CoordinatorMessage, Estimate, Job, JobEvent, JobSpec, JobState,
    UploadBlobResponse, job_event, job_spec,
};
use tokio::sync::{Mutex, MutexGuard, broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::auth::Caller;
use crate::blobs::BlobStore;
use crate::db::{JobDb, Transition};
use crate::error::state_name;
use crate::workers::{Worker, WorkerStatus};
use crate::{Error, Result, names, plan, scheduler};

/// How the coordinator is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `jobs.sqlite` and, by default, the blob store.
    pub data_dir: std::path::PathBuf,
    /// Root of the blob store: a folder, or `s3://bucket/prefix` (feature
    /// `s3`); `None`: `data_dir/store`.
    pub store: Option<String>,
    /// How often workers send heartbeats; a worker silent for three
    /// periods is lost.
    pub heartbeat: Duration,
    /// Where `/metrics` (Prometheus) is served; `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Who may call: open, or bearer tokens ([`crate::auth`]).
    pub auth: crate::auth::Auth,
    /// TLS on the gRPC port; `None`: plain HTTP/2.
    pub tls: Option<crate::tls::TlsIdentity>,
}

impl Config {
    /// Defaults for `data_dir`: store under it, heartbeat every second.
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            store: None,
            heartbeat: Duration::from_secs(1),
            metrics_listen: None,
            auth: crate::auth::Auth::open(),
            tls: None,
        }
    }

    /// The blob store location in effect.
    pub fn store_location(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| self.data_dir.join("store").to_string_lossy().into_owned())
    }
}

/// Restarts a job gets after lost workers when its spec does not say.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;

/// The artifact a job submitted with an `onnx_blob` gets a copy of it as.
pub const ONNX_ARTIFACT: &str = "model.onnx";

/// A queued job with what scheduling needs.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub id: String,
    pub spec: JobSpec,
    pub estimate: Estimate,
    pub reason: String,
    /// W3C trace context of the submit span: the job's trace (empty when
    /// not traced, or recovered after a restart).
    pub traceparent: String,
    /// Times the job was restarted after a lost worker or peer.
    pub restarts: u32,
    /// Set on a restart: the ranks resume from this job's newest
    /// checkpoint.
    pub resume_job: String,
}

/// A running job: its workers in rank order and what they reported.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    /// The job's trace context (of its schedule span).
    pub traceparent: String,
    /// Restarts so far.
    pub restarts: u32,
    pub ranks: Vec<String>,
    pub finished: Vec<bool>,
    pub artifacts: BTreeSet<String>,
}

/// Everything the coordinator holds in memory; guarded by one lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Registration order; lost workers stay (status "lost") for
    /// `ListWorkers`, the oldest pruned past a bound.
    pub workers: Vec<Worker>,
    pub next_worker: u64,
    /// Oldest first.
    pub queue: Vec<Queued>,
    pub running: BTreeMap<String, Running>,
}

impl State {
    pub fn worker_mut(&mut self, id: &str) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.id == id)
    }
}

pub(crate) struct Inner {
    pub config: Config,
    pub db: JobDb,
    pub blobs: BlobStore,
    pub state: Mutex<State>,
    /// Every job event, tagged with its job id, after it is committed.
    pub events: broadcast::Sender<(String, JobEvent)>,
    /// Set once when the server shuts down.
    pub closing: watch::Sender<bool>,
    /// What `/metrics` serves.
    pub metrics: adjoint_telemetry::metrics::Registry,
}

/// The coordinator; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a job in `state` has ended.
pub fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Resolves once the coordinator is closing.
pub(crate) async fn closed(closing: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: closing too.
    let _ = closing.wait_for(|c| *c).await;
}

/// Whether `event` is a job's last: a change to a terminal state.
fn ends_job(event: &JobEvent) -> bool {
    match &event.kind {
        Some(job_event::Kind::State(change)) => {
            is_terminal(JobState::try_from(change.state).unwrap_or_default())
        }
        _ => false,
    }
}

impl Coordinator {
    /// Opens the database and the blob store of `config`, and requeues the
    /// jobs a previous run left RUNNING.
    pub async fn open(config: Config) -> Result<Coordinator> {
        std::fs::create_dir_all(&config.data_dir)?;
        let db = JobDb::open(&config.data_dir.join("jobs.sqlite")).await?;
        let blobs = BlobStore::open(&config.store_location())?;
        let queue = db
            .recover(now_ms())
            .await?
            .into_iter()
            .map(|job| Queued {
                // A job that was running when the coordinator stopped goes
                // on from its newest checkpoint.
                resume_job: job.id.clone(),
                spec: job.spec.unwrap_or_default(),
                estimate: job.estimate.unwrap_or_default(),
                id: job.id,
                reason: job.reason,
                traceparent: String::new(),
                restarts: 0,
            })
            .collect();
        let state = State {
            queue,
            ..State::default()
        };
        Ok(Coordinator {
            inner: Arc::new(Inner {
                config,
                db,
                blobs,
                state: Mutex::new(state),
                events: broadcast::channel(1024).0,
                closing: watch::channel(false).0,
                metrics: {
                    let r = adjoint_telemetry::metrics::Registry::new();
                    crate::metrics::declare(&r);
                    r
                },
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The metrics registry (a shared handle).
    pub fn metrics_registry(&self) -> adjoint_telemetry::metrics::Registry {
        self.inner.metrics.clone()
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// Validates and plans `spec` without queueing it.
    pub async fn estimate(&self, spec: JobSpec) -> Result<Estimate> {
        self.estimate_as(spec, &Caller::Open).await
    }

    /// [`Coordinator::estimate`] for `caller`, who may use only blobs they
    /// uploaded.
    pub async fn estimate_as(&self, spec: JobSpec, caller: &Caller) -> Result<Estimate> {
        let (spec, estimate) = self.validate(spec, caller).await?;
        let state = self.inner.state.lock().await;
        check_fits(&state, &spec, &estimate)?;
        Ok(estimate)
    }

    /// Validates, plans and queues `spec`; returns the job as stored after
    /// the scheduling pass (so RUNNING if it started at once).
    pub async fn submit(&self, spec: JobSpec) -> Result<Job> {
        self.submit_as(spec, &Caller::Open).await
    }

    /// [`Coordinator::submit`] for `caller`: the job is theirs, and may use
    /// only blobs they uploaded and resume only jobs they may see.
    pub async fn submit_as(&self, spec: JobSpec, caller: &Caller) -> Result<Job> {
        let span = tracing::info_span!("submit", job = tracing::field::Empty);
        self.submit_traced(spec, caller, span.clone())
            .instrument(span)
            .await
    }

    async fn submit_traced(
        &self,
        spec: JobSpec,
        caller: &Caller,
        span: tracing::Span,
    ) -> Result<Job> {
        let (spec, estimate) = self
            .validate(spec, caller)
            .instrument(tracing::info_span!("validate"))
            .await?;
        let mut state = self.inner.state.lock().await;
        check_fits(&state, &spec, &estimate)?;
        let (job, event) = self
            .inner
            .db
            .insert_job(&spec, &estimate, caller.owner_name(), "queued", now_ms())
            .await?;
        span.record("job", job.id.as_str());
        if !spec.onnx_blob.is_empty() {
            // The original ONNX model, for exporting the trained weights
            // into it (`adjoint pull --onnx`).
            if let Err(e) = self
                .inner
                .blobs
                .copy_to_artifact(&spec.onnx_blob, &job.id, ONNX_ARTIFACT)
                .await
            {
                tracing::warn!(job = %job.id, "cannot copy the ONNX model to the job's artifacts: {e}");
            }
        }
        tracing::info!(job = %job.id, name = %spec.name, workers = spec.workers, "job submitted");
        self.publish(&job.id, event);
        state.queue.push(Queued {
            id: job.id.clone(),
            spec,
            estimate,
            reason: job.reason,
            traceparent: adjoint_telemetry::propagate::traceparent_of(&span),
            restarts: 0,
            resume_job: String::new(),
        });
        self.schedule_pass(&mut state).await?;
        drop(state);
        self.get(&job.id).await
    }

    /// Normalizes `spec`, reads its blobs and plans it (the planning on the
    /// blocking pool).
    async fn validate(&self, spec: JobSpec, caller: &Caller) -> Result<(JobSpec, Estimate)> {
        let spec = plan::normalize(spec)?;
        self.check_access(&spec, caller).await?;
        let blobs = &self.inner.blobs;
        let graph_bytes = match &spec.model {
            Some(job_spec::Model::GraphBlob(id)) => Some(blobs.read_blob(id).await?),
            _ => None,
        };
        let dataset = blobs
            .safetensors_header("dataset_blob", &spec.dataset_blob)
            .await?;
        let eval = match spec.eval_blob.as_str() {
            "" => None,
            id => Some(blobs.safetensors_header("eval_blob", id).await?),
        };
        if !spec.init_blob.is_empty() {
            blobs.blob_size(&spec.init_blob).await?;
        }
        if !spec.onnx_blob.is_empty() {
            blobs.blob_size(&spec.onnx_blob).await?;
        }
        if !spec.resume_from_job.is_empty() {
            self.job_for(caller, &spec.resume_from_job).await?;
        }
        // The scheduler gangs only workers with room for the estimate, so
        // `auto` checkpointing plans for the gang of the N largest workers
        // of the job's kind: for the N-th largest.
        let worker_memory = {
            let state = self.inner.state.lock().await;
            memories(&state, &spec.device).map(|mut m| {
                m.sort_unstable_by(|a, b| b.cmp(a));
                m[(spec.workers.max(1) as usize - 1).min(m.len() - 1)]
            })
        };
        let mut spec = spec;
        let plan_span = tracing::info_span!("plan");
        tokio::task::spawn_blocking(move || {
            let _plan = plan_span.enter();
            let graph = plan::decode_graph(&spec, graph_bytes.as_deref())?;
            plan::check_graph(&graph, &spec)?;
            let batch = spec.batch_size;
            let tensors = plan::tensors_of(&dataset);
            let step = plan::samples_per_step(&spec);
            let data = &spec.dataset_blob;
            plan::check_dataset(&graph, "dataset_blob", data, &tensors, batch, step)?;
            if let Some(eval) = &eval {
                let tensors = plan::tensors_of(eval);
                plan::check_dataset(&graph, "eval_blob", &spec.eval_blob, &tensors, batch, 1)?;
            }
            let estimate = plan::estimate(&graph, &mut spec, worker_memory)?;
            Ok((spec, estimate))
        })
        .await
        .map_err(|e| Error::Internal(format!("planning task: {e}")))?
    }

    /// The job with this id.
    pub async fn get(&self, id: &str) -> Result<Job> {
        names::check_job_id(id)?;
        self.inner
            .db
            .get(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_owned()))
    }

    /// The job with this id if `caller` may see it; otherwise the same
    /// not-found error as for a job that does not exist.
    pub async fn job_for(&self, caller: &Caller, id: &str) -> Result<Job> {
        match self.get(id).await {
            Ok(job) if caller.may_see(&job.owner) => Ok(job),
            Ok(_) => Err(Error::JobNotFound(id.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// Jobs in any of `states` (every job if empty), oldest first.
    pub async fn list(&self, states: Vec<JobState>) -> Result<Vec<Job>> {
        self.inner.db.list(states).await
    }

    /// [`Coordinator::list`], only the jobs `caller` may see.
    pub async fn list_as(&self, states: Vec<JobState>, caller: &Caller) -> Result<Vec<Job>> {
        let mut jobs = self.inner.db.list(states).await?;
        jobs.retain(|job| caller.may_see(&job.owner));
        Ok(jobs)
    }

    /// Stores an upload of `caller`'s and records it as theirs.
    pub async fn upload_as<S>(&self, chunks: S, caller: &Caller) -> Result<UploadBlobResponse>
    where
        S: futures::Stream<Item = Result<adjoint_proto::v1::BlobChunk, tonic::Status>> + Unpin,
    {
        let uploaded = self.inner.blobs.upload(chunks).await?;
        if let Caller::User { name, .. } = caller {
            self.inner.db.record_upload(&uploaded.blob_id, name).await?;
        }
        Ok(uploaded)
    }

    /// Checks that every blob `spec` names was uploaded by `caller` (any
    /// blob, with authentication off or for an admin).
    async fn check_access(&self, spec: &JobSpec, caller: &Caller) -> Result<()> {
        if caller.sees_everything() {
            return Ok(());
        }
        let owner = caller.owner_name();
        let graph_blob = match &spec.model {
            Some(job_spec::Model::GraphBlob(id)) => id.as_str(),
            _ => "",
        };
        let fields = [
            ("graph_blob", graph_blob),
            ("dataset_blob", spec.dataset_blob.as_str()),
            ("eval_blob", spec.eval_blob.as_str()),
            ("init_blob", spec.init_blob.as_str()),
            ("onnx_blob", spec.onnx_blob.as_str()),
        ];
        for (field, blob) in fields {
            if !blob.is_empty() && !self.inner.db.uploaded_by(blob, owner).await? {
                return Err(Error::NotYourBlob {
                    field,
                    blob: blob.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Cancels a queued or running job (a running job's workers get an
    /// Abort); FAILED_PRECONDITION for a job that has ended.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let job = self.get(id).await?;
        let mut state = self.inner.state.lock().await;
        let reason = "cancelled by user";
        if let Some(at) = state.queue.iter().position(|q| q.id == id) {
            state.queue.remove(at);
            self.transition(id, Transition::to(JobState::Cancelled, reason))
                .await?;
        } else if state.running.contains_key(id) {
            self.end_running(&mut state, id, Transition::to(JobState::Cancelled, reason))
                .await?;
        } else {
            let current = self.get(id).await.unwrap_or(job);
            return Err(Error::JobEnded {
                id: id.to_owned(),
                state: current.state(),
            });
        }
        tracing::info!(job = %id, "job cancelled");
        self.schedule_pass(&mut state).await?;
        drop(state);
        self.get(id).await
    }

    /// The events of job `id` after `after_seq`: first those stored, then
    /// live ones, ending after the terminal state change.
    pub async fn watch(
        &self,
        id: &str,
        after_seq: u64,
        history_only: bool,
    ) -> Result<ReceiverStream<Result<JobEvent>>> {
        names::check_job_id(id)?;
        let db = self.inner.db.clone();
        // Under the state lock no event is being written: everything before
        // is in the replay, everything after arrives on the subscription.
        let (mut live, replay, job) = {
            let _state = self.inner.state.lock().await;
            let live = self.inner.events.subscribe();
            let job = db
                .get(id)
                .await?
                .ok_or_else(|| Error::JobNotFound(id.to_owned()))?;
            (live, db.events_after(id, after_seq).await?, job)
        };
        let (tx, rx) = mpsc::channel(64);
        let mut closing = self.inner.closing.subscribe();
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut last = after_seq;
            let mut ended = history_only || is_terminal(job.state());
            let mut pending = replay;
            loop {
                for event in pending.drain(..) {
                    if event.seq <= last {
                        continue;
                    }
                    last = event.seq;
                    let end = ends_job(&event);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                    ended |= end;
                }
                if ended {
                    return;
                }
                tokio::select! {
                    () = closed(&mut closing) => return,
                    got = live.recv() => match got {
                        Ok((job_id, event)) if job_id == id => pending.push(event),
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            match db.events_after(&id, last).await {
                                Ok(events) => pending = events,
                                Err(e) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Stops everything long-lived: watch streams end, worker streams are
    /// closed, the liveness task stops.
    pub async fn close(&self) {
        self.inner.closing.send_replace(true);
        let mut state = self.inner.state.lock().await;
        for worker in &mut state.workers {
            worker.tx = None;
        }
    }

    /// A receiver that turns `true` when the coordinator closes.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Whether the coordinator is closing (shutting down).
    pub(crate) fn is_closing(&self) -> bool {
        *self.inner.closing.borrow()
    }

    /// Sends `event` of job `id` to the watchers.
    pub(crate) fn publish(&self, id: &str, event: JobEvent) {
        // No receiver is fine: nobody watches.
        let _ = self.inner.events.send((id.to_owned(), event));
    }

    /// Writes a state change of job `id` and publishes its event.
    pub(crate) async fn transition(&self, id: &str, change: Transition) -> Result<()> {
        tracing::info!(job = %id, state = state_name(change.state), reason = %change.reason, "job state");
        let event = self.inner.db.transition(id, change, now_ms()).await?;
        self.publish(id, event);
        Ok(())
    }

    /// Ends running job `id` with `change`: the ranks that have not
    /// finished get an Abort (with the change's reason) and drain until
    /// they report `JobFinished` (see `crate::workers`).
    pub(crate) async fn end_running(
        &self,
        state: &mut MutexGuard<'_, State>,
        id: &str,
        change: Transition,
    ) -> Result<()> {
        let Some(running) = state.running.remove(id) else {
            return Ok(());
        };
        let reason = change.reason.clone();
        self.transition(id, change).await?;
        for (rank, worker_id) in running.ranks.iter().enumerate() {
            let Some(worker) = state.worker_mut(worker_id) else {
                continue;
            };
            let runs_it = matches!(&worker.status, WorkerStatus::Busy { job, .. } if job == id);
            if runs_it && !running.finished[rank] {
                worker.send(CoordinatorMessage {
                    kind: Some(adjoint_proto::v1::coordinator_message::Kind::Abort(Abort {
                        job_id: id.to_owned(),
                        reason: reason.clone(),
                        traceparent: running.traceparent.clone(),
                    })),
                });
                worker.status = WorkerStatus::Draining { job: id.to_owned() };
            }
        }
        Ok(())
    }

    /// A running job's rank was lost, or failed because another was: the
    /// job goes back to the front of the queue, to resume from its newest
    /// checkpoint on whichever workers are free (the other ranks are
    /// aborted), unless it has been restarted `max_restarts` times
    /// (default 3), in which case it fails. The job's events keep every
    /// restart's reason.
    pub(crate) async fn restart_or_fail(
        &self,
        state: &mut MutexGuard<'_, State>,
        id: &str,
        reason: String,
    ) -> Result<()> {
        let Some(running) = state.running.get(id) else {
            return Ok(());
        };
        let (restarts, traceparent) = (running.restarts, running.traceparent.clone());
        let Some(job) = self.inner.db.get(id).await? else {
            return Err(Error::JobNotFound(id.to_owned()));
        };
        let spec = job.spec.unwrap_or_default();
        let max = spec.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS);
        if restarts >= max {
            let why = format!("{reason}; not restarted again after {restarts} restart(s)");
            return self
                .end_running(state, id, Transition::to(JobState::Failed, why))
                .await;
        }
        let why = format!(
            "{reason}; restart {} of {max}, from the newest checkpoint",
            restarts + 1
        );
        tracing::warn!(job = %id, "{why}");
        self.end_running(state, id, Transition::to(JobState::Queued, why.clone()))
            .await?;
        state.queue.insert(
            0,
            Queued {
                id: id.to_owned(),
                spec,
                estimate: job.estimate.unwrap_or_default(),
                reason: why,
                traceparent,
                restarts: restarts + 1,
                resume_job: id.to_owned(),
            },
        );
        Ok(())
    }

    /// Starts what can start and refreshes the reasons of waiting jobs.
    pub(crate) async fn schedule_pass(&self, state: &mut MutexGuard<'_, State>) -> Result<()> {
        let queue: Vec<scheduler::QueuedJob> = state
            .queue
            .iter()
            .map(|q| scheduler::QueuedJob {
                id: q.id.clone(),
                workers: q.spec.workers as usize,
                device: q.spec.device.clone(),
                bytes: q.estimate.total_bytes,
            })
            .collect();
        let slots: Vec<scheduler::WorkerSlot> = state
            .workers
            .iter()
            .filter(|w| w.status != WorkerStatus::Lost)
            .map(|w| scheduler::WorkerSlot {
                id: w.id.clone(),
                idle: w.status == WorkerStatus::Idle,
                devices: w.devices(),
            })
            .collect();
        let decision = scheduler::schedule(&queue, &slots);
        for start in decision.starts {
            self.start(state, start).await?;
        }
        for (id, reason) in decision.waiting {
            let Some(queued) = state.queue.iter_mut().find(|q| q.id == id) else {
                continue;
            };
            if queued.reason != reason {
                queued.reason = reason.clone();
                self.transition(&id, Transition::to(JobState::Queued, reason))
                    .await?;
            }
        }
        Ok(())
    }

    /// Moves a queued job to its gang: RUNNING, then one Assignment per
    /// rank.
    async fn start(
        &self,
        state: &mut MutexGuard<'_, State>,
        start: scheduler::Start,
    ) -> Result<()> {
        let Some(at) = state.queue.iter().position(|q| q.id == start.job) else {
            return Ok(());
        };
        let queued = state.queue.remove(at);
        // Ends (and is exported) when this function returns; the workers'
        // job spans are its children.
        let schedule = tracing::info_span!(
            "schedule",
            job = %queued.id,
            workers = start.workers.len()
        );
        adjoint_telemetry::propagate::set_remote_parent(&schedule, &queued.traceparent);
        let traceparent = adjoint_telemetry::propagate::traceparent_of(&schedule);
        let peers: Vec<String> = start
            .workers
            .iter()
            .map(|w| {
                state
                    .workers
                    .iter()
                    .find(|x| x.id == *w)
                    .map_or_else(String::new, |x| x.register.ring_address.clone())
            })
            .collect();
        let mut change = Transition::to(JobState::Running, "");
        change.workers = Some(start.workers.clone());
        self.transition(&queued.id, change).await?;
        let world = start.workers.len() as u32;
        for (rank, worker_id) in start.workers.iter().enumerate() {
            let Some(worker) = state.worker_mut(worker_id) else {
                continue;
            };
            worker.status = WorkerStatus::Busy {
                job: queued.id.clone(),
                rank: rank as u32,
            };
            worker.send(CoordinatorMessage {
                kind: Some(adjoint_proto::v1::coordinator_message::Kind::Assignment(
                    Assignment {
                        job_id: queued.id.clone(),
                        rank: rank as u32,
                        world,
                        spec: Some(queued.spec.clone()),
                        plan_hash: queued.estimate.plan_hash.clone(),
                        peers: peers.clone(),
                        traceparent: traceparent.clone(),
                        resume_job: queued.resume_job.clone(),
                    },
                )),
            });
        }
        tracing::info!(job = %queued.id, workers = ?start.workers, "job started");
        state.running.insert(
            queued.id,
            Running {
                traceparent,
                restarts: queued.restarts,
                finished: vec![false; start.workers.len()],
                ranks: start.workers,
                artifacts: if queued.spec.onnx_blob.is_empty() {
                    BTreeSet::new()
                } else {
                    BTreeSet::from([ONNX_ARTIFACT.to_owned()])
                },
            },
        );
        Ok(())
    }
}

/// The memory of every live worker of `device`'s kind, when there is one
/// and every such worker reports its memory.
fn memories(state: &State, device: &str) -> Option<Vec<u64>> {
    let memories: Vec<u64> = state
        .workers
        .iter()
        .filter(|w| w.status != WorkerStatus::Lost)
        .flat_map(|w| w.devices())
        .filter(|(kind, _)| *kind == device)
        .map(|(_, memory)| memory)
        .collect();
    let all_known = memories.iter().all(|&m| m > 0);
    (all_known && !memories.is_empty()).then_some(memories)
}

/// Rejects a job whose estimate exceeds the memory of every live worker
/// that could run it (when all of them report their memory). With no such
/// worker registered the job may wait for one.
fn check_fits(state: &State, spec: &JobSpec, estimate: &Estimate) -> Result<()> {
    let Some(largest) = memories(state, &spec.device).and_then(|m| m.into_iter().max()) else {
        return Ok(());
    };
    if largest < estimate.total_bytes {
        return Err(Error::TooBig {
            needed: estimate.total_bytes,
            largest,
            device: spec.device.clone(),
            breakdown: plan::breakdown(estimate),
        });
    }
    Ok(())
}
