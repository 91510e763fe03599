//! Elementwise ops of several inputs with numpy broadcasting: Add, Sub,
//! Mul, Div, Pow, the comparisons Equal and Greater (bool outputs, no
//! gradient) and Where (select).
//!
//! Operands must share a dtype (there is no implicit promotion). The
//! arithmetic ops need floats; Equal and Greater take any dtype; Where takes
//! a bool condition and two values of any one dtype. The output shape is the
//! numpy broadcast of the inputs' shapes, where the batch symbol equals only
//! itself and broadcasts with 1.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, expect_arity, pointwise_cost};
use crate::interp::{EvalCx, Tensor, broadcast_map};
use crate::shape::broadcast_shapes;
use crate::{AttrReader, Attrs, Builder, DType, Result, Shape, TensorType, ValueId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Equal,
    Greater,
    /// `Where(cond, a, b)`: `a` where `cond` is true, else `b`.
    Where,
}

impl Binary {
    /// Every op of the family, for exhaustive tests and tools.
    pub const ALL: [Binary; 8] = [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Pow,
        Binary::Equal,
        Binary::Greater,
        Binary::Where,
    ];

    fn arity(self) -> usize {
        if self == Binary::Where { 3 } else { 2 }
    }

    /// The scalar function.
    fn apply(self, args: &[f64]) -> f64 {
        let bool_of = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            Binary::Add => args[0] + args[1],
            Binary::Sub => args[0] - args[1],
            Binary::Mul => args[0] * args[1],
            Binary::Div => args[0] / args[1],
            Binary::Pow => args[0].powf(args[1]),
            Binary::Equal => bool_of(args[0] == args[1]),
            Binary::Greater => bool_of(args[0] > args[1]),
            Binary::Where => {
                if args[0] != 0.0 {
                    args[1]
                } else {
                    args[2]
                }
            }
        }
    }
}

/// Broadcasts the shapes of `inputs` from `first` on, naming the first input
/// that does not fit.
fn broadcast_inputs(inputs: &[&TensorType], first: usize) -> std::result::Result<Shape, String> {
    let mut shape = inputs[first].shape.clone();
    for (i, t) in inputs.iter().enumerate().skip(first + 1) {
        shape = broadcast_shapes(&shape, &t.shape).ok_or_else(|| {
            format!(
                "input {i}: expected shape broadcastable with {shape}, found {}",
                t.shape
            )
        })?;
    }
    Ok(shape)
}

/// Checks that input `i` has the dtype of input `like`.
fn expect_same_dtype(
    inputs: &[&TensorType],
    like: usize,
    i: usize,
) -> std::result::Result<(), String> {
    let (want, found) = (inputs[like].dtype, inputs[i].dtype);
    if want == found {
        Ok(())
    } else {
        Err(format!(
            "input {i}: expected dtype {want} (the dtype of input {like}), found {found}"
        ))
    }
}

/// `v` broadcast to the shape of `like` (no node when already equal).
fn broadcast_like(b: &mut Builder, v: ValueId, like: ValueId) -> Result<ValueId> {
    let shape = b.shape(like).clone();
    b.broadcast(v, shape)
}

/// `x` with zeros replaced by ones, so that `log` of it is finite where the
/// `log(x) * x^y` term of Pow's derivative should vanish (as JAX does).
fn zeros_to_ones(b: &mut Builder, x: ValueId) -> Result<ValueId> {
    let zero = b.scalar_like(0.0, x)?;
    let one = b.scalar_like(1.0, x)?;
    let is_zero = b.equal(x, zero)?;
    b.select(is_zero, one, x)
}

/// Emits `v * d(a^b)/da = v * b * a^(b-1)`.
fn pow_d_base(b: &mut Builder, a: ValueId, e: ValueId, v: ValueId) -> Result<ValueId> {
    let one = b.scalar_like(1.0, e)?;
    let e1 = b.sub(e, one)?;
    let p = b.pow(a, e1)?;
    let ve = b.mul(v, e)?;
    b.mul(ve, p)
}

/// Emits `v * d(a^b)/db = v * log(a) * y` with `y = a^b`.
fn pow_d_exponent(b: &mut Builder, a: ValueId, y: ValueId, v: ValueId) -> Result<ValueId> {
    let safe = zeros_to_ones(b, a)?;
    let l = b.log(safe)?;
    let vl = b.mul(v, l)?;
    b.mul(vl, y)
}

impl OpRules for Binary {
    fn name(&self) -> &'static str {
        match self {
            Binary::Add => "Add",
            Binary::Sub => "Sub",
            Binary::Mul => "Mul",
            Binary::Div => "Div",
            Binary::Pow => "Pow",
            Binary::Equal => "Equal",
            Binary::Greater => "Greater",
            Binary::Where => "Where",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let op = Binary::ALL.into_iter().find(|op| op.name() == name)?;
        Some(AttrReader::new(attrs).finish().map(|()| op))
    }

