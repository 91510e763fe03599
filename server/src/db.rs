//! The job database: one SQLite file (`DIR/jobs.sqlite`, WAL mode) that
//! survives restarts.
//!
//! Tables:
//!
//! - `jobs`: one row per job: `seq` (the autoincrement key that orders the
//!   queue and makes the id `job-000042`), `id`, `state` (the `JobState`
//!   number), `reason`, `spec` and `estimate` (protobuf bytes),
//!   `created_ms`/`updated_ms`, `step`, `last_loss`, `workers` and
//!   `artifacts` (newline-separated; neither ids nor names hold newlines),
//!   `owner` (the submitting user; empty when authentication is off);
//! - `blob_uploads`: `(blob_id, owner)` for every user who uploaded a blob,
//!   so a job may use only blobs its owner uploaded;
//! - `events`: `(job_id, seq)` → `unix_ms` and the `JobEvent` as protobuf,
//!   numbered from 1 per job, so `WatchJob` can replay after a restart.
//!
//! Every change of a job and the event announcing it are written in one
//! transaction. rusqlite is synchronous: each call runs on tokio's blocking
//! pool ([`tokio::task::spawn_blocking`]) with the one connection behind a
//! mutex.

use std::path::Path;
use std::sync::{Arc, Mutex};

use adjoint_proto::v1::{Estimate, Job, JobEvent, JobSpec, JobState, JobStateChange, job_event};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::{Error, Result, names};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE,
    state INTEGER NOT NULL,
    reason TEXT NOT NULL,
    spec BLOB NOT NULL,
    estimate BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    last_loss REAL NOT NULL DEFAULT 0,
    workers TEXT NOT NULL DEFAULT '',
    artifacts TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS blob_uploads (
    blob_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (blob_id, owner)
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    unix_ms INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
);
";

const JOB_COLUMNS: &str = "id, state, reason, spec, estimate, created_ms, updated_ms, step, \
                           last_loss, workers, artifacts, owner";

/// Columns added after the first release, added to older files on open.
const ADDED_COLUMNS: &[(&str, &str)] = &[("owner", "TEXT NOT NULL DEFAULT ''")];

/// A change of a job's state, written with its `JobStateChange` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: JobState,
    pub reason: String,
    /// New worker list (rank order), if it changes.
    pub workers: Option<Vec<String>>,
    /// New artifact list, if it changes.
    pub artifacts: Option<Vec<String>>,
}

impl Transition {
    /// A change of state and reason only.
    pub fn to(state: JobState, reason: impl Into<String>) -> Transition {
        Transition {
            state,
            reason: reason.into(),
            workers: None,
            artifacts: None,
        }
    }
}

/// The job database; cheap to clone.
#[derive(Debug, Clone)]
pub struct JobDb {
    conn: Arc<Mutex<Connection>>,
}

