//! CPU buffers: 64-byte aligned, zero-initialised heap blocks, and typed
//! slices of them.

use std::alloc::{Layout, alloc_zeroed, dealloc};

use crate::backend::{Error, Result, View};

const ALIGN: usize = 64;

/// One aligned allocation.
#[derive(Debug)]
pub struct Buffer {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: a Buffer owns its allocation exclusively; access goes through the
// backend, which checks bounds and that outputs do not overlap inputs.
unsafe impl Send for Buffer {}

impl Buffer {
    pub fn new(bytes: usize) -> Result<Buffer> {
        if bytes == 0 {
            return Ok(Buffer {
                ptr: std::ptr::null_mut(),
                bytes: 0,
            });
        }
        let layout = Layout::from_size_align(bytes, ALIGN).map_err(|_| Error::Alloc { bytes })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::Alloc { bytes });
        }
        Ok(Buffer { ptr, bytes })
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.bytes > 0 {
            // SAFETY: allocated in `new` with this size and alignment.
            unsafe {
                dealloc(
                    self.ptr,
                    Layout::from_size_align_unchecked(self.bytes, ALIGN),
                )
            };
        }
    }
}

/// Element types a view can be read as.
pub trait Elem: Copy + 'static {
    const TYPE: crate::ElemType;
}

impl Elem for f32 {
    const TYPE: crate::ElemType = crate::ElemType::F32;
}
impl Elem for half::bf16 {
    const TYPE: crate::ElemType = crate::ElemType::BF16;
}
impl Elem for half::f16 {
    const TYPE: crate::ElemType = crate::ElemType::F16;
}
impl Elem for i32 {
    const TYPE: crate::ElemType = crate::ElemType::I32;
}
impl Elem for i64 {
    const TYPE: crate::ElemType = crate::ElemType::I64;
}
impl Elem for u8 {
    const TYPE: crate::ElemType = crate::ElemType::U8;
}

/// Checks that `view` lies inside `buf`, has type `T` and is aligned for it.
pub fn check<T: Elem>(what: &'static str, buf: &Buffer, view: View) -> Result<()> {
    if view.elem != T::TYPE {
        return Err(Error::ElemType {
            what,
            expected: T::TYPE,
            found: view.elem,
        });
    }
    let end = view.offset.checked_add(view.bytes());
    if end.is_none_or(|end| end > buf.bytes) {
        return Err(Error::OutOfBounds {
            what,
            buffer: view.buffer.0,
            offset: view.offset,
            len: view.bytes(),
            buffer_len: buf.bytes,
        });
    }
    if !view.offset.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::Misaligned {
            what,
            offset: view.offset,
            align: std::mem::align_of::<T>(),
        });
    }
    Ok(())
}

/// A shared slice of `view`.
///
/// # Safety
/// `check::<T>` passed for `view` on `buf`, and no mutable slice overlapping
/// `view` is alive while this one is.
pub unsafe fn slice<T: Elem>(buf: &Buffer, view: View) -> &[T] {
    if view.len == 0 {
        return &[];
    }
    // SAFETY: in bounds, aligned and of type T by `check`; no overlapping
    // mutable borrow by the caller's contract.
    unsafe { std::slice::from_raw_parts(buf.ptr.add(view.offset).cast::<T>(), view.len) }
}

/// A mutable slice of `view`.
///
/// # Safety
/// `check::<T>` passed for `view` on `buf`, and no other slice overlapping
/// `view` is alive while this one is.
#[allow(clippy::mut_from_ref)]
pub unsafe fn slice_mut<T: Elem>(buf: &Buffer, view: View) -> &mut [T] {
    if view.len == 0 {
        return &mut [];
    }
    // SAFETY: as for `slice`, and exclusive by the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(buf.ptr.add(view.offset).cast::<T>(), view.len) }
}
