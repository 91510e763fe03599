//! Which samples each rank feeds at each micro-step.
//!
//! Every epoch the dataset is shuffled by a deterministic permutation (a
//! Fisher–Yates shuffle driven by the counter-based RNG keyed on the job's
//! seed and the epoch), identical on every rank. Each optimizer step takes
//! the next window of `world · grad_accum · batch` samples of the
//! permutation; micro-step `m` of rank `r` feeds the slice
//! `[(m·world + r)·batch, +batch)` of the window. So 2 ranks × `B` see the
//! same samples per step as 1 rank × `2B`, and `grad_accum` 2 × `B/2` the
//! same as 1 × `B`. The trailing partial window of each epoch is dropped.
//!
//! Gathering rows copies into buffers allocated once, so a step allocates
//! nothing (the permutation is rebuilt in place at each epoch).

use adjoint_graph::rng::{Stream, key_of};

use crate::data::Dataset;
use crate::{Error, Result};

/// Where a global step's samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPosition {
    /// Epochs completed before this step.
    pub epoch: u64,
    /// Index of the step's window within the epoch.
    pub window: u64,
}

/// The per-epoch permutation and the step windows over it.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    samples: usize,
    window: usize,
    windows_per_epoch: u64,
    perm: Vec<u32>,
    perm_epoch: Option<u64>,
}

impl Sampler {
    /// Windows of `window` samples over `samples` samples, shuffled by `seed`.
    pub fn new(samples: usize, window: usize, seed: u64) -> Result<Sampler> {
        if window == 0 {
            return Err(Error::Data(
                "a step takes no samples (batch or grad_accum is zero)".into(),
            ));
        }
        if samples > u32::MAX as usize {
            return Err(Error::Data(format!(
                "{samples} samples: at most {} are supported",
                u32::MAX
            )));
        }
        let windows_per_epoch = (samples / window) as u64;
        if windows_per_epoch == 0 {
            return Err(Error::Data(format!(
                "the dataset has {samples} samples, fewer than one step needs ({window} = world × grad_accum × batch)"
            )));
        }
        Ok(Sampler {
            seed,
            samples,
            window,
            windows_per_epoch,
            perm: (0..samples as u32).collect(),
            perm_epoch: None,
        })
    }

    /// Full steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.windows_per_epoch
    }

    /// Samples dropped at the end of every epoch (the partial window).
    pub fn dropped_per_epoch(&self) -> usize {
        self.samples % self.window
    }

    /// Where global step `step` (0-based) reads.
    pub fn position(&self, step: u64) -> DataPosition {
        DataPosition {
            epoch: step / self.windows_per_epoch,
            window: step % self.windows_per_epoch,
        }
    }

    /// The sample indices of global step `step`'s window.
    pub fn window(&mut self, step: u64) -> &[u32] {
        let pos = self.position(step);
        if self.perm_epoch != Some(pos.epoch) {
            shuffle(&mut self.perm, self.seed, pos.epoch);
            self.perm_epoch = Some(pos.epoch);
        }
        let start = pos.window as usize * self.window;
        &self.perm[start..start + self.window]
    }
}

/// Fills `perm` with the epoch's permutation of `0..perm.len()`: the same
/// numbers in every process for the same (seed, epoch).
pub fn shuffle(perm: &mut [u32], seed: u64, epoch: u64) {
    for (i, p) in perm.iter_mut().enumerate() {
        *p = i as u32;
    }
    let stream = Stream {
        seed,
        step: epoch,
        rank: 0,
        site: key_of("data.shuffle"),
    };
    for i in (1..perm.len()).rev() {
        // 64 random bits mapped onto 0..=i by a multiply-shift.
        let bits =
            (u64::from(stream.bits(2 * i as u64)) << 32) | u64::from(stream.bits(2 * i as u64 + 1));
        let j = ((u128::from(bits) * (i as u128 + 1)) >> 64) as usize;
        perm.swap(i, j);
    }
}

/// One micro-batch per graph input, gathered from dataset rows into
/// buffers sized once.
#[derive(Debug, Clone)]
pub struct BatchBuffers {
    bufs: Vec<Vec<u8>>,
    row_bytes: Vec<usize>,
}

impl BatchBuffers {
    /// Buffers for `batch` samples of each of `data`'s inputs.
    pub fn new(data: &Dataset, batch: usize) -> Result<BatchBuffers> {
        let inputs = data.names().count();
        let mut row_bytes = Vec::with_capacity(inputs);
        for i in 0..inputs {
            row_bytes.push(if data.samples() == 0 {
                0
            } else {
                data.rows(i, 0, 1)?.len()
            });
        }
        let bufs = row_bytes.iter().map(|&r| vec![0u8; r * batch]).collect();
        Ok(BatchBuffers { bufs, row_bytes })
    }

    /// Copies the rows `indices` of every input into the buffers.
    pub fn gather(&mut self, data: &Dataset, indices: &[u32]) -> Result<()> {
        for (i, (buf, &row)) in self.bufs.iter_mut().zip(&self.row_bytes).enumerate() {
            if indices.len() * row != buf.len() {
                return Err(Error::Data(format!(
                    "gathering {} rows of {row} bytes into a buffer of {}",
                    indices.len(),
                    buf.len()
                )));
            }
            for (dst, &s) in buf.chunks_exact_mut(row.max(1)).zip(indices) {
                dst.copy_from_slice(data.rows(i, s as usize, 1)?);
            }
        }
        Ok(())
    }

    /// The gathered bytes of input `i` (graph order).
    pub fn input(&self, i: usize) -> &[u8] {
        &self.bufs[i]
    }

    pub fn inputs(&self) -> usize {
        self.bufs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_and_repeat() {
        let mut a = vec![0u32; 1000];
        let mut b = vec![0u32; 1000];
        shuffle(&mut a, 7, 3);
        shuffle(&mut b, 7, 3);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        shuffle(&mut b, 7, 4);
        assert_ne!(a, b, "another epoch, another order");
    }

    #[test]
    fn windows_walk_epochs_and_drop_the_tail() {
        let mut s = Sampler::new(10, 3, 1).unwrap();
        assert_eq!(s.steps_per_epoch(), 3);
        assert_eq!(s.dropped_per_epoch(), 1);
        assert_eq!(
            s.position(4),
            DataPosition {
                epoch: 1,
                window: 1
            }
        );
        let first: Vec<u32> = (0..3).flat_map(|k| s.window(k).to_vec()).collect();
        let mut uniq = first.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), 9, "an epoch visits distinct samples");
        assert!(Sampler::new(2, 3, 1).is_err());
    }
}
