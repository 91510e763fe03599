//! Mixed precision as a graph rewrite: [`apply`] casts a forward graph's
//! matmuls to bf16 or f16 and keeps the numerically sensitive ops in f32,
//! following PyTorch autocast's op lists ([`policy`]).
//!
//! Parameters stay f32 (the master weights): a matmul reads a cast copy,
//! and the cast's VJP casts the gradient back, so gradients, their
//! all-reduce and the optimizer state are f32 whatever the policy. Graph
//! outputs and state updates keep their types (a cast back is added where
//! the rewrite changed one). An `f32` policy returns the graph unchanged.

pub mod policy;
mod rewrite;

use crate::{DType, Graph, Result};

/// A training precision, as a job spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Precision {
    /// Everything as the graph declares it.
    #[default]
    F32,
    /// Matmuls and most activations in bfloat16, f32 master weights.
    Bf16,
    /// As `Bf16` in IEEE half; needs loss scaling (f16 underflows where
    /// bf16 does not).
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Fp16];

    /// The name a job spec uses: `f32`, `bf16` or `fp16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// Parses a spec's name (`""` is `f32`; `fp32` and `f16` are accepted
    /// too), or says what is accepted.
    pub fn parse(name: &str) -> std::result::Result<Precision, String> {
        match name {
            "" | "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" | "f16" => Ok(Precision::Fp16),
            other => Err(format!("precision '{other}': use f32, bf16 or fp16")),
        }
    }

    /// The type matmuls run in, or `None` for `f32`.
    pub fn half(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
            Precision::Fp16 => Some(DType::F16),
        }
    }

    /// Whether training needs a dynamic loss scale (f16's range is narrow).
    pub fn needs_loss_scale(self) -> bool {
        self == Precision::Fp16
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `graph` with `precision`'s casts inserted (unchanged for `f32`).
pub fn apply(graph: &Graph, precision: Precision) -> Result<Graph> {
    match precision.half() {
        None => Ok(graph.clone()),
        Some(half) => rewrite::rewrite(graph, half),
    }
}

#[cfg(test)]
mod tests;
