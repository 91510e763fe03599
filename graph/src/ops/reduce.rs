//! Reductions over axes: ReduceSum, ReduceMean, ReduceMax.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Result, TensorType, ValueId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
}

/// Reduces `axes` (negative counts from the end) of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reduce {
    pub kind: ReduceKind,
    pub axes: Vec<i64>,
    pub keep_dims: bool,
}

impl OpRules for Reduce {
    fn name(&self) -> &'static str {
        todo!()
    }
    fn parse(_name: &str, _attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        todo!()
    }
    fn attrs(&self) -> Attrs {
        todo!()
    }
    fn infer(&self, _inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        todo!()
    }
    fn vjp(&self, _cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        todo!()
    }
    fn jvp(&self, _cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        todo!()
    }
    fn cost(&self, _inputs: &[&TensorType], _outputs: &[&TensorType]) -> Cost {
        todo!()
    }
    fn recompute(&self) -> Recompute {
        todo!()
    }
    fn eval(&self, _inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        todo!()
    }
}
