//! The CUDA backend against the CPU backend: the same inputs through both,
//! the outputs compared with a two-sided tolerance (exactly where the op
//! moves bits or counts). Without a GPU every test prints
//! "skipped: no CUDA device found" (and why) and passes; the no-GPU path
//! itself is checked by `without_cuda_the_probe_says_so`.
#![cfg(feature = "cuda")]

use adjoint_kernels::backend::{
    Conv2dDims, FusedArg, FusedElementwise, FusedInput, FusedOp, FusedStep, GroupedMatMulDims,
};
use adjoint_kernels::cuda::{CudaBackend, probe};
use adjoint_kernels::{
    AdamWParams, Backend, BinaryOp, CompareOp, CpuBackend, ElemType, Error, MatMulDims, ReduceOp,
    RngKey, SgdParams, Stream, UnaryOp, View,
};

/// Both backends, each test buffer under the same id on both.
struct Both {
    cpu: CpuBackend,
    gpu: CudaBackend,
}

fn both(test: &str) -> Option<Both> {
    if let Err(why) = probe() {
        println!("{test}: skipped: {why}");
        return None;
    }
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("{test}: a device probed but: {e}"));
    Some(Both {
        cpu: CpuBackend::new(),
        gpu,
    })
}

/// A deterministic stream of numbers (no dependency for tests).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    /// Uniform in [lo, hi).
    fn f32s(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| lo + (hi - lo) * (self.next() as f32 / (1u64 << 31) as f32))
            .collect()
    }
    fn below(&mut self, n: usize, bound: usize) -> Vec<i64> {
        (0..n)
            .map(|_| (self.next() % bound as u64) as i64)
            .collect()
    }
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Both {
    fn upload(&mut self, elem: ElemType, len: usize, bytes: &[u8]) -> View {
        // A backend that widens a half operand allocates f32 scratch of its
        // own, and which kernels widen differs (the CPU multiplies f16
        // widened, cuBLAS natively), so its ids run ahead: the other
        // backend allocates until they meet again.
        let (mut c, mut g) = (
            self.cpu.alloc(bytes.len()).unwrap(),
            self.gpu.alloc(bytes.len()).unwrap(),
        );
        while c.0 < g.0 {
            c = self.cpu.alloc(bytes.len()).unwrap();
        }
        while g.0 < c.0 {
            g = self.gpu.alloc(bytes.len()).unwrap();
        }
        assert_eq!(c, g, "buffer ids in step");
        let v = View {
            buffer: c,
            offset: 0,
            len,
            elem,
        };
        self.cpu.write(v, bytes).unwrap();
        self.gpu.write(v, bytes).unwrap();
        v
    }
    fn f32(&mut self, data: &[f32]) -> View {
        self.upload(ElemType::F32, data.len(), &bytes_f32(data))
    }
    fn i64(&mut self, data: &[i64]) -> View {
        let b: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.upload(ElemType::I64, data.len(), &b)
    }
    fn i32(&mut self, data: &[i32]) -> View {
        let b: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.upload(ElemType::I32, data.len(), &b)
    }
    fn u8(&mut self, data: &[u8]) -> View {
        self.upload(ElemType::U8, data.len(), data)
    }
    /// A zeroed output (filled with a NaN pattern first on both, so an
    /// element a kernel forgets shows).
    fn out(&mut self, elem: ElemType, len: usize) -> View {
        let v = self.upload(elem, len, &vec![0u8; len * elem.size()]);
        self.run(|b| b.fill(v, f64::NAN));
        v
    }

    /// Runs `f` on both; both must succeed.
    fn run(&mut self, f: impl Fn(&mut dyn Backend) -> adjoint_kernels::Result<()>) {
        f(&mut self.cpu).unwrap_or_else(|e| panic!("cpu: {e}"));
        f(&mut self.gpu).unwrap_or_else(|e| panic!("cuda: {e}"));
        self.gpu
            .synchronize()
            .unwrap_or_else(|e| panic!("cuda: {e}"));
    }

    fn bytes(&self, v: View) -> (Vec<u8>, Vec<u8>) {
        let (mut c, mut g) = (vec![0u8; v.bytes()], vec![0u8; v.bytes()]);
        self.cpu.read(v, &mut c).unwrap();
        self.gpu.read(v, &mut g).unwrap();
        (c, g)
    }

    fn read_f32(&self, v: View) -> (Vec<f32>, Vec<f32>) {
        let (c, g) = self.bytes(v);
        let f = |b: Vec<u8>| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        (f(c), f(g))
    }

    /// `|cpu - gpu| <= atol + rtol·max(|cpu|, |gpu|)` everywhere (NaN
    /// only against NaN, infinities only against themselves).
    fn close(&self, what: &str, v: View, rtol: f32, atol: f32) {
        let (c, g) = self.read_f32(v);
        for (i, (&a, &b)) in c.iter().zip(&g).enumerate() {
            let ok = if a.is_nan() || b.is_nan() {
                a.is_nan() && b.is_nan()
            } else if a.is_infinite() || b.is_infinite() {
                a == b
            } else {
                (a - b).abs() <= atol + rtol * a.abs().max(b.abs())
            };
            assert!(ok, "{what}[{i}]: cpu {a} vs cuda {b}");
        }
    }

    /// Byte-for-byte equal.
    fn exact(&self, what: &str, v: View) {
        let (c, g) = self.bytes(v);
        assert_eq!(c, g, "{what}: cpu vs cuda bytes");
    }
}

