//! The CUDA backend: [`CudaBackend`] runs the [`Backend`](crate::Backend)
//! kernels on one NVIDIA GPU through cudarc, loading every CUDA library at
//! run time, so this module builds and its callers run on machines without
//! CUDA.
//!
//! - [`probe`]: which GPUs can run it; without them
//!   [`NoCuda`] says "no CUDA device found" and which library is missing.
//!   Never panics (cudarc does when a library is missing; see
//!   [`probe::guard`]).
//! - [`nvrtc`]: the kernel sources of `kernels/cuda/*.cu` (one file per op
//!   family plus `common.cuh`), embedded, compiled to PTX by NVRTC once per
//!   architecture and source hash; `tests/cuda_nvrtc.rs` compiles them all
//!   in CI without a GPU.
//! - [`kernels`]: the [`Kernel`](kernels::Kernel) each launch names
//!   (`{op}_{dtype}`).
//! - [`CudaBackend`]: a context, a compute and a communication stream,
//!   cuBLAS with TF32 off, one `cuMemAlloc` per buffer (the worker's arena
//!   is one buffer), every launch behind a `// SAFETY:` comment.
//!
//! Invariants: kernels only see device addresses of views checked as the
//! CPU backend checks them (buffer, type, bounds, alignment, outputs
//! disjoint from inputs, shape and stride extents); bad *data* (an index
//! out of range) cannot be checked before launch without a round trip, so
//! kernels skip it and report it in a device error word that `read` and
//! `synchronize` turn into [`Error::IndexOutOfRange`](crate::Error).
//!
//! Not on CUDA yet (they return an error naming the op and "not
//! implemented on CUDA yet"): `conv2d`, `conv2d_grad_input`,
//! `conv2d_grad_weight`, `max_pool2d`, `max_pool2d_grad`,
//! `max_pool2d_select`, `avg_pool2d`, `avg_pool2d_grad`.

mod backend;
mod blas;
mod device;
mod elementwise;
mod fused;
pub mod kernels;
pub mod layout;
mod nn;
pub mod nvrtc;
pub mod probe;

pub use device::CudaBackend;
pub use probe::{DeviceInfo, NoCuda, nccl_available, probe};
