// Strided copies: transpose, broadcast, slice, concat and pad are all one
// kernel (kernels/src/cpu/layout.rs). Element `i` of `shape` (row-major)
// is read at `src + off[0]` and written at `dst + off[1]` (strides
// `s.stride[0]` and `s.stride[1]`). Copies move bits, so one kernel per
// element size serves every type of that size.
//
// A destination that writes one element twice gets one of the values
// (the CPU keeps the last in row-major order); no op the compiler emits
// does that.

#include "common.cuh"

#define COPY_STRIDED(name, T)                                                   \
    extern "C" __global__ void name(const T* src, T* dst, u64 n, Strided s) {   \
        GRID_STRIDE(i, n) {                                                     \
            u64 off[2];                                                         \
            strided_offsets<2>(s, i, off);                                      \
            dst[off[1]] = src[off[0]];                                          \
        }                                                                       \
    }

COPY_STRIDED(copy_strided_u8, u8)
COPY_STRIDED(copy_strided_u16, u16)
COPY_STRIDED(copy_strided_f32, u32)
COPY_STRIDED(copy_strided_i64, u64)
