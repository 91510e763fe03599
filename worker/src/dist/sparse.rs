//! Sparse all-reduce of expert gradients: only the experts some rank routed
//! rows to move over the network.
//!
//! A parameter whose gradient comes straight from a `GroupedMatMulGradW`
//! ([`adjoint_graph::training::ExpertGrad`]) holds one slice per expert;
//! the kernel zero-fills the slices of experts that got no rows. Each
//! micro-step, every rank reads its routing offsets (kept to the end of the
//! step by the training graph) and marks the experts it used. At the first
//! gradient bucket holding expert slices, the ranks sum their marks (one
//! all-reduce of a float per expert), so all of them agree on the union;
//! every bucket then packs its dense ranges and the touched experts'
//! slices into one buffer, all-reduces that, and unpacks it. Slices of
//! experts no rank touched are zero everywhere, so skipping them leaves the
//! same sum as a dense all-reduce. Buffers are sized once, at start-up.

use adjoint_graph::training::ExpertGrad;
use adjoint_kernels::{Backend, ElemType, View};

use super::collective_error;
use crate::collective::Collective;
use crate::{Error, Executor, Result};

/// One expert gradient in the flat gradient buffer (f32 elements).
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// First element of the gradient in the flat buffer.
    start: usize,
    /// Elements per expert.
    row: usize,
    experts: usize,
    /// The routing offsets `[experts + 1]` (i64) that grouped its rows.
    offsets: View,
    /// Index of expert 0 in the touched marks.
    mark: usize,
}

/// Expert gradients of a training graph and the per-step state of their
/// sparse all-reduce.
#[derive(Debug)]
pub struct SparseExperts {
    slots: Vec<Slot>,
    /// Per expert of every slot: rows this step (summed over ranks once
    /// agreed).
    touched: Vec<f32>,
    /// Whether the ranks have summed `touched` this step.
    agreed: bool,
    /// Untouched expert slices, as sorted element ranges of the gradient
    /// buffer (after agreement).
    skip: Vec<(usize, usize)>,
    offsets: Vec<u8>,
    packed: Vec<f32>,
    /// Rows per expert index this step, over all slots (this rank).
    load: Vec<u64>,
    /// The gradient buffer's element ranges outside `skip` (after
    /// agreement): what a lazy optimizer updates.
    kept: Vec<(usize, usize)>,
    /// Elements of the gradient buffer.
    elements: usize,
}

impl SparseExperts {
    /// The expert gradients of `exec`'s graph; `bucket_elems` is the
    /// largest bucket, in f32 elements.
    pub fn new<B: Backend>(
        exec: &Executor<B>,
        experts: &[ExpertGrad],
        bucket_elems: usize,
    ) -> Result<SparseExperts> {
        let layout = &exec.plan().grad_layout;
        let mut slots = Vec::new();
        let mut mark = 0;
        let mut widest = 0;
        for e in experts {
            let Some(slot) = layout
                .iter()
                .find(|s| s.param == e.param && s.value == e.grad)
            else {
                continue;
            };
            let offsets = exec.view_of(e.offsets)?;
            if offsets.elem != ElemType::I64 || offsets.len != e.experts + 1 {
                return Err(Error::Data(format!(
                    "routing offsets of '{}': expected {} i64, found {} {:?}",
                    exec.graph().name_of(e.param),
                    e.experts + 1,
                    offsets.len,
                    offsets.elem
                )));
            }
            let elems = slot.bytes / 4;
            slots.push(Slot {
                start: slot.offset / 4,
                row: elems / e.experts.max(1),
                experts: e.experts,
                offsets,
                mark,
            });
            mark += e.experts;
            widest = widest.max(e.experts + 1);
        }
        slots.sort_by_key(|s| s.start);
        Ok(SparseExperts {
            touched: vec![0.0; mark],
            agreed: false,
            skip: Vec::with_capacity(mark),
            offsets: vec![0; widest * 8],
            packed: vec![0.0; if slots.is_empty() { 0 } else { bucket_elems }],
            load: vec![0; widest.saturating_sub(1)],
            kept: Vec::with_capacity(mark + 1),
            elements: exec.grads_view().len,
            slots,
        })
    }

