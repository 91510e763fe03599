// Shared definitions of adjoint's CUDA kernels.
//
// NVRTC compiles each `.cu` file of this folder with this header pasted in
// place of its include line for this file (see kernels/src/cuda/nvrtc.rs),
// so nothing here may include a system header: NVRTC has none.
//
// Conventions:
// - kernels are `extern "C"`, named `{op}_{dtype}`;
// - pointers arrive as raw device addresses of the views the host checked
//   (bounds, element type, alignment, outputs disjoint from inputs);
// - sizes are 64-bit; element loops are grid-stride loops, so any grid size
//   covers any element count;
// - sums accumulate in double; every reduction has a fixed shape given the
//   launch configuration, so results are the same bits run after run;
// - a bad index is not a crash: the kernel skips it and reports it through
//   the error word (`report_error`), which the host reads at the next
//   synchronisation.

#ifndef ADJOINT_COMMON_CUH
#define ADJOINT_COMMON_CUH

typedef unsigned char u8;
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// The highest rank a strided layout has (as kernels/src/cpu: MAX_RANK).
#define MAX_RANK 8

// `for (u64 i = ...; i < n; ...)` over this thread's share of `0..n`.
#define GRID_STRIDE(i, n)                                                    \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n);   \
         i += (u64)blockDim.x * gridDim.x)

// The same over blocks: `b` runs over this block's share of `0..n`.
#define BLOCK_STRIDE(b, n) for (u64 b = blockIdx.x; b < (u64)(n); b += gridDim.x)

typedef unsigned short u16;

// ----- half storage types: bits in a u16, arithmetic in f32 -----

// bf16 is the top half of an f32.
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
// Round to nearest even; NaN stays a (quiet) NaN.
__device__ __forceinline__ u16 f32_to_bf16(float v) {
    u32 u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
}
__device__ __forceinline__ u16 f32_to_f16(float v) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

__device__ __forceinline__ float neg_inf_f32() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float nan_f32() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ bool is_nan_f32(float v) { return v != v; }

// ----- strided layouts -----

// Up to three operands stepping through one shape. `stride[k][d]` is the
// element stride of operand k along axis d (0 where it broadcasts). The
// host drops axes of size 1 and merges neighbours first, so `rank` is small.
// Mirrors `Strided` in kernels/src/cuda/layout.rs.
struct Strided {
    u32 rank;
    u32 pad;
    u64 shape[MAX_RANK];
    u64 stride[3][MAX_RANK];
};

// The offsets of flat (row-major) position `i` for the first K operands.
template <int K>
__device__ __forceinline__ void strided_offsets(const Strided& s, u64 i, u64* off) {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = 0;
    if (s.rank == 1) {
#pragma unroll
        for (int k = 0; k < K; ++k) off[k] = i * s.stride[k][0];
        return;
    }
    for (int d = (int)s.rank - 1; d >= 0; --d) {
        u64 n = s.shape[d];
        u64 q = i / n;
        u64 r = i - q * n;
        i = q;
#pragma unroll
        for (int k = 0; k < K; ++k) off[k] += r * s.stride[k][d];
    }
}

// Kept and reduced axes of a reduction's input, each with its element
// strides in x. Mirrors `ReduceLayout` in kernels/src/cuda/layout.rs.
struct ReduceLayout {
    u32 kept_rank;
    u32 red_rank;
    u64 kept_shape[MAX_RANK];
    u64 kept_stride[MAX_RANK];
    u64 red_shape[MAX_RANK];
    u64 red_stride[MAX_RANK];
};

__device__ __forceinline__ u64 axes_offset(const u64* shape, const u64* stride, u32 rank, u64 i) {
    u64 off = 0;
    for (int d = (int)rank - 1; d >= 0; --d) {
        u64 q = i / shape[d];
        off += (i - q * shape[d]) * stride[d];
        i = q;
    }
    return off;
}

// ----- indices -----

// Index element `i` of an i64 (`wide != 0`) or i32 index array.
__device__ __forceinline__ i64 load_index(const void* p, u64 i, i32 wide) {
    return wide ? ((const i64*)p)[i] : (i64)((const i32*)p)[i];
}

