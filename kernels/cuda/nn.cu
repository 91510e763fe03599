// Softmax, log-softmax and LayerNorm forward and backward
// (kernels/src/cpu/nn.rs). Row kernels run one block per row (grid-stride
// over rows); sums accumulate in double.

#include "common.cuh"

// ----- softmax over the middle axis of [outer, n, inner] -----

// inner == 1: block per contiguous row of n.
extern "C" __global__ void softmax_rows_f32(const float* x, float* y, u64 rows, u64 n, i32 log) {
    BLOCK_STRIDE(r, rows) {
        const float* xr = x + r * n;
        float* yr = y + r * n;
        float m = MaxF32::identity();
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, xr[j]);
        m = block_reduce<MaxF32>(m);
        double s = 0.0;
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) s += (double)expf(xr[j] - m);
        s = block_reduce<SumF64>(s);
        if (log) {
            float ln_s = (float)::log(s);
            for (u64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = (xr[j] - m) - ln_s;
        } else {
            float inv = (float)(1.0 / s);
            for (u64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
        }
    }
}

// inner > 1: thread per (outer, inner) column, down its n entries.
extern "C" __global__ void softmax_cols_f32(const float* x, float* y, u64 outer, u64 n, u64 inner,
                                            i32 log) {
    GRID_STRIDE(c, outer * inner) {
        u64 o = c / inner, i = c - o * inner;
        const float* xc = x + o * n * inner + i;
        float* yc = y + o * n * inner + i;
        float m = MaxF32::identity();
        for (u64 j = 0; j < n; ++j) m = fmaxf(m, xc[j * inner]);
        double s = 0.0;
        for (u64 j = 0; j < n; ++j) s += (double)expf(xc[j * inner] - m);
        if (log) {
            float ln_s = (float)::log(s);
            for (u64 j = 0; j < n; ++j) yc[j * inner] = (xc[j * inner] - m) - ln_s;
        } else {
            float inv = (float)(1.0 / s);
            for (u64 j = 0; j < n; ++j) yc[j * inner] = expf(xc[j * inner] - m) * inv;
        }
    }
}

// ----- LayerNorm over the last axis of [rows, d] -----

// Mean and 1/sqrt(var + eps) of one row (biased variance from double sums
// of x and x^2, as the CPU), returned to every thread of the block.
__device__ __forceinline__ float2 row_stats(const float* xr, u64 d, float eps) {
    double s = 0.0, q = 0.0;
    for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
        double v = (double)xr[j];
        s += v;
        q += v * v;
    }
    s = block_reduce<SumF64>(s);
    q = block_reduce<SumF64>(q);
    double mean = s / (double)d;
    double var = q / (double)d - mean * mean;
    if (var < 0.0) var = 0.0;
    return make_float2((float)mean, (float)(1.0 / ::sqrt(var + (double)eps)));
}

extern "C" __global__ void layer_norm_f32(const float* x, const float* gamma, const float* beta,
                                          float* y, u64 rows, u64 d, float eps) {
    BLOCK_STRIDE(r, rows) {
        const float* xr = x + r * d;
        float2 st = row_stats(xr, d, eps);
        for (u64 j = threadIdx.x; j < d; j += blockDim.x)
            y[r * d + j] = (xr[j] - st.x) * st.y * gamma[j] + beta[j];
    }
}

// dx = rstd (dy g - mean(dy g) - xh mean(dy g xh)), one block per row; the
// row's (mean, rstd) also go to `stats` for layer_norm_grad_params_f32.
extern "C" __global__ void layer_norm_grad_dx_f32(const float* x, const float* gamma,
                                                  const float* dy, float* dx, float2* stats,
                                                  u64 rows, u64 d, float eps) {
    BLOCK_STRIDE(r, rows) {
        const float* xr = x + r * d;
        const float* dyr = dy + r * d;
        float2 st = row_stats(xr, d, eps);
        double s1 = 0.0, s2 = 0.0;
        for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
            float dxh = dyr[j] * gamma[j];
            s1 += (double)dxh;
            s2 += (double)(dxh * ((xr[j] - st.x) * st.y));
        }
        s1 = block_reduce<SumF64>(s1);
        s2 = block_reduce<SumF64>(s2);
        float m1 = (float)(s1 / (double)d), m2 = (float)(s2 / (double)d);
        for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
            float xh = (xr[j] - st.x) * st.y;
            dx[r * d + j] = st.y * (dyr[j] * gamma[j] - m1 - xh * m2);
        }
        if (threadIdx.x == 0) stats[r] = st;
    }
}

// dgamma = sum_rows dy xh, dbeta = sum_rows dy: column tiles (common.cuh),
// each column's rows shared among the block's lanes, double sums combined
// in lane order.
extern "C" __global__ void __launch_bounds__(512)
    layer_norm_grad_params_f32(const float* x, const float* dy, const float2* stats,
                               float* dgamma, float* dbeta, u64 rows, u64 d) {
    const u32 lane = tile_lane(), lanes = tile_lanes();
    for (u64 tile = (u64)blockIdx.x * TILE_COLUMNS; tile < d; tile += (u64)gridDim.x * TILE_COLUMNS) {
        const u64 j = tile + tile_column();
        const bool live = j < d;
        double g = 0.0, b = 0.0;
        if (live)
            for (u64 r = lane; r < rows; r += lanes) {
                float2 st = stats[r];
                float dv = dy[r * d + j];
                g += (double)(dv * ((x[r * d + j] - st.x) * st.y));
                b += (double)dv;
            }
        g = column_tile_reduce<SumF64>(g);
        b = column_tile_reduce<SumF64>(b);
        if (live && lane == 0) {
            dgamma[j] = (float)g;
            dbeta[j] = (float)b;
        }
    }
}
