//! Mixture-of-experts ops: routing and grouped matmuls. A token's slots
//! (k of them, one per chosen expert) are packed into rows grouped by
//! expert, so an expert's work is one GEMM over exactly its rows and an
//! expert with no rows costs nothing, forward or backward.
//!
//! Shapes: `T` tokens are the product of the leading dims (so a symbolic
//! batch stays symbolic), `k` slots per token, `R = T·k` packed rows,
//! which keep the slots' shape `[..., k]`; `E` experts.
//!
//! - `TopK {k}` (x `[..., E]` float) → ids `[..., k]` i64: the k largest
//!   entries of each row in descending order; ties go to the lower index;
//!   NaN ranks below every number.
//! - `MoeRoute {experts: E, capacity_factor: float = 0}` (ids `[..., k]`
//!   int) → `row_token [..., k]` i64 (the token each packed row holds),
//!   `slot_row [..., k]` i64 (the packed row of each slot),
//!   `slot_keep [..., k]` f32 (1 kept, 0 dropped) and `offsets [E+1]` i64
//!   (expert e's rows are `offsets[e]..offsets[e+1]`; rows from
//!   `offsets[E]` on hold dropped slots). Kept slots are grouped by expert,
//!   each group in slot order (token, then choice); the dropped slots
//!   follow in slot order. With `capacity_factor` c > 0 an expert keeps
//!   its first `ceil(c · R / E)` slots (Switch Transformer's capacity,
//!   DeepSpeed's drop by position); 0 is dropless.
//! - `GroupedMatMul {transpose_w: bool = false}` (x `[..., D]`, w
//!   `[E, D, H]` or `[E, H, D]` when transposed, offsets `[E+1]`) → y
//!   `[..., H]`: `y_r = x_r · w_e` (or `x_r · w_eᵀ`) for the rows of
//!   expert e; rows from `offsets[E]` on are zero.
//! - `GroupedMatMulGradW {transpose: bool = false}` (x `[..., D]`, dy
//!   `[..., H]`, offsets `[E+1]`) → dw `[E, D, H]` (or `[E, H, D]`):
//!   `dw_e = Σ_{r of e} x_rᵀ dy_r`, zero for an expert with no rows.
//!
//! - `GatherRows` (x `[..., D]`, int idx `[...]`) → `[idx..., D]`: rows of x
//!   with its leading dims flattened (so packing works on `[batch, seq, D]`
//!   with a symbolic batch); `ScatterAddRows {leading: shape}` (updates
//!   `[idx..., D]`, idx) → zeros of `leading ++ [D]` with each update row
//!   added at its index: each is the other's VJP.
//!
//! Routing ops have integer outputs and no gradient, and are never
//! recomputed by checkpointing ([`Recompute::Never`]): a recompute could
//! otherwise route differently. The gradient of the gate's weights flows
//! through the probabilities it picks (a one-hot product of ordinary ops),
//! not through TopK. GroupedMatMul's VJP is a GroupedMatMul (for x) and a
//! GroupedMatMulGradW (for w); GroupedMatMulGradW's VJP is two
//! GroupedMatMuls, so second order works. Costs count every row as routed
//! (`2·R·D·H` FLOPs), an upper bound when capacity drops rows.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, bytes, expect_arity, expect_float, numel};
use crate::attr::{Attr, AttrReader};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, DType, Dim, Result, Shape, TensorType, ValueId};

#[derive(Debug, Clone, PartialEq)]
pub enum Moe {
    /// The k largest entries of each row, as indices.
    TopK { k: usize },
    /// Packs slots by expert: row_token, slot_row, slot_keep, offsets.
    MoeRoute {
        experts: usize,
        capacity_factor: f64,
    },
    /// Rows of x times their expert's weight.
    GroupedMatMul { transpose_w: bool },
    /// Per expert, the weight gradient of its rows.
    GroupedMatMulGradW { transpose: bool },
    /// Rows of x (its leading dims flattened) picked by int indices.
    GatherRows,
    /// The transpose of GatherRows: zeros of `leading ++ [D]`, each update
    /// row added at its index.
    ScatterAddRows { leading: Shape },
}

