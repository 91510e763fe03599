//! Marks scopes in which a third-party library is known to allocate.
//!
//! The engine promises no heap allocation inside a training step. The GEMM
//! crate allocates its packing buffer on the calling thread at every call;
//! the CPU backend wraps those calls in [`third_party`] so a counting global
//! allocator (in tests) can tell the engine's allocations, which must be
//! zero, from the library's, which are reported.

use std::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether the current thread is inside a [`third_party`] scope.
pub fn in_third_party() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Runs `f` marked as third-party code.
pub fn third_party<R>(f: impl FnOnce() -> R) -> R {
    DEPTH.with(|d| d.set(d.get() + 1));
    let out = f();
    DEPTH.with(|d| d.set(d.get() - 1));
    out
}
