//! `chain`: 64 layers of Linear 1024→1024 + tanh; the loss is the sum of
//! the output. The deep, uniform chain that activation checkpointing is
//! measured on.

use super::{batch_dim, linear};
use crate::{Builder, DType, Graph, InputRole, Result, Shape};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    pub layers: usize,
    pub width: usize,
    /// `None` leaves the batch dimension symbolic.
    pub batch: Option<usize>,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig {
            layers: 64,
            width: 1024,
            batch: None,
        }
    }
}

/// Input `x` `[batch, width]` (f32); output `loss` = sum of the last layer.
pub fn chain(cfg: &ChainConfig) -> Result<Graph> {
    let mut b = Builder::new("chain");
    let x = b.input(
        "x",
        DType::F32,
        Shape(vec![batch_dim(cfg.batch), cfg.width.into()]),
        InputRole::Data,
    )?;
    let mut h = x;
    for i in 0..cfg.layers {
        let name = format!("layer{i}");
        h = linear(&mut b, &name, h, cfg.width, cfg.width, true)?;
        b.push_scope(&name);
        h = b.tanh(h)?;
        b.pop_scope();
    }
    b.set_provenance("loss");
    let loss = b.sum_all(h)?;
    b.rename(loss, "loss")?;
    b.loss(loss);
    b.finish()
}