    /// Whether there is anything sparse to do.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Rows this rank routed to each expert index this step, summed over
    /// the MoE layers.
    pub fn load(&self) -> &[u64] {
        &self.load
    }

    /// Whether the ranks have yet to agree on this step's marks.
    pub fn agree_pending(&self) -> bool {
        !self.agreed && !self.slots.is_empty()
    }

    /// Forgets the last step's marks.
    pub fn begin_step(&mut self) {
        self.touched.fill(0.0);
        self.load.fill(0);
        self.agreed = false;
        self.skip.clear();
        self.kept.clear();
    }

    /// Marks the experts this rank routed rows to in the micro-step just
    /// run (its offsets are still live).
    pub fn observe<B: Backend>(&mut self, backend: &mut B) -> Result<()> {
        for s in &self.slots {
            let bytes = &mut self.offsets[..(s.experts + 1) * 8];
            backend.read(s.offsets, bytes)?;
            let at =
                |i: usize| i64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            for e in 0..s.experts {
                let rows = (at(e + 1) - at(e)).max(0) as u64;
                self.load[e] += rows;
                if rows > 0 {
                    self.touched[s.mark + e] += 1.0;
                }
            }
        }
        Ok(())
    }

    /// Whether elements `start..start + len` of the gradient buffer hold
    /// part of an expert gradient.
    pub fn overlaps(&self, start: usize, len: usize) -> bool {
        self.slots
            .iter()
            .any(|s| s.start < start + len && start < s.start + s.row * s.experts)
    }

    /// Sums the touched marks over the ranks (once per step) and lists the
    /// untouched slices; returns the bytes handed to the collective.
    pub fn agree(&mut self, coll: &mut dyn Collective) -> Result<u64> {
        if self.agreed {
            return Ok(0);
        }
        coll.all_reduce_sum(&mut self.touched)
            .map_err(collective_error)?;
        self.agreed = true;
        for s in &self.slots {
            for e in 0..s.experts {
                if self.touched[s.mark + e] == 0.0 {
                    let lo = s.start + e * s.row;
                    match self.skip.last_mut() {
                        Some(last) if last.1 == lo => last.1 = lo + s.row,
                        _ => self.skip.push((lo, lo + s.row)),
                    }
                }
            }
        }
        let mut at = 0;
        for &(lo, hi) in &self.skip {
            if lo > at {
                self.kept.push((at, lo));
            }
            at = hi;
        }
        if at < self.elements {
            self.kept.push((at, self.elements));
        }
        Ok(4 * self.touched.len() as u64)
    }

    /// After agreement: the element ranges of the gradient buffer that are
    /// not slices of untouched experts, in order.
    pub fn kept(&self) -> &[(usize, usize)] {
        &self.kept
    }

    /// All-reduces `host` (elements `start..` of the gradient buffer)
    /// without the untouched expert slices; returns the bytes handed to
    /// the collective.
    pub fn all_reduce(
        &mut self,
        host: &mut [f32],
        start: usize,
        coll: &mut dyn Collective,
    ) -> Result<u64> {
        let end = start + host.len();
        let mut n = 0;
        self.for_kept(start, end, |lo, hi, packed: &mut Vec<f32>| {
            packed[n..n + hi - lo].copy_from_slice(&host[lo - start..hi - start]);
            n += hi - lo;
        });
        let packed = &mut self.packed[..n];
        coll.all_reduce_sum(packed).map_err(collective_error)?;
        let mut at = 0;
        let packed = std::mem::take(&mut self.packed);
        self.for_kept(start, end, |lo, hi, _| {
            host[lo - start..hi - start].copy_from_slice(&packed[at..at + hi - lo]);
            at += hi - lo;
        });
        self.packed = packed;
        Ok(4 * n as u64)
    }

    /// Calls `f(lo, hi, packed)` for each kept element range of
    /// `start..end` in order.
    fn for_kept(
        &mut self,
        start: usize,
        end: usize,
        mut f: impl FnMut(usize, usize, &mut Vec<f32>),
    ) {
        let mut at = start;
        for &(lo, hi) in &self.skip {
            if hi <= at || lo >= end {
                continue;
            }
            if lo > at {
                f(at, lo.min(end), &mut self.packed);
            }
            at = hi.min(end);
        }
        if at < end {
            f(at, end, &mut self.packed);
        }
    }
}
