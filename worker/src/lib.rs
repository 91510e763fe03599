//! The adjoint worker.
//!
//! Today: the single-process engine. [`program`] lowers a bound graph (the
//! joint forward+backward graph from `adjoint_graph::autodiff::grad`) to
//! backend calls over the memory plan; [`Executor`] runs it and reports
//! gradient buckets as they complete; [`optim`] holds SGD and AdamW as a
//! separate stage over flat buffers; [`Trainer`] ties them into a training
//! loop over in-memory batches; [`data`] reads safetensors.
//!
//! Later: the collectives (`nccl` on GPUs, a TCP `ring` on CPUs, `local`
//! for tests) and the agent that talks to the coordinator over the
//! `WorkerControl` stream, with its binary `adjoint-worker`.

pub mod data;
mod error;
pub mod executor;
pub mod optim;
pub mod program;
pub mod train;

pub use error::{Error, Result};
pub use executor::{ExecOptions, Executor, GradBucket};
pub use optim::{Optimizer, OptimizerConfig};
pub use program::StepKey;
pub use train::{StepReport, Trainer};
