//! Which ops run in the half type and which stay in f32: the op lists of
//! PyTorch's CUDA autocast, mapped onto adjoint's op set.

use crate::ops::{Binary, Conv, Index, Loss, Moe, Nn, Op, ReduceKind, Unary};

/// What the policy does with a node's float inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Matmuls and convolutions: float inputs cast to the half type; the
    /// kernels accumulate in f32 and round the result once.
    Lower,
    /// Numerically sensitive ops (exp, log, softmax, normalisation,
    /// reductions that sum, losses, routing): float inputs cast to f32.
    Widen,
    /// Everything else runs in the type its inputs have; inputs of mixed
    /// float types are promoted to the widest (a rank-0 input does not take
    /// part when a ranked one is there, as in PyTorch's type promotion).
    Follow,
}

/// The class of `op`.
pub fn class(op: &Op) -> Class {
    match op {
        Op::MatMul(_) => Class::Lower,
        Op::Moe(Moe::GroupedMatMul { .. } | Moe::GroupedMatMulGradW { .. }) => Class::Lower,
        Op::Conv(
            Conv::Conv2d(_) | Conv::Conv2dGradInput { .. } | Conv::Conv2dGradWeight { .. },
        ) => Class::Lower,
        Op::Unary(u) => match u {
            Unary::Exp | Unary::Log | Unary::Rsqrt => Class::Widen,
            _ => Class::Follow,
        },
        Op::Binary(Binary::Pow) => Class::Widen,
        Op::Binary(_) => Class::Follow,
        Op::Reduce(r) => match r.kind {
            ReduceKind::Sum | ReduceKind::Mean => Class::Widen,
            ReduceKind::Max => Class::Follow,
        },
        Op::Nn(n) => match n {
            Nn::Softmax { .. }
            | Nn::LogSoftmax { .. }
            | Nn::LayerNorm { .. }
            | Nn::LayerNormGrad { .. } => Class::Widen,
            Nn::GeluGrad(_) | Nn::Dropout { .. } | Nn::CausalMask { .. } => Class::Follow,
        },
        Op::Loss(Loss::SoftmaxCrossEntropy | Loss::SoftmaxCrossEntropyGrad | Loss::Mse) => {
            Class::Widen
        }
        Op::Moe(Moe::TopK { .. } | Moe::MoeRoute { .. }) => Class::Widen,
        Op::Moe(Moe::GatherRows | Moe::ScatterAddRows { .. }) => Class::Follow,
        Op::Index(Index::ScatterAdd { .. }) => Class::Widen,
        Op::Index(Index::Gather { .. } | Index::OneHot { .. }) => Class::Follow,
        Op::Movement(_) | Op::Conv(_) | Op::Collective(_) => Class::Follow,
    }
}
