// A fused chain of elementwise steps (kernels/src/cpu/fused.rs) in one pass:
// each thread computes every step of its element in registers and stores
// only the steps the program keeps, so a chain of k calls reads its inputs
// and writes its outputs once instead of k times.
//
// The chain arrives by value (`FusedChain`, mirrored by
// kernels/src/cuda/fused.rs): the shape, each input's address, element
// size (4: f32, 1: a select's u8 condition) and strides, and per step an op
// code, up to three operands (an input `i` as `i`, an earlier step `s` as
// `-(s + 1)`) and the address to store to (0: kept in registers only).
// The math is the unfused kernels' own (`unary_f32`, `binary_f32` and the
// GELU derivatives of common.cuh), so a fused chain gives the unfused
// chain's values.

#include "common.cuh"

#define FUSED_MAX_STEPS 8
#define FUSED_MAX_INPUTS 8

// Op codes: kind in the high byte, the op within its kind in the low one.
#define KIND_UNARY 0
#define KIND_BINARY 1
#define KIND_COMPARE 2
#define KIND_SELECT 3
#define KIND_GELU_GRAD 4

struct FusedChain {
    u32 rank;
    u32 steps;
    u32 inputs;
    u32 pad;
    u64 shape[MAX_RANK];
    u64 in_stride[FUSED_MAX_INPUTS][MAX_RANK];
    u64 in_ptr[FUSED_MAX_INPUTS];
    u32 in_size[FUSED_MAX_INPUTS];
    u32 op[FUSED_MAX_STEPS];
    i32 arg[FUSED_MAX_STEPS][3];
    u64 out_ptr[FUSED_MAX_STEPS];
};

extern "C" __global__ void fused_f32(u64 n, FusedChain c) {
    GRID_STRIDE(i, n) {
        u64 off[FUSED_MAX_INPUTS];
        for (u32 k = 0; k < c.inputs; ++k) off[k] = 0;
        u64 rest = i;
        for (int d = (int)c.rank - 1; d >= 0; --d) {
            u64 q = rest / c.shape[d];
            u64 r = rest - q * c.shape[d];
            rest = q;
            for (u32 k = 0; k < c.inputs; ++k) off[k] += r * c.in_stride[k][d];
        }
        float v[FUSED_MAX_STEPS];
        for (u32 s = 0; s < c.steps; ++s) {
            u32 kind = c.op[s] >> 8, code = c.op[s] & 0xffu;
            int arity = kind == KIND_UNARY ? 1 : (kind == KIND_SELECT ? 3 : 2);
            float a[3] = {0.0f, 0.0f, 0.0f};
            for (int j = 0; j < arity; ++j) {
                i32 g = c.arg[s][j];
                if (g < 0) {
                    a[j] = v[-g - 1];
                } else if (c.in_size[g] == 1) {
                    a[j] = ((const u8*)c.in_ptr[g])[off[g]] != 0 ? 1.0f : 0.0f;
                } else {
                    a[j] = ((const float*)c.in_ptr[g])[off[g]];
                }
            }
            float r;
            switch (kind) {
                case KIND_UNARY: r = unary_f32(code, a[0]); break;
                case KIND_BINARY: r = binary_f32(code, a[0], a[1]); break;
                case KIND_COMPARE: r = (code == 0 ? a[0] == a[1] : a[0] > a[1]) ? 1.0f : 0.0f; break;
                case KIND_SELECT: r = a[0] != 0.0f ? a[1] : a[2]; break;
                default:
                    r = a[1] * (code ? gelu_tanh_prime_f32(a[0]) : gelu_erf_prime_f32(a[0]));
                    break;
            }
            v[s] = r;
            if (c.out_ptr[s] != 0) {
                if (kind == KIND_COMPARE) ((u8*)c.out_ptr[s])[i] = r != 0.0f ? 1 : 0;
                else ((float*)c.out_ptr[s])[i] = r;
            }
        }
    }
}
