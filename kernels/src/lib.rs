//! Tensors and compute backends for adjoint.
//!
//! This crate will own the `Backend` trait (allocate, copy, and one function
//! per kernel, working on offsets into a planned arena, with room for CUDA
//! streams and events), the CPU backend (a tuned GEMM plus vectorised loops,
//! threads where they pay) and the CUDA backend (cudarc with dynamic loading,
//! cuBLAS, the `.cu` sources under `kernels/cuda/` compiled by NVRTC).
//!
//! It never sees a graph: the worker compiles graphs into programs of kernel
//! calls. Nothing here is implemented yet; the CPU engine lands next.
