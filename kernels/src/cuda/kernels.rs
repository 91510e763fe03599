//! The kernels the CUDA backend launches: one [`Kernel`] per `extern "C"`
//! function of `kernels/cuda/*.cu`, with its name and source file, and the
//! sites that report bad indices through the device error word.
//!
//! Launches name kernels by variant, never by string, and
//! `tests/cuda_nvrtc.rs` checks that every variant's name is an entry of
//! the PTX its file compiles to, so a renamed kernel fails CI, not a GPU run.

use crate::backend::{ElemType, UnaryOp};

macro_rules! kernels {
    ($($variant:ident = $name:literal in $file:literal,)*) => {
        /// A kernel of `kernels/cuda/`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $($variant,)*
        }

        impl Kernel {
            /// Every kernel, in declaration order (`k as usize` indexes it).
            pub const ALL: &'static [Kernel] = &[$(Kernel::$variant,)*];

            /// The `extern "C"` name, `{op}_{dtype}`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $name,)*
                }
            }

            /// The source file (without `.cu`) that defines it.
            pub fn file(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $file,)*
                }
            }
        }
    };
}

kernels! {
    NegF32 = "neg_f32" in "elementwise",
    ExpF32 = "exp_f32" in "elementwise",
    LogF32 = "log_f32" in "elementwise",
    SqrtF32 = "sqrt_f32" in "elementwise",
    RsqrtF32 = "rsqrt_f32" in "elementwise",
    TanhF32 = "tanh_f32" in "elementwise",
    SigmoidF32 = "sigmoid_f32" in "elementwise",
    ReluF32 = "relu_f32" in "elementwise",
    GeluTanhF32 = "gelu_tanh_f32" in "elementwise",
    GeluErfF32 = "gelu_erf_f32" in "elementwise",
    ErfF32 = "erf_f32" in "elementwise",
    GeluTanhGradF32 = "gelu_tanh_grad_f32" in "elementwise",
    GeluErfGradF32 = "gelu_erf_grad_f32" in "elementwise",
    AddF32 = "add_f32" in "elementwise",
    SubF32 = "sub_f32" in "elementwise",
    MulF32 = "mul_f32" in "elementwise",
    DivF32 = "div_f32" in "elementwise",
    PowF32 = "pow_f32" in "elementwise",
    EqualF32 = "equal_f32" in "elementwise",
    EqualI32 = "equal_i32" in "elementwise",
    EqualI64 = "equal_i64" in "elementwise",
    EqualU8 = "equal_u8" in "elementwise",
    GreaterF32 = "greater_f32" in "elementwise",
    GreaterI32 = "greater_i32" in "elementwise",
    GreaterI64 = "greater_i64" in "elementwise",
    GreaterU8 = "greater_u8" in "elementwise",
    SelectF32 = "select_f32" in "elementwise",
    CastF32F32 = "cast_f32_f32" in "elementwise",
    CastF32I32 = "cast_f32_i32" in "elementwise",
    CastF32I64 = "cast_f32_i64" in "elementwise",
    CastF32U8 = "cast_f32_u8" in "elementwise",
    CastI32F32 = "cast_i32_f32" in "elementwise",
    CastI32I32 = "cast_i32_i32" in "elementwise",
    CastI32I64 = "cast_i32_i64" in "elementwise",
    CastI32U8 = "cast_i32_u8" in "elementwise",
    CastI64F32 = "cast_i64_f32" in "elementwise",
    CastI64I32 = "cast_i64_i32" in "elementwise",
    CastI64I64 = "cast_i64_i64" in "elementwise",
    CastI64U8 = "cast_i64_u8" in "elementwise",
    CastU8F32 = "cast_u8_f32" in "elementwise",
    CastU8I32 = "cast_u8_i32" in "elementwise",
    CastU8I64 = "cast_u8_i64" in "elementwise",
    CastU8U8 = "cast_u8_u8" in "elementwise",
    CastF32Bf16 = "cast_f32_bf16" in "elementwise",
    CastBf16F32 = "cast_bf16_f32" in "elementwise",
    CastF32F16 = "cast_f32_f16" in "elementwise",
    CastF16F32 = "cast_f16_f32" in "elementwise",
    FillU16 = "fill_u16" in "elementwise",
    FillU8 = "fill_u8" in "elementwise",
    FillF32 = "fill_f32" in "elementwise",
    FillI64 = "fill_i64" in "elementwise",
    DropoutF32 = "dropout_f32" in "elementwise",
    CausalMaskF32 = "causal_mask_f32" in "elementwise",
    CopyStridedU8 = "copy_strided_u8" in "layout",
    CopyStridedU16 = "copy_strided_u16" in "layout",
    CopyStridedF32 = "copy_strided_f32" in "layout",
    CopyStridedI64 = "copy_strided_i64" in "layout",
    ReduceRowsF32 = "reduce_rows_f32" in "reduce",
    ReduceColsF32 = "reduce_cols_f32" in "reduce",
    FinishMeanF32 = "finish_mean_f32" in "reduce",
    SoftmaxRowsF32 = "softmax_rows_f32" in "nn",
    SoftmaxColsF32 = "softmax_cols_f32" in "nn",
    LayerNormF32 = "layer_norm_f32" in "nn",
    LayerNormGradDxF32 = "layer_norm_grad_dx_f32" in "nn",
    LayerNormGradParamsF32 = "layer_norm_grad_params_f32" in "nn",
    SoftmaxCrossEntropyRowsF32 = "softmax_cross_entropy_rows_f32" in "loss",
    SoftmaxCrossEntropyGradF32 = "softmax_cross_entropy_grad_f32" in "loss",
    SquaredErrorPartsF32 = "squared_error_parts_f32" in "loss",
    GatherF32 = "gather_f32" in "index",
    ScatterAddF32 = "scatter_add_f32" in "index",
    OneHotF32 = "one_hot_f32" in "index",
    TopKF32 = "top_k_f32" in "moe",
    MoeRouteI64 = "moe_route_i64" in "moe",
    SgdF32 = "sgd_f32" in "optim",
    AdamwF32 = "adamw_f32" in "optim",
    FusedF32 = "fused_f32" in "fused",
}