// The error word: [code, index, bound]. The first report wins; the host
// names the code (kernels/src/cuda/kernels.rs `error_site`), reads and
// clears it at the next synchronisation.
__device__ __forceinline__ void report_error(u64* err, u64 code, i64 index, u64 bound) {
    if (atomicCAS(err, 0ULL, code) == 0ULL) {
        err[1] = (u64)index;
        err[2] = bound;
    }
}

// Error codes (kept in step with `ErrorSite` in kernels/src/cuda/kernels.rs).
#define ERR_GATHER_INDEX 1
#define ERR_SCATTER_INDEX 2
#define ERR_ONE_HOT_INDEX 3
#define ERR_XENT_LABEL 4
#define ERR_XENT_GRAD_LABEL 5
#define ERR_MOE_EXPERT 6

// ----- block reductions -----

struct SumF64 {
    typedef double T;
    __device__ __forceinline__ static double identity() { return 0.0; }
    __device__ __forceinline__ static double op(double a, double b) { return a + b; }
};

// The largest number, NaN ignored (as `f32::max`).
struct MaxF32 {
    typedef float T;
    __device__ __forceinline__ static float identity() { return neg_inf_f32(); }
    __device__ __forceinline__ static float op(float a, float b) { return fmaxf(a, b); }
};

// The largest value, NaN winning (as the reference's reduce max).
struct MaxNanF32 {
    typedef float T;
    __device__ __forceinline__ static float identity() { return neg_inf_f32(); }
    __device__ __forceinline__ static float op(float acc, float v) {
        return (v > acc || is_nan_f32(v)) ? v : acc;
    }
};

template <class R>
__device__ __forceinline__ typename R::T warp_reduce(typename R::T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = R::op(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

// Reduces `v` over the block and returns the result to every thread.
// `blockDim.x` must be a multiple of 32 (at most 1024); every thread of the
// block must call it. The order of operations depends only on blockDim.
template <class R>
__device__ typename R::T block_reduce(typename R::T v) {
    __shared__ typename R::T partial[32];
    __shared__ typename R::T result;
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 warps = blockDim.x >> 5;
    v = warp_reduce<R>(v);
    __syncthreads();  // an earlier call may still be reading `partial`
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        typename R::T w = lane < warps ? partial[lane] : R::identity();
        w = warp_reduce<R>(w);
        if (lane == 0) result = w;
    }
    __syncthreads();
    return result;
}

// Column tiles: a block of `lanes` x 32 threads (blockDim.x = 32 lanes,
// at most 1024) covers 32 neighbouring columns; thread (lane, column) =
// (threadIdx.x >> 5, threadIdx.x & 31) folds rows lane, lane + lanes, ...
// of its column, so each warp reads 32 neighbouring elements of a row.
// `column_tile_reduce` then combines the lanes' partials in lane order
// (a fixed order: the same bits every run) and returns the column's result
// to lane 0. Every thread of the block must call it.
#define TILE_COLUMNS 32u
__device__ __forceinline__ u32 tile_column() { return threadIdx.x & 31u; }
__device__ __forceinline__ u32 tile_lane() { return threadIdx.x >> 5; }
__device__ __forceinline__ u32 tile_lanes() { return blockDim.x >> 5; }

template <class R>
__device__ typename R::T column_tile_reduce(typename R::T v) {
    __shared__ typename R::T part[32][33];
    const u32 c = tile_column(), lane = tile_lane();
    __syncthreads();  // an earlier call may still be reading `part`
    part[lane][c] = v;
    __syncthreads();
    if (lane == 0)
        for (u32 l = 1; l < tile_lanes(); ++l) v = R::op(v, part[l][c]);
    return v;
}

// ----- math (the CPU kernels' formulas, kernels/src/cpu/elementwise.rs) -----

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_CUBIC 0.044715f
#define INV_SQRT_2PI 0.3989422804014327f
#define FRAC_1_SQRT_2 0.7071067811865476f

__device__ __forceinline__ float sigmoid_f32(float x) { return 1.0f / (1.0f + expf(-x)); }

// `x sigmoid(2u) = 0.5 x (1 + tanh u)`, no cancellation for negative u.
__device__ __forceinline__ float gelu_tanh_f32(float x) {
    float u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
}

__device__ __forceinline__ float gelu_erf_f32(float x) { return x * normcdff(x); }

__device__ __forceinline__ float gelu_erf_prime_f32(float x) {
    float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
    return normcdff(x) + x * pdf;
}

// With s = sigmoid(2u): 0.5 (1 + tanh u) = s and 1 - tanh^2 u = 4 s (1 - s).
__device__ __forceinline__ float gelu_tanh_prime_f32(float x) {
    float x2 = x * x;
    float u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x2 * x);
    float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_CUBIC * x2);
    float m = -2.0f * u;
    float e = expf(m > 80.0f ? 80.0f : m);
    float s = 1.0f / (1.0f + e);
    return s + 2.0f * x * (e * s) * s * du;
}

