//! The ONNX op table: which ONNX ops the importer maps and how, for the
//! arithmetic, matrix, activation, normalization, reduction and selection
//! ops (the shape and constant ops are in `shape_ops`).
//!
//! | ONNX | IR |
//! |---|---|
//! | Add, Sub, Mul, Div, Pow | Binary (Pow's exponent cast to the base's dtype) |
//! | Equal, Greater, Less, Where | Binary Equal, Greater (Less swaps), Where |
//! | Not | `Equal(x, false)` |
//! | Sqrt, Neg, Exp, Log, Tanh, Sigmoid, Relu, Erf | Unary |
//! | Reciprocal | `1 / x` |
//! | LeakyRelu | `Where(x > 0, x, alpha * x)` |
//! | Gelu | Unary Gelu (erf or tanh form) |
//! | Cast, CastLike | Unary Cast (none when the dtype already matches) |
//! | MatMul | MatMul (1-D operands reshaped in and out) |
//! | Gemm | MatMul with transpose flags, `* alpha`, `+ beta * C` |
//! | Softmax, LogSoftmax | Nn Softmax, LogSoftmax |
//! | LayerNormalization | Nn LayerNorm over the trailing dims, flattened to one; Mean and InvStdDev (when asked for) from Reduce ops |
//! | ReduceSum, ReduceMean, ReduceMax | Reduce |
//! | Dropout | identity (mask all true), or Nn Dropout in training mode (no mask) |
//! | Trilu | `Where(mask, x, 0)` with a constant mask |
//! | Conv (2-D) | Conv Conv2d (auto_pad resolved to pads), `+ bias` reshaped to `[M, 1, 1]` |
//! | MaxPool, AveragePool (2-D) | Conv MaxPool2d, AvgPool2d (MaxPool's Indices output is not supported) |
//! | GlobalAveragePool (2-D) | ReduceMean over axes 2 and 3, kept |
//! | BatchNormalization | Reduce, arithmetic and Rsqrt (`batch_norm`): batch statistics and running-statistic state updates in training mode, the given statistics in inference mode |
//!
//! On constant inputs, the elementwise arithmetic and Cast compute directly
//! (any dtype, so integer shape arithmetic folds); everything else folds
//! through the scratch graph of `fold`.

use super::batch_norm;
use super::emit::Emit;
use super::fold;
use super::shape_ops::{self, cast_target};
use super::value::{Const, Val};
use crate::ops::{Binary, Conv2dAttrs, GeluApprox, Pool2dAttrs, ReduceKind, Unary};
use crate::shape::normalize_axis;
use crate::{DType, Dim, Error, NodeRef, Result, Shape, ValueId, rng};

/// Outputs of a mapping.
type Outs = Result<Vec<Val>>;

/// The ops the IR cannot express yet.
const NOT_YET: &[&str] = &["ConvTranspose", "GlobalMaxPool"];

/// Maps one node: the values (or constants) of its outputs, in order.
pub(crate) fn emit(e: &mut Emit<'_>) -> Outs {
    let op = e.node.op();
    if let Some(outs) = shape_ops::emit(e, op)? {
        return Ok(outs);
    }
    if let Some(u) = unary_op(op) {
        let x = e.value(0)?;
        return one(e.b.unary(u, x));
    }
    match op {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" => arithmetic(e, op),
        "Equal" => binary(e, Binary::Equal, false),
        "Greater" => binary(e, Binary::Greater, false),
        "Less" => binary(e, Binary::Greater, true),
        "Where" => {
            let (c, a, b) = (e.value(0)?, e.value(1)?, e.value(2)?);
            one(e.b.select(c, a, b))
        }
        "Neg" => neg(e),
        "Reciprocal" => {
            let x = e.value(0)?;
            let one_ = e.b.scalar_like(1.0, x)?;
            one(e.b.div(one_, x))
        }
        "LeakyRelu" => leaky_relu(e),
        "Gelu" => gelu(e),
        "Cast" => {
            let to = cast_target(e)?;
            cast(e, to)
        }
        "CastLike" => {
            let to = match e.opt(1) {
                Some(Val::Const(c)) => c.dtype,
                Some(Val::Weight(w)) => w.data.dtype,
                _ => {
                    let like = e.value(1)?;
                    e.b.dtype(like)
                }
            };
            cast(e, to)
        }
        "Not" => {
            let x = e.value(0)?;
            let no = e.b.scalar(0.0, DType::Bool)?;
            one(e.b.equal(x, no))
        }
        "MatMul" => matmul(e),
        "Gemm" => gemm(e),
        "Softmax" | "LogSoftmax" => softmax(e, op == "LogSoftmax"),
        "LayerNormalization" => layer_norm(e),
        "ReduceSum" => reduce(e, ReduceKind::Sum),
        "ReduceMean" => reduce(e, ReduceKind::Mean),
        "ReduceMax" => reduce(e, ReduceKind::Max),
        "Dropout" => dropout(e),
        "Trilu" => trilu(e),
        "Conv" => conv(e),
        "MaxPool" | "AveragePool" => pool(e, op == "MaxPool"),
        "BatchNormalization" => batch_norm::batch_norm(e),
        "GlobalAveragePool" => {
            let x = spatial_input(e, op)?;
            one(e.b.mean(x, &[2, 3], true))
        }
        _ if NOT_YET.contains(&op) => Err(e.node.unsupported(format!(
            "ONNX op '{op}' is not supported yet (the op set has no transposed convolution or global max pooling)"
        ))),
        _ => Err(Error::UnknownOp {
            node: NodeRef {
                provenance: format!("ONNX opset {}", e.node.opset),
                ..e.node.node_ref()
            },
            op: op.to_owned(),
        }),
    }
}