/// Row-major contiguous strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

#[test]
fn without_cuda_the_probe_says_so() {
    match probe() {
        Ok(devices) => {
            assert!(!devices.is_empty());
            println!("found {devices:?}");
        }
        Err(why) => {
            let msg = why.to_string();
            assert!(msg.starts_with("no CUDA device found"), "{msg}");
            let err = CudaBackend::new(0).unwrap_err().to_string();
            assert!(err.starts_with("no CUDA device found"), "{err}");
            println!("without_cuda_the_probe_says_so: skipped: {msg}");
        }
    }
}

#[test]
fn unary_and_gelu_grad() {
    let Some(mut t) = both("unary_and_gelu_grad") else {
        return;
    };
    let mut rng = Lcg(1);
    let n = 70_001; // more than one grid-stride pass on small GPUs
    let any = t.f32(&rng.f32s(n, -6.0, 6.0));
    let pos = t.f32(&rng.f32s(n, 1e-3, 50.0));
    let dy = t.f32(&rng.f32s(n, -1.0, 1.0));
    use UnaryOp::*;
    for op in [
        Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, GeluTanh, GeluErf, Erf,
    ] {
        let x = if matches!(op, Log | Sqrt | Rsqrt) {
            pos
        } else {
            any
        };
        let y = t.out(ElemType::F32, n);
        t.run(|b| b.unary(op, x, y));
        t.close(&format!("{op:?}"), y, 2e-6, 1e-6);
    }
    for tanh in [true, false] {
        let dx = t.out(ElemType::F32, n);
        t.run(|b| b.gelu_grad(tanh, any, dy, dx));
        t.close(&format!("gelu_grad tanh={tanh}"), dx, 1e-5, 1e-6);
    }
}

#[test]
fn binary_compare_select_with_broadcasting() {
    let Some(mut t) = both("binary_compare_select_with_broadcasting") else {
        return;
    };
    let mut rng = Lcg(2);
    let shape = [4usize, 3, 5];
    let a = t.f32(&rng.f32s(4 * 5, 0.5, 3.0)); // [4, 1, 5]
    let b = t.f32(&rng.f32s(3 * 5, 0.5, 3.0)); // [3, 5]
    let (sa, sb) = ([5usize, 0, 1], [0usize, 5, 1]);
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
    ] {
        let out = t.out(ElemType::F32, 60);
        t.run(|be| be.binary(op, a, &sa, b, &sb, out, &shape));
        t.close(&format!("{op:?}"), out, 2e-6, 0.0);
    }
    // A transposed operand and a scalar exponent of 2.
    let m = t.f32(&rng.f32s(6 * 7, -2.0, 2.0));
    let two = t.f32(&[2.0]);
    let out = t.out(ElemType::F32, 42);
    t.run(|be| be.binary(BinaryOp::Pow, m, &[1, 7], two, &[0, 0], out, &[7, 6]));
    t.exact("pow 2 of a transpose", out);
    // Comparisons in every element type.
    let (x, y) = (t.f32(&[1.0, 2.0, 3.0, 2.0]), t.f32(&[2.0]));
    let (xi, yi) = (t.i64(&[1, 5, -3, 5]), t.i64(&[5]));
    let (xs, ys) = (t.i32(&[1, 5, -3, 5]), t.i32(&[-3]));
    let (xu, yu) = (t.u8(&[0, 1, 7, 1]), t.u8(&[1]));
    for op in [CompareOp::Equal, CompareOp::Greater] {
        for (l, r) in [(x, y), (xi, yi), (xs, ys), (xu, yu)] {
            let out = t.out(ElemType::U8, 4);
            t.run(|be| be.compare(op, l, &[1], r, &[0], out, &[4]));
            t.exact(&format!("{op:?} {:?}", l.elem), out);
        }
    }
    let cond = t.u8(&[1, 0, 1]);
    let sel = t.out(ElemType::F32, 60);
    t.run(|be| be.select(cond, &[0, 1, 0], a, &sa, b, &sb, sel, &shape));
    t.exact("select", sel);
}

