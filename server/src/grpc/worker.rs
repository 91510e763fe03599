//! `adjoint.v1.WorkerControl.Connect`: the first message must be a
//! Register; then a task feeds the worker's messages to the coordinator
//! while the response stream carries Registered, Assignments and Aborts.
//! When the worker's stream ends or breaks the protocol, the worker is
//! lost.

use adjoint_proto::v1::worker_message::Kind;
use adjoint_proto::v1::{CoordinatorMessage, WorkerMessage, worker_control_server};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::ResponseStream;
use crate::coordinator::closed;
use crate::{Coordinator, Error};

/// The worker-facing service.
#[derive(Debug, Clone)]
pub struct WorkerControlService {
    core: Coordinator,
}

impl WorkerControlService {
    pub fn new(core: Coordinator) -> Self {
        WorkerControlService { core }
    }
}

#[tonic::async_trait]
impl worker_control_server::WorkerControl for WorkerControlService {
    type ConnectStream = ResponseStream<CoordinatorMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let register = match inbound.next().await {
            Some(Ok(WorkerMessage {
                kind: Some(Kind::Register(register)),
            })) => register,
            Some(Err(status)) => return Err(status),
            Some(Ok(_)) | None => {
                let error = Error::Protocol("the first message must be Register".into());
                return Err(error.into());
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // The task holds only a weak sender: once the coordinator drops the
        // worker's sender (lost, or shutting down), the response stream ends.
        let weak = tx.downgrade();
        let worker_id = self.core.register(register, tx).await?;
        let core = self.core.clone();
        let mut closing = core.closing();
        tokio::spawn(async move {
            let why = loop {
                let next = tokio::select! {
                    // Dropping `inbound` on shutdown lets the call finish.
                    () = closed(&mut closing) => return,
                    next = inbound.next() => next,
                };
                match next {
                    None => break "stream closed".to_owned(),
                    Some(Err(status)) => break format!("stream failed: {}", status.message()),
                    Some(Ok(message)) => {
                        if let Err(e) = core.worker_message(&worker_id, message).await {
                            let why = e.to_string();
                            if let Some(tx) = weak.upgrade() {
                                let _ = tx.send(Err(Status::from(e)));
                            }
                            break why;
                        }
                    }
                }
            };
            if let Err(e) = core.worker_lost(&worker_id, &why).await {
                tracing::error!(worker = %worker_id, error = %e, "could not drop a worker");
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
