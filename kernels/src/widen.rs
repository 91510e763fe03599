//! bf16 and f16 operands on any backend: a kernel that has no half form
//! reads its half operands widened to f32 scratch (the backend's own
//! `cast`), computes and accumulates in f32, and its half results are
//! rounded back once (round to nearest even): the arithmetic of a bf16 GEMM
//! with f32 accumulation. The CPU and CUDA backends route every float
//! kernel without a native half path through [`widened`].

use crate::backend::{Backend, BufferId, ElemType, Error, Result, View};

/// Whether any of `views` holds bf16 or f16.
pub fn any_half(views: &[View]) -> bool {
    views.iter().any(|v| v.elem.is_half())
}

/// f32 scratch buffers, one per operand position of a call. Each grows to
/// a power of two of elements and is then reused, so steps after the first
/// allocate nothing (and growth wastes at most half of what it keeps).
#[derive(Debug, Default)]
pub struct HalfScratch {
    slots: Vec<(BufferId, usize)>,
}

impl HalfScratch {
    /// An f32 view of `len` elements for operand position `slot`.
    fn view<B: Backend + ?Sized>(&mut self, b: &mut B, slot: usize, len: usize) -> Result<View> {
        while self.slots.len() <= slot {
            self.slots.push((b.alloc(0)?, 0));
        }
        if self.slots[slot].1 < len {
            let cap = len.next_power_of_two();
            self.slots[slot] = (b.alloc(cap * 4)?, cap);
        }
        Ok(View {
            buffer: self.slots[slot].0,
            offset: 0,
            len,
            elem: ElemType::F32,
        })
    }
}

/// Runs `f` on `views` with each half view replaced by an f32 copy;
/// afterwards the views marked in `written` get their f32 results back,
/// rounded. A written view must not overlap any other view of the call.
pub fn widened<B: Backend + ?Sized, const N: usize>(
    b: &mut B,
    scratch: &mut HalfScratch,
    what: &'static str,
    views: [View; N],
    written: [bool; N],
    f: impl FnOnce(&mut B, [View; N]) -> Result<()>,
) -> Result<()> {
    for i in (0..N).filter(|&i| written[i]) {
        if (0..N).any(|j| j != i && views[j].overlaps(&views[i])) {
            return Err(Error::Overlap { what });
        }
    }
    let mut wide = views;
    for (i, v) in views.iter().enumerate() {
        if v.elem.is_half() {
            wide[i] = scratch.view(b, i, v.len)?;
            b.cast(*v, wide[i])?;
        }
    }
    f(b, wide)?;
    for i in 0..N {
        if written[i] && views[i].elem.is_half() {
            b.cast(wide[i], views[i])?;
        }
    }
    Ok(())
}
