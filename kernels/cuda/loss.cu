// Losses (kernels/src/cpu/loss.rs): softmax cross-entropy forward and
// backward, MSE. Means are deterministic: per-row (or per-block) partial
// sums in double go to scratch, then `finish_mean_f32` (reduce.cu) adds
// them in order.

#include "common.cuh"

// parts[r] = logsumexp(logits[r]) - logits[r, label[r]], block per row.
extern "C" __global__ void softmax_cross_entropy_rows_f32(const float* logits, const void* labels,
                                                          i32 wide, double* parts, u64 rows,
                                                          u64 classes, u64* err) {
    BLOCK_STRIDE(r, rows) {
        const float* row = logits + r * classes;
        float m = MaxF32::identity();
        for (u64 j = threadIdx.x; j < classes; j += blockDim.x) m = fmaxf(m, row[j]);
        m = block_reduce<MaxF32>(m);
        double s = 0.0;
        for (u64 j = threadIdx.x; j < classes; j += blockDim.x) s += (double)expf(row[j] - m);
        s = block_reduce<SumF64>(s);
        if (threadIdx.x == 0) {
            i64 label = load_index(labels, r, wide);
            if (label < 0 || (u64)label >= classes) {
                report_error(err, ERR_XENT_LABEL, label, classes);
                parts[r] = 0.0;
            } else {
                parts[r] = ((double)m + ::log(s)) - (double)row[label];
            }
        }
    }
}

// dlogits = (softmax(logits) - onehot(labels)) * dloss / rows, block per
// row; `dloss` is the one-element upstream gradient in device memory.
extern "C" __global__ void softmax_cross_entropy_grad_f32(const float* logits, const void* labels,
                                                          i32 wide, const float* dloss,
                                                          float* dlogits, u64 rows, u64 classes,
                                                          u64* err) {
    float scale = (float)((double)dloss[0] / (double)rows);
    BLOCK_STRIDE(r, rows) {
        const float* row = logits + r * classes;
        float* out = dlogits + r * classes;
        float m = MaxF32::identity();
        for (u64 j = threadIdx.x; j < classes; j += blockDim.x) m = fmaxf(m, row[j]);
        m = block_reduce<MaxF32>(m);
        double s = 0.0;
        for (u64 j = threadIdx.x; j < classes; j += blockDim.x) s += (double)expf(row[j] - m);
        s = block_reduce<SumF64>(s);
        float inv = (float)(1.0 / s);
        i64 label = load_index(labels, r, wide);
        bool ok = label >= 0 && (u64)label < classes;
        if (!ok && threadIdx.x == 0) report_error(err, ERR_XENT_GRAD_LABEL, label, classes);
        for (u64 j = threadIdx.x; j < classes; j += blockDim.x) {
            float p = expf(row[j] - m) * inv;
            out[j] = ok && (i64)j == label ? (p - 1.0f) * scale : p * scale;
        }
    }
}

// parts[block] = sum of (pred - target)^2 over this block's grid-stride
// share; the grid size is fixed by the host for a given n.
extern "C" __global__ void squared_error_parts_f32(const float* pred, const float* target,
                                                   double* parts, u64 n) {
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double d = (double)pred[i] - (double)target[i];
        s += d * d;
    }
    s = block_reduce<SumF64>(s);
    if (threadIdx.x == 0) parts[blockIdx.x] = s;
}
