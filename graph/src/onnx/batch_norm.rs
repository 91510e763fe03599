//! BatchNormalization, in the IR's existing ops (reductions, arithmetic,
//! rsqrt), so its gradients are those ops' VJPs.
//!
//! For `X [N, C, D1, ...]` (a 1-D `X [N]` has one channel) and the
//! per-channel vectors `scale`, `B`, `input_mean`, `input_var` (each `[C]`):
//!
//! - Training mode normalizes with the batch statistics over every axis
//!   but the channel's: `mean`, and `var` the population variance
//!   (`sum((x - mean)^2) / n`), `Y = (X - mean) * rsqrt(var + epsilon) *
//!   scale + B`. The running statistics are `input_mean * momentum + mean
//!   * (1 - momentum)` and the same for the variance, where the variance
//!   is the population variance as the ONNX spec says, or, when PyTorch
//!   wrote the model (its `producer_name`), the unbiased sample variance
//!   (`var * n / (n - 1)`) as `torch.nn.BatchNorm` updates its
//!   `running_var`, so the statistics match PyTorch's. (PyTorch's
//!   `momentum` is `1 -` the ONNX attribute; its exporter writes it so.)
//! - Inference mode normalizes with `input_mean` and `input_var`.
//!
//! Which mode: opset 14 and newer read `training_mode` (default 0; outputs
//! `running_mean` and `running_var` only in training mode); opset 13 (the
//! opset-9 form) is in training mode when the node lists any output after
//! `Y` (`mean`, `var`, `saved_mean`, `saved_var`: the running statistics,
//! then the batch mean and the batch population variance).
//!
//! `input_mean` and `input_var` given as float initializers become
//! non-trainable state named as the initializers (in either mode); in
//! training mode the running statistics are their updates, so a training
//! step replaces them as PyTorch's forward does. `scale` and `B`
//! initializers become parameters like any other (trainable unless
//! frozen).

use super::emit::Emit;
use super::value::Val;
use crate::{DType, Dim, Result, Shape, ValueId};

/// Outputs of a mapping.
type Outs = Result<Vec<Val>>;

/// The five inputs by position, for messages.
const INPUTS: [&str; 5] = ["X", "scale", "B", "input_mean", "input_var"];

/// `input i (scale, 'name')` for messages.
fn describe(e: &Emit<'_>, i: usize) -> String {
    format!("input {i} ({}, '{}')", INPUTS[i], e.node.input_name(i))
}

/// Maps one BatchNormalization node.
pub(crate) fn batch_norm(e: &mut Emit<'_>) -> Outs {
    let eps = f64::from(e.node.float("epsilon", 1e-5)?);
    let momentum = f64::from(e.node.float("momentum", 0.9)?);
    let training = training_mode(e)?;
    if let Some((i, name)) = INPUTS.iter().enumerate().find(|(i, _)| !e.has(*i)) {
        return Err(e
            .node
            .invalid(format!("input {i} ({name}) is required but missing")));
    }
    let (x, channels) = data_input(e)?;
    let shape = e.input_shape(0)?;
    let dtype = e.b.dtype(x);
    let states = [e.state(3)?, e.state(4)?];
    let vectors = (1..5)
        .map(|i| channel_vector(e, i, channels, dtype))
        .collect::<Result<Vec<_>>>()?;
    let [scale, bias, input_mean, input_var] = [vectors[0], vectors[1], vectors[2], vectors[3]];
    if !training {
        let y = normalize(e, x, input_mean, input_var, scale, bias, eps)?;
        return Ok(vec![Val::Value(e.b.reshape(y, shape)?)]);
    }

    let axes: Vec<i64> = (0..e.shape(x).rank() as i64).filter(|&a| a != 1).collect();
    let mean = e.b.mean(x, &axes, true)?;
    let centred = e.b.sub(x, mean)?;
    let square = e.b.mul(centred, centred)?;
    let var = e.b.mean(square, &axes, true)?;
    let factor = inv_std_times(e, var, scale, eps)?;
    let scaled = e.b.mul(centred, factor)?;
    let y = e.b.add(scaled, bias)?;
    let y = e.b.reshape(y, shape)?;

    let flat = Shape::of(&[channels]);
    let batch = [e.b.reshape(mean, flat.clone())?, e.b.reshape(var, flat)?];
    let mut outs = vec![Val::Value(y)];
    outs.extend(running_stats(e, x, batch, &axes, momentum, states)?);
    Ok(outs)
}