impl Kernel {
    /// The forward kernel of a unary op.
    pub fn unary(op: UnaryOp) -> Kernel {
        match op {
            UnaryOp::Neg => Kernel::NegF32,
            UnaryOp::Exp => Kernel::ExpF32,
            UnaryOp::Log => Kernel::LogF32,
            UnaryOp::Sqrt => Kernel::SqrtF32,
            UnaryOp::Rsqrt => Kernel::RsqrtF32,
            UnaryOp::Tanh => Kernel::TanhF32,
            UnaryOp::Sigmoid => Kernel::SigmoidF32,
            UnaryOp::Relu => Kernel::ReluF32,
            UnaryOp::GeluTanh => Kernel::GeluTanhF32,
            UnaryOp::GeluErf => Kernel::GeluErfF32,
            UnaryOp::Erf => Kernel::ErfF32,
        }
    }

    /// The cast kernel from `src` to `dst` elements (`None`: a half type
    /// to or from anything but f32).
    pub fn cast(src: ElemType, dst: ElemType) -> Option<Kernel> {
        use ElemType::*;
        Some(match (src, dst) {
            (F32, F32) => Kernel::CastF32F32,
            (F32, I32) => Kernel::CastF32I32,
            (F32, I64) => Kernel::CastF32I64,
            (F32, U8) => Kernel::CastF32U8,
            (I32, F32) => Kernel::CastI32F32,
            (I32, I32) => Kernel::CastI32I32,
            (I32, I64) => Kernel::CastI32I64,
            (I32, U8) => Kernel::CastI32U8,
            (I64, F32) => Kernel::CastI64F32,
            (I64, I32) => Kernel::CastI64I32,
            (I64, I64) => Kernel::CastI64I64,
            (I64, U8) => Kernel::CastI64U8,
            (U8, F32) => Kernel::CastU8F32,
            (U8, I32) => Kernel::CastU8I32,
            (U8, I64) => Kernel::CastU8I64,
            (U8, U8) => Kernel::CastU8U8,
            (F32, BF16) => Kernel::CastF32Bf16,
            (BF16, F32) => Kernel::CastBf16F32,
            (F32, F16) => Kernel::CastF32F16,
            (F16, F32) => Kernel::CastF16F32,
            (BF16, _) | (F16, _) | (_, BF16) | (_, F16) => return None,
        })
    }

    /// The `equal` (or `greater`) kernel for elements of `elem` (`None`
    /// for the half types, which compare widened).
    pub fn compare(greater: bool, elem: ElemType) -> Option<Kernel> {
        Some(match (greater, elem) {
            (false, ElemType::F32) => Kernel::EqualF32,
            (false, ElemType::I32) => Kernel::EqualI32,
            (false, ElemType::I64) => Kernel::EqualI64,
            (false, ElemType::U8) => Kernel::EqualU8,
            (true, ElemType::F32) => Kernel::GreaterF32,
            (true, ElemType::I32) => Kernel::GreaterI32,
            (true, ElemType::I64) => Kernel::GreaterI64,
            (true, ElemType::U8) => Kernel::GreaterU8,
            (_, ElemType::BF16 | ElemType::F16) => return None,
        })
    }

    /// The strided copy for elements of `elem` (copies move bits, so one
    /// kernel per element size).
    pub fn copy_strided(elem: ElemType) -> Kernel {
        match elem {
            ElemType::U8 => Kernel::CopyStridedU8,
            ElemType::BF16 | ElemType::F16 => Kernel::CopyStridedU16,
            ElemType::F32 | ElemType::I32 => Kernel::CopyStridedF32,
            ElemType::I64 => Kernel::CopyStridedI64,
        }
    }
}

/// Where a kernel found a bad index: the codes of `common.cuh`'s `ERR_*`.
pub fn error_site(code: u64) -> &'static str {
    match code {
        1 => "gather index",
        2 => "scatter_add index",
        3 => "one_hot index",
        4 => "softmax_cross_entropy label",
        5 => "softmax_cross_entropy_grad label",
        6 => "moe_route expert id",
        _ => "cuda kernel index",
    }
}
