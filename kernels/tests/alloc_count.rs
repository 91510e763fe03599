//! The counting allocator sees allocations, frees, reallocations and the
//! peak between them.

use adjoint_kernels::alloc_count::{self, CountingAllocator};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

const MIB: usize = 1 << 20;

#[test]
fn live_and_peak_follow_allocations() {
    let _warm: Vec<u8> = Vec::with_capacity(16);
    assert!(alloc_count::installed());
    let base = alloc_count::reset_peak();
    let a = vec![1u8; 4 * MIB];
    let live_a = alloc_count::live_bytes() - base;
    assert!(live_a >= 4 * MIB, "live {live_a}");
    let mut b: Vec<u8> = Vec::with_capacity(2 * MIB);
    b.resize(2 * MIB, 2);
    b.reserve_exact(6 * MIB);
    let live_ab = alloc_count::live_bytes() - base;
    assert!(live_ab >= 12 * MIB, "after realloc {live_ab}");
    drop(a);
    drop(b);
    let after = alloc_count::live_bytes().saturating_sub(base);
    let peak = alloc_count::peak_bytes() - base;
    assert!(after < MIB, "freed, but {after} bytes remain");
    // The peak saw a (4 MiB) and b grown to 8 MiB together, and not much
    // more (other test threads may allocate a little).
    assert!((12 * MIB..13 * MIB).contains(&peak), "peak {peak}");
    let again = alloc_count::reset_peak();
    assert_eq!(alloc_count::peak_bytes(), again);
}