/// The IR op of an ONNX elementwise unary op that maps one to one.
fn unary_op(op: &str) -> Option<Unary> {
    Some(match op {
        "Sqrt" => Unary::Sqrt,
        "Exp" => Unary::Exp,
        "Log" => Unary::Log,
        "Tanh" => Unary::Tanh,
        "Sigmoid" => Unary::Sigmoid,
        "Relu" => Unary::Relu,
        "Erf" => Unary::Erf,
        _ => return None,
    })
}

fn one(v: Result<ValueId>) -> Outs {
    Ok(vec![Val::Value(v?)])
}

/// Both inputs as constants, if they are.
fn const_pair(e: &Emit<'_>) -> Option<(Const, Const)> {
    match (e.opt(0), e.opt(1)) {
        (Some(Val::Const(a)), Some(Val::Const(b))) => Some((a.clone(), b.clone())),
        _ => None,
    }
}

fn arithmetic(e: &mut Emit<'_>, op: &str) -> Outs {
    if let Some((a, b)) = const_pair(e) {
        for (i, c) in [&a, &b].into_iter().enumerate() {
            if c.has_batch() {
                return Err(e.dynamic(i));
            }
        }
        let c = fold::arith(op, &a, &b).map_err(|m| e.node.invalid(m))?;
        return Ok(vec![Val::Const(c)]);
    }
    let x = e.value(0)?;
    if !e.b.dtype(x).is_float() {
        return Err(e.node.unsupported(format!(
            "{op} of {} values computed from the graph inputs: the IR's arithmetic is float-only (integer arithmetic folds only on constants)",
            e.b.dtype(x)
        )));
    }
    let kind = match op {
        "Add" => Binary::Add,
        "Sub" => Binary::Sub,
        "Mul" => Binary::Mul,
        "Div" => Binary::Div,
        _ => Binary::Pow,
    };
    binary(e, kind, false)
}

/// `a op b`, or `b op a` when `swap`; Pow's exponent takes the base's dtype.
fn binary(e: &mut Emit<'_>, kind: Binary, swap: bool) -> Outs {
    let (a, mut b) = (e.value(0)?, e.value(1)?);
    if kind == Binary::Pow && e.b.dtype(b) != e.b.dtype(a) {
        b = e.b.cast(b, e.b.dtype(a))?;
    }
    let (a, b) = if swap { (b, a) } else { (a, b) };
    one(e.b.binary(kind, a, b))
}

fn neg(e: &mut Emit<'_>) -> Outs {
    if let Some(Val::Const(c)) = e.opt(0) {
        if c.has_batch() || c.dtype == DType::Bool {
            return Err(e.node.invalid(format!("cannot negate {}", c.type_text())));
        }
        let data = c.data.iter().map(|x| -x).collect();
        return Ok(vec![Val::Const(Const::new(c.dtype, c.shape.clone(), data))]);
    }
    let x = e.value(0)?;
    one(e.b.neg(x))
}

