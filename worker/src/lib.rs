//! The adjoint worker.
//!
//! This crate will own the executor that runs a compiled training program on
//! a backend, the training loop and its optimizers (SGD, AdamW), data
//! loading, the collectives (`nccl` on GPUs, a TCP `ring` on CPUs, `local`
//! for tests) and the agent that talks to the coordinator over the
//! `WorkerControl` stream; its binary is `adjoint-worker`.
//!
//! It builds on `adjoint-graph` (the program it runs is derived there) and
//! `adjoint-kernels` (where the numbers are computed). Nothing here is
//! implemented yet.
