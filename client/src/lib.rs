//! The adjoint client: a Rust library for working with adjoint graphs and,
//! as the service lands, for talking to the coordinator; and the `adjoint`
//! CLI built on it (`src/main.rs`, one file per subcommand under `cli/`).
//!
//! - [`Client`]: the gRPC client of the coordinator.
//! - [`spec`]: job specs from TOML files and flags.
//! - [`graph_file`]: reading and writing graph files.
//! - [`onnx_file`]: ONNX models as graph files.
//! - [`local`]: a coordinator and workers as local processes (`adjoint up`).
//! - [`example`]: the bundled example `adjoint demo` trains.

pub mod client;
pub mod example;
pub mod graph_file;
pub mod local;
pub mod onnx_file;
pub mod spec;

pub use adjoint_proto::dial::Credentials;
pub use client::Client;