#[test]
fn casts_fill_dropout_mask_and_copies() {
    let Some(mut t) = both("casts_fill_dropout_mask_and_copies") else {
        return;
    };
    let f = t.f32(&[0.0, -1.5, 2.7, 3e9, -3e9, f32::NAN, 1.0, -0.0]);
    let i = t.i64(&[0, -1, 2, 5_000_000_000, -5_000_000_000, 7, 1, 16_777_217]);
    let s = t.i32(&[0, -1, 2, i32::MAX, i32::MIN, 7, 1, 16_777_217]);
    let u = t.u8(&[0, 1, 2, 255, 0, 7, 1, 0]);
    for src in [f, i, s, u] {
        for elem in [ElemType::F32, ElemType::I32, ElemType::I64, ElemType::U8] {
            let y = t.out(elem, 8);
            t.run(|b| b.cast(src, y));
            t.exact(&format!("cast {:?} -> {elem:?}", src.elem), y);
        }
    }
    for elem in [ElemType::F32, ElemType::I32, ElemType::I64, ElemType::U8] {
        let y = t.out(elem, 1000);
        t.run(|b| b.fill(y, -2.5));
        t.exact(&format!("fill {elem:?}"), y);
    }
    let mut rng = Lcg(3);
    let x = t.f32(&rng.f32s(50_000, -1.0, 1.0));
    for p in [0.0f32, 0.1, 0.5] {
        let y = t.out(ElemType::F32, 50_000);
        let key = RngKey {
            seed: 42,
            step: 7,
            rank: 1,
            site: 0xDEAD_BEEF_1234,
        };
        t.run(|b| b.dropout(x, y, p, key));
        t.exact(&format!("dropout p={p}"), y);
    }
    let sq = t.f32(&rng.f32s(3 * 16 * 16, -1.0, 1.0));
    let y = t.out(ElemType::F32, 3 * 16 * 16);
    t.run(|b| b.causal_mask(sq, y, 3, 16, -1e9));
    t.exact("causal_mask", y);
    // Transpose [3, 4, 5] -> [5, 3, 4], for every element width.
    let shape = [3usize, 4, 5];
    let src_strides = [20usize, 5, 1];
    let dst_strides = [4usize, 1, 12];
    let vals: Vec<i64> = (0..60).collect();
    let srcs = [
        t.f32(&rng.f32s(60, -1.0, 1.0)),
        t.i64(&vals),
        t.u8(&(0..60).collect::<Vec<u8>>()),
    ];
    for src in srcs {
        let dst = t.out(src.elem, 60);
        t.run(|b| b.copy_strided(src, &src_strides, dst, &dst_strides, &shape));
        t.exact(&format!("transpose {:?}", src.elem), dst);
    }
    // Broadcast a row into a slice of a larger buffer, and a plain copy.
    let row = t.f32(&[1.0, 2.0, 3.0]);
    let big = t.out(ElemType::F32, 40);
    let window = big.sub(4, 24);
    t.run(|b| b.copy_strided(row, &[0, 1], window, &[3, 1], &[8, 3]));
    t.close("broadcast into a window", big, 0.0, 0.0);
    let dst = t.out(ElemType::F32, 3);
    t.run(|b| b.copy(row, dst));
    t.exact("copy", dst);
}

