//! `transformer`: a GPT-style decoder. Learned token and position
//! embeddings, pre-LN blocks of causal multi-head attention and a
//! d→4d→d tanh-GELU MLP, a final LayerNorm, an untied head, and
//! cross-entropy over every position.

use super::batch_dim;
use crate::ops::GeluApprox;
use crate::{Builder, DType, Dim, Graph, Init, InputRole, Result, Shape, ValueId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformerConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub seq: usize,
    /// `None` leaves the batch dimension symbolic.
    pub batch: Option<usize>,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            vocab: 256,
            d_model: 256,
            layers: 4,
            heads: 4,
            seq: 128,
            batch: None,
        }
    }
}

const LN_EPS: f64 = 1e-5;

fn gpt_init() -> Init {
    Init::Normal {
        mean: 0.0,
        std: 0.02,
    }
}

/// The feed-forward half of a block: `ffn(builder, block name, ln_2(x))`
/// gives what is added to the residual stream.
pub(super) type Ffn<'a> = dyn FnMut(&mut Builder, &str, ValueId) -> Result<ValueId> + 'a;

/// Inputs `tokens` and `targets` `[batch, seq]` (i64); output `loss`.
pub fn transformer(cfg: &TransformerConfig) -> Result<Graph> {
    let mut b = Builder::new("transformer");
    let d = cfg.d_model;
    let loss = decoder(&mut b, cfg, &mut |b, name, h| mlp(b, name, h, d))?;
    b.rename(loss, "loss")?;
    b.loss(loss);
    b.finish()
}

/// The decoder with `ffn` as every block's feed-forward half: declares the
/// inputs and parameters and returns the cross-entropy (not yet named or
/// marked as the loss).
pub(super) fn decoder(
    b: &mut Builder,
    cfg: &TransformerConfig,
    ffn: &mut Ffn<'_>,
) -> Result<ValueId> {
    if cfg.heads == 0 || !cfg.d_model.is_multiple_of(cfg.heads) {
        return Err(crate::Error::Unsupported(format!(
            "transformer: d_model {} is not divisible by heads {}",
            cfg.d_model, cfg.heads
        )));
    }
    let batch = batch_dim(cfg.batch);
    let tokens_shape = Shape(vec![batch, cfg.seq.into()]);
    let tokens = b.input("tokens", DType::I64, tokens_shape.clone(), InputRole::Data)?;
    let targets = b.input("targets", DType::I64, tokens_shape, InputRole::Label)?;
    let wte = b.param("wte", DType::F32, &[cfg.vocab, cfg.d_model], gpt_init())?;
    let wpe = b.param("wpe", DType::F32, &[cfg.seq, cfg.d_model], gpt_init())?;
    b.set_provenance("embedding");
    let tok = b.gather(wte, tokens, 0)?;
    let mut x = b.add(tok, wpe)?;
    for layer in 0..cfg.layers {
        x = block(b, cfg, &format!("h.{layer}"), x, ffn)?;
    }
    let x = layer_norm(b, "ln_f", x, cfg.d_model)?;
    let head = b.param(
        "head.weight",
        DType::F32,
        &[cfg.d_model, cfg.vocab],
        gpt_init(),
    )?;
    b.set_provenance("head");
    let logits = b.matmul(x, head)?;
    b.set_provenance("loss");
    b.softmax_cross_entropy(logits, targets)
}

/// One pre-LN block: `x + attn(ln1(x))`, then `x + ffn(ln2(x))`.
fn block(
    b: &mut Builder,
    cfg: &TransformerConfig,
    name: &str,
    x: ValueId,
    ffn: &mut Ffn<'_>,
) -> Result<ValueId> {
    let d = cfg.d_model;
    let h = layer_norm(b, &format!("{name}.ln_1"), x, d)?;
    let a = attention(b, cfg, &format!("{name}.attn"), h)?;
    b.set_provenance(name);
    let x = b.add(x, a)?;
    let h = layer_norm(b, &format!("{name}.ln_2"), x, d)?;
    let h = ffn(b, name, h)?;
    b.set_provenance(name);
    b.add(x, h)
}

/// The d→4d→d tanh-GELU MLP of block `name`.
fn mlp(b: &mut Builder, name: &str, h: ValueId, d: usize) -> Result<ValueId> {
    let h = dense(b, &format!("{name}.mlp.fc"), h, d, 4 * d)?;
    b.set_provenance(&format!("{name}.mlp.gelu"));
    let h = b.gelu(h, GeluApprox::Tanh)?;
    dense(b, &format!("{name}.mlp.proj"), h, 4 * d, d)
}

/// Causal multi-head self-attention with a fused QKV projection.
fn attention(b: &mut Builder, cfg: &TransformerConfig, name: &str, x: ValueId) -> Result<ValueId> {
    let (d, heads, seq) = (cfg.d_model, cfg.heads, cfg.seq);
    let head_dim = d / heads;
    let qkv = dense(b, &format!("{name}.qkv"), x, d, 3 * d)?;
    b.set_provenance(name);
    b.push_scope(name);
    let batch = b.shape(x).dims()[0];
    let split = Shape(vec![batch, seq.into(), heads.into(), head_dim.into()]);
    let mut parts = Vec::with_capacity(3);
    for i in 0..3 {
        let part = b.slice(qkv, -1, i * d, (i + 1) * d)?;
        let part = b.reshape(part, split.clone())?;
        parts.push(b.transpose(part, &[0, 2, 1, 3])?);
    }
    let (q, k, v) = (parts[0], parts[1], parts[2]);
    let scores = b.matmul_t(q, k, false, true)?;
    let scores = b.scale(scores, 1.0 / (head_dim as f64).sqrt())?;
    let scores = b.causal_mask(scores, f64::NEG_INFINITY)?;
    let probs = b.softmax(scores, -1)?;
    let out = b.matmul(probs, v)?;
    let out = b.transpose(out, &[0, 2, 1, 3])?;
    let out = b.reshape(out, Shape(vec![batch, Dim::Fixed(seq), Dim::Fixed(d)]))?;
    b.pop_scope();
    dense(b, &format!("{name}.proj"), out, d, d)
}

/// `x · W + b` with GPT-2's initialization (W ~ N(0, 0.02), b = 0).
fn dense(b: &mut Builder, name: &str, x: ValueId, inp: usize, out: usize) -> Result<ValueId> {
    let w = b.param(
        &format!("{name}.weight"),
        DType::F32,
        &[inp, out],
        gpt_init(),
    )?;
    let bias = b.param(&format!("{name}.bias"), DType::F32, &[out], Init::Zeros)?;
    b.set_provenance(name);
    b.push_scope(name);
    let y = b.matmul(x, w)?;
    let y = b.add(y, bias)?;
    b.pop_scope();
    Ok(y)
}

fn layer_norm(b: &mut Builder, name: &str, x: ValueId, d: usize) -> Result<ValueId> {
    let gamma = b.param(
        &format!("{name}.weight"),
        DType::F32,
        &[d],
        Init::Constant(1.0),
    )?;
    let beta = b.param(&format!("{name}.bias"), DType::F32, &[d], Init::Zeros)?;
    b.set_provenance(name);
    b.push_scope(name);
    let y = b.layer_norm(x, gamma, beta, LN_EPS)?;
    b.pop_scope();
    Ok(y)
}