/// Cast (and CastLike) of input 0 to `to`.
fn cast(e: &mut Emit<'_>, to: DType) -> Outs {
    if let Some(Val::Const(c)) = e.opt(0) {
        if c.has_batch() && !to.is_int() {
            return Err(e.dynamic(0));
        }
        return Ok(vec![Val::Const(fold::cast(c, to))]);
    }
    let x = e.value(0)?;
    if e.b.dtype(x) == to {
        return Ok(vec![Val::Value(x)]);
    }
    one(e.b.cast(x, to))
}

fn leaky_relu(e: &mut Emit<'_>) -> Outs {
    let alpha = f64::from(e.node.float("alpha", 0.01)?);
    let x = e.value(0)?;
    let zero = e.b.scalar_like(0.0, x)?;
    let positive = e.b.greater(x, zero)?;
    let scaled = e.b.scale(x, alpha)?;
    one(e.b.select(positive, x, scaled))
}

fn gelu(e: &mut Emit<'_>) -> Outs {
    let approx = match e.node.string("approximate", "none")?.as_str() {
        "none" => GeluApprox::Erf,
        "tanh" => GeluApprox::Tanh,
        other => {
            return Err(e.node.bad_attr(
                "approximate",
                format!("expected 'none' or 'tanh', found '{other}'"),
            ));
        }
    };
    let x = e.value(0)?;
    one(e.b.gelu(x, approx))
}

/// numpy matmul: a 1-D operand is a row (left) or column (right) vector
/// whose axis is dropped from the result.
fn matmul(e: &mut Emit<'_>) -> Outs {
    let (mut a, mut b) = (e.value(0)?, e.value(1)?);
    let (sa, sb) = (e.shape(a), e.shape(b));
    if sa.rank() == 0 || sb.rank() == 0 {
        return Err(e.node.invalid(format!("MatMul of a scalar ({sa} x {sb})")));
    }
    if sa.rank() == 1 {
        a = e.b.reshape(a, Shape(vec![Dim::Fixed(1), sa.dims()[0]]))?;
    }
    if sb.rank() == 1 {
        b = e.b.reshape(b, Shape(vec![sb.dims()[0], Dim::Fixed(1)]))?;
    }
    let y = e.b.matmul(a, b)?;
    let mut dims = e.shape(y).dims().to_vec();
    let n = dims.len();
    if sb.rank() == 1 {
        dims.remove(n - 1);
    }
    if sa.rank() == 1 {
        dims.remove(n - 2);
    }
    one(e.b.reshape(y, Shape(dims)))
}

/// `alpha * op(A) op(B) + beta * C`.
fn gemm(e: &mut Emit<'_>) -> Outs {
    let n = e.node;
    let (alpha, beta) = (
        f64::from(n.float("alpha", 1.0)?),
        f64::from(n.float("beta", 1.0)?),
    );
    let (trans_a, trans_b) = (n.int("transA", 0)? != 0, n.int("transB", 0)? != 0);
    let (a, b) = (e.value(0)?, e.value(1)?);
    for (i, v) in [a, b].into_iter().enumerate() {
        if e.shape(v).rank() != 2 {
            return Err(n.invalid(format!(
                "{}: Gemm needs a matrix, found shape {}",
                e.describe(i),
                e.shape(v)
            )));
        }
    }
    let mut y = e.b.matmul_t(a, b, trans_a, trans_b)?;
    if alpha != 1.0 {
        y = e.b.scale(y, alpha)?;
    }
    if e.has(2) && beta != 0.0 {
        let mut c = e.value(2)?;
        if beta != 1.0 {
            c = e.b.scale(c, beta)?;
        }
        y = e.b.add(y, c)?;
    }
    one(Ok(y))
}

fn softmax(e: &mut Emit<'_>, log: bool) -> Outs {
    let x = e.value(0)?;
    let rank = e.shape(x).rank();
    let axis = e.node.int("axis", -1)?;
    if normalize_axis(axis, rank).is_none() {
        return Err(e
            .node
            .bad_attr("axis", format!("{axis} is out of range for rank {rank}")));
    }
    if log {
        one(e.b.log_softmax(x, axis))
    } else {
        one(e.b.softmax(x, axis))
    }
}

