//! bf16 and f16 on the CPU. Copies, fills, casts, gathers and comparisons
//! move half elements as they are; every other kernel reads its half
//! operands widened to f32 scratch, computes and accumulates in f32 as the
//! f32 kernel does, and rounds each half result once (round to nearest
//! even): the arithmetic of a bf16 GEMM with f32 accumulation. Widening
//! costs a pass over each operand; the CPU half path exists so mixed
//! precision runs and is tested everywhere, not to be fast.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::{CpuBackend, PARALLEL_THRESHOLD};
use crate::backend::{BufferId, ElemType, Error, Result, View};

/// Elements per conversion task.
const CHUNK: usize = 1 << 14;

/// Whether any of `views` holds bf16 or f16.
pub fn any_half(views: &[View]) -> bool {
    views.iter().any(|v| v.elem.is_half())
}

/// f32 scratch buffers, one per operand position of a call, grown to the
/// largest operand seen so steps after the first allocate nothing.
#[derive(Debug, Default)]
pub struct HalfScratch {
    slots: Vec<(BufferId, usize)>,
}

fn widen_into(src: View, backend: &CpuBackend, dst: &mut [f32]) -> Result<()> {
    match src.elem {
        ElemType::BF16 => {
            let s = backend.r::<bf16>("half operand", src)?;
            convert(s, dst, |s, d| s.convert_to_f32_slice(d));
        }
        ElemType::F16 => {
            let s = backend.r::<f16>("half operand", src)?;
            convert(s, dst, |s, d| s.convert_to_f32_slice(d));
        }
        _ => unreachable!("only half views are widened"),
    }
    Ok(())
}

fn narrow_from(src: &[f32], backend: &CpuBackend, dst: View) -> Result<()> {
    match dst.elem {
        ElemType::BF16 => {
            let d = backend.w::<bf16>("half result", dst)?;
            convert(src, d, |s, d| d.convert_from_f32_slice(s));
        }
        ElemType::F16 => {
            let d = backend.w::<f16>("half result", dst)?;
            convert(src, d, |s, d| d.convert_from_f32_slice(s));
        }
        _ => unreachable!("only half views are narrowed"),
    }
    Ok(())
}

/// `f(src chunk, dst chunk)` over matching chunks, in parallel when large.
fn convert<S: Sync, D: Send>(src: &[S], dst: &mut [D], f: impl Fn(&[S], &mut [D]) + Sync) {
    if dst.len() >= PARALLEL_THRESHOLD {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| f(s, d));
    } else {
        f(src, dst);
    }
}

impl CpuBackend {
    /// The f32 scratch view for operand `slot`, `len` elements long.
    fn scratch_view(&mut self, slot: usize, len: usize) -> Result<View> {
        while self.half.slots.len() <= slot {
            let id = crate::Backend::alloc(self, 0)?;
            self.half.slots.push((id, 0));
        }
        let (id, cap) = self.half.slots[slot];
        if cap < len {
            self.buffers[id.0 as usize] = super::memory::Buffer::new(len * 4)?;
            self.half.slots[slot].1 = len;
        }
        Ok(View {
            buffer: id,
            offset: 0,
            len,
            elem: ElemType::F32,
        })
    }

    /// Runs `f` on `views` with each half view replaced by an f32 copy;
    /// afterwards the views marked in `written` get their f32 results back,
    /// rounded. `written` views must not overlap any other view.
    pub(super) fn widened<const N: usize>(
        &mut self,
        what: &'static str,
        views: [View; N],
        written: [bool; N],
        f: impl FnOnce(&mut CpuBackend, [View; N]) -> Result<()>,
    ) -> Result<()> {
        for i in (0..N).filter(|&i| written[i]) {
            if (0..N).any(|j| j != i && views[j].overlaps(&views[i])) {
                return Err(Error::Overlap { what });
            }
        }
        let mut wide = views;
        for (i, v) in views.iter().enumerate() {
            if v.elem.is_half() {
                let s = self.scratch_view(i, v.len)?;
                let dst = self.w::<f32>("half scratch", s)?;
                widen_into(*v, self, dst)?;
                wide[i] = s;
            }
        }
        f(self, wide)?;
        for i in 0..N {
            if written[i] && views[i].elem.is_half() {
                let src = self.r::<f32>("half scratch", wide[i])?;
                narrow_from(src, self, views[i])?;
            }
        }
        Ok(())
    }
}
