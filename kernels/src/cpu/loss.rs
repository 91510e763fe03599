//! Loss kernels: softmax cross-entropy (forward and backward) and MSE.
//!
//! Sums accumulate in f64. The mean losses sum a fixed partition of their
//! items (64 parts, each summed in order, the parts then added in order), so
//! the result is the same bit for bit whether the parts ran on one thread or
//! many. Labels are all checked before anything is written.

use rayon::prelude::*;

use super::PARALLEL_THRESHOLD;
use super::index::{IndexElem, check_indices};
use super::nn::{each_row, exp, max, sum, sum2};
use crate::backend::{Error, Result};

/// Parts of a deterministic sum.
const PARTS: usize = 64;

/// `Σ f(range)` over a fixed partition of `0..len` into [`PARTS`] ranges,
/// run in parallel when asked, always added in the same order.
fn chunked_sum(
    len: usize,
    parallel: bool,
    f: impl Fn(std::ops::Range<usize>) -> f64 + Sync,
) -> f64 {
    let per = len.div_ceil(PARTS);
    let mut parts = [0.0f64; PARTS];
    let part = |i: usize| f((i * per).min(len)..((i + 1) * per).min(len));
    if parallel {
        parts
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, p)| *p = part(i));
    } else {
        for (i, p) in parts.iter_mut().enumerate() {
            *p = part(i);
        }
    }
    parts.iter().sum()
}

fn check_shapes(
    what: &'static str,
    logits: usize,
    labels: usize,
    rows: usize,
    classes: usize,
) -> Result<()> {
    let expected = rows
        .checked_mul(classes)
        .ok_or_else(|| Error::Invalid(format!("{what}: size overflows usize")))?;
    for (expected, found) in [(expected, logits), (rows, labels)] {
        if expected != found {
            return Err(Error::Length {
                what,
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// `m = max(x)` and `Σ exp(x - m)`: exponentials a stack block at a time
/// (a loop LLVM vectorises), summed in f64 lanes.
fn max_and_sum_exp(x: &[f32]) -> (f32, f64) {
    const BLOCK: usize = 256;
    let m = max(x);
    let mut buf = [0.0f32; BLOCK];
    let mut total = 0.0f64;
    for chunk in x.chunks(BLOCK) {
        let e = &mut buf[..chunk.len()];
        for (o, &v) in e.iter_mut().zip(chunk) {
            *o = exp(v - m);
        }
        total += sum(e);
    }
    (m, total)
}

/// Mean over rows of `logsumexp(logits[r]) - logits[r, labels[r]]`, into
/// `loss[0]` (NaN for zero rows).
pub fn softmax_cross_entropy<I: IndexElem>(
    logits: &[f32],
    labels: &[I],
    loss: &mut [f32],
    rows: usize,
    classes: usize,
) -> Result<()> {
    check_shapes(
        "softmax_cross_entropy",
        logits.len(),
        labels.len(),
        rows,
        classes,
    )?;
    if loss.len() != 1 {
        return Err(Error::Length {
            what: "softmax_cross_entropy loss",
            expected: 1,
            found: loss.len(),
        });
    }
    check_indices("softmax_cross_entropy label", labels, classes)?;
    let total = chunked_sum(rows, logits.len() >= PARALLEL_THRESHOLD, |range| {
        let mut s = 0.0f64;
        for r in range {
            let row = &logits[r * classes..(r + 1) * classes];
            let (m, e) = max_and_sum_exp(row);
            let label = labels[r].get() as usize;
            s += (f64::from(m) + e.ln()) - f64::from(row[label]);
        }
        s
    });
    loss[0] = (total / rows as f64) as f32;
    Ok(())
}

/// `dlogits = (softmax(logits) - onehot(labels)) · dloss / rows`.
pub fn softmax_cross_entropy_grad<I: IndexElem>(
    logits: &[f32],
    labels: &[I],
    dloss: f32,
    dlogits: &mut [f32],
    rows: usize,
    classes: usize,
) -> Result<()> {
    check_shapes(
        "softmax_cross_entropy_grad",
        logits.len(),
        labels.len(),
        rows,
        classes,
    )?;
    if dlogits.len() != logits.len() {
        return Err(Error::Length {
            what: "softmax_cross_entropy_grad dlogits",
            expected: logits.len(),
            found: dlogits.len(),
        });
    }
    check_indices("softmax_cross_entropy_grad label", labels, classes)?;
    if dlogits.is_empty() {
        return Ok(());
    }
    let scale = (f64::from(dloss) / rows as f64) as f32;
    each_row(dlogits, classes, |r, out| {
        let row = &logits[r * classes..(r + 1) * classes];
        let m = max(row);
        for (o, &v) in out.iter_mut().zip(row) {
            *o = exp(v - m);
        }
        let inv = (1.0 / sum2(out, out, |v, _| v)) as f32;
        for o in out.iter_mut() {
            *o = *o * inv * scale;
        }
        let label = labels[r].get() as usize;
        let p = exp(row[label] - m) * inv;
        out[label] = (p - 1.0) * scale;
    });
    Ok(())
}

/// Mean of squared differences (NaN when empty or the lengths differ).
pub fn mse(pred: &[f32], target: &[f32]) -> f32 {
    if pred.len() != target.len() {
        return f32::NAN;
    }
    let len = pred.len();
    let total = chunked_sum(len, len >= PARALLEL_THRESHOLD, |r| {
        sum2(&pred[r.clone()], &target[r], |p, t| (p - t) * (p - t))
    });
    (total / len as f64) as f32
}

#[cfg(test)]
#[path = "tests/loss.rs"]
mod tests;
