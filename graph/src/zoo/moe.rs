//! Mixture-of-experts models: [`moe_layer`], a routed FFN layer any model
//! can use; [`moe`], the `moe` workload (one such layer, MSE plus the
//! Switch load-balancing loss); and [`moe_transformer`], the zoo
//! transformer with every MLP replaced by an MoE layer.
//!
//! The layer: gate `x · W_g` (no bias) → softmax → top-k → the chosen
//! probabilities renormalised over k (one-hot of the ids times the
//! probabilities, summed over experts, divided by their sum) → `MoeRoute`
//! → packed rows `gather(x, row_token)` → `GroupedMatMul(W1 [E, d, h])` →
//! tanh-GELU → `GroupedMatMul(W2 [E, h, d])` → each slot's row picked by
//! `slot_row`, times its weight and `slot_keep`, summed over k. Gradients
//! reach the gate through the chosen probabilities, never through TopK or
//! MoeRoute, whose integer outputs checkpointing keeps rather than
//! recomputes.
//!
//! Packed rows keep the slots' shape `[T, k, ·]`, so routing and the
//! expert GEMMs work with a symbolic token count. Picking a slot's packed
//! row needs the flat row index `slot_row`: with a fixed T that is one
//! gather from the `[T·k, d]` view; with a symbolic T (which no reshape can
//! flatten) the index is split into `(slot_row / k, slot_row % k)`, a
//! gather of k rows and a one-hot pick, k times the work of the combine.

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

