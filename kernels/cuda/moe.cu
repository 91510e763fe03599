// Mixture-of-experts kernels (kernels/src/cpu/moe.rs): top-k selection and
// routing. The grouped matmuls run through cuBLAS on the host side.

#include "common.cuh"

// Whether (a, ia) ranks before (b, ib): larger value first, ties to the
// lower index, NaN below every number (NaNs among themselves by index).
__device__ __forceinline__ bool ranks_before(float a, u64 ia, float b, u64 ib) {
    bool an = is_nan_f32(a), bn = is_nan_f32(b);
    if (!an && !bn) return a > b || (a == b && ia < ib);
    if (!an && bn) return true;
    if (an && !bn) return false;
    return ia < ib;
}

// ids[r, 0..k] = the indices of the k largest entries of row r of x
// [rows, n], best first: thread per row, insertion into the sorted prefix
// of its output row (the CPU's algorithm).
extern "C" __global__ void top_k_f32(const float* x, i64* ids, u64 rows, u64 n, u64 k) {
    GRID_STRIDE(r, rows) {
        const float* row = x + r * n;
        i64* out = ids + r * k;
        u64 filled = 0;
        for (u64 i = 0; i < n; ++i) {
            float v = row[i];
            if (filled == k) {
                u64 last = (u64)out[k - 1];
                if (!ranks_before(v, i, row[last], last)) continue;
            }
            u64 p = filled < k - 1 ? filled : k - 1;
            while (p > 0) {
                u64 prev = (u64)out[p - 1];
                if (!ranks_before(v, i, row[prev], prev)) break;
                out[p] = out[p - 1];
                --p;
            }
            out[p] = (i64)i;
            if (filled < k) ++filled;
        }
    }
}

// Packs the `slots` slots of ids (expert per slot, slot s = t k + j) into
// rows grouped by expert: kept slots by expert ascending, slot order within
// an expert (the first `capacity` of each expert are kept), then dropped
// slots in slot order. Writes row_token, slot_row, slot_keep and offsets
// [experts + 1] as the CPU does. One block (launch with grid 1, blockDim a
// multiple of 32, up to 1024):
// 1. each thread takes experts e = tid, tid + blockDim, ... and walks all
//    slots in order, giving each slot of e its rank among them (kept in
//    slot_row for now) and counting them into offsets[e + 1];
// 2. thread 0 turns counts into group starts, each count capped;
// 3. the block walks the slots in chunks of blockDim, a prefix count of
//    dropped slots (in shared memory) placing each dropped slot after every
//    kept row.
// A bad expert id is reported and its slot dropped.
extern "C" __global__ void moe_route_i64(const void* ids, i32 wide, i64* row_token, i64* slot_row,
                                         float* slot_keep, i64* offsets, u64 slots, u64 k,
                                         u64 experts, u64 capacity, u64* err) {
    __shared__ u32 dropped_before[1024];
    __shared__ i64 chunk_base;
    for (u64 e = threadIdx.x; e < experts; e += blockDim.x) {
        i64 count = 0;
        for (u64 s = 0; s < slots; ++s) {
            if (load_index(ids, s, wide) == (i64)e) slot_row[s] = count++;
        }
        offsets[e + 1] = count;
    }
    for (u64 s = threadIdx.x; s < slots; s += blockDim.x) {
        i64 e = load_index(ids, s, wide);
        if (e < 0 || (u64)e >= experts) {
            report_error(err, ERR_MOE_EXPERT, e, experts);
            slot_row[s] = -1;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        i64 kept = 0;
        offsets[0] = 0;
        for (u64 e = 0; e < experts; ++e) {
            u64 c = (u64)offsets[e + 1];
            kept += (i64)(c < capacity ? c : capacity);
            offsets[e + 1] = kept;
        }
        chunk_base = kept;
    }
    __syncthreads();
    for (u64 start = 0; start < slots; start += blockDim.x) {
        u64 s = start + threadIdx.x;
        bool in = s < slots;
        i64 e = in ? load_index(ids, s, wide) : 0;
        bool valid = in && e >= 0 && (u64)e < experts;
        i64 rank = in ? slot_row[s] : 0;
        bool keep = valid && (u64)rank < capacity;
        dropped_before[threadIdx.x] = (in && !keep) ? 1u : 0u;
        __syncthreads();
        // Inclusive scan (Hillis-Steele) of the dropped flags.
        for (u32 o = 1; o < blockDim.x; o <<= 1) {
            u32 add = threadIdx.x >= o ? dropped_before[threadIdx.x - o] : 0u;
            __syncthreads();
            dropped_before[threadIdx.x] += add;
            __syncthreads();
        }
        i64 base = chunk_base;
        if (in) {
            i64 row = keep ? offsets[e] + rank
                           : base + (i64)dropped_before[threadIdx.x] - 1;
            slot_row[s] = row;
            slot_keep[s] = keep ? 1.0f : 0.0f;
            row_token[row] = (i64)(s / k);
        }
        __syncthreads();
        if (threadIdx.x == blockDim.x - 1) chunk_base = base + (i64)dropped_before[threadIdx.x];
        __syncthreads();
    }
}
