//! `mlp`: 784 → 1024 → 1024 → 10 with ReLU between, bias on every layer,
//! softmax cross-entropy.

use super::{batch_dim, linear};
use crate::{Builder, DType, Graph, InputRole, Result, Shape};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpConfig {
    pub input: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
    /// `None` leaves the batch dimension symbolic.
    pub batch: Option<usize>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            input: 784,
            hidden: vec![1024, 1024],
            classes: 10,
            batch: None,
        }
    }
}

/// Inputs `x` `[batch, input]` (f32) and `labels` `[batch]` (i64); output `loss`.
pub fn mlp(cfg: &MlpConfig) -> Result<Graph> {
    let mut b = Builder::new("mlp");
    let batch = batch_dim(cfg.batch);
    let x = b.input(
        "x",
        DType::F32,
        Shape(vec![batch, cfg.input.into()]),
        InputRole::Data,
    )?;
    let labels = b.input("labels", DType::I64, Shape(vec![batch]), InputRole::Label)?;
    let mut h = x;
    let mut width = cfg.input;
    for (i, &next) in cfg.hidden.iter().enumerate() {
        h = linear(&mut b, &format!("fc{}", i + 1), h, width, next, true)?;
        b.set_provenance(&format!("relu{}", i + 1));
        h = b.relu(h)?;
        width = next;
    }
    let head = format!("fc{}", cfg.hidden.len() + 1);
    let logits = linear(&mut b, &head, h, width, cfg.classes, true)?;
    b.set_provenance("loss");
    let loss = b.softmax_cross_entropy(logits, labels)?;
    b.rename(loss, "loss")?;
    b.loss(loss);
    b.finish()
}
