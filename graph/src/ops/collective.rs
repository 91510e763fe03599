//! Collective ops: data that crosses ranks inside a graph, for expert
//! parallelism. A group is `ranks` consecutive ranks (`r / ranks` names the
//! group, `r % ranks` the rank's place in it); every rank of a job runs the
//! same graph, and the executor carries out these ops through the job's
//! collective. The f64 interpreter runs one rank, so it evaluates them only
//! for `ranks = 1`, where each is the identity on its rows.
//!
//! Expert parallelism shards `E` experts over a group: place `p` holds
//! experts `p·E/ranks .. (p+1)·E/ranks` (`E_l = E/ranks` of them). Packed
//! rows (`MoeRoute`'s layout: grouped by global expert, dropped slots after
//! `offsets[E]`) travel to the experts' owners and back:
//!
//! - `AllToAll {ranks}` (x `[..., D]` float, offsets `[E+1]` int) → y
//!   `[ranks, ..., D]`, local_offsets `[E_l+1]` i64, counts `[ranks, E_l]`
//!   i64. Each rank sends the rows of place p's experts to place p and
//!   receives the rows for its own experts from every place; y holds them
//!   grouped by local expert, each group in source order (place 0's rows
//!   first), so `local_offsets` describe y for a `GroupedMatMul` with the
//!   rank's `[E_l, ·, ·]` weights; rows after `local_offsets[E_l]` are
//!   zero. `counts[q][e]` is how many rows of local expert e came from
//!   place q. y's leading `ranks` dim makes room for the worst case (every
//!   place routes every row here), so shapes stay static.
//! - `AllToAllCombine {ranks}` (y `[ranks, ..., H]` in that layout,
//!   offsets `[E+1]`, counts `[ranks, E_l]`) → x `[..., H]`: the inverse
//!   trip; each row returns to the place and packed position it came from;
//!   rows from `offsets[E]` on are zero.
//! - `AllReduce {ranks}` (x float) → the elementwise sum of x over the
//!   group.
//!
//! Each exchange is linear in its float input and the two are each other's
//! transposes, so `AllToAll`'s VJP is an `AllToAllCombine` of the
//! cotangent and the other way round; `AllReduce`'s VJP is an `AllReduce`
//! (every rank's output feeds the summed loss). Checkpointing never
//! recomputes them ([`Recompute::Never`]): a recompute would talk to the
//! other ranks again in the middle of backward.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, bytes, expect_arity, expect_float};
use crate::attr::{Attr, AttrReader};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, DType, Dim, Result, Shape, TensorType, ValueId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectiveOp {
    /// Packed rows to their experts' owners.
    AllToAll { ranks: usize },
    /// Expert outputs back to the rows' places.
    AllToAllCombine { ranks: usize },
    /// Sum over the group.
    AllReduce { ranks: usize },
}

impl CollectiveOp {
    /// Ranks in the group.
    pub fn ranks(&self) -> usize {
        match *self {
            CollectiveOp::AllToAll { ranks }
            | CollectiveOp::AllToAllCombine { ranks }
            | CollectiveOp::AllReduce { ranks } => ranks,
        }
    }
}

