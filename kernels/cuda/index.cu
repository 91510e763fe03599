// Indexing kernels (kernels/src/cpu/index.rs): gather, scatter-add and
// one-hot. Indices are i64 (`wide`) or i32. An index out of range is
// skipped (its output left zero) and reported through the error word.

#include "common.cuh"

// data as [outer, axis, inner]: out[o, j, i] = data[o, indices[j], i].
extern "C" __global__ void gather_f32(const float* data, const void* indices, i32 wide, float* out,
                                      u64 outer, u64 axis, u64 inner, u64 k, u64* err) {
    GRID_STRIDE(e, outer * k * inner) {
        u64 i = e % inner;
        u64 row = e / inner;
        u64 j = row % k, o = row / k;
        i64 idx = load_index(indices, j, wide);
        if (idx < 0 || (u64)idx >= axis) {
            if (i == 0) report_error(err, ERR_GATHER_INDEX, idx, axis);
            out[e] = 0.0f;
        } else {
            out[e] = data[(o * axis + (u64)idx) * inner + i];
        }
    }
}

// out as [outer, size, inner], zeroed, then out[o, indices[j], i] +=
// updates[o, j, i]. The rows of out are split into `ranges` even ranges;
// one thread per (o, range, i) zeroes its rows of column i, then walks
// all the indices in order and adds the updates that land in its range.
// No atomics: every output adds its updates in index order, the same bits
// every run (and the CPU's order). Reading every index once per range is
// cheap (a warp reads the same index), and the ranges give the threads to
// fill the GPU when outer·inner alone is small (an embedding's gradient).
extern "C" __global__ void scatter_add_f32(const float* updates, const void* indices, i32 wide,
                                           float* out, u64 outer, u64 size, u64 inner, u64 k,
                                           u64 ranges, u64* err) {
    GRID_STRIDE(t, outer * ranges * inner) {
        u64 i = t % inner, og = t / inner;
        u64 g = og % ranges, o = og / ranges;
        u64 r0 = g * size / ranges, r1 = (g + 1) * size / ranges;
        float* col = out + o * size * inner + i;
        for (u64 r = r0; r < r1; ++r) col[r * inner] = 0.0f;
        const float* upd = updates + o * k * inner + i;
        for (u64 j = 0; j < k; ++j) {
            i64 idx = load_index(indices, j, wide);
            if (idx < 0 || (u64)idx >= size) {
                if (t == 0) report_error(err, ERR_SCATTER_INDEX, idx, size);
                continue;
            }
            if ((u64)idx < r0 || (u64)idx >= r1) continue;
            col[(u64)idx * inner] += upd[j * inner];
        }
    }
}

// out[j, c] = (indices[j] == c) as f32.
extern "C" __global__ void one_hot_f32(const void* indices, i32 wide, float* out, u64 rows,
                                       u64 depth, u64* err) {
    GRID_STRIDE(e, rows * depth) {
        u64 j = e / depth, c = e - j * depth;
        i64 idx = load_index(indices, j, wide);
        if ((idx < 0 || (u64)idx >= depth) && c == 0) report_error(err, ERR_ONE_HOT_INDEX, idx, depth);
        out[e] = idx == (i64)c ? 1.0f : 0.0f;
    }
}
