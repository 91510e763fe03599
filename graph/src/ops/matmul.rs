//! Batched matrix multiplication with broadcast batch dimensions and
//! transpose flags (so VJPs need no explicit transposes).

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Result, TensorType, ValueId};

/// `op(a) · op(b)` over the last two axes, where `op` transposes them when
/// the flag is set; leading (batch) axes broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatMul {
    pub trans_a: bool,
    pub trans_b: bool,
}

impl OpRules for MatMul {
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
