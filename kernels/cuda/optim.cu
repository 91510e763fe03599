// Optimizer updates over flat buffers (kernels/src/cpu/optim.rs): SGD and
// AdamW with PyTorch's single-tensor formulas in the same operation order.
// Every product and sum is an explicitly rounded intrinsic (__fmul_rn,
// __fadd_rn, ...), which the compiler never fuses into a multiply-add, so
// the updates round as the CPU's do. The scalar factors come from the host,
// computed in f64 as the CPU computes them.

#include "common.cuh"

// d = g + wd p (PyTorch skips the add when wd == 0).
__device__ __forceinline__ float decayed(float g, float w, float wd) {
    return wd != 0.0f ? __fadd_rn(g, __fmul_rn(wd, w)) : g;
}

// flags: bit 0 momentum on, bit 1 first step, bit 2 nesterov.
extern "C" __global__ void sgd_f32(float* param, const float* grad, float* buf, u64 n, float neg_lr,
                                   float wd, float mu, float keep, u32 flags) {
    const bool momentum = flags & 1u, first = flags & 2u, nesterov = flags & 4u;
    GRID_STRIDE(i, n) {
        float w = param[i];
        float d = decayed(grad[i], w, wd);
        if (momentum) {
            float b = first ? d : __fadd_rn(__fmul_rn(buf[i], mu), __fmul_rn(keep, d));
            buf[i] = b;
            d = nesterov ? __fadd_rn(d, __fmul_rn(mu, b)) : b;
        }
        param[i] = __fadd_rn(w, __fmul_rn(neg_lr, d));
    }
}

// PyTorch's lerp(start, end, weight) (two formulas for accuracy).
__device__ __forceinline__ float lerp_f32(float start, float end, float weight) {
    float diff = __fsub_rn(end, start);
    return fabsf(weight) < 0.5f ? __fadd_rn(start, __fmul_rn(weight, diff))
                                : __fsub_rn(end, __fmul_rn(diff, __fsub_rn(1.0f, weight)));
}

// p *= 1 - lr wd; m = lerp(m, g, 1 - b1); v = v b2 + (1 - b2) g g;
// denom = sqrt(v) / sqrt(1 - b2^t) + eps; p += -(lr / (1 - b1^t)) m / denom.
extern "C" __global__ void adamw_f32(float* param, const float* grad, float* m, float* v, u64 n,
                                     float decay, float lerp_w, float beta2, float one_minus_beta2,
                                     float bc2_sqrt, float neg_step_size, float eps,
                                     i32 skip_decay) {
    GRID_STRIDE(i, n) {
        float w = param[i];
        float g = grad[i];
        if (!skip_decay) w = __fmul_rn(w, decay);
        float mi = lerp_f32(m[i], g, lerp_w);
        float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(one_minus_beta2, g), g));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        w = __fadd_rn(w, __fdiv_rn(__fmul_rn(neg_step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
        param[i] = w;
    }
}
