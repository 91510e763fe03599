//! Neural-network ops: Softmax, LogSoftmax, LayerNorm and its fused
//! backward, GeluGrad, Dropout and the causal mask.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Result, TensorType, ValueId};

/// The two forms of GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluApprox {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
    Tanh,
    /// `x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`
    Erf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nn {
    Softmax { axis: i64 },
    LogSoftmax { axis: i64 },
    /// `LayerNorm(x, gamma, beta)` over the last axis.
    LayerNorm { eps: f64 },
    /// `LayerNormGrad(x, gamma, dy) -> (dx, dgamma, dbeta)`.
    LayerNormGrad { eps: f64 },
    /// `GeluGrad(x, dy) = dy * gelu_prime(x)`.
    GeluGrad(GeluApprox),
    /// Zeroes each element with probability `p` and scales the rest by
    /// 1/(1-p); the mask is drawn from the counter-based RNG keyed on
    /// (seed, step, rank, `key`, element).
    Dropout { p: f64, key: u64 },
    /// Entries above the diagonal of the last two axes set to `fill`.
    CausalMask { fill: f64 },
}

impl OpRules for Nn {
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
