//! Tests of the strided copy against a naive row-major reference.

use super::*;

/// Row-major contiguous strides of `shape`.
fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The naive copy: every multi-index in row-major order.
fn naive<T: Copy>(src: &[T], ss: &[usize], dst: &mut [T], ds: &[usize], shape: &[usize]) {
    let n: usize = shape.iter().product();
    for mut f in 0..n {
        let (mut so, mut d0) = (0, 0);
        for d in (0..shape.len()).rev() {
            let i = f % shape[d];
            f /= shape[d];
            so += i * ss[d];
            d0 += i * ds[d];
        }
        dst[d0] = src[so];
    }
}

/// Copies with the kernel and the reference into `dst_len` elements
/// pre-filled with a sentinel, and compares the whole buffers.
fn check(src_len: usize, ss: &[usize], dst_len: usize, ds: &[usize], shape: &[usize]) {
    let src: Vec<f32> = (0..src_len).map(|i| i as f32).collect();
    let mut got = vec![-1.0f32; dst_len];
    let mut want = vec![-1.0f32; dst_len];
    copy_strided(&src, ss, &mut got, ds, shape).unwrap();
    naive(&src, ss, &mut want, ds, shape);
    assert!(
        got == want,
        "shape {shape:?} src strides {ss:?} dst strides {ds:?}"
    );
    // Other element types take the same paths.
    let src8: Vec<u8> = (0..src_len).map(|i| i as u8).collect();
    let mut got8 = vec![7u8; dst_len];
    let mut want8 = vec![7u8; dst_len];
    copy_strided(&src8, ss, &mut got8, ds, shape).unwrap();
    naive(&src8, ss, &mut want8, ds, shape);
    assert_eq!(got8, want8, "u8 shape {shape:?}");
}

/// A permutation of a contiguous `src_shape` into a contiguous output.
fn check_permute(src_shape: &[usize], perm: &[usize]) {
    let sc = contiguous(src_shape);
    let shape: Vec<usize> = perm.iter().map(|&p| src_shape[p]).collect();
    let ss: Vec<usize> = perm.iter().map(|&p| sc[p]).collect();
    let n = shape.iter().product();
    check(n, &ss, n, &contiguous(&shape), &shape);
}

#[test]
fn contiguous_copies_in_one_run() {
    for n in [1, 5, 1000, PARALLEL_THRESHOLD * 3 + 7] {
        check(n, &[1], n, &[1], &[n]);
        check(n, &[n, 1], n, &[n, 1], &[1, n]);
    }
    check(60, &[20, 5, 1], 60, &[20, 5, 1], &[3, 4, 5]);
    check(1, &[], 1, &[], &[]);
}

#[test]
fn transposes_match_at_every_size() {
    for (m, n) in [
        (1, 1),
        (2, 3),
        (4, 4),
        (5, 7),
        (31, 33),
        (32, 32),
        (64, 3),
        (3, 64),
        (100, 37),
        (257, 300),
        (1024, 129),
    ] {
        check_permute(&[m, n], &[1, 0]);
    }
    for perm in [
        [0, 2, 1, 3],
        [0, 2, 3, 1],
        [3, 2, 1, 0],
        [1, 0, 2, 3],
        [0, 1, 3, 2],
    ] {
        check_permute(&[2, 9, 4, 8], &perm);
        check_permute(&[3, 67, 5, 40], &perm);
    }
    // Attention's [B, T, H, D] -> [B, H, T, D], above the threshold.
    check_permute(&[2, 128, 4, 64], &[0, 2, 1, 3]);
    check_permute(&[1, 200, 8, 33], &[0, 2, 3, 1]);
}

#[test]
fn broadcasts_slices_concats_and_pads() {
    // Broadcast a row, a column, a scalar.
    check(7, &[0, 1], 35, &[7, 1], &[5, 7]);
    check(5, &[1, 0], 35, &[7, 1], &[5, 7]);
    check(1, &[0, 0, 0], 60, &[20, 5, 1], &[3, 4, 5]);
    check(300, &[0, 1], 300 * 300, &[300, 1], &[300, 300]);
    check(
        1,
        &[0],
        PARALLEL_THRESHOLD + 1,
        &[1],
        &[PARALLEL_THRESHOLD + 1],
    );
    // A [3, 4] window at (1, 2) of a [6, 9] source.
    check(54, &[9, 1], 12, &[4, 1], &[3, 4]);
    check(54 - 11, &[9, 1], 12, &[4, 1], &[3, 4]);
    // Concat: a [5, 3] part into columns of a [5, 8] result; pad likewise.
    check(15, &[3, 1], 40, &[8, 1], &[5, 3]);
    check(40_000, &[200, 1], 240 * 210, &[210, 1], &[200, 200]);
    // A strided destination: every other element, and a transposed one.
    check(10, &[1], 20, &[2], &[10]);
    check(12, &[4, 1], 24, &[2, 6], &[3, 4]);
    check(
        PARALLEL_THRESHOLD * 2,
        &[1],
        PARALLEL_THRESHOLD * 6,
        &[3],
        &[PARALLEL_THRESHOLD * 2],
    );
    // Size-1 axes anywhere.
    check(
        12,
        &[0, 4, 99, 1, 0],
        12,
        &[12, 4, 0, 1, 7],
        &[1, 3, 1, 4, 1],
    );
}

