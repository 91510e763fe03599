//! The ring allocates nothing per call once warmed up: a counting global
//! allocator watches repeated calls of every operation on a loopback ring,
//! receiver and watcher threads included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use adjoint_worker::collective::{Collective, RingCollective, RingOptions};

struct Counting;

static WATCHING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counter is an atomic, so
// counting neither allocates nor re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One round of every operation, over buffers made beforehand.
fn round(
    c: &mut RingCollective,
    big: &mut [f32],
    small: &mut [f32],
    bytes: &mut [u8],
    a2a: &mut [f32],
) {
    let world = c.world();
    c.all_reduce_sum(big).unwrap();
    c.all_reduce_sum(small).unwrap();
    let owned = c.reduce_scatter_sum(big).unwrap();
    c.all_gather(big, owned).unwrap();
    c.broadcast(bytes, 1).unwrap();
    c.barrier().unwrap();
    let counts = [7usize; 8];
    let (send, recv) = a2a.split_at_mut(7 * world);
    c.all_to_all(send, &counts[..world], recv, &counts[..world])
        .unwrap();
}

#[test]
fn calls_allocate_nothing_after_warm_up() {
    let opts = RingOptions {
        segment_bytes: 1 << 16,
        ..RingOptions::default()
    };
    let world = 3;
    let colls = RingCollective::loopback(world, opts).unwrap();
    let gate = Barrier::new(world);
    thread::scope(|s| {
        for mut c in colls {
            let gate = &gate;
            s.spawn(move || {
                let mut big = vec![1f32; 300_007];
                let mut small = vec![1f32; 13];
                let mut bytes = vec![3u8; 100_003];
                let mut a2a = vec![2f32; 14 * world];
                for _ in 0..2 {
                    round(&mut c, &mut big, &mut small, &mut bytes, &mut a2a);
                }
                gate.wait();
                WATCHING.store(true, Ordering::SeqCst);
                for _ in 0..5 {
                    round(&mut c, &mut big, &mut small, &mut bytes, &mut a2a);
                }
                gate.wait();
                WATCHING.store(false, Ordering::SeqCst);
                gate.wait();
                c
            });
        }
    });
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        0,
        "allocations during warmed-up calls"
    );
}
