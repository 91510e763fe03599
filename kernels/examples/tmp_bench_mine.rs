use adjoint_kernels::*;
use std::time::Instant;

fn buf(be: &mut CpuBackend, n: usize, elem: ElemType, fill: f32) -> View {
    let b = be.alloc(n * elem.size()).unwrap();
    let v = View { buffer: b, offset: 0, len: n, elem };
    if elem == ElemType::F32 {
        let data: Vec<u8> = (0..n).flat_map(|i| (fill * ((i % 97) as f32 / 97.0 - 0.5)).to_le_bytes()).collect();
        be.write(v, &data).unwrap();
    }
    v
}

fn time(name: &str, work: f64, unit: &str, mut f: impl FnMut()) {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{name:50} {:9.3} ms  {:8.2} {unit}", best * 1e3, work / best / 1e9);
}

fn main() {
    let mut be = CpuBackend::new();
    println!("{}", be.name());
    for &(m, n, k) in &[(1024, 1024, 1024), (4096, 3072, 768)] {
        let (a, b, c) = (buf(&mut be, m * k, ElemType::F32, 1.0), buf(&mut be, k * n, ElemType::F32, 1.0), buf(&mut be, m * n, ElemType::F32, 0.0));
        for (ta, tb) in [(false, false), (true, false), (false, true)] {
            let d = MatMulDims { m, n, k, trans_a: ta, trans_b: tb, batch: &[], a_batch_strides: &[], b_batch_strides: &[], c_batch_strides: &[] };
            time(&format!("matmul {m}x{n}x{k} ta={ta} tb={tb}"), 2.0 * (m * n * k) as f64, "GFLOP/s", || be.matmul(a, b, c, &d).unwrap());
        }
    }
    {
        let (bs, t, dm, n) = (8, 512, 768, 3072);
        let (a, b, c) = (buf(&mut be, bs * t * dm, ElemType::F32, 1.0), buf(&mut be, dm * n, ElemType::F32, 1.0), buf(&mut be, bs * t * n, ElemType::F32, 0.0));
        let d = MatMulDims { m: t, n, k: dm, trans_a: false, trans_b: false, batch: &[bs], a_batch_strides: &[t * dm], b_batch_strides: &[0], c_batch_strides: &[t * n] };
        time("matmul folded x[8,512,768]·W[768,3072]", 2.0 * (bs * t * n * dm) as f64, "GFLOP/s", || be.matmul(a, b, c, &d).unwrap());
    }
    {
        let (bh, t, hd) = (96, 128, 64);
        let (q, k, s) = (buf(&mut be, bh * t * hd, ElemType::F32, 1.0), buf(&mut be, bh * t * hd, ElemType::F32, 1.0), buf(&mut be, bh * t * t, ElemType::F32, 0.0));
        let d = MatMulDims { m: t, n: t, k: hd, trans_a: false, trans_b: true, batch: &[bh], a_batch_strides: &[t * hd], b_batch_strides: &[t * hd], c_batch_strides: &[t * t] };
        time("matmul attention [96] 128x128x64 q·kT", 2.0 * (bh * t * t * hd) as f64, "GFLOP/s", || be.matmul(q, k, s, &d).unwrap());
    }
    {
        let (rows, n) = (8192, 1024);
        let (x, y) = (buf(&mut be, rows * n, ElemType::F32, 10.0), buf(&mut be, rows * n, ElemType::F32, 0.0));
        time("softmax [8192,1024]", (rows * n) as f64, "Gelem/s", || be.softmax(x, y, rows, n, 1, false).unwrap());
        time("log_softmax [8192,1024]", (rows * n) as f64, "Gelem/s", || be.softmax(x, y, rows, n, 1, true).unwrap());
        time("softmax [64,1024,128] inner", (rows * n) as f64, "Gelem/s", || be.softmax(x, y, 64, n, 128, false).unwrap());
    }
    {
        let (rows, d) = (8192, 768);
        let x = buf(&mut be, rows * d, ElemType::F32, 3.0);
        let dy = buf(&mut be, rows * d, ElemType::F32, 1.0);
        let y = buf(&mut be, rows * d, ElemType::F32, 0.0);
        let g = buf(&mut be, d, ElemType::F32, 1.0);
        let b = buf(&mut be, d, ElemType::F32, 1.0);
        let dg = buf(&mut be, d, ElemType::F32, 1.0);
        let db = buf(&mut be, d, ElemType::F32, 1.0);
        time("layer_norm [8192,768]", (rows * d) as f64, "Gelem/s", || be.layer_norm(x, g, b, y, rows, d, 1e-5).unwrap());
        time("layer_norm_grad [8192,768]", (rows * d) as f64, "Gelem/s", || be.layer_norm_grad(x, g, dy, y, dg, db, rows, d, 1e-5).unwrap());
    }
    {
        let (rows, classes) = (4096, 8192);
        let lg = buf(&mut be, rows * classes, ElemType::F32, 10.0);
        let dl = buf(&mut be, rows * classes, ElemType::F32, 0.0);
        let lb = buf(&mut be, rows, ElemType::I64, 0.0);
        let loss = buf(&mut be, 1, ElemType::F32, 0.0);
        let dloss = buf(&mut be, 1, ElemType::F32, 1.0);
        time("softmax_cross_entropy [4096,8192]", (rows * classes) as f64, "Gelem/s", || be.softmax_cross_entropy(lg, lb, loss, rows, classes).unwrap());
        time("softmax_cross_entropy_grad [4096,8192]", (rows * classes) as f64, "Gelem/s", || be.softmax_cross_entropy_grad(lg, lb, dloss, dl, rows, classes).unwrap());
        time("mse 33M", (rows * classes) as f64, "Gelem/s", || be.mse(lg, dl, loss).unwrap());
    }
    {
        let n = 10_000_000;
        let (w, g, m, v) = (buf(&mut be, n, ElemType::F32, 1.0), buf(&mut be, n, ElemType::F32, 1.0), buf(&mut be, n, ElemType::F32, 0.0), buf(&mut be, n, ElemType::F32, 0.0));
        let p = AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 3 };
        time("adamw 10M", n as f64, "Gelem/s", || be.adamw(w, g, m, v, &p).unwrap());
        let s = SgdParams { lr: 1e-3, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false, first_step: false };
        time("sgd momentum 10M", n as f64, "Gelem/s", || be.sgd(w, g, m, &s).unwrap());
    }
    {
        let (vocab, d, k) = (10000, 768, 8192);
        let table = buf(&mut be, vocab * d, ElemType::F32, 1.0);
        let out = buf(&mut be, k * d, ElemType::F32, 0.0);
        let idx = buf(&mut be, k, ElemType::I64, 0.0);
        let data: Vec<u8> = (0..k).flat_map(|i| ((i * 7919 % vocab) as i64).to_le_bytes()).collect();
        be.write(idx, &data).unwrap();
        time("gather embedding [10000,768] x 8192", (k * d) as f64, "Gelem/s", || be.gather(table, idx, out, 1, vocab, d).unwrap());
        time("scatter_add embedding grad 8192 -> [10000,768]", (k * d) as f64, "Gelem/s", || be.scatter_add(out, idx, table, 1, vocab, d).unwrap());
        let oh = buf(&mut be, k * vocab, ElemType::F32, 0.0);
        time("one_hot 8192 x 10000", (k * vocab) as f64, "Gelem/s", || be.one_hot(idx, oh, vocab).unwrap());
    }
}
