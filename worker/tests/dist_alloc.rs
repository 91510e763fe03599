//! A data-parallel step allocates nothing after warm-up: a counting global
//! allocator watches steps 2..N (with gradient accumulation, clipping, a
//! schedule and an epoch boundary). The collective is a test-local group of
//! one that does no work, so what is counted is the trainer's own; GEMM's
//! packing buffers are counted apart (`adjoint_kernels::alloc_audit`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use adjoint_graph::zoo::{self, TransformerConfig};
use adjoint_kernels::{CpuBackend, alloc_audit};
use adjoint_worker::collective::{self, Collective};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::{DistConfig, DistTrainer, LrSchedule};
use adjoint_worker::{ExecOptions, OptimizerConfig};

struct Counting;

static WATCHING: AtomicBool = AtomicBool::new(false);
static ENGINE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counters are atomics and
// the audit flag is a const-initialised thread-local, so counting neither
// allocates nor re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) && !alloc_audit::in_third_party() {
            ENGINE.fetch_add(1, Ordering::Relaxed);
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

/// A group of one.
struct Alone(u64);

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn seq(&self) -> u64 {
        self.0
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> collective::Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn reduce_scatter_sum(&mut self, data: &mut [f32]) -> collective::Result<Range<usize>> {
        self.0 += 1;
        Ok(0..data.len())
    }
    fn all_gather(&mut self, _: &mut [f32], _: Range<usize>) -> collective::Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [u8], _: usize) -> collective::Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn all_to_all(
        &mut self,
        send: &[f32],
        _: &[usize],
        recv: &mut [f32],
        _: &[usize],
    ) -> collective::Result<()> {
        self.0 += 1;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn barrier(&mut self) -> collective::Result<()> {
        self.0 += 1;
        Ok(())
    }
}

#[test]
fn data_parallel_steps_do_not_allocate() {
    let g = zoo::transformer(&TransformerConfig {
        vocab: 5,
        d_model: 32,
        layers: 2,
        heads: 4,
        seq: 16,
        batch: None,
    })
    .unwrap();
    let n = 10 * 16;
    let tokens: Vec<i64> = (0..n as i64).map(|j| (j * 3 + j / 7) % 5).collect();
    let data = Dataset::new(
        &g,
        [("tokens", &tokens), ("targets", &tokens)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), HostTensor::from_i64(vec![10, 16], v)))
            .collect(),
    )
    .unwrap();
    let cfg = DistConfig {
        grad_accum: 2,
        optimizer: OptimizerConfig::adamw(1e-3),
        schedule: LrSchedule::parse("cosine", 2, 0.0, 8).unwrap(),
        clip_grad_norm: 0.1,
        exec: ExecOptions {
            bucket_bytes: 4096,
            ..ExecOptions::default()
        },
        ..DistConfig::new(0, 1, 2)
    };
    let mut t = DistTrainer::new(CpuBackend::new(), &g, data, cfg).unwrap();
    assert_eq!(
        t.steps_per_epoch(),
        2,
        "10 samples, 4 per step: the epoch changes every 2 steps"
    );
    let mut coll = Alone(0);
    t.train(&mut coll, 1, &mut |_| true).unwrap();
    ENGINE.store(0, Ordering::SeqCst);
    WATCHING.store(true, Ordering::SeqCst);
    t.train(&mut coll, 6, &mut |_| true).unwrap();
    WATCHING.store(false, Ordering::SeqCst);
    let engine = ENGINE.load(Ordering::SeqCst);
    assert_eq!(engine, 0, "6 data-parallel steps allocated {engine} times");
    assert!(t.events().buckets.len() > 1);
}
