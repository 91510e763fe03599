//! Layout and creation ops: Reshape, Transpose, Broadcast, Concat, Slice,
//! Pad (zeros) and Constant (a scalar).

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Result, TensorType, ValueId};

use crate::{DType, Shape};

#[derive(Debug, Clone, PartialEq)]
pub enum Movement {
    /// Same elements in a new shape; may hold the batch symbol.
    Reshape(Shape),
    /// Output axis `i` is input axis `perm[i]`.
    Transpose(Vec<usize>),
    /// numpy broadcast to `shape`.
    Broadcast(Shape),
    Concat { axis: i64 },
    /// Elements `start..end` of `axis`.
    Slice { axis: i64, start: usize, end: usize },
    /// Zeros added before and after `axis`.
    Pad { axis: i64, before: usize, after: usize },
    /// A scalar.
    Constant { value: f64, dtype: DType },
}

impl OpRules for Movement {
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
