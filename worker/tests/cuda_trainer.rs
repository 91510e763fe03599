//! Training on CUDA with NCCL, where gradient buckets are reduced on the
//! device (`dist::device_reduce`), against the same training on CUDA
//! through the host path (the in-process collective: buckets copied to the
//! host, reduced, scaled and normed there) and on the CPU. The device path
//! is a transform of the bucket hook, so it must leave the losses and
//! weights as the host path has them: with gradient accumulation, with
//! clipping that bites, and with the bf16 all-reduce. One rank (NCCL
//! refuses two ranks on one GPU). Without a GPU or NCCL every test prints
//! "skipped: ..." and passes.
#![cfg(feature = "cuda")]

use std::collections::BTreeMap;
use std::time::Duration;

use adjoint_graph::Graph;
use adjoint_graph::zoo::{self, TransformerConfig};
use adjoint_kernels::cuda::{CudaBackend, nccl_available, probe};
use adjoint_kernels::{Backend, CpuBackend};
use adjoint_worker::OptimizerConfig;
use adjoint_worker::collective::{Collective, LocalGroup, NcclCollective, NcclId, NcclOptions};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::{DistConfig, DistTrainer};

const STEPS: u64 = 8;

fn transformer() -> Graph {
    zoo::transformer(&TransformerConfig {
        vocab: 13,
        d_model: 32,
        layers: 2,
        heads: 2,
        seq: 8,
        batch: None,
    })
    .unwrap()
}

/// Deterministic token sequences below the vocabulary.
fn dataset(g: &Graph, samples: usize) -> Dataset {
    let tensors = g
        .inputs
        .iter()
        .map(|i| {
            let mut shape = vec![samples];
            shape.extend(
                g.ty(i.value).shape.dims()[1..]
                    .iter()
                    .map(|d| d.to_string().parse::<usize>().unwrap()),
            );
            let n: usize = shape.iter().product();
            let values: Vec<i64> = (0..n as i64).map(|j| (j * 7 + j / 3) % 13).collect();
            (
                g.name_of(i.value).to_owned(),
                HostTensor::from_i64(shape, &values),
            )
        })
        .collect();
    Dataset::new(g, tensors).unwrap()
}

/// The GPU and NCCL, or why not.
fn gpu(test: &str) -> bool {
    if let Err(why) = probe() {
        println!("{test}: skipped: {why}");
        return false;
    }
    if !nccl_available() {
        println!("{test}: skipped: NCCL cannot be loaded (libnccl.so)");
        return false;
    }
    true
}

struct Run {
    losses: Vec<f32>,
    norms: Vec<f32>,
    params: BTreeMap<String, HostTensor>,
}

fn train<B: Backend>(backend: B, coll: &mut dyn Collective, cfg: DistConfig) -> Run {
    let g = transformer();
    let data = dataset(&g, 64);
    let mut t = DistTrainer::new(backend, &g, data, cfg).unwrap();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    t.train(coll, STEPS, &mut |m| {
        losses.push(m.loss);
        norms.push(m.grad_norm);
        true
    })
    .unwrap();
    Run {
        losses,
        norms,
        params: t.params().unwrap(),
    }
}

fn on_cpu(cfg: DistConfig) -> Run {
    let mut coll = LocalGroup::new(1).pop().unwrap();
    train(CpuBackend::new(), &mut coll, cfg)
}

fn on_cuda_host_path(cfg: DistConfig) -> Run {
    let mut coll = LocalGroup::new(1).pop().unwrap();
    train(CudaBackend::new(0).unwrap(), &mut coll, cfg)
}

fn on_cuda_nccl(cfg: DistConfig) -> Run {
    let backend = CudaBackend::new(0).unwrap();
    let stream = backend.comm_stream().clone();
    let mut coll = NcclCollective::new(
        stream,
        0,
        1,
        NcclId::new().unwrap(),
        NcclOptions {
            timeout: Duration::from_secs(60),
            cancel: None,
        },
    )
    .unwrap();
    assert!(coll.reduces_device_memory());
    train(backend, &mut coll, cfg)
}

/// |a − b| ≤ rtol · (|b| + rms(b)) for every loss and norm, and with
/// `weights` for every weight.
fn assert_close(what: &str, got: &Run, want: &Run, rtol: f64, weights: bool) {
    let close = |x: f32, y: f32, scale: f64| {
        (f64::from(x) - f64::from(y)).abs() <= rtol * (f64::from(y.abs()) + scale)
    };
    for (step, (a, b)) in got.losses.iter().zip(&want.losses).enumerate() {
        assert!(close(*a, *b, 0.0), "{what}: step {step} loss {a} vs {b}");
    }
    for (step, (a, b)) in got.norms.iter().zip(&want.norms).enumerate() {
        assert!(
            close(*a, *b, 0.0),
            "{what}: step {step} gradient norm {a} vs {b}"
        );
    }
    assert_eq!(got.params.len(), want.params.len(), "{what}: parameters");
    if !weights {
        return;
    }
    for (name, w) in &want.params {
        let (a, b) = (got.params[name].to_f32().unwrap(), w.to_f32().unwrap());
        let rms = (b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                close(*x, *y, rms),
                "{what}: {name}[{i}] = {x}, expected {y}"
            );
        }
    }
}

fn config(grad_accum: usize, clip: f32, bf16: bool) -> DistConfig {
    DistConfig {
        batch: 8 / grad_accum,
        grad_accum,
        optimizer: OptimizerConfig::adamw(1e-3),
        clip_grad_norm: clip,
        grad_reduce_bf16: bf16,
        ..DistConfig::new(0, 1, 8)
    }
}

#[test]
fn device_bucket_reduction_matches_the_host_path() {
    if !gpu("device_bucket_reduction_matches_the_host_path") {
        return;
    }
    for (accum, clip, bf16) in [
        (1, 0.0, false),
        (2, 0.0, false),
        (1, 0.05, false),
        (2, 0.05, true),
    ] {
        let cfg = config(accum, clip, bf16);
        let what = format!("grad_accum {accum}, clip {clip}, bf16 all-reduce {bf16}");
        let device = on_cuda_nccl(cfg);
        let host = on_cuda_host_path(cfg);
        // Same kernels either way: only the norm's summation order moves.
        assert_close(
            &format!("{what}: device vs host path"),
            &device,
            &host,
            1e-5,
            true,
        );
        // Against the CPU the bf16 all-reduce compares losses and norms
        // only: gradients that differ between the devices in their last f32
        // bits round to different bf16 values now and then, and AdamW turns
        // such a rounding of a tiny gradient into a step of up to the
        // learning rate on that weight.
        let cpu = on_cpu(cfg);
        assert_close(&format!("{what}: cuda vs cpu"), &device, &cpu, 2e-3, !bf16);
        if clip > 0.0 {
            assert!(
                device.norms.iter().any(|n| *n > clip),
                "{what}: clipping never bit (norms {:?})",
                device.norms
            );
        }
    }
}