/// LayerNormalization over the dims from `axis` on: those are flattened to
/// one (they must be fixed), scale and bias broadcast to them and
/// flattened alike, and the result reshaped back.
fn layer_norm(e: &mut Emit<'_>) -> Outs {
    let x = e.value(0)?;
    let shape = e.shape(x);
    let rank = shape.rank();
    let axis = e.node.int("axis", -1)?;
    let ax = normalize_axis(axis, rank).ok_or_else(|| {
        e.node
            .bad_attr("axis", format!("{axis} is out of range for rank {rank}"))
    })?;
    let eps = f64::from(e.node.float("epsilon", 1e-5)?);
    let normalized = Shape(shape.dims()[ax..].to_vec());
    let d = normalized.numel().ok_or_else(|| {
        e.node.invalid(format!(
            "the normalized dims {normalized} of {shape} include the batch dimension"
        ))
    })?;
    let flat = Shape::of(&[d]);
    let vector = |e: &mut Emit<'_>, v: ValueId| -> Result<ValueId> {
        let full = e.b.broadcast(v, normalized.clone())?;
        e.b.reshape(full, flat.clone())
    };
    // Scale and bias default to ones and zeros.
    let param = |e: &mut Emit<'_>, i: usize, default: f64| -> Result<ValueId> {
        if e.has(i) {
            let v = e.value(i)?;
            return vector(e, v);
        }
        let c = e.b.scalar_like(default, x)?;
        e.b.broadcast(c, flat.clone())
    };
    let gamma = param(e, 1, 1.0)?;
    let beta = param(e, 2, 0.0)?;
    let mut lead = shape.dims()[..ax].to_vec();
    lead.push(Dim::Fixed(d));
    let x2 = e.b.reshape(x, Shape(lead))?;
    let y = e.b.layer_norm(x2, gamma, beta, eps)?;
    let y = e.b.reshape(y, shape.clone())?;
    let mut outs = vec![Val::Value(y)];
    if e.node.wants_output(1) || e.node.wants_output(2) {
        let mut kept = shape.dims()[..ax].to_vec();
        kept.resize(rank, Dim::Fixed(1));
        let [mean, inv_std] = layer_norm_stats(e, x2, eps)?;
        outs.push(Val::Value(e.b.reshape(mean, Shape(kept.clone()))?));
        outs.push(Val::Value(e.b.reshape(inv_std, Shape(kept))?));
    }
    Ok(outs)
}

/// The mean and `1 / sqrt(var + eps)` of `x [..., D]` over its last axis
/// (kept as 1).
fn layer_norm_stats(e: &mut Emit<'_>, x: ValueId, eps: f64) -> Result<[ValueId; 2]> {
    let mean = e.b.mean(x, &[-1], true)?;
    let centred = e.b.sub(x, mean)?;
    let square = e.b.mul(centred, centred)?;
    let var = e.b.mean(square, &[-1], true)?;
    let eps = e.b.scalar_like(eps, var)?;
    let shifted = e.b.add(var, eps)?;
    Ok([mean, e.b.rsqrt(shifted)?])
}

/// ReduceSum / ReduceMean / ReduceMax, with axes as an input (opset 13 for
/// ReduceSum, 18 for the others) or an attribute (earlier forms).
fn reduce(e: &mut Emit<'_>, kind: ReduceKind) -> Outs {
    let x = e.value(0)?;
    let rank = e.shape(x).rank();
    let mut axes = if e.has(1) {
        e.ints(1, "axes")?
    } else {
        e.node.ints("axes")?.unwrap_or_default()
    };
    let keep = e.node.int("keepdims", 1)? != 0;
    if axes.is_empty() {
        if e.node.int("noop_with_empty_axes", 0)? != 0 {
            return Ok(vec![Val::Value(x)]);
        }
        axes = (0..rank as i64).collect();
    }
    one(e.b.reduce(kind, x, &axes, keep))
}

/// Dropout: the identity (and an all-true mask) unless `training_mode` is a
/// true constant; then the IR's Dropout, keyed on the node's name, without
/// its mask.
fn dropout(e: &mut Emit<'_>) -> Outs {
    let ratio = if e.has(1) {
        e.scalar(1, "ratio")?
    } else {
        f64::from(e.node.float("ratio", 0.5)?)
    };
    let training = e.has(2) && e.scalar(2, "training_mode")? != 0.0;
    let x = e
        .opt(0)
        .cloned()
        .ok_or_else(|| e.node.invalid("input 0 is required but missing"))?;
    if !(0.0..1.0).contains(&ratio) {
        return Err(e.node.invalid(format!("ratio {ratio} is not in [0, 1)")));
    }
    if training && ratio > 0.0 {
        let x = e.value(0)?;
        let key = rng::key_of(&e.node.name);
        let mask =
            Val::Unavailable("Dropout's mask output in training mode is not supported".into());
        return Ok(vec![Val::Value(e.b.dropout(x, ratio, key)?), mask]);
    }
    let mut outs = vec![x];
    if e.node.wants_output(1) {
        let shape = e.input_shape(0)?;
        let t = e.b.scalar(1.0, DType::Bool)?;
        outs.push(Val::Value(e.b.broadcast(t, shape)?));
    }
    Ok(outs)
}

