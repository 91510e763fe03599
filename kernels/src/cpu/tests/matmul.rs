//! Tests of the batched matmul against a naive f64 triple loop.

use super::*;

/// A tiny LCG: uniform values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

struct Case<'a> {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    batch: &'a [usize],
    sa: &'a [usize],
    sb: &'a [usize],
    sc: &'a [usize],
}

impl Case<'_> {
    fn dims(&self) -> MatMulDims<'_> {
        MatMulDims {
            m: self.m,
            n: self.n,
            k: self.k,
            trans_a: self.ta,
            trans_b: self.tb,
            batch: self.batch,
            a_batch_strides: self.sa,
            b_batch_strides: self.sb,
            c_batch_strides: self.sc,
        }
    }
}

/// The extent of an operand: last entry offset plus the entry size.
fn extent(batch: &[usize], strides: &[usize], entry: usize) -> usize {
    batch
        .iter()
        .zip(strides)
        .map(|(&d, &s)| (d - 1) * s)
        .sum::<usize>()
        + entry
}

/// All batch multi-indices' offsets (row-major), as (a, b, c).
fn entries(case: &Case<'_>) -> Vec<(usize, usize, usize)> {
    let count: usize = case.batch.iter().product();
    (0..count)
        .map(|mut e| {
            let mut offs = (0, 0, 0);
            for ax in (0..case.batch.len()).rev() {
                let i = e % case.batch[ax];
                e /= case.batch[ax];
                offs.0 += i * case.sa[ax];
                offs.1 += i * case.sb[ax];
                offs.2 += i * case.sc[ax];
            }
            offs
        })
        .collect()
}

fn naive(case: &Case<'_>, a: &[f32], b: &[f32], c: &mut [f64]) {
    let (m, n, k) = (case.m, case.n, case.k);
    for (ao, bo, co) in entries(case) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for l in 0..k {
                    let av = if case.ta {
                        a[ao + l * m + i]
                    } else {
                        a[ao + i * k + l]
                    };
                    let bv = if case.tb {
                        b[bo + j * k + l]
                    } else {
                        b[bo + l * n + j]
                    };
                    s += f64::from(av) * f64::from(bv);
                }
                c[co + i * n + j] = s;
            }
        }
    }
}

fn run(case: &Case<'_>, seed: u64) {
    let mut rng = Lcg(seed);
    let (m, n, k) = (case.m, case.n, case.k);
    let a = rng.vec(extent(case.batch, case.sa, m * k));
    let b = rng.vec(extent(case.batch, case.sb, k * n));
    let clen = extent(case.batch, case.sc, m * n);
    let mut c = vec![f32::NAN; clen];
    let mut want = vec![f64::NAN; clen];
    naive(case, &a, &b, &mut want);
    matmul(&a, &b, &mut c, &case.dims()).unwrap();
    let atol = 1e-5 + 2e-6 * k as f64;
    for (i, (&g, &w)) in c.iter().zip(&want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "element {i} outside every entry was written");
            continue;
        }
        let g = f64::from(g);
        assert!(
            (g - w).abs() <= atol + 1e-4 * w.abs(),
            "m={m} n={n} k={k} ta={} tb={} batch={:?}: c[{i}] = {g}, want {w}",
            case.ta,
            case.tb,
            case.batch
        );
    }
}

fn flags() -> [(bool, bool); 4] {
    [(false, false), (false, true), (true, false), (true, true)]
}

#[test]
fn single_entries_all_transposes_odd_sizes() {
    let sizes = [1, 7, 33, 65];
    let mut seed = 1;
    for (ta, tb) in flags() {
        for &m in &sizes {
            for &n in &sizes {
                for &k in &sizes {
                    seed += 1;
                    let case = Case {
                        m,
                        n,
                        k,
                        ta,
                        tb,
                        batch: &[],
                        sa: &[],
                        sb: &[],
                        sc: &[],
                    };
                    run(&case, seed);
                }
            }
        }
    }
}

