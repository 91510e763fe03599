//! The adjoint worker.
//!
//! Today: the single-process engine. [`program`] lowers a bound graph (the
//! joint forward+backward graph from `adjoint_graph::autodiff::grad`) to
//! backend calls over the memory plan; [`Executor`] runs it and reports
//! gradient buckets as they complete; [`optim`] holds SGD and AdamW as a
//! separate stage over flat buffers; [`Trainer`] ties them into a training
//! loop over in-memory batches; [`data`] reads safetensors.
//! [`collective`]: all-reduce and friends over a TCP `ring` or a `local` group.
//!
//! [`dist`]: data-parallel training (gradient accumulation, bucketed
//! all-reduce overlapped with backward, clipping, schedules, checkpoints).
//! [`agent`]: the worker process behind the `adjoint-worker` binary, which
//! talks to the coordinator over the `WorkerControl` stream.
//!
//! Later: `nccl` collectives on GPUs.

pub mod agent;
pub mod cli;
pub mod collective;
pub mod data;
pub mod dist;
mod error;
pub mod executor;
pub mod optim;
pub mod program;
pub mod settings;
pub mod train;

pub use error::{Error, Result};
pub use executor::{ExecOptions, Executor, GradBucket};
pub use optim::{Optimizer, OptimizerConfig};
pub use program::StepKey;
pub use train::{StepReport, Trainer};
