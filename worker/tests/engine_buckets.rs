//! Gradient-ready hooks: each bucket of the flat gradient buffer is handed
//! out once, in order, as soon as backward has written it (so all-reduce can
//! overlap the rest of backward), and what the hook sees is final.

use adjoint_graph::autodiff::grad;
use adjoint_graph::zoo::{self, TransformerConfig};
use adjoint_kernels::{Backend, CpuBackend, ElemType, View};
use adjoint_worker::{ExecOptions, Executor, StepKey};

#[test]
fn buckets_are_final_when_handed_out_and_come_early() {
    let g = zoo::transformer(&TransformerConfig {
        vocab: 11,
        d_model: 16,
        layers: 2,
        heads: 2,
        seq: 6,
        batch: Some(2),
    })
    .unwrap();
    let j = grad(&g, g.loss.unwrap(), &g.trainable_params()).unwrap();
    let opts = ExecOptions {
        bucket_bytes: 4096,
        ..ExecOptions::default()
    };
    let mut exec = Executor::new(CpuBackend::new(), j.graph.clone(), &j.grads, opts).unwrap();
    exec.init_params(1).unwrap();
    for input in &j.graph.inputs {
        let n: usize = j.graph.static_shape(input.value).iter().product();
        exec.write_values(
            input.value,
            &(0..n).map(|i| (i % 11) as f64).collect::<Vec<_>>(),
        )
        .unwrap();
    }
    let grads = exec.grads_view();
    let buckets = exec.buckets().to_vec();
    assert!(
        buckets.len() > 3,
        "expected several buckets, got {}",
        buckets.len()
    );

    // Buckets tile the gradient layout in order, each parameter once.
    let layout = &exec.plan().grad_layout;
    let in_buckets: Vec<_> = buckets.iter().flat_map(|b| b.params.clone()).collect();
    let in_layout: Vec<_> = layout.iter().map(|s| s.param).collect();
    assert_eq!(in_buckets, in_layout);
    for w in buckets.windows(2) {
        assert!(
            w[0].offset + w[0].bytes <= w[1].offset,
            "buckets overlap: {w:?}"
        );
        assert!(
            w[0].ready_after() <= w[1].ready_after(),
            "buckets out of order: {w:?}"
        );
    }
    let last_instr = exec.program().instrs.len() - 1;
    assert!(
        buckets[0].ready_after() < last_instr / 2 + last_instr / 4,
        "the first bucket is ready only at instruction {} of {last_instr}: no overlap with backward",
        buckets[0].ready_after()
    );

    let mut seen: Vec<(usize, Vec<u8>)> = Vec::new();
    exec.run(StepKey::default(), &mut |backend, bucket| {
        let view = View {
            buffer: grads.buffer,
            offset: bucket.offset,
            len: bucket.bytes / 4,
            elem: ElemType::F32,
        };
        let mut bytes = vec![0u8; view.bytes()];
        backend.read(view, &mut bytes).unwrap();
        seen.push((bucket.index, bytes));
    })
    .unwrap();
    let order: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
    let expected: Vec<usize> = buckets.iter().map(|b| b.index).collect();
    assert_eq!(
        order, expected,
        "each bucket exactly once, in readiness order"
    );
    for ((index, bytes), bucket) in seen.iter().zip(&buckets) {
        let view = View {
            buffer: grads.buffer,
            offset: bucket.offset,
            len: bucket.bytes / 4,
            elem: ElemType::F32,
        };
        let mut after = vec![0u8; view.bytes()];
        exec.backend.read(view, &mut after).unwrap();
        assert!(
            bytes == &after,
            "bucket {index} changed after it was handed out"
        );
        assert!(after.iter().any(|&b| b != 0), "bucket {index} is all zeros");
    }
}