#[test]
fn big_entries_all_transposes() {
    for (i, (ta, tb)) in flags().into_iter().enumerate() {
        let case = Case {
            m: 256,
            n: 512,
            k: 384,
            ta,
            tb,
            batch: &[],
            sa: &[],
            sb: &[],
            sc: &[],
        };
        run(&case, 100 + i as u64);
    }
}

#[test]
fn contiguous_batches() {
    for (ta, tb) in flags() {
        for &(m, n, k) in &[(7, 33, 65), (32, 32, 32), (1, 5, 3), (65, 7, 1)] {
            let (ea, eb, ec) = (m * k, k * n, m * n);
            let batch = [2, 3];
            let case = Case {
                m,
                n,
                k,
                ta,
                tb,
                batch: &batch,
                sa: &[3 * ea, ea],
                sb: &[3 * eb, eb],
                sc: &[3 * ec, ec],
            };
            run(&case, 7);
        }
    }
}

#[test]
fn broadcast_batches() {
    for (ta, tb) in flags() {
        let (m, n, k) = (7, 33, 65);
        let (ea, eb, ec) = (m * k, k * n, m * n);
        let batch = [2, 3];
        // a is [2, 1, ..] and b is [1, 3, ..].
        let case = Case {
            m,
            n,
            k,
            ta,
            tb,
            batch: &batch,
            sa: &[ea, 0],
            sb: &[0, eb],
            sc: &[3 * ec, ec],
        };
        run(&case, 11);
        // a broadcasts over everything, b is contiguous.
        let case = Case {
            m,
            n,
            k,
            ta,
            tb,
            batch: &batch,
            sa: &[0, 0],
            sb: &[3 * eb, eb],
            sc: &[3 * ec, ec],
        };
        run(&case, 12);
    }
}

#[test]
fn folded_batch_broadcast_b() {
    // x[B, T, d] · W[d, n]: b broadcasts, a and c contiguous.
    for tb in [false, true] {
        for &(m, n, k, bsz) in &[(16, 24, 40, 4), (7, 33, 65, 3), (128, 96, 64, 4)] {
            let (ea, ec) = (m * k, m * n);
            let batch = [bsz];
            let case = Case {
                m,
                n,
                k,
                ta: false,
                tb,
                batch: &batch,
                sa: &[ea],
                sb: &[0],
                sc: &[ec],
            };
            run(&case, 21);
            // With size-1 axes around.
            let batch = [1, bsz, 1];
            let case = Case {
                m,
                n,
                k,
                ta: false,
                tb,
                batch: &batch,
                sa: &[99, ea, 5],
                sb: &[0, 0, 3],
                sc: &[7, ec, 1],
            };
            run(&case, 22);
        }
    }
}

#[test]
fn batch_parallel_small_entries() {
    // Many small entries (attention-like): split across threads.
    for (ta, tb) in flags() {
        let (m, n, k) = (32, 40, 24);
        let batch = [4, 16];
        let case = Case {
            m,
            n,
            k,
            ta,
            tb,
            batch: &batch,
            sa: &[16 * m * k, m * k],
            sb: &[0, k * n],
            sc: &[16 * m * n, m * n],
        };
        run(&case, 31);
    }
}

#[test]
fn non_contiguous_output() {
    // c entries with gaps between them (left NaN) and in reversed axis order.
    let (m, n, k) = (5, 6, 7);
    let batch = [3, 2];
    let case = Case {
        m,
        n,
        k,
        ta: true,
        tb: false,
        batch: &batch,
        sa: &[2 * m * k, m * k],
        sb: &[k * n, 0],
        sc: &[m * n + 3, 3 * (m * n + 3)],
    };
    run(&case, 41);
}

#[test]
fn k_zero_gives_zeros() {
    for (ta, tb) in flags() {
        let batch = [2];
        let case = Case {
            m: 3,
            n: 4,
            k: 0,
            ta,
            tb,
            batch: &batch,
            sa: &[0],
            sb: &[0],
            sc: &[12],
        };
        let mut c = vec![f32::NAN; 24];
        matmul::<f32>(&[], &[], &mut c, &case.dims()).unwrap();
        assert!(c.iter().all(|&x| x == 0.0));
    }
}

