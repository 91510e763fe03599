//! Mappings of the ONNX ops that make constants or move entries: Constant,
//! ConstantOfShape, Shape, Size, Range, Identity, Reshape, Flatten,
//! Squeeze, Unsqueeze, Transpose, Concat, Split, Slice, Gather and Expand.
//!
//! Inputs that say how to reshape or index (shapes, axes, starts, ...) must
//! be constants at import. Each mapping computes directly on constant data
//! where it can, so `Shape -> Gather -> Unsqueeze -> Concat -> Reshape`
//! chains fold to constants, and a batch dimension taken by `Shape` flows
//! through them into the target shape as the batch symbol.

use adjoint_proto::onnx::TensorProto;

use super::emit::{DYNAMIC, Emit};
use super::fold::{self, MAX_FOLD_ELEMENTS, Window};
use super::tensor::{check_extent, dtype_of, readable, tensor_data};
use super::value::{Const, Val};
use crate::ops::{Movement, Op};
use crate::shape::{broadcast_shapes, normalize_axis};
use crate::{DType, Dim, Result, Shape};

/// Outputs of a mapping.
type Outs = Result<Vec<Val>>;

/// Maps the node if it is one of this file's ops.
pub(crate) fn emit(e: &mut Emit<'_>, op: &str) -> Result<Option<Vec<Val>>> {
    let outs = match op {
        "Constant" => constant(e)?,
        "ConstantOfShape" => constant_of_shape(e)?,
        "Shape" => shape(e)?,
        "Size" => size(e)?,
        "Range" => range(e)?,
        "Identity" => vec![e.opt(0).cloned().ok_or_else(|| missing(e, 0))?],
        "Reshape" => reshape(e)?,
        "Flatten" => flatten(e)?,
        "Squeeze" => squeeze(e)?,
        "Unsqueeze" => unsqueeze(e)?,
        "Transpose" => transpose(e)?,
        "Concat" => concat(e)?,
        "Split" => split(e)?,
        "Slice" => slice(e)?,
        "Gather" => gather(e)?,
        "Expand" => expand(e)?,
        _ => return Ok(None),
    };
    Ok(Some(outs))
}

fn missing(e: &Emit<'_>, i: usize) -> crate::Error {
    e.node.invalid(format!("input {i} is required but missing"))
}

/// `axis` (an attribute) resolved against `rank`.
fn attr_axis(e: &Emit<'_>, name: &str, axis: i64, rank: usize) -> Result<usize> {
    normalize_axis(axis, rank).ok_or_else(|| {
        e.node
            .bad_attr(name, format!("{axis} is out of range for rank {rank}"))
    })
}

/// Axes given by input `i` (or, in older forms, attribute `axes`),
/// resolved against `rank` and checked for repeats.
fn axes_of(e: &Emit<'_>, i: usize, rank: usize) -> Result<Option<Vec<usize>>> {
    let raw = if e.has(i) {
        Some(e.ints(i, "axes")?)
    } else {
        e.node.ints("axes")?
    };
    let Some(raw) = raw else { return Ok(None) };
    let mut axes = Vec::with_capacity(raw.len());
    for &a in &raw {
        let ax = normalize_axis(a, rank).ok_or_else(|| {
            e.node.invalid(format!(
                "{}: axis {a} is out of range for rank {rank}",
                e.describe(i)
            ))
        })?;
        if axes.contains(&ax) {
            return Err(e.node.invalid(format!("axes {raw:?} name axis {ax} twice")));
        }
        axes.push(ax);
    }
    Ok(Some(axes))
}

/// The tensor of attribute `value` as a constant.
fn attr_tensor(e: &Emit<'_>, t: &TensorProto) -> Result<Const> {
    let n = e.node;
    readable(t.data_type()).map_err(|m| n.unsupported(format!("attribute 'value': {m}")))?;
    let data = tensor_data(t, n.external).map_err(|m| n.bad_attr("value", m))?;
    Const::from_tensor_data(&data).map_err(|m| n.bad_attr("value", m))
}

