// Elementwise kernels: unary math, the GELU backward, broadcasting binary
// ops, comparisons, select, casts, fill, dropout and the causal mask.
// The formulas are the CPU kernels' (kernels/src/cpu/elementwise.rs), with
// CUDA's libdevice functions where the CPU has its own polynomials, so
// results agree to a few ulp rather than bit for bit.

#include "common.cuh"

// ----- unary: y[i] = f(x[i]) -----

#define UNARY(name, code)                                                      \
    extern "C" __global__ void name##_f32(const float* x, float* y, u64 n) {   \
        GRID_STRIDE(i, n) { y[i] = unary_f32(code, x[i]); }                    \
    }

UNARY(neg, UNARY_NEG)
UNARY(exp, UNARY_EXP)
UNARY(log, UNARY_LOG)
UNARY(sqrt, UNARY_SQRT)
UNARY(rsqrt, UNARY_RSQRT)
UNARY(tanh, UNARY_TANH)
UNARY(sigmoid, UNARY_SIGMOID)
UNARY(relu, UNARY_RELU)
UNARY(gelu_tanh, UNARY_GELU_TANH)
UNARY(gelu_erf, UNARY_GELU_ERF)
UNARY(erf, UNARY_ERF)

// ----- GELU backward: dx = dy * gelu'(x) -----

extern "C" __global__ void gelu_tanh_grad_f32(const float* x, const float* dy, float* dx, u64 n) {
    GRID_STRIDE(i, n) { dx[i] = dy[i] * gelu_tanh_prime_f32(x[i]); }
}

extern "C" __global__ void gelu_erf_grad_f32(const float* x, const float* dy, float* dx, u64 n) {
    GRID_STRIDE(i, n) { dx[i] = dy[i] * gelu_erf_prime_f32(x[i]); }
}

// ----- binary with broadcasting: out[i] = a[..] op b[..] -----
// `s.stride[0]` steps a, `s.stride[1]` steps b; out is contiguous.

#define BINARY(name, code)                                                      \
    extern "C" __global__ void name##_f32(const float* a, const float* b, float* out, u64 n, \
                                          Strided s) {                          \
        GRID_STRIDE(i, n) {                                                     \
            u64 off[2];                                                         \
            strided_offsets<2>(s, i, off);                                      \
            out[i] = binary_f32(code, a[off[0]], b[off[1]]);                    \
        }                                                                       \
    }

BINARY(add, BINARY_ADD)
BINARY(sub, BINARY_SUB)
BINARY(mul, BINARY_MUL)
BINARY(div, BINARY_DIV)
BINARY(pow, BINARY_POW)

// ----- comparisons: 0/1 bytes -----

#define COMPARE(name, T, expr)                                                  \
    extern "C" __global__ void name(const T* a, const T* b, u8* out, u64 n, Strided s) { \
        GRID_STRIDE(i, n) {                                                     \
            u64 off[2];                                                         \
            strided_offsets<2>(s, i, off);                                      \
            T x = a[off[0]], y = b[off[1]];                                     \
            out[i] = (expr) ? 1 : 0;                                            \
        }                                                                       \
    }

COMPARE(equal_f32, float, x == y)
COMPARE(equal_i32, i32, x == y)
COMPARE(equal_i64, i64, x == y)
COMPARE(equal_u8, u8, x == y)
COMPARE(greater_f32, float, x > y)
COMPARE(greater_i32, i32, x > y)
COMPARE(greater_i64, i64, x > y)
COMPARE(greater_u8, u8, x > y)

// ----- select: out = cond ? a : b (strides: cond, a, b) -----

extern "C" __global__ void select_f32(const u8* cond, const float* a, const float* b, float* out,
                                      u64 n, Strided s) {
    GRID_STRIDE(i, n) {
        u64 off[3];
        strided_offsets<3>(s, i, off);
        out[i] = cond[off[0]] != 0 ? a[off[1]] : b[off[2]];
    }
}

// ----- casts -----
// Floats to ints truncate toward zero, saturating, NaN to 0 (Rust's `as`),
// spelled out rather than left to the conversion instruction; i64 to i32
// saturates; ints to f32 round to nearest; anything to bool is `!= 0`; a
// bool reads as 0 or 1.

__device__ __forceinline__ i32 to_i32(float v) {
    if (is_nan_f32(v)) return 0;
    if (v >= 2147483648.0f) return 2147483647;
    if (v <= -2147483648.0f) return (i32)0x80000000;
    return __float2int_rz(v);
}
__device__ __forceinline__ i32 to_i32(i32 v) { return v; }
__device__ __forceinline__ i32 to_i32(i64 v) {
    return v > 2147483647LL ? 2147483647 : (v < -2147483648LL ? (i32)0x80000000 : (i32)v);
}
__device__ __forceinline__ i32 to_i32(u8 v) { return v != 0; }

