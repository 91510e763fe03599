//! Losses: mean softmax cross-entropy (with its fused backward) and mean
//! squared error.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Result, TensorType, ValueId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// `SoftmaxCrossEntropy(logits [..., C], labels [...] int)`: the mean
    /// over all label positions, a scalar.
    SoftmaxCrossEntropy,
    /// `SoftmaxCrossEntropyGrad(logits, labels, dloss) -> dlogits`.
    SoftmaxCrossEntropyGrad,
    /// `Mse(pred, target)`: mean of squared differences, a scalar.
    Mse,
}

impl OpRules for Loss {
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