/// A constant from a Constant node's one attribute.
fn constant(e: &mut Emit<'_>) -> Outs {
    let n = e.node;
    let attr = n.only_attr()?;
    let c = match attr {
        "value" => {
            let t = n
                .tensor("value")?
                .ok_or_else(|| n.bad_attr("value", "no tensor"))?;
            attr_tensor(e, t)?
        }
        "value_float" => Const::scalar(DType::F32, f64::from(n.float(attr, 0.0)?)),
        "value_floats" => {
            let v = n.floats(attr)?.unwrap_or_default();
            let data = v.iter().map(|&x| f64::from(x)).collect();
            Const::new(DType::F32, vec![v.len()], data)
        }
        "value_int" => Const::scalar(DType::I64, n.int(attr, 0)? as f64),
        "value_ints" => Const::ints(&n.ints(attr)?.unwrap_or_default()),
        other => {
            return Err(n.unsupported(format!("Constant attribute '{other}' is not supported")));
        }
    };
    Ok(vec![Val::Const(c)])
}

/// Dimensions from a constant shape input: `None` for the batch symbol.
fn dims_of(e: &Emit<'_>, i: usize, what: &str) -> Result<Vec<Option<i64>>> {
    Ok(e.constant(i, what)?.to_dims())
}

/// A shape from constant dims (the batch symbol kept), negatives rejected.
fn shape_from_dims(e: &Emit<'_>, i: usize, dims: &[Option<i64>]) -> Result<Shape> {
    let one = |d: &Option<i64>| match *d {
        None => Ok(Dim::Batch),
        Some(n) => usize::try_from(n).map(Dim::Fixed).map_err(|_| {
            e.node.invalid(format!(
                "{}: negative dimension {n} in {dims:?}",
                e.describe(i)
            ))
        }),
    };
    let shape = dims.iter().map(one).collect::<Result<_>>().map(Shape)?;
    check_shape(&shape).map_err(|m| e.node.invalid(format!("{}: {m}", e.describe(i))))?;
    Ok(shape)
}

/// [`check_extent`] on a shape, the batch symbol counted as 1.
pub(crate) fn check_shape(shape: &Shape) -> std::result::Result<(), String> {
    let dims: Vec<usize> = shape
        .dims()
        .iter()
        .map(|d| d.fixed().unwrap_or(1))
        .collect();
    check_extent(&dims)
}

/// ConstantOfShape: a constant, or (for a shape holding the batch symbol,
/// or too large to fold) a scalar broadcast in the graph.
fn constant_of_shape(e: &mut Emit<'_>) -> Outs {
    let dims = dims_of(e, 0, "shape")?;
    let shape = shape_from_dims(e, 0, &dims)?;
    let n = e.node;
    let value = match n.tensor("value")? {
        None => Const::scalar(DType::F32, 0.0),
        Some(t) => {
            let c = attr_tensor(e, t)?;
            if c.numel() != 1 {
                return Err(n.bad_attr(
                    "value",
                    format!("expected one element, found {}", c.type_text()),
                ));
            }
            c
        }
    };
    if let Some(static_dims) = shape.to_static() {
        let count: usize = static_dims.iter().product();
        if count <= MAX_FOLD_ELEMENTS {
            let data = vec![value.data[0]; count];
            return Ok(vec![Val::Const(Const::new(value.dtype, static_dims, data))]);
        }
    }
    let scalar = Op::Movement(Movement::Constant {
        value: value.data[0],
        dtype: value.dtype,
    });
    let s = e.b.node1(scalar, &[])?;
    Ok(vec![Val::Value(e.b.broadcast(s, shape)?)])
}

