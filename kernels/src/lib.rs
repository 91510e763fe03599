//! Compute backends for adjoint: the [`Backend`] trait and the CPU backend.
//!
//! A backend owns device memory as buffers ([`BufferId`]) and runs kernels
//! on [`View`]s: a dtype, a byte offset and an element count inside a buffer.
//! The worker compiles a graph into a program of backend calls over one
//! planned arena plus the parameter, gradient and optimizer buffers; this
//! crate never sees a graph. Every kernel is one method of [`Backend`], with
//! the shapes and strides it needs passed as slices the caller precomputed,
//! so a step allocates nothing.
//!
//! - [`cpu`]: f32 kernels (i64/i32 indices, u8 booleans), GEMM through the
//!   `gemm` crate, rayon threads where they pay.
//! - [`widen`]: bf16/f16 operands for kernels without a half form, widened
//!   to f32 scratch and rounded back once.
//! - `cuda` (feature `cuda`, on by default): the CUDA backend through
//!   cudarc, loaded at run time; without CUDA it says "no CUDA device
//!   found" and the CPU is used.
//! - [`rng`]: the counter-based Philox generator random kernels draw from.
//! - [`alloc_audit`]: marks scopes where a third-party library allocates, so
//!   tests can prove the engine itself does not.
//! - [`alloc_count`]: a counting global allocator (live and peak bytes), so
//!   measured memory can be held against the plan.
//!
//! Streams and events exist in the trait so that the CUDA backend (compute
//! and communication streams) fits; on the CPU they are no-ops.

pub mod alloc_audit;
pub mod alloc_count;
pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod rng;
pub mod widen;

pub use backend::{
    AdamWParams, Backend, BinaryOp, BufferId, CompareOp, ElemType, Error, Event, MatMulDims,
    ReduceOp, Result, RngKey, SgdParams, Stream, UnaryOp, View,
};
pub use cpu::CpuBackend;