/// Trilu: the upper (or lower) triangle of the last two axes from diagonal
/// `k`, the rest zero.
fn trilu(e: &mut Emit<'_>) -> Outs {
    let x = e.value(0)?;
    let shape = e.shape(x);
    let (rows, cols) = match shape.dims() {
        [.., Dim::Fixed(r), Dim::Fixed(c)] => (*r, *c),
        _ => {
            return Err(e.node.invalid(format!(
                "expected [..., rows, cols] with both fixed, found {shape}"
            )));
        }
    };
    let k = if e.has(1) {
        e.scalar(1, "k")? as i64
    } else {
        0
    };
    let upper = e.node.int("upper", 1)? != 0;
    let keep = |i: usize, j: usize| {
        let diff = j as i64 - i as i64;
        if upper { diff >= k } else { diff <= k }
    };
    let data = (0..rows * cols)
        .map(|f| f64::from(u8::from(keep(f / cols, f % cols))))
        .collect();
    let mask = Const::new(DType::Bool, vec![rows, cols], data);
    let mask = e.constant_value(&mask, "mask")?;
    let zero = e.b.scalar_like(0.0, x)?;
    one(e.b.select(mask, x, zero))
}

/// Input 0 of a convolution or pool: a float `[N, C, H, W]` (1-D and 3-D
/// forms, and integer inputs, are unsupported).
fn spatial_input(e: &mut Emit<'_>, op: &str) -> Result<ValueId> {
    let x = e.value(0)?;
    let rank = e.shape(x).rank();
    if rank != 4 {
        let what = match rank.checked_sub(2) {
            Some(d) if d > 0 => format!("{d}-D"),
            _ => format!("rank-{rank}"),
        };
        return Err(e.node.unsupported(format!(
            "{op} on {what} data (input of shape {}): only 2-D (NCHW) is supported",
            e.shape(x)
        )));
    }
    let dtype = e.b.dtype(x);
    if !dtype.is_float() {
        return Err(e.node.unsupported(format!(
            "{op} of {dtype} values: the IR's convolution and pooling are float-only"
        )));
    }
    Ok(x)
}

/// A 2-element int attribute (`default` when absent), non-negative.
fn attr_pair(e: &Emit<'_>, name: &str, default: usize, min: usize) -> Result<[usize; 2]> {
    let v = e.node.ints(name)?;
    let Some(v) = v else {
        return Ok([default; 2]);
    };
    let bad = || {
        e.node.bad_attr(
            name,
            format!("expected 2 ints of at least {min}, found {v:?}"),
        )
    };
    match v[..] {
        [a, b] if a >= min as i64 && b >= min as i64 => Ok([a as usize, b as usize]),
        _ => Err(bad()),
    }
}

/// `[top, left, bottom, right]` from `auto_pad` and `pads`, for a window of
/// `k` taps `d` apart with strides `s` over spatial size `hw`.
fn resolve_pads(
    e: &Emit<'_>,
    hw: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
) -> Result<[usize; 4]> {
    let auto = e.node.string("auto_pad", "NOTSET")?;
    match auto.as_str() {
        "NOTSET" => match e.node.ints("pads")? {
            None => Ok([0; 4]),
            Some(v) if v.len() == 4 && v.iter().all(|&p| p >= 0) => {
                Ok([v[0] as usize, v[1] as usize, v[2] as usize, v[3] as usize])
            }
            Some(v) => Err(e
                .node
                .bad_attr("pads", format!("expected 4 non-negative ints, found {v:?}"))),
        },
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut pads = [0; 4];
            for a in 0..2 {
                let out = hw[a].div_ceil(s[a]);
                let span = d[a] * (k[a] - 1) + 1;
                let total = ((out.max(1) - 1) * s[a] + span).saturating_sub(hw[a]);
                let small = total / 2;
                let (begin, end) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[a] = begin;
                pads[a + 2] = end;
            }
            Ok(pads)
        }
        other => Err(e.node.bad_attr(
            "auto_pad",
            format!("expected NOTSET, VALID, SAME_UPPER or SAME_LOWER, found '{other}'"),
        )),
    }
}

