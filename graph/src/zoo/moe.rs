//! Mixture-of-experts models: [`moe_layer`], a routed FFN layer any model
//! can use; [`moe`], the `moe` workload (one such layer, MSE plus the
//! Switch load-balancing loss); and [`moe_transformer`], the zoo
//! transformer with every MLP replaced by an MoE layer.
//!
//! The layer: gate `x · W_g` (no bias) → softmax → top-k → the chosen
//! probabilities renormalised over k (one-hot of the ids times the
//! probabilities, summed over experts, divided by their sum) → `MoeRoute`
//! → packed rows `gather_rows(x, row_token)` → `GroupedMatMul(W1 [E, d,
//! h])` → tanh-GELU → `GroupedMatMul(W2 [E, h, d])` → each slot's row
//! `gather_rows(out, slot_row)`, times its weight and `slot_keep`, summed
//! over k. Gradients reach the gate through the chosen probabilities,
//! never through TopK or MoeRoute, whose integer outputs checkpointing
//! keeps rather than recomputes.
//!
//! Tokens are the rows of `x`'s leading dims (`[T, d]`, or `[batch, seq,
//! d]` with a symbolic batch): packed rows keep the slots' shape
//! `[..., k, ·]`, and `GatherRows` indexes rows across all leading dims,
//! so nothing needs a fixed token count.

use super::transformer::{TransformerConfig, decoder};
use crate::ops::GeluApprox;
use crate::{Builder, DType, Dim, Graph, Init, InputRole, Result, Shape, ValueId};

/// One MoE layer's sizes and loss weights.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeLayerConfig {
    pub experts: usize,
    /// Experts per token (k).
    pub top_k: usize,
    /// Hidden width of each expert.
    pub hidden: usize,
    /// 0: dropless; c > 0: each expert keeps its first `ceil(c·T·k / E)`
    /// slots (`MoeRoute`).
    pub capacity_factor: f64,
    /// Weight of the Switch load-balancing loss in [`MoeOut::aux_loss`];
    /// 0 leaves it out of the graph.
    pub aux_weight: f64,
    /// Weight of the router z-loss; 0 leaves it out of the graph.
    pub z_weight: f64,
}

/// The values of one MoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeOut {
    /// `[T, d]`: Σ over k of weight · keep · expert(x).
    pub y: ValueId,
    /// Scalar to add to the loss: `aux_weight · switch_loss + z_weight ·
    /// z_loss` (`None` when both weights are 0).
    pub aux_loss: Option<ValueId>,
    /// Scalar `E · Σ_e f_e · P_e` (f_e: share of tokens whose first choice
    /// is e, without gradient; P_e: mean router prob of e), when
    /// `aux_weight > 0`.
    pub switch_loss: Option<ValueId>,
    /// Scalar `mean(logsumexp(logits)²)`, when `z_weight > 0`.
    pub z_loss: Option<ValueId>,
    /// Gate logits `[T, E]` and probabilities.
    pub logits: ValueId,
    pub probs: ValueId,
    /// Chosen experts `[T, k]` (i64), best first.
    pub ids: ValueId,
    /// Chosen probabilities renormalised over k, `[T, k]`.
    pub weights: ValueId,
    /// `MoeRoute`'s outputs.
    pub row_token: ValueId,
    pub slot_row: ValueId,
    /// 1 kept, 0 dropped, `[T, k]` in the layer's dtype.
    pub slot_keep: ValueId,
    pub offsets: ValueId,
}

/// `nn.Linear`'s default for a weight with `fan_in` inputs:
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn expert_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        low: -bound,
        high: bound,
    }
}