/// Input 0 (X), a 1-D `[N]` reshaped to `[N, 1]`, and its channels.
fn data_input(e: &mut Emit<'_>) -> Result<(ValueId, usize)> {
    let x = e.value(0)?;
    let dtype = e.b.dtype(x);
    if !dtype.is_float() {
        return Err(e.node.unsupported(format!(
            "BatchNormalization of {dtype} values: the IR's arithmetic is float-only"
        )));
    }
    let shape = e.shape(x);
    let x = match shape.rank() {
        0 => {
            return Err(e.node.invalid(format!(
                "input 0 (X) must be [N, C, ...] or [N], found a scalar {shape}"
            )));
        }
        1 => {
            e.b.reshape(x, Shape(vec![shape.dims()[0], Dim::Fixed(1)]))?
        }
        _ => x,
    };
    match e.shape(x).dims()[1] {
        Dim::Fixed(c) => Ok((x, c)),
        Dim::Batch => Err(e.node.invalid(format!(
            "the channel axis (1) of input 0 (X, {shape}) is the batch dimension"
        ))),
    }
}

/// The outputs after Y in training mode, from the batch mean and
/// population variance `batch` (each `[C]`) of `x` over `axes`: the
/// running mean and variance (made the updates of `states`, where those
/// are state), and for the opset-9 form the batch mean and variance.
fn running_stats(
    e: &mut Emit<'_>,
    x: ValueId,
    batch: [ValueId; 2],
    axes: &[i64],
    momentum: f64,
    states: [Option<ValueId>; 2],
) -> Outs {
    let [batch_mean, batch_var] = batch;
    let var_for_running = if e.node.from_pytorch {
        unbiased(e, x, batch_var, axes)?
    } else {
        batch_var
    };
    let running_mean = running(e, 3, batch_mean, momentum)?;
    let running_var = running(e, 4, var_for_running, momentum)?;
    let [mean_state, var_state] = states;
    set_update(e, mean_state, running_mean, 3)?;
    set_update(e, var_state, running_var, 4)?;
    let mut outs = vec![Val::Value(running_mean), Val::Value(running_var)];
    if e.node.opset < 14 {
        let saved_mean = like_input(e, batch_mean, 3)?;
        let saved_var = like_input(e, batch_var, 4)?;
        outs.extend([Val::Value(saved_mean), Val::Value(saved_var)]);
    }
    Ok(outs)
}

/// Whether the node runs in training mode (see the module doc).
fn training_mode(e: &Emit<'_>) -> Result<bool> {
    let n = e.node;
    if n.opset < 14 {
        return Ok((1..n.outputs()).any(|i| n.wants_output(i)));
    }
    let training = match n.int("training_mode", 0)? {
        0 => false,
        1 => true,
        other => {
            return Err(n.bad_attr("training_mode", format!("expected 0 or 1, found {other}")));
        }
    };
    if !training && (1..n.outputs()).any(|i| n.wants_output(i)) {
        return Err(n.invalid(
            "training_mode is 0, so only output 0 (Y) is defined; running_mean and running_var are outputs of training mode",
        ));
    }
    Ok(training)
}

/// Input `i`, a `[C]` vector, in `dtype`, shaped `[C, 1, ...]` to broadcast
/// against `X [N, C, ...]`.
fn channel_vector(e: &mut Emit<'_>, i: usize, channels: usize, dtype: DType) -> Result<ValueId> {
    let v = e.value(i)?;
    let shape = e.shape(v);
    if shape != Shape::of(&[channels]) {
        return Err(e.node.invalid(format!(
            "{}: expected shape [{channels}] (the channels of X), found {shape}",
            describe(e, i)
        )));
    }
    let v = if e.b.dtype(v) == dtype {
        v
    } else {
        e.b.cast(v, dtype)?
    };
    let x = e.value(0)?;
    let rank = e.shape(x).rank().max(2);
    let mut dims = vec![Dim::Fixed(channels)];
    dims.resize(rank - 1, Dim::Fixed(1));
    e.b.reshape(v, Shape(dims))
}