/// The fixed spatial size of `[N, C, H, W]`.
fn fixed_hw(e: &Emit<'_>, x: ValueId) -> Result<[usize; 2]> {
    let shape = e.shape(x);
    match shape.dims() {
        [_, _, Dim::Fixed(h), Dim::Fixed(w)] => Ok([*h, *w]),
        _ => Err(e
            .node
            .invalid(format!("expected fixed spatial dims, found {shape}"))),
    }
}

/// Conv: x, w and an optional bias `[M]`.
fn conv(e: &mut Emit<'_>) -> Outs {
    let x = spatial_input(e, "Conv")?;
    let w = e.value(1)?;
    let hw = fixed_hw(e, x)?;
    let k = match e.shape(w).dims() {
        [_, _, Dim::Fixed(kh), Dim::Fixed(kw)] => [*kh, *kw],
        _ => {
            return Err(e.node.invalid(format!(
                "{}: expected a weight [M, C/group, kH, kW], found {}",
                e.describe(1),
                e.shape(w)
            )));
        }
    };
    if let Some(ks) = e.node.ints("kernel_shape")?
        && ks != [k[0] as i64, k[1] as i64]
    {
        return Err(e.node.bad_attr(
            "kernel_shape",
            format!("{ks:?} does not match the weight's {k:?}"),
        ));
    }
    let strides = attr_pair(e, "strides", 1, 1)?;
    let dilations = attr_pair(e, "dilations", 1, 1)?;
    let groups = e.node.int("group", 1)?;
    if groups < 1 {
        return Err(e
            .node
            .bad_attr("group", format!("expected a positive int, found {groups}")));
    }
    let pads = resolve_pads(e, hw, k, strides, dilations)?;
    let attrs = Conv2dAttrs {
        strides,
        pads,
        dilations,
        groups: groups as usize,
    };
    let mut y = e.b.conv2d(x, w, attrs)?;
    if e.has(2) {
        let bias = e.value(2)?;
        let m = e.shape(w).dims()[0];
        let bias =
            e.b.reshape(bias, Shape(vec![m, Dim::Fixed(1), Dim::Fixed(1)]))?;
        y = e.b.add(y, bias)?;
    }
    one(Ok(y))
}

/// MaxPool (`max`) or AveragePool.
fn pool(e: &mut Emit<'_>, max: bool) -> Outs {
    let op = if max { "MaxPool" } else { "AveragePool" };
    if max && e.node.wants_output(1) {
        return Err(e.node.unsupported(
            "MaxPool's second output, Indices (the argmax positions), is not supported",
        ));
    }
    let x = spatial_input(e, op)?;
    let hw = fixed_hw(e, x)?;
    let kernel = match e.node.ints("kernel_shape")? {
        Some(v) if v.len() == 2 && v.iter().all(|&k| k >= 1) => [v[0] as usize, v[1] as usize],
        Some(v) => {
            return Err(e.node.bad_attr(
                "kernel_shape",
                format!("expected 2 positive ints (only 2-D is supported), found {v:?}"),
            ));
        }
        None => return Err(e.node.bad_attr("kernel_shape", "is required")),
    };
    if max && e.node.int("storage_order", 0)? != 0 {
        return Err(e
            .node
            .unsupported("MaxPool with storage_order 1 (column-major indices)"));
    }
    let strides = attr_pair(e, "strides", 1, 1)?;
    let dilations = attr_pair(e, "dilations", 1, 1)?;
    let pads = resolve_pads(e, hw, kernel, strides, dilations)?;
    let ceil_mode = e.node.int("ceil_mode", 0)? != 0;
    let attrs = Pool2dAttrs {
        kernel,
        strides,
        pads,
        dilations,
        ceil_mode,
    };
    if max {
        one(e.b.max_pool2d(x, attrs))
    } else {
        let count_include_pad = e.node.int("count_include_pad", 0)? != 0;
        one(e.b.avg_pool2d(x, attrs, count_include_pad))
    }
}