/// An MoE FFN on tokens `x` `[..., d]` (any leading dims, the batch symbol
/// included), with parameters of `x`'s dtype `{name}.gate.weight` `[d, E]`,
/// `{name}.w1` `[E, d, h]` and `{name}.w2` `[E, h, d]`, each initialized
/// like an `nn.Linear` weight (per expert): U(±1/sqrt(fan_in)).
pub fn moe_layer(b: &mut Builder, name: &str, x: ValueId, cfg: &MoeLayerConfig) -> Result<MoeOut> {
    let (dtype, dims) = (b.dtype(x), b.shape(x).dims().to_vec());
    let (lead, d) = match dims.split_last() {
        Some((Dim::Fixed(d), lead)) if !lead.is_empty() => (lead.to_vec(), *d),
        _ => {
            return Err(crate::Error::Unsupported(format!(
                "moe layer '{name}': expected tokens [..., d] with a fixed d, found {}",
                b.shape(x)
            )));
        }
    };
    let (e, k, h) = (cfg.experts, cfg.top_k, cfg.hidden);
    let gate = format!("{name}.gate.weight");
    let gate = b.param(&gate, dtype, &[d, e], expert_init(d))?;
    let w1 = b.param(&format!("{name}.w1"), dtype, &[e, d, h], expert_init(d))?;
    let w2 = b.param(&format!("{name}.w2"), dtype, &[e, h, d], expert_init(h))?;
    b.set_provenance(&format!("{name}.router"));
    b.push_scope(name);
    let logits = b.matmul(x, gate)?;
    let probs = b.softmax(logits, -1)?;
    let ids = b.top_k(probs, k)?;
    let weights = chosen_weights(b, probs, ids, &lead, e)?;
    let [row_token, slot_row, keep, offsets] = b.moe_route(ids, e, cfg.capacity_factor)?;
    let slot_keep = match b.dtype(keep) == dtype {
        true => keep,
        false => b.cast(keep, dtype)?,
    };
    let token_axes: Vec<i64> = (0..lead.len() as i64).collect();
    let switch_loss = match cfg.aux_weight > 0.0 {
        true => Some(switch(b, probs, ids, e, &token_axes)?),
        false => None,
    };
    let z_loss = match cfg.z_weight > 0.0 {
        true => Some(z_loss(b, logits, &token_axes)?),
        false => None,
    };
    let mut aux_loss = None;
    for (loss, weight) in [(switch_loss, cfg.aux_weight), (z_loss, cfg.z_weight)] {
        let Some(loss) = loss else { continue };
        let term = b.scale(loss, weight)?;
        aux_loss = Some(match aux_loss {
            Some(acc) => b.add(acc, term)?,
            None => term,
        });
    }
    b.set_provenance(&format!("{name}.experts"));
    let packed = b.gather_rows(x, row_token)?;
    let hid = b.grouped_matmul(packed, w1, offsets, false)?;
    let hid = b.gelu(hid, GeluApprox::Tanh)?;
    let out = b.grouped_matmul(hid, w2, offsets, false)?;
    b.set_provenance(&format!("{name}.combine"));
    let slots = b.gather_rows(out, slot_row)?;
    let cw = b.mul(weights, slot_keep)?;
    let cw = b.reshape(
        cw,
        Shape([lead.as_slice(), &[Dim::Fixed(k), Dim::Fixed(1)]].concat()),
    )?;
    let y = b.mul(slots, cw)?;
    let y = b.sum(y, &[-2], false)?;
    b.pop_scope();
    Ok(MoeOut {
        y,
        aux_loss,
        switch_loss,
        z_loss,
        logits,
        probs,
        ids,
        weights,
        row_token,
        slot_row,
        slot_keep,
        offsets,
    })
}

/// The probabilities of the chosen experts, renormalised over k:
/// `[..., k]`.
fn chosen_weights(
    b: &mut Builder,
    probs: ValueId,
    ids: ValueId,
    lead: &[Dim],
    experts: usize,
) -> Result<ValueId> {
    let hot = b.one_hot(ids, experts, b.dtype(probs))?;
    let row = b.reshape(
        probs,
        Shape([lead, &[Dim::Fixed(1), experts.into()]].concat()),
    )?;
    let picked = b.mul(hot, row)?;
    let chosen = b.sum(picked, &[-1], false)?;
    let total = b.sum(chosen, &[-1], true)?;
    b.div(chosen, total)
}

/// The Switch loss `E · Σ_e f_e · P_e`; f_e comes from the one-hot of
/// the first choices, so only P_e carries a gradient. `token_axes` are
/// the leading (token) axes.
fn switch(
    b: &mut Builder,
    probs: ValueId,
    ids: ValueId,
    experts: usize,
    token_axes: &[i64],
) -> Result<ValueId> {
    let first = b.slice(ids, -1, 0, 1)?;
    let first = b.one_hot(first, experts, b.dtype(probs))?;
    let mut first_axes = token_axes.to_vec();
    first_axes.push(token_axes.len() as i64);
    let share = b.mean(first, &first_axes, false)?;
    let mean_prob = b.mean(probs, token_axes, false)?;
    let dot = b.mul(share, mean_prob)?;
    let dot = b.sum_all(dot)?;
    b.scale(dot, experts as f64)
}