/// Shape (with opset 15's `start` and `end`): always a constant; a batch
/// dimension becomes an entry marked as the batch symbol.
fn shape(e: &mut Emit<'_>) -> Outs {
    let shape = e.input_shape(0)?;
    let rank = shape.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let start = clamp(e.node.int("start", 0)?);
    let end = clamp(e.node.int("end", rank)?).max(start);
    Ok(vec![Val::Const(Const::of_dims(&shape.dims()[start..end]))])
}

fn size(e: &mut Emit<'_>) -> Outs {
    let shape = e.input_shape(0)?;
    let n = shape.numel().ok_or_else(|| e.dynamic(0))?;
    Ok(vec![Val::Const(Const::scalar(DType::I64, n as f64))])
}

/// Range(start, limit, delta) of constant scalars.
fn range(e: &mut Emit<'_>) -> Outs {
    let dtype = e.constant(0, "start")?.dtype;
    let (start, limit, delta) = (
        e.scalar(0, "start")?,
        e.scalar(1, "limit")?,
        e.scalar(2, "delta")?,
    );
    let count = ((limit - start) / delta).ceil();
    if delta == 0.0 || !count.is_finite() || count > MAX_FOLD_ELEMENTS as f64 {
        return Err(e.node.invalid(format!(
            "Range({start}, {limit}, {delta}) does not give a usable number of elements"
        )));
    }
    let count = count.max(0.0) as usize;
    let data = (0..count).map(|i| start + i as f64 * delta).collect();
    Ok(vec![Val::Const(Const::new(dtype, vec![count], data))])
}

/// Input 0 reshaped to `target`: on constants directly, else a Reshape.
fn reshaped(e: &mut Emit<'_>, target: Shape) -> Outs {
    if let Some(Val::Const(c)) = e.opt(0)
        && let Some(dims) = target.to_static()
    {
        if dims.iter().product::<usize>() != c.numel() {
            return Err(e
                .node
                .invalid(format!("cannot reshape {} to {target}", c.type_text())));
        }
        let mut c = c.clone();
        c.shape = dims;
        return Ok(vec![Val::Const(c)]);
    }
    let x = e.value(0)?;
    Ok(vec![Val::Value(e.b.reshape(x, target)?)])
}

fn reshape(e: &mut Emit<'_>) -> Outs {
    let spec = dims_of(e, 1, "shape")?;
    let allow_zero = e.node.int("allowzero", 0)? != 0;
    let from = e.input_shape(0)?;
    let target = reshape_target(&from, &spec, allow_zero).map_err(|m| {
        let m = format!("{}: {m}", e.describe(1));
        if m.contains(DYNAMIC) {
            e.node.unsupported(m)
        } else {
            e.node.invalid(m)
        }
    })?;
    reshaped(e, target)
}

/// ONNX Reshape's target: 0 copies the input's dim (unless `allow_zero`),
/// -1 takes what is left, `None` is the batch symbol.
fn reshape_target(from: &Shape, spec: &[Option<i64>], allow_zero: bool) -> Result<Shape, String> {
    let mut dims = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, s) in spec.iter().enumerate() {
        let d = match *s {
            None => Dim::Batch,
            Some(0) if !allow_zero => *from.dims().get(i).ok_or_else(|| {
                format!(
                    "shape {spec:?} copies dim {i} (0), but the input {from} has rank {}",
                    from.rank()
                )
            })?,
            Some(-1) if infer.is_none() => {
                infer = Some(i);
                Dim::Fixed(1)
            }
            Some(n) => Dim::Fixed(
                usize::try_from(n)
                    .map_err(|_| format!("invalid dimension {n} in shape {spec:?}"))?,
            ),
        };
        dims.push(d);
    }
    check_shape(&Shape(dims.clone()))?;
    if let Some(i) = infer {
        let known = Shape(dims.clone());
        let (fixed, known_fixed) = (from.fixed_product(), known.fixed_product());
        if known_fixed == 0 || fixed % known_fixed != 0 {
            return Err(format!("cannot reshape {from} to {spec:?}"));
        }
        let rest = fixed / known_fixed;
        dims[i] = match from.batch_count().checked_sub(known.batch_count()) {
            Some(0) => Dim::Fixed(rest),
            Some(1) if rest == 1 => Dim::Batch,
            _ => return Err(format!("cannot reshape {from} to {spec:?}: {DYNAMIC}")),
        };
    }
    Ok(Shape(dims))
}

