//! The adjoint coordinator.
//!
//! It serves the user-facing `adjoint.v1.Coordinator` gRPC service and the
//! worker-facing `adjoint.v1.WorkerControl` stream (plus gRPC health and
//! reflection) on one port; validates and plans jobs at submit through
//! `adjoint-graph`; keeps jobs and their events in an embedded SQLite file;
//! gang-schedules queued jobs onto registered workers in strict FIFO order;
//! and reads and writes blobs through `object_store`. It never runs
//! kernels: workers train, and read blobs and write artifacts in the same
//! store directly.
//!
//! - [`serve`] starts a server on a listener and returns a
//!   [`ServerHandle`]; [`Config`] says where its data lives.
//! - [`Coordinator`] (in [`coordinator`] and [`workers`]): the state
//!   machine the gRPC adapters ([`grpc`]) call.
//! - [`scheduler::schedule`]: the scheduling decision, a pure function.
//! - [`plan`]: validation and the per-worker memory estimate and plan hash.
//! - [`db`] (jobs and events in `DIR/jobs.sqlite`), [`blobs`] (the blob
//!   store) and [`names`] (ids and names that cannot escape the store).
//! - [`Error`]: every failure, mapped to a gRPC status in one place.
//!
//! ```no_run
//! # async fn demo() -> adjoint_server::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = adjoint_server::Config::new("/tmp/adjoint");
//! let server = adjoint_server::serve(listener, config).await?;
//! // ... connect clients to server.url() ...
//! server.shutdown().await
//! # }
//! ```

// The graph crate's errors are large; they sit on the cold path.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod blobs;
pub mod cli;
pub mod coordinator;
pub mod db;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod scheduler;
pub mod server;
pub mod settings;
pub mod tls;
pub mod workers;

pub use coordinator::{Config, Coordinator};
pub use error::{Error, Result};
pub use server::{MAX_MESSAGE_BYTES, ServerHandle, serve};