/// `rsqrt(var + eps) * scale`.
fn inv_std_times(e: &mut Emit<'_>, var: ValueId, scale: ValueId, eps: f64) -> Result<ValueId> {
    let eps = e.b.scalar_like(eps, var)?;
    let shifted = e.b.add(var, eps)?;
    let inv_std = e.b.rsqrt(shifted)?;
    e.b.mul(inv_std, scale)
}

/// Inference: `(x - mean) * rsqrt(var + eps) * scale + bias`.
fn normalize(
    e: &mut Emit<'_>,
    x: ValueId,
    mean: ValueId,
    var: ValueId,
    scale: ValueId,
    bias: ValueId,
    eps: f64,
) -> Result<ValueId> {
    let factor = inv_std_times(e, var, scale, eps)?;
    let centred = e.b.sub(x, mean)?;
    let scaled = e.b.mul(centred, factor)?;
    e.b.add(scaled, bias)
}

/// The unbiased variance `var * n / (n - 1)` from the population variance
/// `var [C]` of `x` over `axes`; `n` is a constant when `x`'s shape is
/// fixed, else counted in the graph.
fn unbiased(e: &mut Emit<'_>, x: ValueId, var: ValueId, axes: &[i64]) -> Result<ValueId> {
    let shape = e.shape(x);
    match shape.numel() {
        Some(total) => {
            let n = total / shape.dims()[1].fixed().unwrap_or(1).max(1);
            if n < 2 {
                return Err(e.node.invalid(format!(
                    "training mode needs more than one value per channel (X is {shape}): the unbiased variance PyTorch keeps as running_var is undefined"
                )));
            }
            e.b.scale(var, n as f64 / (n - 1) as f64)
        }
        None => {
            let ones = e.b.full_like(1.0, x)?;
            let n = e.b.sum(ones, axes, false)?;
            let one = e.b.scalar_like(1.0, n)?;
            let n_minus_1 = e.b.sub(n, one)?;
            let ratio = e.b.div(n, n_minus_1)?;
            e.b.mul(var, ratio)
        }
    }
}

/// `input_i * momentum + stat * (1 - momentum)`, in the dtype of input `i`.
fn running(e: &mut Emit<'_>, i: usize, stat: ValueId, momentum: f64) -> Result<ValueId> {
    let input = e.value(i)?;
    let dtype = e.b.dtype(input);
    let stat = if e.b.dtype(stat) == dtype {
        stat
    } else {
        e.b.cast(stat, dtype)?
    };
    let kept = e.b.scale(input, momentum)?;
    let new = e.b.scale(stat, 1.0 - momentum)?;
    e.b.add(kept, new)
}

/// `v` in the dtype of input `i`.
fn like_input(e: &mut Emit<'_>, v: ValueId, i: usize) -> Result<ValueId> {
    let input = e.value(i)?;
    let dtype = e.b.dtype(input);
    if e.b.dtype(v) == dtype {
        Ok(v)
    } else {
        e.b.cast(v, dtype)
    }
}

/// Makes `update` the update of input `i`'s state (when it is state); a
/// running statistic that an earlier node already made a parameter, or
/// that another node already updates, cannot be one.
fn set_update(e: &mut Emit<'_>, state: Option<ValueId>, update: ValueId, i: usize) -> Result<()> {
    let Some(state) = state else {
        if matches!(e.opt(i), Some(Val::Weight(_))) {
            return Err(e.node.unsupported(format!(
                "{}: the initializer is also read as a parameter by an earlier node, so it cannot hold running statistics",
                describe(e, i)
            )));
        }
        return Ok(());
    };
    let taken =
        e.b.graph()
            .state
            .iter()
            .any(|s| s.value == state && s.update.is_some());
    if taken {
        return Err(e.node.unsupported(format!(
            "{}: the running statistic is already updated by an earlier BatchNormalization in training mode; each needs its own",
            describe(e, i)
        )));
    }
    e.b.set_state_update(state, update);
    Ok(())
}
