//! The keep masks of the fixed policies (`none`, `every:K`, `sqrt`,
//! `selective`): per value of the joint graph, whether the plan keeps it
//! for backward. Forced values ([`Structure::forced`]) are kept whatever
//! the mask says.

use super::analysis::Structure;
use crate::Graph;
use crate::ops::Recompute;

/// Keeps every forward value: no recompute.
pub fn none(s: &Structure) -> Vec<bool> {
    s.keep_all()
}

/// Keeps boundaries `K-1, 2K-1, …` and everything after the last kept one
/// (recomputing the tail right after the forward pass would save nothing).
pub fn every(s: &Structure, k: usize) -> Vec<bool> {
    let k = k.max(1);
    let mut keep = vec![false; s.forward_value.len()];
    let mut last_kept = None;
    for (i, &b) in s.boundaries.iter().enumerate() {
        if (i + 1) % k == 0 {
            keep[b.index()] = true;
            last_kept = Some(i);
        }
    }
    let tail = last_kept.map_or(0, |i| i + 1);
    for (v, seg) in s.segment_of.iter().enumerate() {
        if seg.is_some_and(|seg| seg >= tail) {
            keep[v] = true;
        }
    }
    keep
}

/// Segments of about √n boundaries for n segments (Chen et al. 2016).
pub fn sqrt(s: &Structure) -> Vec<bool> {
    every(s, sqrt_stride(s.segments.len()))
}

/// The `every:K` stride `sqrt` uses for `n` segments: √n rounded, at
/// least 1.
pub fn sqrt_stride(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).max(1)
}

/// Keeps the outputs of expensive (and never-recomputed) forward ops;
/// cheap ones are recomputed from them.
pub fn selective(g: &Graph, s: &Structure) -> Vec<bool> {
    let mut keep = vec![false; s.forward_value.len()];
    for (n, node) in g.nodes.iter().enumerate() {
        if s.forward[n] && node.op.recompute() != Recompute::Cheap {
            for &o in &node.outputs {
                keep[o.index()] = true;
            }
        }
    }
    keep
}
