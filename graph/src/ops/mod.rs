//! The op set. One file per family; each op's shape rule, VJP rule, JVP
//! rule, cost rule, recompute class, serialized form and f64 reference
//! kernel sit side by side in its family's file.
//!
//! [`Op`] is an enum of families and every rule is an exhaustive `match`, so
//! an op without a VJP or JVP does not compile. VJP and JVP rules *emit graph
//! nodes* through a [`Builder`]; they never compute numbers, which is what
//! makes gradient graphs differentiable again. Fused ops (LayerNorm,
//! SoftmaxCrossEntropy and their backward ops, GeluGrad) may instead give a
//! [`OpRules::decompose`] into ops that have rules, and differentiate that.

pub mod binary;
pub mod collective;
pub mod conv;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod moe;
pub mod movement;
pub mod nn;
pub mod reduce;
pub mod unary;

#[cfg(test)]
mod test_util;

pub use binary::Binary;
pub use collective::CollectiveOp;
pub use conv::{Conv, Conv2dAttrs, Pool2dAttrs};
pub use index::Index;
pub use loss::Loss;
pub use matmul::MatMul;
pub use moe::Moe;
pub use movement::Movement;
pub use nn::{GeluApprox, Nn};
pub use reduce::{Reduce, ReduceKind};
pub use unary::Unary;

use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Builder, Result, TensorType, ValueId};

/// FLOPs and bytes moved by one execution of a node. On a graph whose batch
/// dimension is unbound, the batch counts as 1 (costs per sample).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

/// What activation checkpointing may do with an op's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recompute {
    /// Elementwise and layout ops: recomputing costs about one memory pass.
    Cheap,
    /// Matmuls and reductions over large extents: prefer to keep.
    Expensive,
    /// Never recompute (collectives; routing decisions).
    Never,
}

/// Context of a VJP rule: the node's inputs and outputs, the cotangents of
/// its outputs (at least one is present), and which inputs need one.
#[derive(Debug)]
pub struct VjpCx<'a> {
    pub b: &'a mut Builder,
    pub inputs: &'a [ValueId],
    pub outputs: &'a [ValueId],
    pub cotangents: &'a [Option<ValueId>],
    pub wants: &'a [bool],
}

impl VjpCx<'_> {
    /// The cotangent of output `i`, or zeros of its type when absent.
    pub fn cotangent(&mut self, i: usize) -> Result<ValueId> {
        match self.cotangents[i] {
            Some(c) => Ok(c),
            None => self.b.zeros_like(self.outputs[i]),
        }
    }
}

/// Context of a JVP rule: the node's inputs and outputs and the tangents of
/// its inputs (at least one is present).
#[derive(Debug)]
pub struct JvpCx<'a> {
    pub b: &'a mut Builder,
    pub inputs: &'a [ValueId],
    pub outputs: &'a [ValueId],
    pub tangents: &'a [Option<ValueId>],
}

impl JvpCx<'_> {
    /// The tangent of input `i`, or zeros of its type when absent.
    pub fn tangent(&mut self, i: usize) -> Result<ValueId> {
        match self.tangents[i] {
            Some(t) => Ok(t),
            None => self.b.zeros_like(self.inputs[i]),
        }
    }
}

/// The rules every op family implements.
pub trait OpRules: Sized {
    /// The op's serialized name, e.g. `"MatMul"`.
    fn name(&self) -> &'static str;
    /// Parses a serialized op; `None` when `name` is not in this family.
    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>>;
    /// The op's attributes for serialization.
    fn attrs(&self) -> Attrs;
    /// Shape and dtype rule: output types from input types, or a message
    /// naming the input and what was expected and found.
    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String>;
    /// Reverse mode: cotangents of the inputs (same types as the inputs, `None`
    /// for zero or unwanted).
    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>>;
    /// Forward mode: tangents of the outputs (`None` for zero).
    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>>;
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost;
    fn recompute(&self) -> Recompute;
    /// The f64 reference kernel.
    fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String>;
    /// The op with the batch symbol in its attributes bound to `batch`.
    fn bind_batch(&self, _batch: usize) -> Self
    where
        Self: Clone,
    {
        self.clone()
    }
    /// For fused ops: the same computation from ops with their own rules.
    fn decompose(&self, _b: &mut Builder, _inputs: &[ValueId]) -> Option<Result<Vec<ValueId>>> {
        None
    }
}

/// One operation: a family and its variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Unary(Unary),
    Binary(Binary),
    MatMul(MatMul),
    Reduce(Reduce),
    Movement(Movement),
    Index(Index),
    Nn(Nn),
    Loss(Loss),
    Moe(Moe),
    Conv(Conv),
    Collective(CollectiveOp),
}

