//! The adjoint graph: IR, op set, autodiff transforms and the f64 reference
//! interpreter.
//!
//! - [`Graph`]: typed values and nodes in topological order ([`ir`]), built
//!   with a [`Builder`], checked by [`validate::validate`], loaded and saved
//!   as protobuf or proto3 JSON by [`serialize`].
//! - [`Op`]: the op set, one file per family under [`ops`], each op with its
//!   shape, VJP, JVP and cost rules side by side.
//! - [`autodiff`]: `grad` (reverse mode, returning one graph that computes
//!   the loss and the gradients), `jvp` (forward mode) and Hessian-vector
//!   products by composing them.
//! - [`interp`]: runs any bound graph in f64; the oracle for every gradient
//!   check and for the fast backends.
//! - [`gradcheck`]: finite-difference checks of VJP and JVP rules, to any
//!   order, on the interpreter.
//! - [`plan`]: the memory planner: arena offsets and the gradient buffer.
//! - [`checkpoint`]: activation checkpointing as a rewrite of the joint
//!   graph, with policies from `none` to `budget:BYTES`.
//! - [`expert_parallel`]: shards the experts of an MoE graph over ranks,
//!   with the all-to-all exchanges that route rows to their owners.
//! - [`precision`]: mixed precision (bf16, fp16) as a cast-inserting rewrite.
//! - [`training`]: the graph a training step runs (bound, differentiated,
//!   checkpointed, planned), derived the same way by coordinator and workers.
//! - [`zoo`]: the reference workload models.
//! - [`onnx`]: ONNX import: a `ModelProto` to a graph, plus a training loss.
//!
//! The crate is pure: no async, no I/O, no device. It is deterministic: the
//! same input gives byte-identical graphs in every process.

// Errors carry the node, op, provenance and message they name; they sit on
// the cold path, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod attr;
pub mod autodiff;
pub mod builder;
pub mod checkpoint;
pub mod dtype;
pub mod error;
pub mod expert_parallel;
pub mod gradcheck;
pub mod init;
pub mod interp;
pub mod ir;
pub mod onnx;
pub mod ops;
pub mod plan;
pub mod precision;
pub mod rng;
pub mod serialize;
pub mod shape;
pub mod training;
pub mod validate;
pub mod zoo;

pub use attr::{Attr, AttrReader, Attrs};
pub use builder::Builder;
pub use dtype::DType;
pub use error::{Error, NodeRef, Result};
pub use ir::{
    Distribution, FanMode, Graph, Init, Input, InputRole, Node, NodeId, Param, StateVar,
    TensorData, TensorType, Value, ValueId,
};
pub use ops::Op;
pub use shape::{Dim, Shape};
