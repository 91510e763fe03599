//! Gradient buckets reduced where they lie, on a device backend whose
//! collective reduces device memory (CUDA with NCCL): the bucket hook's
//! accumulate, all-reduce, scale and squared norm as device work, with no
//! copy through the host.
//!
//! Per bucket of the last micro-step: the gradient (plus the accumulated
//! earlier micro-steps) goes to the communication stream behind an event
//! on the compute stream; the collective enqueues its all-reduce there
//! (bf16 for `grad_reduce = "bf16"`: cast down first, back up after) and
//! returns; the compute stream waits on an event after it, writes the
//! scaled sum back into the gradient and reduces its squares into the
//! bucket's slot. Backward goes on meanwhile. [`DeviceReduce::finish`]
//! waits for the collective (its timeout and abort handling) and reads the
//! slots once per step. Buckets of sparse experts and expert shards keep
//! the host path (their rows are chosen on the host).

use std::time::Instant;

use adjoint_kernels::{Backend, BinaryOp, ElemType, ReduceOp, Stream, View};

use super::{BucketEvent, Phase, Totals, collective_error};
use crate::collective::Collective;
use crate::executor::GradBucket;
use crate::{Error, Result};

/// Device buffers of the device-resident bucket reduction.
#[derive(Debug)]
pub(super) struct DeviceReduce {
    grads: View,
    /// The reduced sums (f32, as long as `grads`); also scratch for the
    /// squares and the clip.
    work: View,
    /// Gradients summed over the earlier micro-steps (with accumulation).
    accum: Option<View>,
    /// The bf16 copy the all-reduce sends (with `grad_reduce = "bf16"`).
    half: Option<View>,
    /// `[scale, clip coefficient]`: scalars the kernels broadcast.
    scalars: View,
    /// Each bucket's squared norm after scaling.
    sumsq: View,
    /// Which slots of `sumsq` this step wrote.
    used: Vec<bool>,
}

/// A fresh f32 (or `elem`) view of `len` elements on `backend`.
fn alloc_view<B: Backend>(backend: &mut B, len: usize, elem: ElemType) -> Result<View> {
    let buffer = backend.alloc(len * elem.size())?;
    Ok(View {
        buffer,
        offset: 0,
        len,
        elem,
    })
}

impl DeviceReduce {
    /// The buffers for `grads` in `buckets` buckets, or `None` when the
    /// backend keeps its memory on the host or `coll` reduces only host
    /// memory.
    pub fn new<B: Backend>(
        backend: &mut B,
        coll: &dyn Collective,
        grads: View,
        buckets: usize,
        accumulate: bool,
        bf16: bool,
    ) -> Result<Option<DeviceReduce>> {
        if !coll.reduces_device_memory() || backend.device_address(grads).is_none() {
            return Ok(None);
        }
        let work = alloc_view(backend, grads.len, ElemType::F32)?;
        let accum = if accumulate {
            Some(alloc_view(backend, grads.len, ElemType::F32)?)
        } else {
            None
        };
        let half = if bf16 {
            Some(alloc_view(backend, grads.len, ElemType::BF16)?)
        } else {
            None
        };
        let scalars = alloc_view(backend, 2, ElemType::F32)?;
        let sumsq = alloc_view(backend, buckets.max(1), ElemType::F32)?;
        Ok(Some(DeviceReduce {
            grads,
            work,
            accum,
            half,
            scalars,
            sumsq,
            used: vec![false; buckets],
        }))
    }

    /// Starts a step whose sums are multiplied by `scale`.
    pub fn begin_step<B: Backend>(&mut self, backend: &mut B, scale: f32) -> Result<()> {
        self.used.iter_mut().for_each(|u| *u = false);
        backend.write(self.scalars.sub(0, 1), &scale.to_le_bytes())?;
        Ok(())
    }

