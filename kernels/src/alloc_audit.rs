//! Marks the spans in which a third-party library is known to allocate.
//!
//! The engine promises no heap allocation inside a training step. The GEMM
//! crate allocates packing buffers at every call, on the calling thread and
//! on the rayon threads it fans out to; the CPU backend wraps those calls in
//! [`third_party`] so a counting global allocator (in tests) can tell the
//! engine's allocations, which must be zero, from the library's, which are
//! reported. The mark is process-wide, not per thread, because the
//! library's worker threads allocate too: it is meant for a process that
//! runs one executor at a time, as the audit test does.

use std::sync::atomic::{AtomicUsize, Ordering};

static DEPTH: AtomicUsize = AtomicUsize::new(0);

/// Whether some thread is inside a [`third_party`] span.
pub fn in_third_party() -> bool {
    DEPTH.load(Ordering::Relaxed) > 0
}

/// Runs `f` marked as third-party code.
pub fn third_party<R>(f: impl FnOnce() -> R) -> R {
    DEPTH.fetch_add(1, Ordering::SeqCst);
    let out = f();
    DEPTH.fetch_sub(1, Ordering::SeqCst);
    out
}