// ----- unary and binary ops by code -----
// One home for each op's formula: the per-op kernels of elementwise.cu pass
// a constant code (the switch folds away) and the fused chains of fused.cu
// a run-time one, so a fused chain computes exactly what the unfused calls
// do. Codes in `UnaryOp` / `BinaryOp` order (kernels/src/cuda/fused.rs).

#define UNARY_NEG 0
#define UNARY_EXP 1
#define UNARY_LOG 2
#define UNARY_SQRT 3
#define UNARY_RSQRT 4
#define UNARY_TANH 5
#define UNARY_SIGMOID 6
#define UNARY_RELU 7
#define UNARY_GELU_TANH 8
#define UNARY_GELU_ERF 9
#define UNARY_ERF 10

__device__ __forceinline__ float unary_f32(u32 code, float v) {
    switch (code) {
        case UNARY_NEG: return -v;
        case UNARY_EXP: return expf(v);
        case UNARY_LOG: return logf(v);
        case UNARY_SQRT: return sqrtf(v);
        case UNARY_RSQRT: return 1.0f / sqrtf(v);
        case UNARY_TANH: return tanhf(v);
        case UNARY_SIGMOID: return sigmoid_f32(v);
        // NaN passes through (`!(v <= 0)`), as in PyTorch.
        case UNARY_RELU: return v <= 0.0f ? 0.0f : v;
        case UNARY_GELU_TANH: return gelu_tanh_f32(v);
        case UNARY_GELU_ERF: return gelu_erf_f32(v);
        default: return erff(v);
    }
}

#define BINARY_ADD 0
#define BINARY_SUB 1
#define BINARY_MUL 2
#define BINARY_DIV 3
#define BINARY_POW 4

__device__ __forceinline__ float binary_f32(u32 code, float x, float y) {
    switch (code) {
        case BINARY_ADD: return x + y;
        case BINARY_SUB: return x - y;
        case BINARY_MUL: return x * y;
        case BINARY_DIV: return x / y;
        // An exponent of 2 (variance, MSE) is a product, exactly (as the CPU).
        default: return y == 2.0f ? x * x : powf(x, y);
    }
}

// ----- Philox4x32-10 (kernels/src/rng.rs, bit for bit) -----

__device__ __forceinline__ u32 rotl32(u32 x, u32 r) { return (x << r) | (x >> (32u - r)); }

__device__ __forceinline__ u32 philox_bits(u64 seed, u64 step, u32 rank, u64 site, u64 element) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    u64 s = site ^ ((u64)rank << 48);
    u32 c0 = (u32)element;
    u32 c1 = (u32)(element >> 32);
    u32 c2 = (u32)s ^ (u32)step;
    u32 c3 = (u32)(s >> 32) ^ rotl32((u32)(step >> 32), 16);
    u32 k0 = (u32)seed ^ rotl32((u32)step, 7);
    u32 k1 = (u32)(seed >> 32);
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        u32 hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
        u32 hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
        u32 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += W0;
        k1 += W1;
    }
    return c0;
}

#endif  // ADJOINT_COMMON_CUH