    /// The hook's work on one bucket (see the module docs); on the last
    /// micro-step returns its event.
    pub fn bucket<B: Backend>(
        &mut self,
        backend: &mut B,
        bucket: &GradBucket,
        phase: Phase,
        coll: &mut dyn Collective,
        totals: &mut Totals,
    ) -> Result<Option<BucketEvent>> {
        let (start, len) = (bucket.offset / 4, bucket.bytes / 4);
        let g = self.grads.sub(start, len);
        let w = self.work.sub(start, len);
        let flat = [len];
        let add = |backend: &mut B, a: View, b: View, out: View| {
            backend.binary(BinaryOp::Add, a, &[1], b, &[1], out, &flat)
        };
        match (phase, self.accum) {
            (Phase::First, Some(a)) => {
                backend.copy(g, a.sub(start, len))?;
                return Ok(None);
            }
            (Phase::Middle, Some(a)) => {
                let a = a.sub(start, len);
                add(backend, a, g, w)?;
                backend.copy(w, a)?;
                return Ok(None);
            }
            (Phase::First | Phase::Middle, None) => {
                return Err(Error::Data(
                    "a device bucket reduction without an accumulator got a micro-step".into(),
                ));
            }
            (Phase::Last, _) => {}
        }
        if bucket.index >= self.used.len() {
            return Err(Error::Data(format!(
                "bucket {} of a program with {} buckets",
                bucket.index,
                self.used.len()
            )));
        }
        let t0 = Instant::now();
        // The sum to send: the gradient, or with the earlier micro-steps.
        let mut send = g;
        if let Some(a) = self.accum {
            add(backend, g, a.sub(start, len), w)?;
            send = w;
        }
        let (send, recv, sent) = match self.half {
            Some(h) => {
                let h = h.sub(start, len);
                backend.cast(send, h)?;
                (h, h, bucket.bytes as u64 / 2)
            }
            None => (send, w, bucket.bytes as u64),
        };
        let address = |v: View| {
            backend
                .device_address(v)
                .ok_or_else(|| Error::Data(format!("bucket {}: no device address", bucket.index)))
        };
        let (send_at, recv_at) = (address(send)?, address(recv)?);
        let ready = backend.record_event(Stream::Compute);
        backend.wait_event(Stream::Comm, ready);
        // SAFETY: both addresses are checked views of `len` elements of the
        // reduced type on the collective's device (the backend's); the
        // communication stream runs the call after the compute stream's
        // work so far (the event above), and the compute stream touches
        // neither view again before the event below.
        unsafe {
            coll.all_reduce_sum_device(send_at, recv_at, len, self.half.is_some())
                .map_err(collective_error)?;
        }
        let reduced = backend.record_event(Stream::Comm);
        backend.wait_event(Stream::Compute, reduced);
        if self.half.is_some() {
            backend.cast(recv, w)?;
        }
        let scale = self.scalars.sub(0, 1);
        backend.binary(BinaryOp::Mul, w, &[1], scale, &[0], g, &flat)?;
        backend.binary(BinaryOp::Mul, g, &[1], g, &[1], w, &flat)?;
        let slot = self.sumsq.sub(bucket.index, 1);
        backend.reduce(ReduceOp::Sum, w, &flat, &[true], slot)?;
        self.used[bucket.index] = true;
        let t1 = Instant::now();
        totals.allreduce_secs += (t1 - t0).as_secs_f64();
        totals.allreduce_bytes += sent;
        Ok(Some(BucketEvent::of(bucket, t0, t1)))
    }

    /// Waits for the step's reductions and returns the squared norm of the
    /// buckets reduced here.
    pub fn finish<B: Backend>(
        &mut self,
        backend: &mut B,
        coll: &mut dyn Collective,
        totals: &mut Totals,
    ) -> Result<f64> {
        let t = Instant::now();
        coll.wait_device().map_err(collective_error)?;
        totals.allreduce_secs += t.elapsed().as_secs_f64();
        if !self.used() {
            return Ok(0.0);
        }
        let mut bytes = vec![0u8; self.sumsq.bytes()];
        backend.read(self.sumsq, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .zip(&self.used)
            .filter(|(_, used)| **used)
            .map(|(b, _)| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .sum())
    }

    /// Multiplies every gradient by `coef` (gradient clipping).
    pub fn clip<B: Backend>(&mut self, backend: &mut B, coef: f32) -> Result<()> {
        let c = self.scalars.sub(1, 1);
        backend.write(c, &coef.to_le_bytes())?;
        let flat = [self.grads.len];
        backend.binary(BinaryOp::Mul, self.grads, &[1], c, &[0], self.work, &flat)?;
        backend.copy(self.work, self.grads)?;
        Ok(())
    }

    /// Whether any bucket of this step was reduced here.
    pub fn used(&self) -> bool {
        self.used.contains(&true)
    }
}
