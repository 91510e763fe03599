//! Checks shared by the ring and local collective tests: every rank on its
//! own thread, results compared with sums computed here and across ranks
//! bit for bit.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use adjoint_worker::collective::{Collective, chunk_range};

/// Runs `f` on every rank, each on its own thread; returns the ranks (to be
/// dropped together afterwards) and the results, in rank order.
pub fn on_ranks<C, T, F>(colls: Vec<C>, f: F) -> (Vec<C>, Vec<T>)
where
    C: Collective,
    T: Send,
    F: Fn(&mut C) -> T + Sync,
{
    let f = &f;
    thread::scope(|s| {
        let handles: Vec<_> = colls
            .into_iter()
            .map(|mut c| {
                s.spawn(move || {
                    let out = f(&mut c);
                    (c, out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread panicked"))
            .unzip()
    })
}

/// Deterministic pseudo-random numbers (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Integers in `-50..50` as f32: every sum of them is exact.
    pub fn ints(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (self.next() % 100) as f32 - 50.0)
            .collect()
    }

    /// Arbitrary floats in about `-1..1`: sums round.
    pub fn floats(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One input per rank.
pub fn inputs(world: usize, len: usize, seed: u64, ints: bool) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    (0..world)
        .map(|_| if ints { rng.ints(len) } else { rng.floats(len) })
        .collect()
}

/// Elementwise sum in f64.
pub fn sums(inputs: &[Vec<f32>]) -> Vec<f64> {
    let mut out = vec![0f64; inputs[0].len()];
    for x in inputs {
        for (o, &v) in out.iter_mut().zip(x) {
            *o += f64::from(v);
        }
    }
    out
}

pub fn assert_bit_identical(outs: &[Vec<f32>]) {
    for (r, out) in outs.iter().enumerate().skip(1) {
        let same = out
            .iter()
            .zip(&outs[0])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && out.len() == outs[0].len(),
            "rank {r} differs from rank 0"
        );
    }
}

/// All-reduce of `inputs` (one per rank): exact for integers, close for
/// floats, bit-identical everywhere.
pub fn check_all_reduce<C: Collective>(colls: Vec<C>, inputs: &[Vec<f32>], exact: bool) -> Vec<C> {
    let (colls, outs) = on_ranks(colls, |c| {
        let mut data = inputs[c.rank()].clone();
        c.all_reduce_sum(&mut data).unwrap();
        data
    });
    assert_bit_identical(&outs);
    let expected = sums(inputs);
    for (i, (&got, &want)) in outs[0].iter().zip(&expected).enumerate() {
        if exact {
            assert_eq!(f64::from(got), want, "element {i}");
        } else {
            assert!(
                (f64::from(got) - want).abs() <= 1e-5 * inputs.len() as f64,
                "element {i}: {got} vs {want}"
            );
        }
    }
    colls
}

/// Reduce-scatter then all-gather: each rank's owned chunk is its summed
/// chunk, and all-gather brings back the whole sum.
pub fn check_reduce_scatter_gather<C: Collective>(colls: Vec<C>, inputs: &[Vec<f32>]) -> Vec<C> {
    let world = inputs.len();
    let (colls, outs) = on_ranks(colls, |c| {
        let mut data = inputs[c.rank()].clone();
        let owned = c.reduce_scatter_sum(&mut data).unwrap();
        assert_eq!(owned, chunk_range(data.len(), world, c.rank()));
        let chunk = data[owned.clone()].to_vec();
        c.all_gather(&mut data, owned).unwrap();
        (chunk, data)
    });
    let expected = sums(inputs);
    for (r, (chunk, _)) in outs.iter().enumerate() {
        let want = &expected[chunk_range(expected.len(), world, r)];
        assert!(
            chunk.iter().zip(want).all(|(&a, &b)| f64::from(a) == b),
            "rank {r}'s chunk"
        );
    }
    let gathered: Vec<Vec<f32>> = outs.into_iter().map(|(_, d)| d).collect();
    assert_bit_identical(&gathered);
    assert!(
        gathered[0]
            .iter()
            .zip(&expected)
            .all(|(&a, &b)| f64::from(a) == b)
    );
    colls
}

/// Broadcast of `len` random bytes from `root`.
pub fn check_broadcast<C: Collective>(colls: Vec<C>, len: usize, root: usize, seed: u64) -> Vec<C> {
    let mut rng = Rng(seed);
    let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    let (colls, outs) = on_ranks(colls, |c| {
        let mut data = if c.rank() == root {
            payload.clone()
        } else {
            vec![0xAA; len]
        };
        c.broadcast(&mut data, root).unwrap();
        data
    });
    for (r, out) in outs.iter().enumerate() {
        assert!(*out == payload, "rank {r} did not get root {root}'s bytes");
    }
    colls
}

/// All-to-all where rank `i` sends `counts[i][j]` elements to rank `j`,
/// each value naming its source, destination and position.
pub fn check_all_to_all<C: Collective>(colls: Vec<C>, counts: &[Vec<usize>]) -> Vec<C> {
    let world = counts.len();
    let value = |i: usize, j: usize, k: usize| (i * 100_000 + j * 1000 + k) as f32;
    let (colls, outs) = on_ranks(colls, |c| {
        let i = c.rank();
        let send: Vec<f32> = (0..world)
            .flat_map(|j| (0..counts[i][j]).map(move |k| value(i, j, k)))
            .collect();
        let recv_counts: Vec<usize> = (0..world).map(|src| counts[src][i]).collect();
        let mut recv = vec![f32::NAN; recv_counts.iter().sum()];
        c.all_to_all(&send, &counts[i], &mut recv, &recv_counts)
            .unwrap();
        recv
    });
    for (j, recv) in outs.iter().enumerate() {
        let want: Vec<f32> = (0..world)
            .flat_map(|i| (0..counts[i][j]).map(move |k| value(i, j, k)))
            .collect();
        assert_eq!(*recv, want, "rank {j} received");
    }
    colls
}

/// No rank leaves a barrier before every rank has entered it.
pub fn check_barrier<C: Collective>(colls: Vec<C>, rounds: usize) -> Vec<C> {
    let world = colls.len();
    let entered = AtomicUsize::new(0);
    let (colls, _) = on_ranks(colls, |c| {
        for round in 1..=rounds {
            entered.fetch_add(1, Ordering::SeqCst);
            c.barrier().unwrap();
            let seen = entered.load(Ordering::SeqCst);
            assert!(
                seen >= round * world,
                "rank {} left round {round} after {seen} entries",
                c.rank()
            );
            // Nobody may enter the next round before everyone left this one.
            c.barrier().unwrap();
        }
    });
    colls
}

/// A random `world × world` count matrix with entries below `max`.
pub fn counts(world: usize, max: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng(seed);
    (0..world)
        .map(|_| (0..world).map(|_| rng.below(max + 1)).collect())
        .collect()
}