impl OpRules for Moe {
    fn name(&self) -> &'static str {
        match self {
            Moe::TopK { .. } => "TopK",
            Moe::MoeRoute { .. } => "MoeRoute",
            Moe::GroupedMatMul { .. } => "GroupedMatMul",
            Moe::GroupedMatMulGradW { .. } => "GroupedMatMulGradW",
            Moe::GatherRows => "GatherRows",
            Moe::ScatterAddRows { .. } => "ScatterAddRows",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let mut r = AttrReader::new(attrs);
        let op = match name {
            "TopK" => positive(&mut r, "k").map(|k| Moe::TopK { k }),
            "MoeRoute" => parse_route(&mut r),
            "GroupedMatMul" => r
                .boolean("transpose_w", Some(false))
                .map(|transpose_w| Moe::GroupedMatMul { transpose_w }),
            "GroupedMatMulGradW" => r
                .boolean("transpose", Some(false))
                .map(|transpose| Moe::GroupedMatMulGradW { transpose }),
            "GatherRows" => Ok(Moe::GatherRows),
            "ScatterAddRows" => r
                .shape("leading")
                .map(|leading| Moe::ScatterAddRows { leading }),
            _ => return None,
        };
        Some(op.and_then(|op| r.finish().map(|()| op)))
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        match self {
            Moe::TopK { k } => {
                a.insert("k".into(), Attr::Int(*k as i64));
            }
            Moe::MoeRoute {
                experts,
                capacity_factor,
            } => {
                a.insert("experts".into(), Attr::Int(*experts as i64));
                a.insert("capacity_factor".into(), Attr::Float(*capacity_factor));
            }
            Moe::GroupedMatMul { transpose_w } => {
                a.insert("transpose_w".into(), Attr::Bool(*transpose_w));
            }
            Moe::GroupedMatMulGradW { transpose } => {
                a.insert("transpose".into(), Attr::Bool(*transpose));
            }
            Moe::GatherRows => {}
            Moe::ScatterAddRows { leading } => {
                a.insert("leading".into(), Attr::Shape(leading.clone()));
            }
        }
        a
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        match *self {
            Moe::TopK { k } => {
                check_positive("k", k)?;
                expect_arity(inputs, 1)?;
                expect_float(inputs, 0)?;
                let x = &inputs[0].shape;
                let e = last_fixed(x, 0)?;
                if k > e {
                    return Err(format!(
                        "attribute 'k': {k} is more than the {e} entries of each row of input 0 {x}"
                    ));
                }
                Ok(vec![TensorType::new(DType::I64, with_last(x, k))])
            }
            Moe::MoeRoute {
                experts,
                capacity_factor,
            } => {
                check_positive("experts", experts)?;
                check_capacity_factor(capacity_factor)?;
                expect_arity(inputs, 1)?;
                expect_int(inputs, 0)?;
                let ids = &inputs[0].shape;
                if ids.rank() == 0 {
                    return Err(format!("input 0: expected ids [..., k], found {ids}"));
                }
                let slots = ids.clone();
                Ok(vec![
                    TensorType::new(DType::I64, slots.clone()),
                    TensorType::new(DType::I64, slots.clone()),
                    TensorType::new(DType::F32, slots),
                    TensorType::new(DType::I64, Shape::of(&[experts + 1])),
                ])
            }
            Moe::GroupedMatMul { transpose_w } => {
                expect_arity(inputs, 3)?;
                expect_float(inputs, 0)?;
                expect_float(inputs, 1)?;
                let experts = check_offsets(inputs, 2)?;
                let (x, w) = (&inputs[0].shape, &inputs[1].shape);
                let d = last_fixed(x, 0)?;
                let (we, wd, wh) = weight_dims(w, 1)?;
                let (k_dim, h) = if transpose_w { (wh, wd) } else { (wd, wh) };
                if we != experts {
                    return Err(format!(
                        "input 1: {we} experts in {w}, but the offsets (input 2) describe {experts}"
                    ));
                }
                if k_dim != d {
                    return Err(format!(
                        "input 1: expected {d} rows per expert (the last dim of input 0 {x}){}, found {w}",
                        if transpose_w {
                            " as its last dim (transpose_w)"
                        } else {
                            ""
                        }
                    ));
                }
                same_dtype(inputs, 0, 1)?;
                Ok(vec![TensorType::new(inputs[0].dtype, with_last(x, h))])
            }
            Moe::GroupedMatMulGradW { transpose } => {
                expect_arity(inputs, 3)?;
                expect_float(inputs, 0)?;
                expect_float(inputs, 1)?;
                let experts = check_offsets(inputs, 2)?;
                let (x, dy) = (&inputs[0].shape, &inputs[1].shape);
                let (d, h) = (last_fixed(x, 0)?, last_fixed(dy, 1)?);
                if x.rank() != dy.rank() || x.dims()[..x.rank() - 1] != dy.dims()[..dy.rank() - 1] {
                    return Err(format!(
                        "input 1: expected the leading dims of input 0 {x}, found {dy}"
                    ));
                }
                same_dtype(inputs, 0, 1)?;
                let dims = if transpose {
                    [experts, h, d]
                } else {
                    [experts, d, h]
                };
                Ok(vec![TensorType::new(inputs[0].dtype, Shape::of(&dims))])
            }
            Moe::GatherRows => {
                expect_arity(inputs, 2)?;
                expect_int(inputs, 1)?;
                let x = &inputs[0].shape;
                if x.rank() == 0 {
                    return Err(format!("input 0: expected rows [..., D], found {x}"));
                }
                let mut dims = inputs[1].shape.dims().to_vec();
                dims.push(x.dims()[x.rank() - 1]);
                Ok(vec![TensorType::new(inputs[0].dtype, Shape(dims))])
            }
            Moe::ScatterAddRows { ref leading } => {
                expect_arity(inputs, 2)?;
                expect_int(inputs, 1)?;
                let (upd, idx) = (&inputs[0].shape, &inputs[1].shape);
                if upd.rank() != idx.rank() + 1 || upd.dims()[..idx.rank()] != *idx.dims() {
                    return Err(format!(
                        "input 0: expected the indices' shape {idx} and a row width, found {upd}"
                    ));
                }
                let mut dims = leading.dims().to_vec();
                dims.push(upd.dims()[upd.rank() - 1]);
                Ok(vec![TensorType::new(inputs[0].dtype, Shape(dims))])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        match *self {
            Moe::TopK { .. } | Moe::MoeRoute { .. } => Ok(vec![None; cx.inputs.len()]),
            Moe::GroupedMatMul { transpose_w } => {
                let (x, w, offsets) = (cx.inputs[0], cx.inputs[1], cx.inputs[2]);
                let dy = cx.cotangent(0)?;
                // dw first, so that dx's GEMM sits right before whatever
                // consumes it next (the activation's backward), which the
                // fusion rewrite can then fold into the GEMM.
                let dw = match cx.wants[1] {
                    true => Some(cx.b.grouped_matmul_grad_w(x, dy, offsets, transpose_w)?),
                    false => None,
                };
                let dx = match cx.wants[0] {
                    true => Some(cx.b.grouped_matmul(dy, w, offsets, !transpose_w)?),
                    false => None,
                };
                Ok(vec![dx, dw, None])
            }
            Moe::GroupedMatMulGradW { transpose } => {
                // dw_e = Σ x_rᵀ dy_r (transposed: Σ dy_rᵀ x_r). With the
                // cotangent C_e of dw_e: dx_r = dy_r C_eᵀ, d(dy)_r = x_r C_e
                // (transposed: dx_r = dy_r C_e, d(dy)_r = x_r C_eᵀ).
                let (x, dy, offsets) = (cx.inputs[0], cx.inputs[1], cx.inputs[2]);
                let c = cx.cotangent(0)?;
                let dx = match cx.wants[0] {
                    true => Some(cx.b.grouped_matmul(dy, c, offsets, !transpose)?),
                    false => None,
                };
                let ddy = match cx.wants[1] {
                    true => Some(cx.b.grouped_matmul(x, c, offsets, transpose)?),
                    false => None,
                };
                Ok(vec![dx, ddy, None])
            }
            Moe::GatherRows => {
                let (x, idx) = (cx.inputs[0], cx.inputs[1]);
                if !cx.wants[0] {
                    return Ok(vec![None, None]);
                }
                let shape = cx.b.shape(x).clone();
                let leading = Shape(shape.dims()[..shape.rank() - 1].to_vec());
                let g = cx.cotangent(0)?;
                Ok(vec![Some(cx.b.scatter_add_rows(g, idx, leading)?), None])
            }
            Moe::ScatterAddRows { .. } => {
                if !cx.wants[0] {
                    return Ok(vec![None, None]);
                }
                let g = cx.cotangent(0)?;
                Ok(vec![Some(cx.b.gather_rows(g, cx.inputs[1])?), None])
            }
        }
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        match *self {
            Moe::TopK { .. } => Ok(vec![None]),
            Moe::MoeRoute { .. } => Ok(vec![None; 4]),
            Moe::GroupedMatMul { transpose_w } => {
                // Bilinear in (x, w).
                let (x, w, offsets) = (cx.inputs[0], cx.inputs[1], cx.inputs[2]);
                let mut terms = Vec::new();
                if let Some(tx) = cx.tangents[0] {
                    terms.push(cx.b.grouped_matmul(tx, w, offsets, transpose_w)?);
                }
                if let Some(tw) = cx.tangents[1] {
                    terms.push(cx.b.grouped_matmul(x, tw, offsets, transpose_w)?);
                }
                sum(cx, terms)
            }
            Moe::GroupedMatMulGradW { transpose } => {
                let (x, dy, offsets) = (cx.inputs[0], cx.inputs[1], cx.inputs[2]);
                let mut terms = Vec::new();
                if let Some(tx) = cx.tangents[0] {
                    terms.push(cx.b.grouped_matmul_grad_w(tx, dy, offsets, transpose)?);
                }
                if let Some(tdy) = cx.tangents[1] {
                    terms.push(cx.b.grouped_matmul_grad_w(x, tdy, offsets, transpose)?);
                }
                sum(cx, terms)
            }
            Moe::GatherRows => match cx.tangents[0] {
                Some(t) => Ok(vec![Some(cx.b.gather_rows(t, cx.inputs[1])?)]),
                None => Ok(vec![None]),
            },
            Moe::ScatterAddRows { ref leading } => match cx.tangents[0] {
                Some(t) => Ok(vec![Some(cx.b.scatter_add_rows(
                    t,
                    cx.inputs[1],
                    leading.clone(),
                )?)]),
                None => Ok(vec![None]),
            },
        }
    }

    /// TopK: about one comparison per entry and slot; MoeRoute: a pass
    /// over the slots; the grouped matmuls `2·R·D·H` (every row routed).
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        let io: u64 = inputs.iter().chain(outputs).map(|t| bytes(t)).sum();
        let flops = match self {
            Moe::TopK { k } => numel(inputs[0]) * *k as u64,
            Moe::MoeRoute { .. } => numel(inputs[0]),
            Moe::GroupedMatMul { .. } => {
                // y [R, H] from x [R, D]: 2·R·D·H = 2·numel(y)·D.
                let d = inputs[0].shape.dims().last().and_then(|d| d.fixed());
                2 * numel(outputs[0]) * d.unwrap_or(1) as u64
            }
            Moe::GroupedMatMulGradW { .. } => {
                // 2·R·D·H = 2·numel(x)·H.
                let h = inputs[1].shape.dims().last().and_then(|d| d.fixed());
                2 * numel(inputs[0]) * h.unwrap_or(1) as u64
            }
            Moe::GatherRows => 0,
            // One add per update element.
            Moe::ScatterAddRows { .. } => numel(inputs[0]),
        };
        Cost { flops, bytes: io }
    }

    fn recompute(&self) -> Recompute {
        match self {
            Moe::TopK { .. } | Moe::MoeRoute { .. } => Recompute::Never,
            Moe::GroupedMatMul { .. } | Moe::GroupedMatMulGradW { .. } => Recompute::Expensive,
            Moe::GatherRows | Moe::ScatterAddRows { .. } => Recompute::Cheap,
        }
    }

    fn bind_batch(&self, batch: usize) -> Self {
        match self {
            Moe::ScatterAddRows { leading } => Moe::ScatterAddRows {
                leading: leading.bind_batch(batch),
            },
            other => other.clone(),
        }
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        match (self, inputs) {
            (&Moe::TopK { k }, [x]) => Ok(vec![top_k(x, k)]),
            (
                &Moe::MoeRoute {
                    experts,
                    capacity_factor,
                },
                [ids],
            ) => route(ids, experts, capacity_factor),
            (&Moe::GroupedMatMul { transpose_w }, [x, w, offsets]) => {
                grouped_matmul(x, w, offsets, transpose_w).map(|t| vec![t])
            }
            (&Moe::GroupedMatMulGradW { transpose }, [x, dy, offsets]) => {
                grouped_grad_w(x, dy, offsets, transpose).map(|t| vec![t])
            }
            (Moe::GatherRows, [x, idx]) => gather_rows(x, idx).map(|t| vec![t]),
            (Moe::ScatterAddRows { leading }, [upd, idx]) => {
                scatter_add_rows(upd, idx, leading).map(|t| vec![t])
            }
            _ => Err(format!(
                "{}: wrong number of inputs ({})",
                self.name(),
                inputs.len()
            )),
        }
    }
}

fn positive(r: &mut AttrReader<'_>, name: &'static str) -> std::result::Result<usize, String> {
    let v = r.int(name, None)?;
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("attribute '{name}': expected a positive int, found {v}"))
}