#[test]
fn reductions() {
    let Some(mut t) = both("reductions") else {
        return;
    };
    let mut rng = Lcg(4);
    let cases: [(&[usize], &[bool]); 7] = [
        (&[64, 300], &[false, true]),
        (&[64, 300], &[true, false]),
        (&[6, 7, 8], &[false, true, false]),
        (&[6, 7, 8], &[true, false, true]),
        (&[6, 7, 8], &[true, true, true]),
        (&[3, 200_000], &[false, true]),
        (&[200_000, 3], &[true, false]),
    ];
    for (shape, axes) in cases {
        let numel: usize = shape.iter().product();
        let outputs: usize = shape
            .iter()
            .zip(axes)
            .filter(|(_, r)| !**r)
            .map(|(n, _)| n)
            .product();
        let x = t.f32(&rng.f32s(numel, -1.0, 1.0));
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
            let y = t.out(ElemType::F32, outputs);
            t.run(|b| b.reduce(op, x, shape, axes, y));
            t.close(&format!("{op:?} {shape:?} {axes:?}"), y, 1e-5, 1e-5);
        }
    }
}

#[test]
fn softmax_layer_norm_and_losses() {
    let Some(mut t) = both("softmax_layer_norm_and_losses") else {
        return;
    };
    let mut rng = Lcg(5);
    for (outer, n, inner) in [(33usize, 1000usize, 1usize), (4, 9, 7)] {
        let x = t.f32(&rng.f32s(outer * n * inner, -8.0, 8.0));
        for log in [false, true] {
            let y = t.out(ElemType::F32, outer * n * inner);
            t.run(|b| b.softmax(x, y, outer, n, inner, log));
            t.close(
                &format!("softmax {outer}x{n}x{inner} log={log}"),
                y,
                1e-5,
                1e-7,
            );
        }
    }
    let (rows, d) = (130usize, 768usize);
    let x = t.f32(&rng.f32s(rows * d, -3.0, 5.0));
    let gamma = t.f32(&rng.f32s(d, 0.5, 1.5));
    let beta = t.f32(&rng.f32s(d, -0.5, 0.5));
    let dy = t.f32(&rng.f32s(rows * d, -1.0, 1.0));
    let y = t.out(ElemType::F32, rows * d);
    t.run(|b| b.layer_norm(x, gamma, beta, y, rows, d, 1e-5));
    t.close("layer_norm", y, 1e-5, 1e-5);
    let (dx, dg, db) = (
        t.out(ElemType::F32, rows * d),
        t.out(ElemType::F32, d),
        t.out(ElemType::F32, d),
    );
    t.run(|b| b.layer_norm_grad(x, gamma, dy, dx, dg, db, rows, d, 1e-5));
    t.close("layer_norm_grad dx", dx, 1e-4, 1e-5);
    t.close("layer_norm_grad dgamma", dg, 1e-4, 1e-4);
    t.close("layer_norm_grad dbeta", db, 1e-5, 1e-5);
    let (rows, classes) = (257usize, 1000usize);
    let logits = t.f32(&rng.f32s(rows * classes, -5.0, 5.0));
    let labels = rng.below(rows, classes);
    let labels64 = t.i64(&labels);
    let labels32 = t.i32(&labels.iter().map(|&l| l as i32).collect::<Vec<_>>());
    let dloss = t.f32(&[0.75]);
    for labels in [labels64, labels32] {
        let loss = t.out(ElemType::F32, 1);
        t.run(|b| b.softmax_cross_entropy(logits, labels, loss, rows, classes));
        t.close("softmax_cross_entropy", loss, 1e-6, 0.0);
        let dl = t.out(ElemType::F32, rows * classes);
        t.run(|b| b.softmax_cross_entropy_grad(logits, labels, dloss, dl, rows, classes));
        t.close("softmax_cross_entropy_grad", dl, 1e-5, 1e-9);
    }
    let (p, q) = (
        t.f32(&rng.f32s(100_003, -1.0, 1.0)),
        t.f32(&rng.f32s(100_003, -1.0, 1.0)),
    );
    let loss = t.out(ElemType::F32, 1);
    t.run(|b| b.mse(p, q, loss));
    t.close("mse", loss, 1e-6, 0.0);
}