    fn attrs(&self) -> Attrs {
        Attrs::new()
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        expect_arity(inputs, self.arity())?;
        match self {
            Binary::Where => {
                if inputs[0].dtype != DType::Bool {
                    return Err(format!(
                        "input 0: expected dtype bool (the condition), found {}",
                        inputs[0].dtype
                    ));
                }
                expect_same_dtype(inputs, 1, 2)?;
                let shape = broadcast_inputs(inputs, 0)?;
                Ok(vec![TensorType::new(inputs[1].dtype, shape)])
            }
            Binary::Equal | Binary::Greater => {
                expect_same_dtype(inputs, 0, 1)?;
                let shape = broadcast_inputs(inputs, 0)?;
                Ok(vec![TensorType::new(DType::Bool, shape)])
            }
            _ => {
                if !inputs[0].dtype.is_float() {
                    return Err(format!(
                        "input 0: expected a floating-point dtype, found {}",
                        inputs[0].dtype
                    ));
                }
                expect_same_dtype(inputs, 0, 1)?;
                let shape = broadcast_inputs(inputs, 0)?;
                Ok(vec![TensorType::new(inputs[0].dtype, shape)])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let n = self.arity();
        let want: Vec<bool> = (0..n)
            .map(|i| cx.wants[i] && cx.b.dtype(cx.inputs[i]).is_float())
            .collect();
        if matches!(self, Binary::Equal | Binary::Greater) || !want.contains(&true) {
            return Ok(vec![None; n]);
        }
        let g = cx.cotangent(0)?;
        let y = cx.outputs[0];
        let b = &mut *cx.b;
        let (x0, x1) = (cx.inputs[0], cx.inputs[1]);
        // Full-shape cotangents; reduced to the input shapes below.
        let mut full: Vec<Option<ValueId>> = vec![None; n];
        match self {
            Binary::Add | Binary::Sub => {
                full[0] = want[0].then_some(g);
                if want[1] {
                    full[1] = Some(if *self == Binary::Sub { b.neg(g)? } else { g });
                }
            }
            Binary::Mul => {
                full[0] = want[0].then(|| b.mul(g, x1)).transpose()?;
                full[1] = want[1].then(|| b.mul(g, x0)).transpose()?;
            }
            Binary::Div => {
                full[0] = want[0].then(|| b.div(g, x1)).transpose()?;
                if want[1] {
                    // -g * a / b^2 = -(g * y) / b
                    let gy = b.mul(g, y)?;
                    let q = b.div(gy, x1)?;
                    full[1] = Some(b.neg(q)?);
                }
            }
            Binary::Pow => {
                full[0] = want[0].then(|| pow_d_base(b, x0, x1, g)).transpose()?;
                full[1] = want[1].then(|| pow_d_exponent(b, x0, y, g)).transpose()?;
            }
            Binary::Where => {
                let zero = b.scalar_like(0.0, g)?;
                full[1] = want[1].then(|| b.select(x0, g, zero)).transpose()?;
                full[2] = want[2].then(|| b.select(x0, zero, g)).transpose()?;
            }
            Binary::Equal | Binary::Greater => {}
        }
        let mut out = Vec::with_capacity(n);
        for (i, c) in full.into_iter().enumerate() {
            out.push(match c {
                Some(c) => {
                    let shape = b.shape(cx.inputs[i]).clone();
                    Some(b.sum_to(c, &shape)?)
                }
                None => None,
            });
        }
        Ok(out)
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        if matches!(self, Binary::Equal | Binary::Greater) {
            return Ok(vec![None]);
        }
        let y = cx.outputs[0];
        let t: Vec<Option<ValueId>> = (0..self.arity())
            .map(|i| cx.tangents[i].filter(|_| cx.b.dtype(cx.inputs[i]).is_float()))
            .collect();
        let b = &mut *cx.b;
        let (x0, x1) = (cx.inputs[0], cx.inputs[1]);
        // Each term has the output's shape or broadcasts to it.
        let terms: [Option<ValueId>; 2] = match self {
            Binary::Add => [t[0], t[1]],
            Binary::Sub => [t[0], t[1].map(|t1| b.neg(t1)).transpose()?],
            Binary::Mul => [
                t[0].map(|t0| b.mul(t0, x1)).transpose()?,
                t[1].map(|t1| b.mul(x0, t1)).transpose()?,
            ],
            Binary::Div => [
                t[0].map(|t0| b.div(t0, x1)).transpose()?,
                t[1].map(|t1| -> Result<ValueId> {
                    let ty = b.mul(t1, y)?;
                    let q = b.div(ty, x1)?;
                    b.neg(q)
                })
                .transpose()?,
            ],
            Binary::Pow => [
                t[0].map(|t0| pow_d_base(b, x0, x1, t0)).transpose()?,
                t[1].map(|t1| pow_d_exponent(b, x0, y, t1)).transpose()?,
            ],
            Binary::Where => {
                if t[1].is_none() && t[2].is_none() {
                    return Ok(vec![None]);
                }
                let zero = b.scalar_like(0.0, y)?;
                let s = b.select(x0, t[1].unwrap_or(zero), t[2].unwrap_or(zero))?;
                [Some(s), None]
            }
            Binary::Equal | Binary::Greater => [None, None],
        };
        let sum = match terms {
            [Some(p), Some(q)] => b.add(p, q)?,
            [Some(p), None] | [None, Some(p)] => p,
            [None, None] => return Ok(vec![None]),
        };
        Ok(vec![Some(broadcast_like(b, sum, y)?)])
    }

    /// One FLOP per output element (a comparison or a select counts as
    /// one, and so does Pow); every input is read once at its own size.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        pointwise_cost(inputs, outputs, 1)
    }

    fn recompute(&self) -> Recompute {
        Recompute::Cheap
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        if inputs.len() != self.arity() {
            return Err(format!(
                "expects {} input(s), found {}",
                self.arity(),
                inputs.len()
            ));
        }
        let op = *self;
        Ok(vec![broadcast_map(inputs, |args| op.apply(args))?])
    }
}

#[cfg(test)]
#[path = "tests/binary.rs"]
mod tests;
