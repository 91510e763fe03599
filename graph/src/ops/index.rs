//! Indexing: Gather (embedding lookup), ScatterAdd (its transpose, which
//! sums repeated indices) and OneHot.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Result, TensorType, ValueId};

use crate::DType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// `Gather(data, indices)`: output shape is
    /// `data[..axis] ++ indices ++ data[axis+1..]`.
    Gather { axis: i64 },
    /// `ScatterAdd(updates, indices)`: zeros with `size` along `axis`, and
    /// each update slice added at its index (repeats accumulate).
    ScatterAdd { axis: i64, size: usize },
    /// Int indices `[...]` to `[..., depth]` of 0/1 in `dtype`.
    OneHot { depth: usize, dtype: DType },
}

impl OpRules for Index {
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