#[test]
fn gather_scatter_one_hot_and_bad_indices() {
    let Some(mut t) = both("gather_scatter_one_hot_and_bad_indices") else {
        return;
    };
    let mut rng = Lcg(6);
    let (outer, axis, inner, k) = (3usize, 50usize, 17usize, 40usize);
    let data = t.f32(&rng.f32s(outer * axis * inner, -1.0, 1.0));
    let idx = rng.below(k, axis); // repeats: scatter-add must accumulate them
    let idx64 = t.i64(&idx);
    let idx32 = t.i32(&idx.iter().map(|&i| i as i32).collect::<Vec<_>>());
    for ids in [idx64, idx32] {
        let out = t.out(ElemType::F32, outer * k * inner);
        t.run(|b| b.gather(data, ids, out, outer, axis, inner));
        t.exact("gather", out);
        let upd = t.f32(&rng.f32s(outer * k * inner, -1.0, 1.0));
        let acc = t.out(ElemType::F32, outer * axis * inner);
        t.run(|b| b.scatter_add(upd, ids, acc, outer, axis, inner));
        t.close("scatter_add", acc, 1e-6, 1e-6);
        let oh = t.out(ElemType::F32, k * axis);
        t.run(|b| b.one_hot(ids, oh, axis));
        t.exact("one_hot", oh);
    }
    // Wide columns: the CUDA kernel splits out's rows into ranges of
    // several rows each (an embedding's gradient has this shape).
    let (rows, width, n) = (100usize, 4096usize, 500usize);
    let ids = t.i64(&rng.below(n, rows));
    let upd = t.f32(&rng.f32s(n * width, -1.0, 1.0));
    let acc = t.out(ElemType::F32, rows * width);
    t.run(|b| b.scatter_add(upd, ids, acc, 1, rows, width));
    t.close("scatter_add wide", acc, 1e-6, 1e-6);
    // An index out of range: the CPU refuses the call, CUDA reports it at
    // the next synchronisation, naming the same site, index and bound.
    let bad = t.i64(&[1, 50, 2]);
    let out = t.out(ElemType::F32, outer * 3 * inner);
    let cpu = t
        .cpu
        .gather(data, bad, out, outer, axis, inner)
        .unwrap_err();
    t.gpu.gather(data, bad, out, outer, axis, inner).unwrap();
    let gpu = t.gpu.synchronize().unwrap_err();
    assert_eq!(cpu, gpu);
    assert!(
        matches!(
            gpu,
            Error::IndexOutOfRange {
                index: 50,
                bound: 50,
                ..
            }
        ),
        "{gpu}"
    );
    t.gpu.synchronize().expect("the error word was cleared");
}

#[test]
fn optimizers_match_step_for_step() {
    let Some(mut t) = both("optimizers_match_step_for_step") else {
        return;
    };
    let mut rng = Lcg(7);
    let n = 100_000;
    let cases = [(0.0f32, 0.0f32, false), (0.9, 0.0, false), (0.9, 0.1, true)];
    for (momentum, dampening, nesterov) in cases {
        let w = t.f32(&rng.f32s(n, -1.0, 1.0));
        let buf = t.out(ElemType::F32, n);
        t.run(|b| b.fill(buf, 0.0));
        for step in 0..3 {
            let g = t.f32(&rng.f32s(n, -1.0, 1.0));
            let p = SgdParams {
                lr: 0.05,
                momentum,
                dampening,
                weight_decay: 0.01,
                nesterov,
                first_step: step == 0,
            };
            t.run(|b| b.sgd(w, g, buf, &p));
        }
        t.close(
            &format!("sgd momentum={momentum} nesterov={nesterov}"),
            w,
            1e-6,
            1e-7,
        );
    }
    let w = t.f32(&rng.f32s(n, -1.0, 1.0));
    let (m, v) = (t.out(ElemType::F32, n), t.out(ElemType::F32, n));
    t.run(|b| b.fill(m, 0.0));
    t.run(|b| b.fill(v, 0.0));
    for step in 1..=4u64 {
        let g = t.f32(&rng.f32s(n, -1.0, 1.0));
        let p = AdamWParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step,
        };
        t.run(|b| b.adamw(w, g, m, v, &p));
    }
    t.close("adamw param", w, 1e-6, 1e-7);
    t.close("adamw m", m, 1e-6, 1e-8);
    t.close("adamw v", v, 1e-6, 1e-10);
}

fn matmul_case(t: &mut Both, rng: &mut Lcg, what: &str, dims: &MatMulDims<'_>, lens: [usize; 3]) {
    let a = t.f32(&rng.f32s(lens[0], -1.0, 1.0));
    let b = t.f32(&rng.f32s(lens[1], -1.0, 1.0));
    let c = t.out(ElemType::F32, lens[2]);
    t.run(|be| be.matmul(a, b, c, dims));
    t.close(what, c, 1e-5, 1e-5);
}