impl JobDb {
    /// Opens (creating if needed) the database at `path`.
    pub async fn open(path: &Path) -> Result<JobDb> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            tracing::debug!(journal_mode = %mode, "job database opened");
            conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
            conn.execute_batch(SCHEMA)?;
            add_missing_columns(&conn)?;
            Ok(conn)
        })
        .await
        .map_err(|e| Error::Internal(format!("database task: {e}")))??;
        Ok(JobDb {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| Error::Internal("job database mutex poisoned".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::Internal(format!("database task: {e}")))?
    }

    /// Inserts a new QUEUED job and its first event; returns the job as
    /// stored and the event.
    pub async fn insert_job(
        &self,
        spec: &JobSpec,
        estimate: &Estimate,
        owner: &str,
        reason: &str,
        now: u64,
    ) -> Result<(Job, JobEvent)> {
        let spec_bytes = spec.encode_to_vec();
        let estimate_bytes = estimate.encode_to_vec();
        let reason = reason.to_owned();
        let owner = owner.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO jobs (state, reason, spec, estimate, created_ms, updated_ms, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
                params![
                    JobState::Queued as i32,
                    reason,
                    spec_bytes,
                    estimate_bytes,
                    now as i64,
                    owner
                ],
            )?;
            let seq = tx.last_insert_rowid();
            let id = names::job_id(seq);
            tx.execute("UPDATE jobs SET id = ?1 WHERE seq = ?2", params![id, seq])?;
            let change = JobStateChange {
                state: JobState::Queued as i32,
                reason,
            };
            let event = append_event(&tx, &id, now, job_event::Kind::State(change))?;
            let job = get_job(&tx, &id)?.ok_or_else(|| Error::JobNotFound(id.clone()))?;
            tx.commit()?;
            Ok((job, event))
        })
        .await
    }

    /// Applies `change` to job `id` and appends its event.
    pub async fn transition(&self, id: &str, change: Transition, now: u64) -> Result<JobEvent> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let updated = tx.execute(
                "UPDATE jobs SET state = ?1, reason = ?2, updated_ms = ?3,
                     workers = COALESCE(?4, workers), artifacts = COALESCE(?5, artifacts)
                 WHERE id = ?6",
                params![
                    change.state as i32,
                    change.reason,
                    now as i64,
                    change.workers.map(|w| w.join("\n")),
                    change.artifacts.map(|a| a.join("\n")),
                    id
                ],
            )?;
            if updated == 0 {
                return Err(Error::JobNotFound(id));
            }
            let state = JobStateChange {
                state: change.state as i32,
                reason: change.reason,
            };
            let event = append_event(&tx, &id, now, job_event::Kind::State(state))?;
            tx.commit()?;
            Ok(event)
        })
        .await
    }

    /// Appends a metrics event; with `progress`, the job's `step` and
    /// `last_loss` follow it.
    pub async fn record_metrics(
        &self,
        id: &str,
        metrics: adjoint_proto::v1::StepMetrics,
        progress: bool,
        now: u64,
    ) -> Result<JobEvent> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            if progress {
                tx.execute(
                    "UPDATE jobs SET step = ?1, last_loss = ?2, updated_ms = ?3 WHERE id = ?4",
                    params![metrics.step as i64, metrics.loss, now as i64, id],
                )?;
            }
            let event = append_event(&tx, &id, now, job_event::Kind::Metrics(metrics))?;
            tx.commit()?;
            Ok(event)
        })
        .await
    }

    /// Appends a log line event.
    pub async fn append_log(&self, id: &str, line: String, now: u64) -> Result<JobEvent> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let event = append_event(&tx, &id, now, job_event::Kind::Log(line))?;
            tx.commit()?;
            Ok(event)
        })
        .await
    }

    /// Records that `owner` uploaded blob `blob_id`.
    pub async fn record_upload(&self, blob_id: &str, owner: &str) -> Result<()> {
        let (blob_id, owner) = (blob_id.to_owned(), owner.to_owned());
        self.call(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO blob_uploads (blob_id, owner) VALUES (?1, ?2)",
                params![blob_id, owner],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether `owner` uploaded blob `blob_id`.
    pub async fn uploaded_by(&self, blob_id: &str, owner: &str) -> Result<bool> {
        let (blob_id, owner) = (blob_id.to_owned(), owner.to_owned());
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT 1 FROM blob_uploads WHERE blob_id = ?1 AND owner = ?2",
                    params![blob_id, owner],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })
        .await
    }

    /// The job with this id, if any.
    pub async fn get(&self, id: &str) -> Result<Option<Job>> {
        let id = id.to_owned();
        self.call(move |conn| get_job(conn, &id)).await
    }

    /// Jobs in any of `states` (all if empty), oldest first.
    pub async fn list(&self, states: Vec<JobState>) -> Result<Vec<Job>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY seq"))?;
            let rows = stmt.query_map([], job_from_row)?;
            let mut jobs = Vec::new();
            for job in rows {
                let job = job??;
                if states.is_empty() || states.contains(&job.state()) {
                    jobs.push(job);
                }
            }
            Ok(jobs)
        })
        .await
    }

    /// How many jobs are in each state (states with none left out).
    pub async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (state, n) = row?;
                let state = JobState::try_from(state).unwrap_or(JobState::Unspecified);
                out.push((state, n.max(0) as u64));
            }
            Ok(out)
        })
        .await
    }

    /// Events of job `id` with `seq > after`, in order.
    pub async fn events_after(&self, id: &str, after: u64) -> Result<Vec<JobEvent>> {
        let id = id.to_owned();
        self.call(move |conn| {
            let mut stmt = conn
                .prepare("SELECT event FROM events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq")?;
            let rows = stmt.query_map(params![id, after as i64], |row| row.get::<_, Vec<u8>>(0))?;
            rows.map(|bytes| decode::<JobEvent>(&bytes?, "event"))
                .collect()
        })
        .await
    }

    /// After a restart: every RUNNING job goes back to QUEUED with the
    /// reason "coordinator restarted" (and its event). Returns the QUEUED
    /// jobs, oldest first.
    pub async fn recover(&self, now: u64) -> Result<Vec<Job>> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let running: Vec<String> = {
                let mut stmt = tx.prepare("SELECT id FROM jobs WHERE state = ?1 ORDER BY seq")?;
                stmt.query_map([JobState::Running as i32], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            for id in &running {
                let reason = "coordinator restarted";
                tx.execute(
                    "UPDATE jobs SET state = ?1, reason = ?2, updated_ms = ?3, workers = ''
                     WHERE id = ?4",
                    params![JobState::Queued as i32, reason, now as i64, id],
                )?;
                let change = JobStateChange {
                    state: JobState::Queued as i32,
                    reason: reason.into(),
                };
                append_event(&tx, id, now, job_event::Kind::State(change))?;
            }
            let queued = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1 ORDER BY seq"
                ))?;
                stmt.query_map([JobState::Queued as i32], job_from_row)?
                    .map(|job| job?)
                    .collect::<Result<Vec<Job>>>()?
            };
            tx.commit()?;
            Ok(queued)
        })
        .await
    }
}

