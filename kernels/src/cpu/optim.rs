//! Optimizer updates over flat parameter buffers: SGD and AdamW.
//!
//! Both follow PyTorch's single-tensor (`foreach=False`) code in operation
//! order, one f32 rounding per tensor op as PyTorch's separate kernels
//! round; the scalar factors that PyTorch computes from Python floats are
//! computed here in f64 and then rounded to f32. (PyTorch's vectorised
//! `lerp` fuses a multiply-add; this code rounds twice, so the two can
//! differ in the last bit.) Elements are independent, so large buffers are
//! split in chunks over rayon.

use rayon::prelude::*;

use super::PARALLEL_THRESHOLD;
use crate::backend::{AdamWParams, SgdParams};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `torch.optim.SGD`: `d = g + wd·p`; with momentum
/// `buf = first ? d : momentum·buf + (1 − dampening)·d` and
/// `d = nesterov ? d + momentum·buf : buf`; then `p −= lr·d`.
/// `momentum` is ignored (and may be empty) when `p.momentum == 0`.
pub fn sgd(param: &mut [f32], grad: &[f32], momentum: &mut [f32], p: &SgdParams) {
    if grad.len() != param.len() || (p.momentum != 0.0 && momentum.len() != param.len()) {
        return; // the backend checked the lengths; stay panic-free regardless
    }
    let parallel = param.len() >= PARALLEL_THRESHOLD;
    if p.momentum == 0.0 {
        if parallel {
            param
                .par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .for_each(|(w, g)| sgd_plain(w, g, p));
        } else {
            sgd_plain(param, grad, p);
        }
    } else if parallel {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(momentum.par_chunks_mut(CHUNK))
            .for_each(|((w, g), b)| sgd_momentum(w, g, b, p));
    } else {
        sgd_momentum(param, grad, momentum, p);
    }
}

/// `d = g + wd·p` (PyTorch skips the add when `wd == 0`).
#[inline(always)]
fn decayed(g: f32, w: f32, wd: f32) -> f32 {
    if wd != 0.0 { g + wd * w } else { g }
}

fn sgd_plain(param: &mut [f32], grad: &[f32], p: &SgdParams) {
    let (neg_lr, wd) = (-p.lr, p.weight_decay);
    for (w, &g) in param.iter_mut().zip(grad) {
        *w += neg_lr * decayed(g, *w, wd);
    }
}

fn sgd_momentum(param: &mut [f32], grad: &[f32], buf: &mut [f32], p: &SgdParams) {
    let (neg_lr, wd, mu) = (-p.lr, p.weight_decay, p.momentum);
    let keep = (1.0 - f64::from(p.dampening)) as f32;
    for ((w, &g), b) in param.iter_mut().zip(grad).zip(buf) {
        let d = decayed(g, *w, wd);
        *b = if p.first_step { d } else { *b * mu + keep * d };
        let d = if p.nesterov { d + mu * *b } else { *b };
        *w += neg_lr * d;
    }
}

/// The f32 factors of one AdamW step, from f64 as PyTorch's Python floats.
#[derive(Debug, Clone, Copy)]
struct AdamWFactors {
    decay: f32,
    lerp_w: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bc2_sqrt: f32,
    neg_step_size: f32,
    eps: f32,
}

impl AdamWFactors {
    fn new(p: &AdamWParams) -> AdamWFactors {
        let (lr, wd) = (f64::from(p.lr), f64::from(p.weight_decay));
        let (b1, b2) = (f64::from(p.beta1), f64::from(p.beta2));
        let step = p.step as f64;
        let bias_correction1 = 1.0 - b1.powf(step);
        let bias_correction2 = 1.0 - b2.powf(step);
        AdamWFactors {
            decay: (1.0 - lr * wd) as f32,
            lerp_w: (1.0 - b1) as f32,
            beta2: p.beta2,
            one_minus_beta2: (1.0 - b2) as f32,
            bc2_sqrt: bias_correction2.sqrt() as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
            eps: p.eps,
        }
    }
}

/// `torch.optim.AdamW` (single-tensor path), in its order:
/// `p *= 1 − lr·wd`; `m.lerp_(g, 1 − β1)`; `v = v·β2 + (1 − β2)·g·g`;
/// `denom = sqrt(v) / sqrt(1 − β2^t) + eps`;
/// `p += −(lr / (1 − β1^t)) · m / denom`.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], p: &AdamWParams) {
    let n = param.len();
    if grad.len() != n || m.len() != n || v.len() != n {
        return; // the backend checked the lengths; stay panic-free regardless
    }
    let f = AdamWFactors::new(p);
    let skip_decay = p.weight_decay == 0.0;
    if n >= PARALLEL_THRESHOLD {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((w, g), m), v)| adamw_chunk(w, g, m, v, f, skip_decay));
    } else {
        adamw_chunk(param, grad, m, v, f, skip_decay);
    }
}

/// PyTorch's `lerp(start, end, weight)` (two formulas for accuracy).
#[inline(always)]
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

fn adamw_chunk(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    f: AdamWFactors,
    skip_decay: bool,
) {
    for (((w, &g), m), v) in param.iter_mut().zip(grad).zip(m).zip(v) {
        if !skip_decay {
            *w *= f.decay;
        }
        *m = lerp(*m, g, f.lerp_w);
        *v = *v * f.beta2 + f.one_minus_beta2 * g * g;
        let denom = v.sqrt() / f.bc2_sqrt + f.eps;
        *w += f.neg_step_size * *m / denom;
    }
}

#[cfg(test)]
#[path = "tests/optim.rs"]
mod tests;