/// The check of [`positive`] for an op built without parsing (Builder).
fn check_positive(name: &str, v: usize) -> std::result::Result<(), String> {
    match v {
        0 => Err(format!(
            "attribute '{name}': expected a positive int, found 0"
        )),
        _ => Ok(()),
    }
}

fn check_capacity_factor(capacity_factor: f64) -> std::result::Result<(), String> {
    if capacity_factor.is_finite() && capacity_factor >= 0.0 {
        Ok(())
    } else {
        Err(format!(
            "attribute 'capacity_factor': expected 0 (dropless) or a positive factor, found {capacity_factor}"
        ))
    }
}

fn parse_route(r: &mut AttrReader<'_>) -> std::result::Result<Moe, String> {
    let experts = positive(r, "experts")?;
    let capacity_factor = r.float("capacity_factor", Some(0.0))?;
    check_capacity_factor(capacity_factor)?;
    Ok(Moe::MoeRoute {
        experts,
        capacity_factor,
    })
}

fn expect_int(inputs: &[&TensorType], i: usize) -> std::result::Result<(), String> {
    if inputs[i].dtype.is_int() {
        Ok(())
    } else {
        Err(format!(
            "input {i}: expected an int dtype (i32 or i64), found {}",
            inputs[i].dtype
        ))
    }
}