/// The product of `dims` as one dimension, if it has one.
fn merged(dims: &[Dim]) -> Option<Dim> {
    let s = Shape(dims.to_vec());
    match (s.batch_count(), s.fixed_product()) {
        (0, n) => Some(Dim::Fixed(n)),
        (1, 1) => Some(Dim::Batch),
        _ => None,
    }
}

fn flatten(e: &mut Emit<'_>) -> Outs {
    let shape = e.input_shape(0)?;
    let rank = shape.rank() as i64;
    let axis = e.node.int("axis", 1)?;
    let at = if axis < 0 { axis + rank } else { axis };
    if !(0..=rank).contains(&at) {
        return Err(e
            .node
            .bad_attr("axis", format!("{axis} is out of range for rank {rank}")));
    }
    let (outer, inner) = shape.dims().split_at(at as usize);
    let target = match (merged(outer), merged(inner)) {
        (Some(a), Some(b)) => Shape(vec![a, b]),
        _ => return Err(e.dynamic(0)),
    };
    reshaped(e, target)
}

fn squeeze(e: &mut Emit<'_>) -> Outs {
    let shape = e.input_shape(0)?;
    let axes = axes_of(e, 1, shape.rank())?;
    let mut dims = Vec::with_capacity(shape.rank());
    for (i, &d) in shape.dims().iter().enumerate() {
        let named = axes.as_ref().is_some_and(|a| a.contains(&i));
        if named && d != Dim::Fixed(1) {
            return Err(e.node.invalid(format!(
                "cannot squeeze axis {i} of {shape}: its size is not 1"
            )));
        }
        let drop = named || (axes.is_none() && d == Dim::Fixed(1));
        if !drop {
            dims.push(d);
        }
    }
    reshaped(e, Shape(dims))
}

fn unsqueeze(e: &mut Emit<'_>) -> Outs {
    let shape = e.input_shape(0)?;
    let count = if e.has(1) {
        e.ints(1, "axes")?.len()
    } else {
        e.node.ints("axes")?.map_or(0, |a| a.len())
    };
    let rank = shape.rank() + count;
    let axes = axes_of(e, 1, rank)?.unwrap_or_default();
    if axes.is_empty() {
        return Err(e.node.invalid("Unsqueeze needs axes"));
    }
    let mut rest = shape.dims().iter();
    let dims = (0..rank)
        .map(|i| {
            if axes.contains(&i) {
                Dim::Fixed(1)
            } else {
                rest.next().copied().unwrap_or(Dim::Fixed(1))
            }
        })
        .collect();
    reshaped(e, Shape(dims))
}

fn transpose(e: &mut Emit<'_>) -> Outs {
    let x = e.value(0)?;
    let rank = e.shape(x).rank();
    let perm = match e.node.ints("perm")? {
        Some(p) => p,
        None => (0..rank as i64).rev().collect(),
    };
    let mut seen = vec![false; rank];
    let mut out = Vec::with_capacity(rank);
    for &p in &perm {
        match usize::try_from(p).ok().filter(|&p| p < rank) {
            Some(p) if !std::mem::replace(&mut seen[p], true) => out.push(p),
            _ => {
                return Err(e.node.bad_attr(
                    "perm",
                    format!("{perm:?} is not a permutation of the {rank} axes"),
                ));
            }
        }
    }
    if out.len() != rank {
        return Err(e.node.bad_attr(
            "perm",
            format!("{perm:?} is not a permutation of the {rank} axes"),
        ));
    }
    Ok(vec![Val::Value(e.b.transpose(x, &out)?)])
}