impl OpRules for CollectiveOp {
    fn name(&self) -> &'static str {
        match self {
            CollectiveOp::AllToAll { .. } => "AllToAll",
            CollectiveOp::AllToAllCombine { .. } => "AllToAllCombine",
            CollectiveOp::AllReduce { .. } => "AllReduce",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let make: fn(usize) -> CollectiveOp = match name {
            "AllToAll" => |ranks| CollectiveOp::AllToAll { ranks },
            "AllToAllCombine" => |ranks| CollectiveOp::AllToAllCombine { ranks },
            "AllReduce" => |ranks| CollectiveOp::AllReduce { ranks },
            _ => return None,
        };
        let mut r = AttrReader::new(attrs);
        let op = r.int("ranks", None).and_then(|v| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .map(make)
                .ok_or_else(|| format!("attribute 'ranks': expected a positive int, found {v}"))
        });
        Some(op.and_then(|op| r.finish().map(|()| op)))
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("ranks".into(), Attr::Int(self.ranks() as i64));
        a
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        let ranks = self.ranks();
        if ranks == 0 {
            return Err("attribute 'ranks': expected a positive int, found 0".into());
        }
        match *self {
            CollectiveOp::AllToAll { .. } => {
                expect_arity(inputs, 2)?;
                expect_float(inputs, 0)?;
                let x = &inputs[0].shape;
                if x.rank() == 0 {
                    return Err(format!("input 0: expected rows [..., D], found {x}"));
                }
                let local = local_experts(inputs, 1, ranks)?;
                let mut dims = vec![Dim::Fixed(ranks)];
                dims.extend_from_slice(x.dims());
                Ok(vec![
                    TensorType::new(inputs[0].dtype, Shape(dims)),
                    TensorType::new(DType::I64, Shape::of(&[local + 1])),
                    TensorType::new(DType::I64, Shape::of(&[ranks, local])),
                ])
            }
            CollectiveOp::AllToAllCombine { .. } => {
                expect_arity(inputs, 3)?;
                expect_float(inputs, 0)?;
                let y = &inputs[0].shape;
                if y.rank() < 2 || y.dims()[0] != Dim::Fixed(ranks) {
                    return Err(format!(
                        "input 0: expected rows [{ranks}, ..., H] (AllToAll's layout), found {y}"
                    ));
                }
                let local = local_experts(inputs, 1, ranks)?;
                let counts = &inputs[2];
                if !counts.dtype.is_int() || counts.shape != Shape::of(&[ranks, local]) {
                    return Err(format!(
                        "input 2: expected counts i64[{ranks}, {local}] (AllToAll's third output), found {counts}"
                    ));
                }
                Ok(vec![TensorType::new(
                    inputs[0].dtype,
                    Shape(y.dims()[1..].to_vec()),
                )])
            }
            CollectiveOp::AllReduce { .. } => {
                expect_arity(inputs, 1)?;
                expect_float(inputs, 0)?;
                Ok(vec![inputs[0].clone()])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        match *self {
            CollectiveOp::AllToAll { ranks } => {
                if !cx.wants[0] || cx.cotangents[0].is_none() {
                    return Ok(vec![None, None]);
                }
                let dy = cx.cotangent(0)?;
                let (offsets, counts) = (cx.inputs[1], cx.outputs[2]);
                let dx = cx.b.all_to_all_combine(dy, offsets, counts, ranks)?;
                Ok(vec![Some(dx), None])
            }
            CollectiveOp::AllToAllCombine { ranks } => {
                if !cx.wants[0] {
                    return Ok(vec![None, None, None]);
                }
                let dx = cx.cotangent(0)?;
                let [dy, _, _] = cx.b.all_to_all(dx, cx.inputs[1], ranks)?;
                Ok(vec![Some(dy), None, None])
            }
            CollectiveOp::AllReduce { ranks } => {
                if !cx.wants[0] {
                    return Ok(vec![None]);
                }
                let g = cx.cotangent(0)?;
                Ok(vec![Some(cx.b.all_reduce(g, ranks)?)])
            }
        }
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        // Linear in the float input: the tangent takes the same trip.
        let Some(t) = cx.tangents[0] else {
            return Ok(vec![None; cx.outputs.len()]);
        };
        match *self {
            CollectiveOp::AllToAll { ranks } => {
                let [ty, _, _] = cx.b.all_to_all(t, cx.inputs[1], ranks)?;
                Ok(vec![Some(ty), None, None])
            }
            CollectiveOp::AllToAllCombine { ranks } => {
                let tx =
                    cx.b.all_to_all_combine(t, cx.inputs[1], cx.inputs[2], ranks)?;
                Ok(vec![Some(tx)])
            }
            CollectiveOp::AllReduce { ranks } => Ok(vec![Some(cx.b.all_reduce(t, ranks)?)]),
        }
    }

    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        // No arithmetic worth counting; the bytes are what crosses the wire
        // at most (every row), read and written once.
        Cost {
            flops: match self {
                CollectiveOp::AllReduce { ranks } => super::numel(inputs[0]) * (*ranks as u64 - 1),
                _ => 0,
            },
            bytes: bytes(inputs[0]) + outputs.first().map_or(0, |o| bytes(o)),
        }
    }