#[test]
fn overlapping_destinations_keep_the_last_write() {
    check(12, &[4, 1], 4, &[0, 1], &[3, 4]);
    check(12, &[1, 3], 3, &[1, 0], &[3, 4]);
    check(8, &[1], 1, &[0], &[8]);
    check(100_000, &[1000, 1], 1000, &[0, 1], &[100, 1000]);
}

#[test]
fn empty_copies_do_nothing() {
    let mut dst = [5.0f32; 3];
    copy_strided(&[], &[1, 1], &mut dst, &[99, 99], &[0, 4]).unwrap();
    assert_eq!(dst, [5.0; 3]);
}

#[test]
fn bad_layouts_are_errors() {
    let src = [1.0f32; 12];
    let mut dst = [0.0f32; 12];
    assert!(copy_strided(&src, &[4], &mut dst, &[4, 1], &[3, 4]).is_err());
    assert!(copy_strided(&src, &[4, 1], &mut dst, &[4], &[3, 4]).is_err());
    assert!(copy_strided(&src, &[5, 1], &mut dst, &[4, 1], &[3, 4]).is_err());
    assert!(copy_strided(&src, &[4, 1], &mut dst[..11], &[4, 1], &[3, 4]).is_err());
    assert!(copy_strided(&src, &[1; 9], &mut dst, &[1; 9], &[1; 9]).is_err());
    assert!(copy_strided(&src, &[usize::MAX, 1], &mut dst, &[4, 1], &[3, 4]).is_err());
    assert!(copy_strided(&src, &[0, 0], &mut dst, &[0, 0], &[usize::MAX, 2]).is_err());
    assert_eq!(dst, [0.0; 12]);
}

/// Throughput; run with `cargo test --release -p adjoint-kernels
/// layout::tests::bench -- --ignored --nocapture --test-threads=1`.
#[test]
#[ignore]
fn bench() {
    let time = |name: &str, n: usize, f: &mut dyn FnMut()| {
        f();
        let t = std::time::Instant::now();
        for _ in 0..10 {
            f();
        }
        let s = t.elapsed().as_secs_f64() / 10.0;
        println!(
            "{name:>24}: {:7.3} ms, {:6.2} GB/s (read + write)",
            s * 1e3,
            8.0 * n as f64 / s / 1e9
        );
    };
    let n = 1 << 22;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; n];
    time("contiguous", n, &mut || {
        copy_strided(&src, &[1], &mut dst, &[1], &[n]).unwrap()
    });
    time("transpose 2048x2048", n, &mut || {
        copy_strided(&src, &[1, 2048], &mut dst, &[2048, 1], &[2048, 2048]).unwrap()
    });
    let (b, t, h, d) = (8, 512, 16, 64);
    let ss = [t * h * d, d, h * d, 1];
    time("[B,T,H,D] -> [B,H,T,D]", n, &mut || {
        copy_strided(
            &src,
            &ss,
            &mut dst,
            &[h * t * d, t * d, d, 1],
            &[b, h, t, d],
        )
        .unwrap()
    });
    let ss = [t * h * d, d, 1, h * d];
    time("[B,T,H,D] -> [B,H,D,T]", n, &mut || {
        copy_strided(
            &src,
            &ss,
            &mut dst,
            &[h * t * d, t * d, t, 1],
            &[b, h, d, t],
        )
        .unwrap()
    });
    let (src2, mut dst2) = (&src[..1 << 18], vec![0.0f32; 1 << 18]);
    time("transpose 512x512 x16", n, &mut || {
        for _ in 0..16 {
            copy_strided(src2, &[1, 512], &mut dst2, &[512, 1], &[512, 512]).unwrap();
        }
    });
    time("broadcast row", n, &mut || {
        copy_strided(&src, &[0, 1], &mut dst, &[1024, 1], &[n / 1024, 1024]).unwrap()
    });
}