/// The router z-loss `mean(logsumexp(logits)²)`, with logsumexp as
/// `logits_0 − log_softmax(logits)_0` (stable, and exact in gradient).
fn z_loss(b: &mut Builder, logits: ValueId, token_axes: &[i64]) -> Result<ValueId> {
    let log_probs = b.log_softmax(logits, -1)?;
    let l0 = b.slice(logits, -1, 0, 1)?;
    let lp0 = b.slice(log_probs, -1, 0, 1)?;
    let lse = b.sub(l0, lp0)?;
    let sq = b.mul(lse, lse)?;
    let mut axes = token_axes.to_vec();
    axes.push(token_axes.len() as i64);
    b.mean(sq, &axes, false)
}

/// The `moe` workload of `WORKLOADS.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub d_model: usize,
    pub layer: MoeLayerConfig,
    /// Token count; `None` leaves it symbolic (the batch dimension).
    pub tokens: Option<usize>,
}

impl Default for MoeConfig {
    /// E 16, d 256, h 1024, top-2, dropless, 0.01 · Switch loss, 2048 tokens.
    fn default() -> Self {
        MoeConfig {
            d_model: 256,
            layer: MoeLayerConfig {
                experts: 16,
                top_k: 2,
                hidden: 1024,
                capacity_factor: 0.0,
                aux_weight: 0.01,
                z_weight: 0.0,
            },
            tokens: Some(2048),
        }
    }
}

/// Inputs `x` and `target` `[tokens, d]` (f32); output `loss` =
/// MSE(moe(x), target) + the layer's aux loss. Parameters
/// `moe.gate.weight`, `moe.w1`, `moe.w2`.
pub fn moe(cfg: &MoeConfig) -> Result<Graph> {
    let mut b = Builder::new("moe");
    let shape = Shape(vec![super::batch_dim(cfg.tokens), cfg.d_model.into()]);
    let x = b.input("x", DType::F32, shape.clone(), InputRole::Data)?;
    let target = b.input("target", DType::F32, shape, InputRole::Label)?;
    let out = moe_layer(&mut b, "moe", x, &cfg.layer)?;
    b.set_provenance("loss");
    let mut loss = b.mse(out.y, target)?;
    if let Some(aux) = out.aux_loss {
        loss = b.add(loss, aux)?;
    }
    b.rename(loss, "loss")?;
    b.loss(loss);
    b.finish()
}

/// The zoo transformer with an MoE layer for every MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeTransformerConfig {
    /// The decoder's sizes.
    pub transformer: TransformerConfig,
    /// Every block's MoE layer (`hidden` is each expert's width).
    pub layer: MoeLayerConfig,
}

impl Default for MoeTransformerConfig {
    /// A small decoder (vocab 256, d 64, 2 blocks of 4 heads, seq 32,
    /// symbolic batch; the workload's is 16); E 8, top-2, experts
    /// 64→256→64, dropless, 0.01 · Switch.
    fn default() -> Self {
        MoeTransformerConfig {
            transformer: TransformerConfig {
                vocab: 256,
                d_model: 64,
                layers: 2,
                heads: 4,
                seq: 32,
                batch: None,
            },
            layer: MoeLayerConfig {
                experts: 8,
                top_k: 2,
                hidden: 256,
                capacity_factor: 0.0,
                aux_weight: 0.01,
                z_weight: 0.0,
            },
        }
    }
}

/// Inputs `tokens` and `targets` `[batch, seq]` (i64); output `loss` =
/// cross-entropy + every layer's aux loss. Block i's experts are
/// `h.{i}.moe.gate.weight`, `h.{i}.moe.w1`, `h.{i}.moe.w2`.
///
/// Checkpointing: each layer's aux loss is a scalar live until the final
/// sum, beside the residual stream; the checkpoint analysis keeps such
/// tiny values and does not let them pin the frontier, so the blocks
/// segment as in the dense transformer.
pub fn moe_transformer(cfg: &MoeTransformerConfig) -> Result<Graph> {
    let tc = &cfg.transformer;
    let mut b = Builder::new("moe-transformer");
    let mut aux = Vec::new();
    let mut ffn = |b: &mut Builder, name: &str, h: ValueId| {
        let out = moe_layer(b, &format!("{name}.moe"), h, &cfg.layer)?;
        aux.extend(out.aux_loss);
        Ok(out.y)
    };
    let mut loss = decoder(&mut b, tc, &mut ffn)?;
    b.set_provenance("loss");
    for a in aux {
        loss = b.add(loss, a)?;
    }
    b.rename(loss, "loss")?;
    b.loss(loss);
    b.finish()
}