#[test]
fn matmuls() {
    let Some(mut t) = both("matmuls") else { return };
    let mut rng = Lcg(8);
    let (m, n, k) = (37usize, 29usize, 53usize);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let dims = MatMulDims {
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            batch: &[],
            a_batch_strides: &[],
            b_batch_strides: &[],
            c_batch_strides: &[],
        };
        matmul_case(
            &mut t,
            &mut rng,
            &format!("matmul ta={ta} tb={tb}"),
            &dims,
            [m * k, k * n, m * n],
        );
    }
    // x[B, T, d]·W[d, n]: folded into one GEMM.
    let dims = MatMulDims {
        m,
        n,
        k,
        trans_a: false,
        trans_b: false,
        batch: &[2, 3],
        a_batch_strides: &[3 * m * k, m * k],
        b_batch_strides: &[0, 0],
        c_batch_strides: &[3 * m * n, m * n],
    };
    matmul_case(
        &mut t,
        &mut rng,
        "folded linear",
        &dims,
        [6 * m * k, k * n, 6 * m * n],
    );
    // Attention-like batches with a broadcast a and an axis that does not
    // merge (a loop of strided-batched calls).
    let dims = MatMulDims {
        m,
        n,
        k,
        trans_a: false,
        trans_b: true,
        batch: &[2, 4],
        a_batch_strides: &[m * k, 0],
        b_batch_strides: &[4 * n * k, n * k],
        c_batch_strides: &[4 * m * n, m * n],
    };
    matmul_case(
        &mut t,
        &mut rng,
        "broadcast a",
        &dims,
        [2 * m * k, 8 * n * k, 8 * m * n],
    );
    let dims = MatMulDims {
        m,
        n,
        k: 0,
        trans_a: false,
        trans_b: false,
        batch: &[3],
        a_batch_strides: &[0],
        b_batch_strides: &[0],
        c_batch_strides: &[m * n],
    };
    matmul_case(
        &mut t,
        &mut rng,
        "k = 0 gives zeros",
        &dims,
        [0, 0, 3 * m * n],
    );
}

#[test]
fn moe_top_k_route_and_grouped_matmuls() {
    let Some(mut t) = both("moe_top_k_route_and_grouped_matmuls") else {
        return;
    };
    let mut rng = Lcg(9);
    let (tokens, experts, k) = (300usize, 8usize, 2usize);
    let gate = t.f32(&rng.f32s(tokens * experts, -1.0, 1.0));
    let ids = t.out(ElemType::I64, tokens * k);
    t.run(|b| b.top_k(gate, ids, tokens, experts, k));
    t.exact("top_k", ids);
    let slots = tokens * k;
    let (d, h) = (16usize, 24usize);
    for capacity in [None, Some(60usize), Some(0)] {
        let row_token = t.out(ElemType::I64, slots);
        let slot_row = t.out(ElemType::I64, slots);
        let slot_keep = t.out(ElemType::F32, slots);
        let offsets = t.out(ElemType::I64, experts + 1);
        t.run(|b| {
            b.moe_route(
                ids, row_token, slot_row, slot_keep, offsets, k, experts, capacity,
            )
        });
        for (what, v) in [
            ("row_token", row_token),
            ("slot_row", slot_row),
            ("slot_keep", slot_keep),
            ("offsets", offsets),
        ] {
            t.exact(&format!("moe_route {what} capacity={capacity:?}"), v);
        }
        let x = t.f32(&rng.f32s(slots * d, -1.0, 1.0));
        let dy = t.f32(&rng.f32s(slots * h, -1.0, 1.0));
        for transpose in [false, true] {
            let dims = GroupedMatMulDims {
                experts,
                rows: slots,
                d,
                h,
                transpose,
            };
            let w = t.f32(&rng.f32s(experts * d * h, -1.0, 1.0));
            let y = t.out(ElemType::F32, slots * h);
            t.run(|b| b.grouped_matmul(x, w, offsets, y, &dims));
            t.close("grouped_matmul", y, 1e-5, 1e-5);
            let dw = t.out(ElemType::F32, experts * d * h);
            t.run(|b| b.grouped_matmul_grad_w(x, dy, offsets, dw, &dims));
            t.close("grouped_matmul_grad_w", dw, 1e-5, 1e-5);
        }
    }
}