fn concat(e: &mut Emit<'_>) -> Outs {
    if !e.node.has_attr("axis") {
        return Err(e.node.bad_attr("axis", "is required"));
    }
    let axis = e.node.int("axis", 0)?;
    let present: Vec<usize> = (0..e.inputs.len()).filter(|&i| e.has(i)).collect();
    let first = *present.first().ok_or_else(|| missing(e, 0))?;
    let rank = e.input_shape(first)?.rank();
    let ax = attr_axis(e, "axis", axis, rank)?;
    let consts: Vec<&Const> = present
        .iter()
        .filter_map(|&i| match e.opt(i) {
            Some(Val::Const(c)) => Some(c),
            _ => None,
        })
        .collect();
    if consts.len() == present.len() {
        let c = fold::concat(&consts, ax).map_err(|m| e.node.invalid(m))?;
        return Ok(vec![Val::Const(c)]);
    }
    let values = present
        .iter()
        .map(|&i| e.value(i))
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![Val::Value(e.b.concat(&values, axis)?)])
}

/// The fixed size of `axis` of input 0.
fn fixed_dim(e: &Emit<'_>, shape: &Shape, axis: usize) -> Result<usize> {
    shape.dims()[axis].fixed().ok_or_else(|| e.dynamic(0))
}

/// Elements `start..end` of `axis` of input 0, constant or not.
fn take(e: &mut Emit<'_>, axis: usize, start: usize, end: usize) -> Result<Val> {
    if let Some(Val::Const(c)) = e.opt(0) {
        let w = Window {
            axis,
            start: start as i64,
            step: 1,
            count: end - start,
        };
        return Ok(Val::Const(fold::slice(c, &[w])));
    }
    let x = e.value(0)?;
    let full = e.shape(x).dims()[axis] == Dim::Fixed(end - start) && start == 0;
    Ok(Val::Value(if full {
        x
    } else {
        e.b.slice(x, axis as i64, start, end)?
    }))
}

fn split(e: &mut Emit<'_>) -> Outs {
    let shape = e.input_shape(0)?;
    let axis = attr_axis(e, "axis", e.node.int("axis", 0)?, shape.rank())?;
    let d = fixed_dim(e, &shape, axis)?;
    let outputs = e.node.outputs();
    let sizes: Vec<usize> = if e.has(1) {
        let s = e.ints(1, "split")?;
        s.iter()
            .map(|&v| usize::try_from(v))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                e.node
                    .invalid(format!("{}: negative size in {s:?}", e.describe(1)))
            })?
    } else if e.node.has_attr("num_outputs") {
        let n = usize::try_from(e.node.int("num_outputs", 1)?)
            .unwrap_or(0)
            .max(1);
        let chunk = d.div_ceil(n);
        (0..n)
            .map(|i| chunk.min(d.saturating_sub(i * chunk)))
            .collect()
    } else {
        if outputs == 0 || d % outputs != 0 {
            return Err(e.node.invalid(format!(
                "cannot split axis {axis} of {shape} evenly into {outputs} outputs"
            )));
        }
        vec![d / outputs; outputs]
    };
    let total = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s));
    if total != Some(d) || sizes.len() != outputs {
        return Err(e.node.invalid(format!(
            "split sizes {sizes:?} do not cover axis {axis} of {shape} with {outputs} outputs"
        )));
    }
    let mut start = 0;
    let mut outs = Vec::with_capacity(outputs);
    for s in sizes {
        outs.push(take(e, axis, start, start + s)?);
        start += s;
    }
    Ok(outs)
}