/// An MoE FFN on tokens `x` `[T, d]` (T fixed or the batch symbol), with
/// parameters of `x`'s dtype `{name}.gate.weight` `[d, E]`, `{name}.w1`
/// `[E, d, h]` and `{name}.w2` `[E, h, d]`, each initialized like an
/// `nn.Linear` weight (per expert): U(±1/sqrt(fan_in)).
pub fn moe_layer(b: &mut Builder, name: &str, x: ValueId, cfg: &MoeLayerConfig) -> Result<MoeOut> {
    let (dtype, dims) = (b.dtype(x), b.shape(x).dims().to_vec());
    let [tokens, Dim::Fixed(d)] = dims[..] else {
        return Err(crate::Error::Unsupported(format!(
            "moe layer '{name}': expected tokens [T, d] with a fixed d, found {}",
            b.shape(x)
        )));
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
    let weights = chosen_weights(b, probs, ids, tokens, e)?;
    let [row_token, slot_row, keep, offsets] = b.moe_route(ids, e, cfg.capacity_factor)?;
    let slot_keep = match b.dtype(keep) == dtype {
        true => keep,
        false => b.cast(keep, dtype)?,
    };
    let switch_loss = match cfg.aux_weight > 0.0 {
        true => Some(switch(b, probs, ids, e)?),
        false => None,
    };
    let z_loss = match cfg.z_weight > 0.0 {
        true => Some(z_loss(b, logits)?),
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
    let packed = b.gather(x, row_token, 0)?;
    let hid = b.grouped_matmul(packed, w1, offsets, false)?;
    let hid = b.gelu(hid, GeluApprox::Tanh)?;
    let out = b.grouped_matmul(hid, w2, offsets, false)?;
    b.set_provenance(&format!("{name}.combine"));
    let slots = unpack(b, out, slot_row, tokens, k, d)?;
    let cw = b.mul(weights, slot_keep)?;
    let cw = b.reshape(cw, Shape(vec![tokens, Dim::Fixed(k), Dim::Fixed(1)]))?;
    let y = b.mul(slots, cw)?;
    let y = b.sum(y, &[1], false)?;
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

/// The probabilities of the chosen experts, renormalised over k: `[T, k]`.
fn chosen_weights(
    b: &mut Builder,
    probs: ValueId,
    ids: ValueId,
    tokens: Dim,
    experts: usize,
) -> Result<ValueId> {
    let hot = b.one_hot(ids, experts, b.dtype(probs))?;
    let row = b.reshape(probs, Shape(vec![tokens, Dim::Fixed(1), experts.into()]))?;
    let picked = b.mul(hot, row)?;
    let chosen = b.sum(picked, &[-1], false)?;
    let total = b.sum(chosen, &[-1], true)?;
    b.div(chosen, total)
}

/// The Switch loss `E · Σ_e f_e · P_e`; f_e comes from the one-hot of
/// the first choices, so only P_e carries a gradient.
fn switch(b: &mut Builder, probs: ValueId, ids: ValueId, experts: usize) -> Result<ValueId> {
    let first = b.slice(ids, -1, 0, 1)?;
    let first = b.one_hot(first, experts, b.dtype(probs))?;
    let share = b.mean(first, &[0, 1], false)?;
    let mean_prob = b.mean(probs, &[0], false)?;
    let dot = b.mul(share, mean_prob)?;
    let dot = b.sum_all(dot)?;
    b.scale(dot, experts as f64)
}

/// The router z-loss `mean(logsumexp(logits)²)`, with logsumexp as
/// `logits_0 − log_softmax(logits)_0` (stable, and exact in gradient).
fn z_loss(b: &mut Builder, logits: ValueId) -> Result<ValueId> {
    let log_probs = b.log_softmax(logits, -1)?;
    let l0 = b.slice(logits, -1, 0, 1)?;
    let lp0 = b.slice(log_probs, -1, 0, 1)?;
    let lse = b.sub(l0, lp0)?;
    let sq = b.mul(lse, lse)?;
    b.mean(sq, &[0, 1], false)
}

/// Each slot's packed row: `packed` `[T, k, d]` holds row r at
/// `(r / k, r % k)`; returns `[T, k, d]` with slot s's row `slot_row[s]`.
fn unpack(
    b: &mut Builder,
    packed: ValueId,
    slot_row: ValueId,
    tokens: Dim,
    k: usize,
    d: usize,
) -> Result<ValueId> {
    if let Dim::Fixed(t) = tokens {
        let flat = b.reshape(packed, Shape::of(&[t * k, d]))?;
        return b.gather(flat, slot_row, 0);
    }
    // r = q·k + m: q = trunc((r + ½) / k), exact while R < 2^22 even in
    // f32, since (r + ½) / k is at least ½/k from an integer.
    let dtype = b.dtype(packed);
    let r = b.cast(slot_row, dtype)?;
    let half = b.scalar(0.5, dtype)?;
    let r_half = b.add(r, half)?;
    let kk = b.scalar(k as f64, dtype)?;
    let q = b.div(r_half, kk)?;
    let q = b.cast(q, DType::I64)?;
    let qf = b.cast(q, dtype)?;
    let qk = b.mul(qf, kk)?;
    let m = b.sub(r, qk)?;
    let m = b.cast(m, DType::I64)?;
    let rows = b.gather(packed, q, 0)?;
    let pick = b.one_hot(m, k, dtype)?;
    let pick = b.reshape(pick, Shape(vec![tokens, k.into(), k.into(), Dim::Fixed(1)]))?;
    let picked = b.mul(rows, pick)?;
    b.sum(picked, &[2], false)
}

/// The `moe` workload of `WORKLOADS.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub d_model: usize,
    pub layer: MoeLayerConfig,
    /// Token count; `None` leaves it symbolic (the batch dimension), which
    /// makes the combine k times wider (see the module doc).
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
    /// The decoder's sizes; `batch` must be fixed (tokens `batch·seq` are
    /// flattened for routing).
    pub transformer: TransformerConfig,
    /// Every block's MoE layer (`hidden` is each expert's width).
    pub layer: MoeLayerConfig,
}

impl Default for MoeTransformerConfig {
    /// A small decoder (vocab 256, d 64, 2 blocks of 4 heads, seq 32,
    /// batch 16); E 8, top-2, experts 64→256→64, dropless, 0.01 · Switch.
    fn default() -> Self {
        MoeTransformerConfig {
            transformer: TransformerConfig {
                vocab: 256,
                d_model: 64,
                layers: 2,
                heads: 4,
                seq: 32,
                batch: Some(16),
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
    let Some(batch) = tc.batch else {
        return Err(crate::Error::Unsupported(
            "moe-transformer: the batch must be fixed (routing flattens batch·seq tokens)".into(),
        ));
    };
    let (t, d) = (batch * tc.seq, tc.d_model);
    let mut b = Builder::new("moe-transformer");
    let mut aux = Vec::new();
    let mut ffn = |b: &mut Builder, name: &str, h: ValueId| {
        let flat = b.reshape(h, Shape::of(&[t, d]))?;
        let out = moe_layer(b, &format!("{name}.moe"), flat, &cfg.layer)?;
        aux.extend(out.aux_loss);
        b.reshape(out.y, Shape::of(&[batch, tc.seq, d]))
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