#[test]
fn empty_outputs_are_fine() {
    let case = Case {
        m: 0,
        n: 4,
        k: 3,
        ta: false,
        tb: false,
        batch: &[],
        sa: &[],
        sb: &[],
        sc: &[],
    };
    matmul(&[], &[0.0; 12], &mut [], &case.dims()).unwrap();
    let batch = [0];
    let case = Case {
        m: 2,
        n: 4,
        k: 3,
        ta: false,
        tb: false,
        batch: &batch,
        sa: &[6],
        sb: &[12],
        sc: &[8],
    };
    matmul::<f32>(&[], &[], &mut [], &case.dims()).unwrap();
}

#[test]
fn bad_arguments_are_errors() {
    let a = vec![1.0f32; 64];
    let b = vec![1.0f32; 64];
    let mut c = vec![0.0f32; 64];
    let base = |batch: &'static [usize],
                sa: &'static [usize],
                sb: &'static [usize],
                sc: &'static [usize]| MatMulDims {
        m: 2,
        n: 3,
        k: 4,
        trans_a: false,
        trans_b: false,
        batch,
        a_batch_strides: sa,
        b_batch_strides: sb,
        c_batch_strides: sc,
    };
    // Stride slices of the wrong length.
    assert!(matmul(&a, &b, &mut c, &base(&[2], &[8], &[12, 0], &[6])).is_err());
    // Too many batch axes.
    let nine = &[1usize; 9];
    assert!(matches!(
        matmul(&a, &b, &mut c, &base(nine, nine, nine, nine)),
        Err(Error::Invalid(_))
    ));
    // Operands too short.
    assert!(matches!(
        matmul(&a[..7], &b, &mut c, &base(&[], &[], &[], &[])),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        matmul(&a, &b[..11], &mut c, &base(&[], &[], &[], &[])),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        matmul(&a, &b, &mut c[..5], &base(&[], &[], &[], &[])),
        Err(Error::Length { .. })
    ));
    // Batch strides past the end, or overflowing.
    assert!(matmul(&a, &b, &mut c, &base(&[3], &[30], &[0], &[6])).is_err());
    assert!(matmul(&a, &b, &mut c, &base(&[3], &[8], &[0], &[usize::MAX])).is_err());
    assert!(
        matmul(
            &a,
            &b,
            &mut c,
            &base(&[usize::MAX, 2], &[0, 0], &[0, 0], &[0, 0])
        )
        .is_err()
    );
    // Nothing was written on error.
    assert!(c.iter().all(|&x| x == 0.0));
}

/// A transposed right operand shared by the batch, copied out row-major
/// first (`matmul_f32`), gives `matmul`'s bits: one entry, a folded batch,
/// sizes off the 8 × 8 tile, and ones too small or with too many rows to
/// copy.
#[test]
fn transposed_shared_rhs_copy_gives_the_same_bits() {
    for &(batch, m, n, k) in &[
        (1usize, 256usize, 1024usize, 1024usize),
        (3, 40, 601, 453),
        (2, 17, 600, 449),
        (2, 310, 640, 413),
        (1, 2000, 640, 413),
        (1, 5, 1, 7),
    ] {
        let a: Vec<f32> = (0..batch * m * k)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 1e-3)
            .collect();
        let b: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-3)
            .collect();
        let dims = MatMulDims {
            m,
            n,
            k,
            trans_a: false,
            trans_b: true,
            batch: &[batch],
            a_batch_strides: &[m * k],
            b_batch_strides: &[0],
            c_batch_strides: &[m * n],
        };
        let mut want = vec![f32::NAN; batch * m * n];
        matmul(&a, &b, &mut want, &dims).unwrap();
        let mut got = vec![f32::NAN; batch * m * n];
        let mut scratch = Vec::new();
        matmul_f32(&a, &b, &mut got, &dims, &mut scratch).unwrap();
        let same = want
            .iter()
            .zip(&got)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "batch {batch} m {m} n {n} k {k}");
    }
}
