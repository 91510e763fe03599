//! Timing all-reduce: the `allreduce` workload of WORKLOADS.md.

use std::time::Instant;

use super::{Collective, Result};

/// What [`bench_all_reduce`] measured on one rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchResult {
    /// Median time of one all-reduce, in milliseconds.
    pub median_ms: f64,
    /// Algorithm bandwidth: bytes per rank / median time, in GB/s (1e9
    /// bytes per second).
    pub algbw_gbps: f64,
}

impl BenchResult {
    /// The result for `bytes` per rank in `median_ms`.
    pub fn new(bytes: usize, median_ms: f64) -> BenchResult {
        BenchResult {
            median_ms,
            algbw_gbps: bytes as f64 / (median_ms * 1e-3) / 1e9,
        }
    }
}

/// Sum-all-reduces a buffer of `mib` MiB of `f32` `iters` times (after two
/// untimed warm-up calls) and reports the median. Each timed call follows a
/// barrier, so it measures the all-reduce itself rather than the ranks'
/// skew. Every rank must call this with the same arguments.
pub fn bench_all_reduce(
    coll: &mut dyn Collective,
    mib: usize,
    iters: usize,
) -> Result<BenchResult> {
    let len = (mib << 20) / 4;
    let mut data = vec![0f32; len];
    let value = f32::from(rank_value(coll.rank()));
    let fill = |data: &mut [f32]| data.fill(value);
    for _ in 0..2 {
        fill(&mut data);
        coll.all_reduce_sum(&mut data)?;
    }
    let mut times = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        fill(&mut data);
        coll.barrier()?;
        let start = Instant::now();
        coll.all_reduce_sum(&mut data)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(BenchResult::new(len * 4, times[times.len() / 2]))
}

/// A small exact value per rank, so sums stay exact and finite.
fn rank_value(rank: usize) -> u16 {
    (rank % 1000) as u16 + 1
}