#[test]
fn streams_events_and_unimplemented_ops() {
    let Some(mut t) = both("streams_events_and_unimplemented_ops") else {
        return;
    };
    let x = t.f32(&[1.0, 2.0, 3.0]);
    let y = t.out(ElemType::F32, 3);
    t.gpu.unary(UnaryOp::Neg, x, y).unwrap();
    let e = t.gpu.record_event(Stream::Compute);
    t.gpu.wait_event(Stream::Comm, e);
    t.gpu.synchronize().unwrap();
    let mut out = [0u8; 12];
    t.gpu.read(y, &mut out).unwrap();
    assert_eq!(out, bytes_f32(&[-1.0, -2.0, -3.0])[..]);
    let dims = Conv2dDims {
        n: 1,
        c: 1,
        h: 1,
        w: 1,
        m: 1,
        kh: 1,
        kw: 1,
        oh: 1,
        ow: 1,
        strides: [1, 1],
        pads: [0; 4],
        dilations: [1, 1],
        groups: 1,
    };
    let err = t
        .gpu
        .conv2d(x.sub(0, 1), x.sub(1, 1), y.sub(0, 1), &dims)
        .unwrap_err();
    assert!(
        err.to_string().contains("not implemented on CUDA yet"),
        "{err}"
    );
    assert!(t.gpu.name().starts_with("cuda:0"), "{}", t.gpu.name());
    println!("ran on {}", t.gpu.name());
    // Contiguous shape strides helper sanity (used by other suites).
    assert_eq!(strides(&[2, 3, 4]), [12, 4, 1]);
}

#[test]
fn half_casts_matmuls_and_widened_kernels() {
    let Some(mut t) = both("half_casts_matmuls_and_widened_kernels") else {
        return;
    };
    let mut rng = Lcg(21);
    let (m, n, k, batch) = (19usize, 23usize, 41usize, 3usize);
    for (elem, rtol) in [(ElemType::BF16, 8e-3), (ElemType::F16, 1e-3)] {
        // Casts round the same on both (nearest even), bit for bit.
        let mut vals = rng.f32s(batch * m * k, -2.0, 2.0);
        vals.extend([f32::INFINITY, f32::NEG_INFINITY, 1e-9, 1.0 + 1.0 / 256.0]);
        let x32 = t.f32(&vals);
        let x = t.out(elem, vals.len());
        t.run(|b| b.cast(x32, x));
        t.exact("cast to half", x);
        let filled = t.out(elem, 7);
        t.run(|b| b.fill(filled, 0.1));
        t.exact("fill half", filled);
        // A batched matmul in the half type (f32 accumulation, one
        // rounding), against the CPU's widened one.
        let a = View {
            len: batch * m * k,
            ..x
        };
        let w32 = t.f32(&rng.f32s(k * n, -1.0, 1.0));
        let w = t.out(elem, k * n);
        t.run(|b| b.cast(w32, w));
        let c = t.out(elem, batch * m * n);
        let dims = MatMulDims {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            batch: &[batch],
            a_batch_strides: &[m * k],
            b_batch_strides: &[0],
            c_batch_strides: &[m * n],
        };
        t.run(|b| b.matmul(a, w, c, &dims));
        let c32 = t.out(ElemType::F32, batch * m * n);
        t.run(|b| b.cast(c, c32));
        t.close("half matmul", c32, rtol, 1e-3);
        // A kernel without a half form runs widened on both.
        let y = t.out(elem, batch * m * n);
        t.run(|b| b.softmax(c, y, batch * m, n, 1, false));
        let y32 = t.out(ElemType::F32, batch * m * n);
        t.run(|b| b.cast(y, y32));
        t.close("half softmax", y32, rtol, 1e-4);
    }
}