fn same_dtype(inputs: &[&TensorType], a: usize, b: usize) -> std::result::Result<(), String> {
    if inputs[a].dtype == inputs[b].dtype {
        Ok(())
    } else {
        Err(format!(
            "input {b}: expected {} like input {a}, found {}",
            inputs[a].dtype, inputs[b].dtype
        ))
    }
}

/// The fixed last dim of input `i`.
fn last_fixed(shape: &Shape, i: usize) -> std::result::Result<usize, String> {
    shape
        .dims()
        .last()
        .and_then(|d| d.fixed())
        .ok_or_else(|| format!("input {i}: expected a fixed last dim, found {shape}"))
}

fn with_last(shape: &Shape, last: usize) -> Shape {
    let mut dims = shape.dims().to_vec();
    if let Some(l) = dims.last_mut() {
        *l = Dim::Fixed(last);
    }
    Shape(dims)
}

/// Offsets `[E+1]` of an int dtype at input `i`; returns E.
fn check_offsets(inputs: &[&TensorType], i: usize) -> std::result::Result<usize, String> {
    expect_int(inputs, i)?;
    match inputs[i].shape.dims() {
        [Dim::Fixed(n)] if *n >= 2 => Ok(n - 1),
        _ => Err(format!(
            "input {i}: expected offsets [experts + 1] (at least 2), found {}",
            inputs[i].shape
        )),
    }
}

