//! The reference workload models of `WORKLOADS.md`, built with the
//! [`crate::Builder`]: [`mlp`], [`transformer`], [`chain`], [`moe`] and
//! [`moe_transformer`] (the transformer with MoE layers; [`moe_layer`] is
//! the reusable layer).
//!
//! Each model has a config whose `Default` is the workload's size; smaller
//! configs serve tests. The batch dimension is left symbolic unless the
//! config fixes it. Initializers follow PyTorch's defaults (`nn.Linear`'s
//! kaiming-uniform, GPT-2's normal(0.02)), so losses at step 0 are
//! comparable.

mod chain;
mod mlp;
mod moe;
mod transformer;

pub use chain::{ChainConfig, chain};
pub use mlp::{MlpConfig, mlp};
pub use moe::{
    MoeConfig, MoeLayerConfig, MoeOut, MoeTransformerConfig, moe, moe_layer, moe_transformer,
};
pub use transformer::{TransformerConfig, transformer};

use crate::{Builder, DType, Dim, Distribution, FanMode, Init, Result, ValueId};

/// The names of the zoo's models, as the CLI accepts them.
pub const MODELS: [&str; 5] = ["mlp", "transformer", "chain", "moe", "moe-transformer"];

/// Builds a zoo model with its default (workload) config.
pub fn by_name(name: &str) -> Option<Result<crate::Graph>> {
    match name {
        "mlp" => Some(mlp(&MlpConfig::default())),
        "transformer" => Some(transformer(&TransformerConfig::default())),
        "chain" => Some(chain(&ChainConfig::default())),
        "moe" => Some(moe(&MoeConfig::default())),
        "moe-transformer" => Some(moe_transformer(&MoeTransformerConfig::default())),
        _ => None,
    }
}

/// The batch size each workload runs with (`WORKLOADS.md`).
pub fn workload_batch(name: &str) -> Option<usize> {
    match name {
        "mlp" | "chain" => Some(256),
        "transformer" | "moe-transformer" => Some(16),
        "moe" => Some(2048),
        _ => None,
    }
}

/// The leading dimension: fixed when the config says so, else symbolic.
pub(crate) fn batch_dim(batch: Option<usize>) -> Dim {
    batch.map_or(Dim::Batch, Dim::Fixed)
}

/// `x · W + b` with PyTorch's `nn.Linear` initialization:
/// W, b ~ U(-1/sqrt(in), 1/sqrt(in)). W is stored `[in, out]`.
pub(crate) fn linear(
    b: &mut Builder,
    name: &str,
    x: ValueId,
    inp: usize,
    out: usize,
    bias: bool,
) -> Result<ValueId> {
    let weight_init = Init::FanScaled {
        mode: FanMode::In,
        distribution: Distribution::Uniform,
        gain: 1.0 / 3f64.sqrt(),
    };
    let w = b.param(
        &format!("{name}.weight"),
        DType::F32,
        &[inp, out],
        weight_init,
    )?;
    let bound = 1.0 / (inp as f64).sqrt();
    let bias_init = Init::Uniform {
        low: -bound,
        high: bound,
    };
    let bias = match bias {
        true => Some(b.param(&format!("{name}.bias"), DType::F32, &[out], bias_init)?),
        false => None,
    };
    b.push_scope(name);
    b.set_provenance(name);
    let mut y = b.matmul(x, w)?;
    if let Some(bias) = bias {
        y = b.add(y, bias)?;
    }
    b.pop_scope();
    Ok(y)
}
