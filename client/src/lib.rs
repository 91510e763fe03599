//! The adjoint client: a Rust library for working with adjoint graphs and,
//! as the service lands, for talking to the coordinator; and the `adjoint`
//! CLI built on it (`src/main.rs`, one file per subcommand under `cli/`).
//!
//! Today it reads and writes graph files ([`graph_file`]); the gRPC client
//! and the local commands (`up`, `demo`, `train`, `grad`, `bench`) follow
//! with the engine and the service.

pub mod graph_file;