/// `[E, A, B]` with fixed dims.
fn weight_dims(w: &Shape, i: usize) -> std::result::Result<(usize, usize, usize), String> {
    match w.dims() {
        [Dim::Fixed(e), Dim::Fixed(a), Dim::Fixed(b)] => Ok((*e, *a, *b)),
        _ => Err(format!(
            "input {i}: expected expert weights [experts, in, out] with fixed dims, found {w}"
        )),
    }
}

fn sum(cx: &mut JvpCx<'_>, terms: Vec<ValueId>) -> Result<Vec<Option<ValueId>>> {
    let mut it = terms.into_iter();
    let Some(mut acc) = it.next() else {
        return Ok(vec![None]);
    };
    for t in it {
        acc = cx.b.add(acc, t)?;
    }
    Ok(vec![Some(acc)])
}

/// Rows of a tensor: the product of its leading dims (right even when the
/// last dim is 0).
fn rows(t: &Tensor) -> usize {
    t.shape[..t.shape.len().saturating_sub(1)].iter().product()
}

/// The order of TopK's ranking, worst first: numbers by value, NaN below
/// every number (-inf included), equal numbers and NaNs equal.
fn ranks_below(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

fn top_k(x: &Tensor, k: usize) -> Tensor {
    let e = x.shape.last().copied().unwrap_or(1);
    let mut shape = x.shape.clone();
    if let Some(l) = shape.last_mut() {
        *l = k;
    }
    let mut out = Vec::with_capacity(rows(x) * k);
    for row in x.data.chunks(e.max(1)) {
        let mut idx: Vec<usize> = (0..e).collect();
        // Best first; a stable sort keeps ties (-0 and 0 included) in
        // index order.
        idx.sort_by(|&a, &b| ranks_below(row[b], row[a]));
        out.extend(idx[..k].iter().map(|&i| i as f64));
    }
    Tensor::new(shape, out)
}

/// Per-expert capacity: `ceil(c · R / E)`, or every row when c is 0.
pub fn capacity(capacity_factor: f64, rows: usize, experts: usize) -> usize {
    if capacity_factor <= 0.0 {
        rows
    } else {
        (capacity_factor * rows as f64 / experts as f64).ceil() as usize
    }
}

fn route(
    ids: &Tensor,
    experts: usize,
    capacity_factor: f64,
) -> std::result::Result<Vec<Tensor>, String> {
    let r = ids.data.len();
    let cap = capacity(capacity_factor, r, experts);
    let k = ids.shape.last().copied().unwrap_or(1).max(1);
    let mut by_expert: Vec<Vec<usize>> = vec![Vec::new(); experts];
    let mut dropped = Vec::new();
    for (slot, &id) in ids.data.iter().enumerate() {
        if !(id >= 0.0 && id < experts as f64 && id.fract() == 0.0) {
            return Err(format!(
                "expert id {id} at slot {slot} is out of range [0, {experts})"
            ));
        }
        let group = &mut by_expert[id as usize];
        if group.len() < cap {
            group.push(slot);
        } else {
            dropped.push(slot);
        }
    }
    let mut row_token = vec![0.0; r];
    let mut slot_row = vec![0.0; r];
    let mut slot_keep = vec![0.0; r];
    let mut offsets = Vec::with_capacity(experts + 1);
    let mut row = 0;
    for group in &by_expert {
        offsets.push(row as f64);
        for &slot in group {
            row_token[row] = (slot / k) as f64;
            slot_row[slot] = row as f64;
            slot_keep[slot] = 1.0;
            row += 1;
        }
    }
    offsets.push(row as f64);
    for &slot in &dropped {
        row_token[row] = (slot / k) as f64;
        slot_row[slot] = row as f64;
        row += 1;
    }
    let shape = ids.shape.clone();
    Ok(vec![
        Tensor::new(shape.clone(), row_token),
        Tensor::new(shape.clone(), slot_row),
        Tensor::new(shape, slot_keep),
        Tensor::new(vec![experts + 1], offsets),
    ])
}

/// Checked offsets as row ranges, one per expert.
fn groups(offsets: &Tensor, rows: usize) -> std::result::Result<Vec<(usize, usize)>, String> {
    let o = &offsets.data;
    let bad = |why: &str| format!("offsets {o:?}: {why} (rows: {rows})");
    if o.first() != Some(&0.0) {
        return Err(bad("must start at 0"));
    }
    let mut out = Vec::with_capacity(o.len().saturating_sub(1));
    for w in o.windows(2) {
        if w[1] < w[0] || w[1] > rows as f64 || w[1].fract() != 0.0 {
            return Err(bad(
                "must be whole, non-decreasing and at most the row count",
            ));
        }
        out.push((w[0] as usize, w[1] as usize));
    }
    Ok(out)
}

fn grouped_matmul(
    x: &Tensor,
    w: &Tensor,
    offsets: &Tensor,
    transpose_w: bool,
) -> std::result::Result<Tensor, String> {
    let (d, r) = (x.shape.last().copied().unwrap_or(1), rows(x));
    let (a, b) = (w.shape[1], w.shape[2]);
    let h = if transpose_w { a } else { b };
    let mut out = vec![0.0; r * h];
    for (e, (lo, hi)) in groups(offsets, r)?.into_iter().enumerate() {
        let we = &w.data[e * a * b..(e + 1) * a * b];
        for row in lo..hi {
            let xr = &x.data[row * d..(row + 1) * d];
            for (j, o) in out[row * h..(row + 1) * h].iter_mut().enumerate() {
                *o = (0..d)
                    .map(|i| {
                        let wij = if transpose_w {
                            we[j * b + i]
                        } else {
                            we[i * b + j]
                        };
                        xr[i] * wij
                    })
                    .sum();
            }
        }
    }
    let mut shape = x.shape.clone();
    if let Some(l) = shape.last_mut() {
        *l = h;
    }
    Ok(Tensor::new(shape, out))
}

fn grouped_grad_w(
    x: &Tensor,
    dy: &Tensor,
    offsets: &Tensor,
    transpose: bool,
) -> std::result::Result<Tensor, String> {
    let (d, h, r) = (
        x.shape.last().copied().unwrap_or(1),
        dy.shape.last().copied().unwrap_or(1),
        rows(x),
    );
    let groups = groups(offsets, r)?;
    let experts = groups.len();
    let mut out = vec![0.0; experts * d * h];
    for (e, (lo, hi)) in groups.into_iter().enumerate() {
        let block = &mut out[e * d * h..(e + 1) * d * h];
        for row in lo..hi {
            for i in 0..d {
                let xi = x.data[row * d + i];
                for j in 0..h {
                    let g = xi * dy.data[row * h + j];
                    if transpose {
                        block[j * d + i] += g;
                    } else {
                        block[i * h + j] += g;
                    }
                }
            }
        }
    }
    let shape = if transpose {
        vec![experts, h, d]
    } else {
        vec![experts, d, h]
    };
    Ok(Tensor::new(shape, out))
}

#[cfg(test)]
#[path = "tests/moe.rs"]
mod tests;

/// Rows of `x` (leading dims flattened) at `idx`.
fn gather_rows(x: &Tensor, idx: &Tensor) -> std::result::Result<Tensor, String> {
    let d = x.shape.last().copied().unwrap_or(1);
    let n = rows(x);
    let mut out = Vec::with_capacity(idx.data.len() * d);
    for &i in &idx.data {
        if !(i >= 0.0 && i < n as f64 && i.fract() == 0.0) {
            return Err(format!("row index {i} is out of range [0, {n})"));
        }
        let r = i as usize;
        out.extend_from_slice(&x.data[r * d..(r + 1) * d]);
    }
    let mut shape = idx.shape.clone();
    shape.push(d);
    Ok(Tensor::new(shape, out))
}

/// Zeros of `leading ++ [D]` with each update row added at its index.
fn scatter_add_rows(
    upd: &Tensor,
    idx: &Tensor,
    leading: &Shape,
) -> std::result::Result<Tensor, String> {
    let d = upd.shape.last().copied().unwrap_or(1);
    let mut shape: Vec<usize> = leading
        .dims()
        .iter()
        .map(|dim| {
            dim.fixed()
                .ok_or_else(|| format!("attribute 'leading': {leading} is not bound"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let mut out = vec![0.0; n * d];
    for (j, &i) in idx.data.iter().enumerate() {
        if !(i >= 0.0 && i < n as f64 && i.fract() == 0.0) {
            return Err(format!("row index {i} is out of range [0, {n})"));
        }
        let r = i as usize;
        for (o, u) in out[r * d..(r + 1) * d]
            .iter_mut()
            .zip(&upd.data[j * d..(j + 1) * d])
        {
            *o += u;
        }
    }
    shape.push(d);
    Ok(Tensor::new(shape, out))
}
