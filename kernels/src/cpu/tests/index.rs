//! Tests of gather, scatter-add and one-hot against naive loops.

use super::*;

/// A tiny LCG.
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    fn f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }

    fn indices(&mut self, n: usize, bound: usize) -> Vec<i64> {
        (0..n)
            .map(|_| i64::from(self.next_u32()) % bound as i64)
            .collect()
    }
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "{what}[{i}] = {g}, want {w}"
        );
    }
}

/// (outer, axis or size, k, inner) shapes: tiny, odd, and above the
/// parallel threshold both along rows and along wide inner axes.
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 1, 1, 1),
    (1, 5, 7, 3),
    (3, 4, 9, 1),
    (2, 17, 33, 65),
    (1, 1000, 4096, 16),
    (1, 300, 200, 768),
    (7, 50, 40, 130),
    (64, 10, 700, 1),
    (1, 3, 70000, 1),
];

#[test]
fn gather_matches_naive() {
    let mut rng = Lcg(3);
    for &(outer, axis, k, inner) in SHAPES {
        let data = rng.vec(outer * axis * inner);
        let idx = rng.indices(k, axis);
        let mut out = vec![f32::NAN; outer * k * inner];
        gather(&data, &idx, &mut out, outer, axis, inner).unwrap();
        let mut want = Vec::new();
        for o in 0..outer {
            for &j in &idx {
                for i in 0..inner {
                    want.push(f64::from(data[(o * axis + j as usize) * inner + i]));
                }
            }
        }
        close(&out, &want, "gather");
        // i32 indices give the same.
        let idx32: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
        let mut out32 = vec![f32::NAN; out.len()];
        gather(&data, &idx32, &mut out32, outer, axis, inner).unwrap();
        assert_eq!(out, out32);
    }
}

#[test]
fn scatter_add_matches_naive() {
    let mut rng = Lcg(5);
    for &(outer, size, k, inner) in SHAPES {
        let upd = rng.vec(outer * k * inner);
        // Few distinct targets so that repeats accumulate.
        let idx = rng.indices(k, size);
        let mut out = vec![f32::NAN; outer * size * inner];
        scatter_add(&upd, &idx, &mut out, outer, size, inner).unwrap();
        let mut want = vec![0.0f64; out.len()];
        for o in 0..outer {
            for (j, &r) in idx.iter().enumerate() {
                for i in 0..inner {
                    want[(o * size + r as usize) * inner + i] +=
                        f64::from(upd[(o * k + j) * inner + i]);
                }
            }
        }
        let tol_k = (k / size.max(1)).max(1) as f64;
        for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-5 * tol_k + 1e-5 * w.abs(),
                "scatter_add {outer}x{size}x{inner} [{i}] = {g}, want {w}"
            );
        }
        // Deterministic: the same bits again.
        let mut again = vec![0.0f32; out.len()];
        scatter_add(&upd, &idx, &mut again, outer, size, inner).unwrap();
        assert!(
            out.iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}

#[test]
fn scatter_add_all_same_index() {
    let (outer, size, k, inner) = (1, 4, 1000, 100);
    let upd = vec![1.0f32; k * inner];
    let idx = vec![2i32; k];
    let mut out = vec![5.0f32; outer * size * inner];
    scatter_add(&upd, &idx, &mut out, outer, size, inner).unwrap();
    for (r, row) in out.chunks(inner).enumerate() {
        let want = if r == 2 { 1000.0 } else { 0.0 };
        assert!(row.iter().all(|&x| x == want));
    }
}

#[test]
fn one_hot_matches_naive() {
    let mut rng = Lcg(9);
    for &(rows, depth) in &[(1, 1), (5, 3), (7, 33), (2000, 100), (40000, 2)] {
        let idx = rng.indices(rows, depth);
        let mut out = vec![f32::NAN; rows * depth];
        one_hot(&idx, &mut out, depth).unwrap();
        for (j, row) in out.chunks(depth).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                assert_eq!(x, if c as i64 == idx[j] { 1.0 } else { 0.0 });
            }
        }
    }
}

#[test]
fn bad_indices_are_errors_and_write_nothing() {
    let data = vec![1.0f32; 12];
    let mut out = vec![7.0f32; 8];
    let e = gather(&data, &[0i64, 3], &mut out, 2, 3, 2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IndexOutOfRange {
                index: 3,
                bound: 3,
                ..
            }
        ),
        "{e:?}"
    );
    let e = gather(&data, &[-1i32, 0], &mut out, 2, 3, 2).unwrap_err();
    assert!(
        matches!(e, Error::IndexOutOfRange { index: -1, .. }),
        "{e:?}"
    );
    assert!(out.iter().all(|&x| x == 7.0));

    let upd = vec![1.0f32; 8];
    let mut out = vec![7.0f32; 12];
    assert!(matches!(
        scatter_add(&upd, &[1i64, 3], &mut out, 2, 3, 2),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        scatter_add(&upd, &[i64::MIN, 0], &mut out, 2, 3, 2),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(out.iter().all(|&x| x == 7.0));

    let mut out = vec![7.0f32; 6];
    assert!(matches!(
        one_hot(&[0i64, 3], &mut out, 3),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        one_hot(&[-2i32, 0], &mut out, 3),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        one_hot(&[0i32], &mut [], 0),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(out.iter().all(|&x| x == 7.0));
}

#[test]
fn bad_lengths_are_errors() {
    let data = vec![1.0f32; 12];
    let mut out = vec![0.0f32; 8];
    assert!(matches!(
        gather(&data[..11], &[0i64, 1], &mut out, 2, 3, 2),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        gather(&data, &[0i64, 1], &mut out[..7], 2, 3, 2),
        Err(Error::Length { .. })
    ));
    assert!(gather(&data, &[0i64], &mut out, usize::MAX, 3, 2).is_err());
    assert!(matches!(
        scatter_add(&data[..8], &[0i64, 1], &mut out, 2, 3, 2),
        Err(Error::Length { .. })
    ));
    assert!(scatter_add(&data, &[0i64], &mut out, usize::MAX, 2, usize::MAX).is_err());
    assert!(matches!(
        one_hot(&[0i64, 1], &mut out, 3),
        Err(Error::Length { .. })
    ));
    assert!(one_hot(&[0i64, 1], &mut out, usize::MAX).is_err());
}

#[test]
fn empty_shapes() {
    let mut out: Vec<f32> = vec![];
    gather::<i64>(&[], &[], &mut out, 3, 0, 4).unwrap();
    gather(&[], &[0i64, 1], &mut out, 1, 2, 0).unwrap();
    scatter_add::<i64>(&[], &[], &mut [0.0; 6], 2, 3, 1).unwrap();
    let mut z = vec![3.0f32; 6];
    scatter_add::<i64>(&[], &[], &mut z, 2, 3, 1).unwrap();
    assert!(z.iter().all(|&x| x == 0.0));
    one_hot::<i64>(&[], &mut out, 5).unwrap();
}