/// ONNX's clamping of one slice axis of size `d`: the window it selects.
fn window(axis: usize, d: usize, start: i64, end: i64, step: i64) -> Window {
    let d = d as i128;
    let (start, end, step) = (i128::from(start), i128::from(end), i128::from(step));
    let wrap = |v: i128| if v < 0 { v + d } else { v };
    let (s, count) = if d == 0 {
        (0, 0)
    } else if step > 0 {
        let s = wrap(start).clamp(0, d);
        let e = wrap(end).clamp(0, d);
        (s, (e - s + step - 1).div_euclid(step))
    } else {
        let s = wrap(start).clamp(0, d - 1);
        let e = wrap(end).clamp(-1, d - 1);
        (s, (s - e - step - 1).div_euclid(-step))
    };
    Window {
        axis,
        start: s as i64,
        step: step as i64,
        count: count.max(0) as usize,
    }
}

fn slice(e: &mut Emit<'_>) -> Outs {
    let shape = e.input_shape(0)?;
    let starts = e.ints(1, "starts")?;
    let ends = e.ints(2, "ends")?;
    let axes: Vec<i64> = if e.has(3) {
        e.ints(3, "axes")?
    } else {
        (0..starts.len() as i64).collect()
    };
    let steps = if e.has(4) {
        e.ints(4, "steps")?
    } else {
        vec![1; starts.len()]
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(e.node.invalid(format!(
            "starts {starts:?}, ends {ends:?}, axes {axes:?} and steps {steps:?} differ in length"
        )));
    }
    let mut windows: Vec<Window> = Vec::with_capacity(starts.len());
    for (k, &a) in axes.iter().enumerate() {
        let ax = normalize_axis(a, shape.rank())
            .filter(|ax| windows.iter().all(|w| w.axis != *ax))
            .ok_or_else(|| {
                e.node.invalid(format!(
                    "axes {axes:?}: bad or repeated axis {a} for rank {}",
                    shape.rank()
                ))
            })?;
        if steps[k] == 0 {
            return Err(e.node.invalid("a step of 0"));
        }
        match shape.dims()[ax] {
            Dim::Fixed(d) => windows.push(window(ax, d, starts[k], ends[k], steps[k])),
            // The whole batch axis is the only slice of it we can express.
            Dim::Batch if starts[k] == 0 && steps[k] == 1 && ends[k] >= i64::from(i32::MAX) => {}
            Dim::Batch => return Err(e.dynamic(0)),
        }
    }
    if let Some(Val::Const(c)) = e.opt(0) {
        return Ok(vec![Val::Const(fold::slice(c, &windows))]);
    }
    if windows.iter().any(|w| w.step != 1) {
        return Err(e.node.unsupported(format!(
            "Slice with steps {steps:?} is not supported on computed values (only step 1)"
        )));
    }
    let mut x = e.value(0)?;
    for w in windows {
        if e.shape(x).dims()[w.axis] != Dim::Fixed(w.count) {
            let start = w.start as usize;
            x = e.b.slice(x, w.axis as i64, start, start + w.count)?;
        }
    }
    Ok(vec![Val::Value(x)])
}

fn gather(e: &mut Emit<'_>) -> Outs {
    let shape = e.input_shape(0)?;
    let axis = attr_axis(e, "axis", e.node.int("axis", 0)?, shape.rank())?;
    let Some(Val::Const(idx)) = e.opt(1).cloned() else {
        let (data, indices) = (e.value(0)?, e.value(1)?);
        return Ok(vec![Val::Value(e.b.gather(data, indices, axis as i64)?)]);
    };
    let raw = idx.to_ints().ok_or_else(|| e.dynamic(1))?;
    let bound = shape.dims()[axis].fixed();
    let mut normalized = Vec::with_capacity(raw.len());
    for &i in &raw {
        let j = match bound {
            Some(d) if (-(d as i64)..d as i64).contains(&i) => {
                (if i < 0 { i + d as i64 } else { i }) as usize
            }
            Some(d) => {
                return Err(e.node.invalid(format!(
                    "{}: index {i} is out of range for axis {axis} of size {d}",
                    e.describe(1)
                )));
            }
            None if i >= 0 => i as usize,
            None => return Err(e.dynamic(0)),
        };
        normalized.push(j);
    }
    if let Some(Val::Const(c)) = e.opt(0) {
        let c = fold::gather(c, &normalized, &idx.shape, axis).map_err(|m| e.node.invalid(m))?;
        return Ok(vec![Val::Const(c)]);
    }
    let data = e.value(0)?;
    let indices = if raw.iter().all(|&i| i >= 0) {
        e.value(1)?
    } else {
        let data = normalized.iter().map(|&j| j as f64).collect();
        let fixed = Const::new(idx.dtype, idx.shape.clone(), data);
        e.constant_value(&fixed, "indices")?
    };
    Ok(vec![Val::Value(e.b.gather(data, indices, axis as i64)?)])
}