#[test]
fn fused_chains_in_one_pass() {
    let Some(mut t) = both("fused_chains_in_one_pass") else {
        return;
    };
    let mut rng = Lcg(31);
    let shape = vec![4usize, 33, 17];
    let n: usize = shape.iter().product();
    let contiguous = vec![33 * 17, 17, 1];
    let x = t.f32(&rng.f32s(n, 0.1, 3.0));
    let b = t.f32(&rng.f32s(17, -1.0, 1.0));
    let cond = t.u8(&(0..33).map(|i| (i % 3 == 0) as u8).collect::<Vec<_>>());
    let inputs = vec![
        FusedInput {
            view: x,
            strides: contiguous.clone(),
        },
        FusedInput {
            view: b,
            strides: vec![0, 0, 1],
        },
        FusedInput {
            view: cond,
            strides: vec![0, 1, 0],
        },
    ];
    let (xi, bi, ci) = (FusedArg::Input(0), FusedArg::Input(1), FusedArg::Input(2));
    let step = |t: &mut Both, op: FusedOp, args: Vec<FusedArg>, store: bool| {
        let elem = if matches!(op, FusedOp::Compare(_)) {
            ElemType::U8
        } else {
            ElemType::F32
        };
        FusedStep {
            op,
            args,
            out: t.out(elem, n),
            store,
        }
    };
    // Every kind of step, broadcast inputs, a byte condition, a stored
    // comparison and a stored middle step.
    let steps = vec![
        step(&mut t, FusedOp::Binary(BinaryOp::Add), vec![xi, bi], false),
        step(
            &mut t,
            FusedOp::Unary(UnaryOp::GeluTanh),
            vec![FusedArg::Step(0)],
            true,
        ),
        step(
            &mut t,
            FusedOp::Compare(CompareOp::Greater),
            vec![FusedArg::Step(0), xi],
            true,
        ),
        step(
            &mut t,
            FusedOp::Select,
            vec![ci, FusedArg::Step(1), xi],
            false,
        ),
        step(
            &mut t,
            FusedOp::Select,
            vec![FusedArg::Step(2), FusedArg::Step(3), bi],
            false,
        ),
        step(
            &mut t,
            FusedOp::GeluGrad { tanh: false },
            vec![xi, FusedArg::Step(4)],
            false,
        ),
        step(
            &mut t,
            FusedOp::Binary(BinaryOp::Div),
            vec![FusedArg::Step(5), xi],
            true,
        ),
    ];
    let f = FusedElementwise {
        shape: shape.clone(),
        inputs: inputs.clone(),
        steps,
    };
    t.run(|be| be.fused_elementwise(&f));
    t.close("fused gelu", f.steps[1].out, 1e-5, 1e-6);
    t.exact("fused compare", f.steps[2].out);
    t.close("fused chain", f.steps[6].out, 1e-4, 1e-6);
    // Every unary op after a broadcast product, and the other binary and
    // compare ops.
    let unary = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::GeluTanh,
        UnaryOp::GeluErf,
        UnaryOp::Erf,
    ];
    for op in unary {
        let steps = vec![
            step(&mut t, FusedOp::Binary(BinaryOp::Mul), vec![xi, xi], false),
            step(
                &mut t,
                FusedOp::Binary(BinaryOp::Sub),
                vec![FusedArg::Step(0), xi],
                false,
            ),
            step(&mut t, FusedOp::Unary(op), vec![FusedArg::Step(1)], true),
        ];
        let f = FusedElementwise {
            shape: shape.clone(),
            inputs: inputs[..1].to_vec(),
            steps,
        };
        t.run(|be| be.fused_elementwise(&f));
        t.close(&format!("fused {op:?}"), f.steps[2].out, 1e-5, 1e-6);
    }
    let steps = vec![step(
        &mut t,
        FusedOp::Compare(CompareOp::Equal),
        vec![xi, xi],
        false,
    )];
    let f = FusedElementwise {
        shape: shape.clone(),
        inputs: inputs[..1].to_vec(),
        steps,
    };
    t.run(|be| be.fused_elementwise(&f));
    t.exact("fused equal", f.steps[0].out);
    // A malformed chain is refused on both, naming the step.
    let bad = FusedElementwise {
        shape,
        inputs: inputs[..1].to_vec(),
        steps: vec![step(
            &mut t,
            FusedOp::Unary(UnaryOp::Exp),
            vec![FusedArg::Step(0)],
            true,
        )],
    };
    let cpu = t.cpu.fused_elementwise(&bad).unwrap_err().to_string();
    let gpu = t.gpu.fused_elementwise(&bad).unwrap_err().to_string();
    assert_eq!(cpu, gpu);
    assert!(gpu.contains("step 0 operand 0"), "{gpu}");
}