__device__ __forceinline__ i64 to_i64(float v) {
    if (is_nan_f32(v)) return 0;
    if (v >= 9223372036854775808.0f) return 9223372036854775807LL;
    if (v <= -9223372036854775808.0f) return (i64)0x8000000000000000ULL;
    return __float2ll_rz(v);
}
__device__ __forceinline__ i64 to_i64(i32 v) { return v; }
__device__ __forceinline__ i64 to_i64(i64 v) { return v; }
__device__ __forceinline__ i64 to_i64(u8 v) { return v != 0; }

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(i32 v) { return __int2float_rn(v); }
__device__ __forceinline__ float to_f32(i64 v) { return __ll2float_rn(v); }
__device__ __forceinline__ float to_f32(u8 v) { return v != 0 ? 1.0f : 0.0f; }

__device__ __forceinline__ u8 to_u8(float v) { return v != 0.0f; }
__device__ __forceinline__ u8 to_u8(i32 v) { return v != 0; }
__device__ __forceinline__ u8 to_u8(i64 v) { return v != 0; }
__device__ __forceinline__ u8 to_u8(u8 v) { return v != 0; }

#define CAST(S, sname, D, dname)                                                \
    extern "C" __global__ void cast_##sname##_##dname(const S* x, D* y, u64 n) { \
        GRID_STRIDE(i, n) { y[i] = to_##dname(x[i]); }                          \
    }

#define CAST_FROM(S, sname)          \
    CAST(S, sname, float, f32)       \
    CAST(S, sname, i32, i32)         \
    CAST(S, sname, i64, i64)         \
    CAST(S, sname, u8, u8)

CAST_FROM(float, f32)
CAST_FROM(i32, i32)
CAST_FROM(i64, i64)
CAST_FROM(u8, u8)

// Half types to and from f32 (the only casts the precision rewrite emits;
// the host goes through f32 for the others).
extern "C" __global__ void cast_f32_bf16(const float* x, u16* y, u64 n) {
    GRID_STRIDE(i, n) { y[i] = f32_to_bf16(x[i]); }
}
extern "C" __global__ void cast_bf16_f32(const u16* x, float* y, u64 n) {
    GRID_STRIDE(i, n) { y[i] = bf16_to_f32(x[i]); }
}
extern "C" __global__ void cast_f32_f16(const float* x, u16* y, u64 n) {
    GRID_STRIDE(i, n) { y[i] = f32_to_f16(x[i]); }
}
extern "C" __global__ void cast_f16_f32(const u16* x, float* y, u64 n) {
    GRID_STRIDE(i, n) { y[i] = f16_to_f32(x[i]); }
}

// ----- fill: every element set to one bit pattern -----
// (The host converts the value to the element type; i32 uses fill_f32's
// 32-bit pattern.)

extern "C" __global__ void fill_u8(u8* y, u64 n, u32 bits) {
    GRID_STRIDE(i, n) { y[i] = (u8)bits; }
}

extern "C" __global__ void fill_u16(u16* y, u64 n, u32 bits) {
    GRID_STRIDE(i, n) { y[i] = (u16)bits; }
}

extern "C" __global__ void fill_f32(u32* y, u64 n, u32 bits) {
    GRID_STRIDE(i, n) { y[i] = bits; }
}

extern "C" __global__ void fill_i64(u64* y, u64 n, u64 bits) {
    GRID_STRIDE(i, n) { y[i] = bits; }
}

// ----- dropout: y = keep ? x * scale : 0 -----
// Keeps element e iff the top 24 bits of its Philox draw are at least
// `threshold` (= ceil(p 2^24)), as the CPU; the product is taken in double.

extern "C" __global__ void dropout_f32(const float* x, float* y, u64 n, u32 threshold,
                                       double scale, u64 seed, u64 step, u32 rank, u64 site) {
    GRID_STRIDE(i, n) {
        u32 bits = philox_bits(seed, step, rank, site, i);
        y[i] = (bits >> 8) >= threshold ? (float)((double)x[i] * scale) : 0.0f;
    }
}

// ----- causal mask: [batch, t, t], columns past the row become `fill` -----

extern "C" __global__ void causal_mask_f32(const float* x, float* y, u64 n, u64 t, float fill) {
    GRID_STRIDE(i, n) {
        u64 row = i / t;
        u64 col = i - row * t;
        y[i] = col <= row % t ? x[i] : fill;
    }
}