fn expand(e: &mut Emit<'_>) -> Outs {
    let dims = dims_of(e, 1, "shape")?;
    let target = shape_from_dims(e, 1, &dims)?;
    let x = e.value(0)?;
    let from = e.shape(x);
    let out = broadcast_shapes(&from, &target)
        .ok_or_else(|| e.node.invalid(format!("cannot expand {from} to {target}")))?;
    Ok(vec![Val::Value(e.b.broadcast(x, out)?)])
}

/// The IR dtype a Cast's `to` names.
pub(crate) fn cast_target(e: &Emit<'_>) -> Result<DType> {
    let n = e.node;
    if !n.has_attr("to") {
        return Err(n.bad_attr("to", "is required"));
    }
    let to = n.int("to", 0)?;
    let code = i32::try_from(to)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| n.bad_attr("to", format!("{to} is not an ONNX element type")))?;
    dtype_of(code).map_err(|m| n.unsupported(format!("attribute 'to': {m}")))
}

#[cfg(test)]
mod tests {
    use super::{Window, reshape_target, window};
    use crate::{Dim, Shape};

    #[test]
    fn reshape_targets_copy_zeros_infer_minus_one_and_keep_the_batch() {
        let from = Shape(vec![Dim::Batch, Dim::Fixed(2), Dim::Fixed(3)]);
        let t = |spec: &[Option<i64>], zero| reshape_target(&from, spec, zero);
        let batch6 = Shape(vec![Dim::Batch, Dim::Fixed(6)]);
        assert_eq!(t(&[Some(0), Some(-1)], false), Ok(batch6.clone()));
        assert_eq!(t(&[None, Some(-1)], false), Ok(batch6.clone()));
        assert_eq!(t(&[Some(-1), Some(6)], false), Ok(batch6));
        assert_eq!(
            t(&[Some(0), Some(0), Some(3)], false),
            Ok(Shape(vec![Dim::Batch, Dim::Fixed(2), Dim::Fixed(3)]))
        );
        assert_eq!(t(&[Some(0), Some(6)], true), Ok(Shape::of(&[0, 6])));
        let dynamic = t(&[Some(-1), Some(3)], false).unwrap_err();
        assert!(dynamic.contains("pass a batch size"), "{dynamic}");
        assert!(t(&[Some(-1), Some(-1)], false).is_err());
        assert!(t(&[Some(-2)], false).is_err());
        assert!(t(&[Some(1 << 40), Some(1 << 40)], false).is_err());
    }

    #[test]
    fn slice_windows_clamp_as_onnx_does() {
        let w = |d, s, e, st| window(0, d, s, e, st);
        let win = |start, step, count| Window {
            axis: 0,
            start,
            step,
            count,
        };
        assert_eq!(w(10, 2, i64::MAX, 1), win(2, 1, 8));
        assert_eq!(w(10, -3, -1, 1), win(7, 1, 2));
        assert_eq!(w(10, 0, 10, 3), win(0, 3, 4));
        assert_eq!(w(10, 8, 0, -3), win(8, -3, 3));
        assert_eq!(w(10, i64::MAX, i64::MIN, -1), win(9, -1, 10));
        assert_eq!(w(10, 5, 2, 1), win(5, 1, 0));
        assert_eq!(w(0, -1, i64::MIN, -1), win(0, -1, 0));
    }
}
