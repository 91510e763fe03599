//! A simulated worker for load tests: it registers with the coordinator,
//! heartbeats, and answers every assignment after a fixed delay as if it
//! had trained the rank (`JobFinished` ok, no artifacts), without loading
//! data or computing anything. Many of them in one process put a
//! coordinator under the control-plane load of a large cluster.
//!
//! Each records what it was assigned, so a load test can check that no job
//! was lost or run twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use adjoint_proto::v1::{self, coordinator_message, worker_message::Kind};
use tokio_stream::wrappers::ReceiverStream;

/// (job id, rank) of every assignment a simulated worker got.
pub type Assigned = Arc<Mutex<Vec<(String, u32)>>>;

/// Runs one simulated worker named `name` against the coordinator at
/// `url` until its stream ends; `work` is how long a rank "trains".
pub async fn run(
    url: &str,
    credentials: &adjoint_proto::dial::Credentials,
    name: &str,
    work: Duration,
    assigned: Assigned,
) -> Result<(), String> {
    let mut client = super::connect(url, credentials)
        .await
        .map_err(|e| format!("{name}: connect: {e}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::WorkerMessage>(64);
    let register = v1::Register {
        name: name.to_owned(),
        cores: 1,
        memory_bytes: 1 << 30,
        ring_address: format!("{name}:29500"),
        version: env!("CARGO_PKG_VERSION").into(),
        ..v1::Register::default()
    };
    let send = |kind| v1::WorkerMessage { kind: Some(kind) };
    tx.send(send(Kind::Register(register)))
        .await
        .map_err(|e| e.to_string())?;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("{name}: {e}"))?
        .into_inner();
    let mut heartbeat: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(message) = inbound
        .message()
        .await
        .map_err(|e| format!("{name}: {e}"))?
    {
        match message.kind {
            Some(coordinator_message::Kind::Registered(r)) => {
                let (tx, period) = (tx.clone(), Duration::from_millis(r.heartbeat_ms.max(10)));
                heartbeat = Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    loop {
                        tick.tick().await;
                        let beat = v1::WorkerMessage {
                            kind: Some(Kind::Heartbeat(v1::Heartbeat { unix_ms: 0 })),
                        };
                        if tx.send(beat).await.is_err() {
                            return;
                        }
                    }
                }));
            }
            Some(coordinator_message::Kind::Assignment(a)) => {
                assigned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((a.job_id.clone(), a.rank));
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(work).await;
                    let done = v1::JobFinished {
                        job_id: a.job_id,
                        rank: a.rank,
                        ok: true,
                        ..v1::JobFinished::default()
                    };
                    let _ = tx
                        .send(v1::WorkerMessage {
                            kind: Some(Kind::Finished(done)),
                        })
                        .await;
                });
            }
            Some(coordinator_message::Kind::Abort(a)) => {
                let failed = v1::JobFinished {
                    job_id: a.job_id,
                    ok: false,
                    error: "aborted".into(),
                    ..v1::JobFinished::default()
                };
                let _ = tx.send(send(Kind::Finished(failed))).await;
            }
            _ => {}
        }
    }
    if let Some(h) = heartbeat {
        h.abort();
    }
    Ok(())
}
