//! The gRPC adapters: thin layers that decode a request, hand it to the
//! [`Coordinator`](crate::Coordinator) and map its
//! [`Error`](crate::Error) to a status with `?` (through the one
//! `From<Error> for tonic::Status` in `crate::error`).
//!
//! - [`CoordinatorService`]: `adjoint.v1.Coordinator`, the user API.
//! - [`WorkerControlService`]: `adjoint.v1.WorkerControl`, one
//!   bidirectional stream per worker.

mod coordinator;
mod worker;

pub use coordinator::CoordinatorService;
pub use worker::WorkerControlService;

use std::pin::Pin;

use futures::{Stream, StreamExt};

/// A boxed response stream of a server-streaming method.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A stream of the coordinator's results as a response stream.
fn to_status_stream<T, S>(stream: S) -> ResponseStream<T>
where
    T: Send + 'static,
    S: Stream<Item = crate::Result<T>> + Send + 'static,
{
    Box::pin(stream.map(|item| item.map_err(tonic::Status::from)))
}
