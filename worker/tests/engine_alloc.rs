//! No heap allocation inside a training step: a counting global allocator
//! watches steps 2..N of the transformer and mlp workloads (small sizes).
//! The GEMM crate allocates its packing buffer on every call; those calls
//! are marked by `adjoint_kernels::alloc_audit` and counted separately.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use adjoint_graph::Graph;
use adjoint_graph::zoo::{self, MlpConfig, TransformerConfig};
use adjoint_kernels::{CpuBackend, alloc_audit};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::{ExecOptions, OptimizerConfig, Trainer};

struct Counting;

static WATCHING: AtomicBool = AtomicBool::new(false);
static ENGINE: AtomicUsize = AtomicUsize::new(0);
static GEMM: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counters are atomics and
// the audit flag is a const-initialised thread-local, so counting neither
// allocates nor re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            if alloc_audit::in_third_party() {
                GEMM.fetch_add(1, Ordering::Relaxed);
            } else {
                ENGINE.fetch_add(1, Ordering::Relaxed);
            }
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

/// One batch of samples for every input of `g`.
fn dataset(g: &Graph) -> Dataset {
    let tensors = g
        .inputs
        .iter()
        .map(|i| {
            let shape = g.static_shape(i.value);
            let n: usize = shape.iter().product();
            let t = if g.ty(i.value).dtype.is_int() {
                HostTensor::from_i64(shape, &(0..n as i64).map(|j| j % 5).collect::<Vec<_>>())
            } else {
                HostTensor::from_f32(
                    shape,
                    &(0..n).map(|j| ((j as f32) * 0.1).sin()).collect::<Vec<_>>(),
                )
            };
            (g.name_of(i.value).to_owned(), t)
        })
        .collect();
    Dataset::new(g, tensors).unwrap()
}

fn steps_allocate_nothing(g: &Graph, opt: OptimizerConfig) {
    let mut t = Trainer::new(CpuBackend::new(), g, opt, ExecOptions::default(), 0).unwrap();
    let data = dataset(g);
    let batch = data.samples();
    t.train(&data, batch, 1, &mut |_| {}).unwrap();
    ENGINE.store(0, Ordering::SeqCst);
    GEMM.store(0, Ordering::SeqCst);
    WATCHING.store(true, Ordering::SeqCst);
    t.train(&data, batch, 5, &mut |_| {}).unwrap();
    WATCHING.store(false, Ordering::SeqCst);
    let (engine, gemm) = (ENGINE.load(Ordering::SeqCst), GEMM.load(Ordering::SeqCst));
    println!(
        "{}: 5 steps: {engine} engine allocations, {gemm} inside the GEMM crate",
        g.name
    );
    assert_eq!(
        engine, 0,
        "{}: the engine allocated {engine} times in 5 steps",
        g.name
    );
}

#[test]
fn training_steps_do_not_allocate() {
    let mlp = zoo::mlp(&MlpConfig {
        batch: Some(256),
        ..MlpConfig::default()
    })
    .unwrap();
    steps_allocate_nothing(
        &mlp,
        OptimizerConfig::parse("sgd:lr=0.01,momentum=0.9").unwrap(),
    );
    let tf = zoo::transformer(&TransformerConfig {
        vocab: 5,
        d_model: 32,
        layers: 2,
        heads: 4,
        seq: 16,
        batch: Some(2),
    })
    .unwrap();
    steps_allocate_nothing(&tf, OptimizerConfig::adamw(1e-3));
}