macro_rules! each_family {
    ($self:expr, $op:ident => $body:expr) => {
        match $self {
            Op::Unary($op) => $body,
            Op::Binary($op) => $body,
            Op::MatMul($op) => $body,
            Op::Reduce($op) => $body,
            Op::Movement($op) => $body,
            Op::Index($op) => $body,
            Op::Nn($op) => $body,
            Op::Loss($op) => $body,
            Op::Moe($op) => $body,
            Op::Conv($op) => $body,
            Op::Collective($op) => $body,
        }
    };
}

impl Op {
    pub fn name(&self) -> &'static str {
        each_family!(self, o => o.name())
    }

    /// Parses a serialized op; `Err` names the problem, `Ok(None)` means no
    /// family knows `name`.
    pub fn parse(name: &str, attrs: &Attrs) -> std::result::Result<Option<Op>, String> {
        macro_rules! try_family {
            ($ty:ident) => {
                if let Some(parsed) = $ty::parse(name, attrs) {
                    return parsed.map(|o| Some(Op::$ty(o)));
                }
            };
        }
        try_family!(Unary);
        try_family!(Binary);
        try_family!(MatMul);
        try_family!(Reduce);
        try_family!(Movement);
        try_family!(Index);
        try_family!(Nn);
        try_family!(Loss);
        try_family!(Moe);
        try_family!(Conv);
        if let Some(parsed) = CollectiveOp::parse(name, attrs) {
            return parsed.map(|o| Some(Op::Collective(o)));
        }
        Ok(None)
    }

    pub fn attrs(&self) -> Attrs {
        each_family!(self, o => o.attrs())
    }

    pub fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        each_family!(self, o => o.infer(inputs))
    }

    pub fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        each_family!(self, o => o.vjp(cx))
    }

    pub fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        each_family!(self, o => o.jvp(cx))
    }

    pub fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        each_family!(self, o => o.cost(inputs, outputs))
    }

    pub fn recompute(&self) -> Recompute {
        each_family!(self, o => o.recompute())
    }

    pub fn eval(
        &self,
        inputs: &[&Tensor],
        cx: &EvalCx,
    ) -> std::result::Result<Vec<Tensor>, String> {
        each_family!(self, o => o.eval(inputs, cx))
    }

    pub fn bind_batch(&self, batch: usize) -> Op {
        match self {
            Op::Unary(o) => Op::Unary(o.bind_batch(batch)),
            Op::Binary(o) => Op::Binary(o.bind_batch(batch)),
            Op::MatMul(o) => Op::MatMul(o.bind_batch(batch)),
            Op::Reduce(o) => Op::Reduce(o.bind_batch(batch)),
            Op::Movement(o) => Op::Movement(o.bind_batch(batch)),
            Op::Index(o) => Op::Index(o.bind_batch(batch)),
            Op::Nn(o) => Op::Nn(o.bind_batch(batch)),
            Op::Loss(o) => Op::Loss(o.bind_batch(batch)),
            Op::Moe(o) => Op::Moe(o.bind_batch(batch)),
            Op::Conv(o) => Op::Conv(o.bind_batch(batch)),
            Op::Collective(o) => Op::Collective(o.bind_batch(batch)),
        }
    }

    pub fn decompose(&self, b: &mut Builder, inputs: &[ValueId]) -> Option<Result<Vec<ValueId>>> {
        each_family!(self, o => o.decompose(b, inputs))
    }
}

/// Checks the number of inputs of an op.
pub fn expect_arity(inputs: &[&TensorType], n: usize) -> std::result::Result<(), String> {
    if inputs.len() == n {
        Ok(())
    } else {
        Err(format!("expects {n} input(s), found {}", inputs.len()))
    }
}

/// Checks that input `i` has a floating-point dtype.
pub fn expect_float(inputs: &[&TensorType], i: usize) -> std::result::Result<(), String> {
    if inputs[i].dtype.is_float() {
        Ok(())
    } else {
        Err(format!(
            "input {i}: expected a floating-point dtype, found {}",
            inputs[i].dtype
        ))
    }
}

/// Elements of a type (the batch symbol counts as 1).
pub fn numel(t: &TensorType) -> u64 {
    t.shape.numel_with_batch(1) as u64
}

/// Bytes of a type (the batch symbol counts as 1).
pub fn bytes(t: &TensorType) -> u64 {
    numel(t) * t.dtype.size_bytes() as u64
}

/// The default cost of an op that touches every element once: `flops_per`
/// FLOPs per output element, and every input and output read or written once.
pub fn pointwise_cost(inputs: &[&TensorType], outputs: &[&TensorType], flops_per: u64) -> Cost {
    Cost {
        flops: outputs.iter().map(|t| numel(t) * flops_per).sum(),
        bytes: inputs.iter().chain(outputs).map(|t| bytes(t)).sum(),
    }
}