/// Appends the next event (seq = last + 1) of job `id`.
fn append_event(
    tx: &Transaction<'_>,
    id: &str,
    now: u64,
    kind: job_event::Kind,
) -> Result<JobEvent> {
    let seq: i64 = tx.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?1",
        [id],
        |row| row.get(0),
    )?;
    let event = JobEvent {
        seq: seq as u64,
        unix_ms: now,
        kind: Some(kind),
    };
    tx.execute(
        "INSERT INTO events (job_id, seq, unix_ms, event) VALUES (?1, ?2, ?3, ?4)",
        params![id, seq, now as i64, event.encode_to_vec()],
    )?;
    Ok(event)
}

fn get_job(conn: &Connection, id: &str) -> Result<Option<Job>> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        [id],
        job_from_row,
    )
    .optional()?
    .transpose()
}

/// A `jobs` row (in [`JOB_COLUMNS`] order) as a [`Job`]; the outer result
/// is SQLite's, the inner one the protobuf decoding's.
fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Job>> {
    let spec: Vec<u8> = row.get(3)?;
    let estimate: Vec<u8> = row.get(4)?;
    let split = |text: String| -> Vec<String> {
        text.split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut job = Job {
        id: row.get(0)?,
        spec: None,
        state: row.get(1)?,
        reason: row.get(2)?,
        created_unix_ms: row.get::<_, i64>(5)? as u64,
        updated_unix_ms: row.get::<_, i64>(6)? as u64,
        step: row.get::<_, i64>(7)? as u64,
        last_loss: row.get(8)?,
        workers: split(row.get(9)?),
        estimate: None,
        artifacts: split(row.get(10)?),
        owner: row.get(11)?,
    };
    Ok((|| {
        job.spec = Some(decode(&spec, "job spec")?);
        job.estimate = Some(decode(&estimate, "estimate")?);
        Ok(job)
    })())
}

/// Adds the columns of [`ADDED_COLUMNS`] a file made by an older version
/// lacks.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('jobs')")?;
    let present: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, decl) in ADDED_COLUMNS {
        if !present.iter().any(|p| p == name) {
            conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {decl}"))?;
        }
    }
    Ok(())
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::Internal(format!("stored {what} does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_and_events_survive_reopening_and_running_jobs_requeue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let db = JobDb::open(&path).await.unwrap();
        let spec = JobSpec {
            name: "a".into(),
            ..JobSpec::default()
        };
        let (a, first) = db
            .insert_job(&spec, &Estimate::default(), "alice", "", 1)
            .await
            .unwrap();
        assert_eq!(a.id, "job-000001");
        assert_eq!(first.seq, 1);
        let (b, _) = db
            .insert_job(&spec, &Estimate::default(), "", "", 2)
            .await
            .unwrap();
        assert_eq!(b.id, "job-000002");
        let mut running = Transition::to(JobState::Running, "");
        running.workers = Some(vec!["worker-000001".into()]);
        let event = db.transition(&a.id, running, 3).await.unwrap();
        assert_eq!(event.seq, 2);
        drop(db);

        let db = JobDb::open(&path).await.unwrap();
        let queued = db.recover(4).await.unwrap();
        let ids: Vec<_> = queued.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["job-000001", "job-000002"]);
        assert_eq!(queued[0].reason, "coordinator restarted");
        assert_eq!(
            (queued[0].owner.as_str(), queued[1].owner.as_str()),
            ("alice", "")
        );
        assert!(queued[0].workers.is_empty());
        let events = db.events_after(&a.id, 1).await.unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let listed = db.list(vec![JobState::Running]).await.unwrap();
        assert!(listed.is_empty());
        assert!(db.get("job-000009").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_older_file_gains_the_owner_column_and_uploads_are_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        {
            // The jobs table as the first release made it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE,
                 state INTEGER NOT NULL, reason TEXT NOT NULL, spec BLOB NOT NULL,
                 estimate BLOB NOT NULL, created_ms INTEGER NOT NULL,
                 updated_ms INTEGER NOT NULL, step INTEGER NOT NULL DEFAULT 0,
                 last_loss REAL NOT NULL DEFAULT 0, workers TEXT NOT NULL DEFAULT '',
                 artifacts TEXT NOT NULL DEFAULT '');
                 INSERT INTO jobs (id, state, reason, spec, estimate, created_ms, updated_ms)
                 VALUES ('job-000001', 1, 'queued', x'', x'', 1, 1);",
            )
            .unwrap();
        }
        let db = JobDb::open(&path).await.unwrap();
        let old = db.get("job-000001").await.unwrap().unwrap();
        assert_eq!(old.owner, "");
        db.record_upload("b1", "alice").await.unwrap();
        db.record_upload("b1", "alice").await.unwrap();
        assert!(db.uploaded_by("b1", "alice").await.unwrap());
        assert!(!db.uploaded_by("b1", "bob").await.unwrap());
        assert!(!db.uploaded_by("b2", "alice").await.unwrap());
    }
}
