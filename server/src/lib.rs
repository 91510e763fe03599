//! The adjoint coordinator.
//!
//! This crate will own the user-facing `adjoint.v1.Coordinator` gRPC
//! service, the worker-facing `WorkerControl` stream, validation and planning
//! at submit (through `adjoint-graph`), the FIFO gang scheduler, the job
//! store (embedded SQLite) and the blob store (`object_store`); its binary is
//! `adjoint-server`. The coordinator never runs kernels. Nothing here is
//! implemented yet.
