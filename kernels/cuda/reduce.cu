// Reductions (sum, mean, max) over any set of axes (kernels/src/cpu/reduce.rs).
//
// The host simplifies the layout into kept and reduced axes (sizes and
// element strides in x) and picks one of two kernels:
// - `reduce_rows_f32` when x's innermost axis is reduced: one block per
//   output, its threads striding through the reduced positions, so reads
//   are coalesced; a block reduction combines them;
// - `reduce_cols_f32` when x's innermost axis is kept: column tiles
//   (common.cuh), 32 neighbouring outputs per block, each folded by the
//   block's lanes and combined in lane order, so warps read neighbouring
//   elements and a long reduced axis is shared among the lanes.
// Sums accumulate in double; max lets NaN win. `op`: 0 sum, 1 mean, 2 max.
// Either way the order of operations depends only on the shape and the
// launch configuration, so results repeat bit for bit.

#include "common.cuh"

#define OP_SUM 0
#define OP_MEAN 1
#define OP_MAX 2

__device__ __forceinline__ u64 kept_offset(const ReduceLayout& l, u64 o) {
    return axes_offset(l.kept_shape, l.kept_stride, l.kept_rank, o);
}

__device__ __forceinline__ u64 red_offset(const ReduceLayout& l, u64 r) {
    return axes_offset(l.red_shape, l.red_stride, l.red_rank, r);
}

extern "C" __global__ void reduce_rows_f32(const float* x, float* y, u64 outputs, u64 count,
                                           i32 op, ReduceLayout l) {
    BLOCK_STRIDE(o, outputs) {
        const float* base = x + kept_offset(l, o);
        if (op == OP_MAX) {
            float m = MaxNanF32::identity();
            for (u64 r = threadIdx.x; r < count; r += blockDim.x)
                m = MaxNanF32::op(m, base[red_offset(l, r)]);
            m = block_reduce<MaxNanF32>(m);
            if (threadIdx.x == 0) y[o] = m;
        } else {
            double s = 0.0;
            for (u64 r = threadIdx.x; r < count; r += blockDim.x) s += (double)base[red_offset(l, r)];
            s = block_reduce<SumF64>(s);
            if (threadIdx.x == 0) y[o] = op == OP_MEAN ? (float)(s / (double)count) : (float)s;
        }
    }
}

extern "C" __global__ void __launch_bounds__(512)
    reduce_cols_f32(const float* x, float* y, u64 outputs, u64 count, i32 op, ReduceLayout l) {
    const u32 lane = tile_lane(), lanes = tile_lanes();
    for (u64 tile = (u64)blockIdx.x * TILE_COLUMNS; tile < outputs;
         tile += (u64)gridDim.x * TILE_COLUMNS) {
        const u64 o = tile + tile_column();
        const bool live = o < outputs;
        const float* base = x + (live ? kept_offset(l, o) : 0);
        if (op == OP_MAX) {
            float m = MaxNanF32::identity();
            if (live)
                for (u64 r = lane; r < count; r += lanes) m = MaxNanF32::op(m, base[red_offset(l, r)]);
            m = column_tile_reduce<MaxNanF32>(m);
            if (live && lane == 0) y[o] = m;
        } else {
            double s = 0.0;
            if (live)
                for (u64 r = lane; r < count; r += lanes) s += (double)base[red_offset(l, r)];
            s = column_tile_reduce<SumF64>(s);
            if (live && lane == 0) y[o] = op == OP_MEAN ? (float)(s / (double)count) : (float)s;
        }
    }
}

// Partial sums of a deterministic mean: `parts` (one per block, in block
// order) summed in order by one block, then divided, into `out[0]`.
extern "C" __global__ void finish_mean_f32(const double* parts, u64 n, double divisor, float* out) {
    double s = 0.0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) s += parts[i];
    s = block_reduce<SumF64>(s);
    if (threadIdx.x == 0) out[0] = (float)(s / divisor);
}