    fn recompute(&self) -> Recompute {
        Recompute::Never
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        if self.ranks() != 1 {
            return Err(format!(
                "{} over {} ranks exchanges data between ranks; the reference interpreter runs one rank (ranks = 1)",
                self.name(),
                self.ranks()
            ));
        }
        match (self, inputs) {
            (CollectiveOp::AllToAll { .. }, [x, offsets]) => {
                let used = used_rows(offsets, x)?;
                let mut shape = vec![1];
                shape.extend_from_slice(&x.shape);
                let y = keep_rows(x, used, shape);
                let counts: Vec<f64> = offsets.data.windows(2).map(|w| w[1] - w[0]).collect();
                let experts = counts.len();
                Ok(vec![
                    y,
                    Tensor::new(vec![experts + 1], offsets.data.clone()),
                    Tensor::new(vec![1, experts], counts),
                ])
            }
            (CollectiveOp::AllToAllCombine { .. }, [y, offsets, _counts]) => {
                if y.shape.len() < 2 || y.shape[0] != 1 {
                    return Err(format!(
                        "expected rows [1, ..., H] (AllToAll's layout), found {:?}",
                        y.shape
                    ));
                }
                let used = used_rows(offsets, y)?;
                Ok(vec![keep_rows(y, used, y.shape[1..].to_vec())])
            }
            (CollectiveOp::AllReduce { .. }, [x]) => Ok(vec![(*x).clone()]),
            _ => Err(format!(
                "{}: unexpected number of inputs ({})",
                self.name(),
                inputs.len()
            )),
        }
    }
}

/// Offsets `[E+1]` of an int dtype at input `i`, E a multiple of `ranks`;
/// returns E / ranks.
fn local_experts(
    inputs: &[&TensorType],
    i: usize,
    ranks: usize,
) -> std::result::Result<usize, String> {
    let o = inputs[i];
    let experts = match (o.dtype.is_int(), o.shape.dims()) {
        (true, [Dim::Fixed(n)]) if *n >= 2 => n - 1,
        _ => {
            return Err(format!(
                "input {i}: expected int offsets [experts + 1] (at least 2), found {o}"
            ));
        }
    };
    if experts % ranks != 0 {
        return Err(format!(
            "input {i}: {experts} experts do not split evenly over {ranks} ranks"
        ));
    }
    Ok(experts / ranks)
}

/// Rows `0..offsets[E]` of `x` (rows are x's leading dims flattened),
/// checked against x's row count.
fn used_rows(offsets: &Tensor, x: &Tensor) -> std::result::Result<usize, String> {
    let Some((_, lead)) = x.shape.split_last() else {
        return Err("expected rows [..., D], found a scalar".into());
    };
    let rows: usize = lead.iter().product();
    let o = &offsets.data;
    let bad = || {
        format!(
            "offsets {o:?}: must be whole, start at 0, not decrease and stay within the {rows} rows"
        )
    };
    if o.first() != Some(&0.0) {
        return Err(bad());
    }
    for w in o.windows(2) {
        if w[1] < w[0] || w[1].fract() != 0.0 || w[1] > rows as f64 {
            return Err(bad());
        }
    }
    Ok(*o.last().expect("at least two offsets") as usize)
}

/// x's first `used` rows, then zeros, reshaped to `shape`.
fn keep_rows(x: &Tensor, used: usize, shape: Vec<usize>) -> Tensor {
    let width = x.shape.last().copied().unwrap_or(1);
    let mut data = x.data.clone();
    for v in &mut data[used * width..] {
        *v = 0.0;
    }
    Tensor::new(shape, data)
}

#[cfg(test)]
#[path = "tests/collective.rs"]
mod tests;
