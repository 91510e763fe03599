//! Mixed precision on the CPU engine: a small transformer trained 50 steps
//! in bf16 tracks its f32 losses (within 2% per step, the tolerance
//! `docs/precision.md` documents), with f32 master weights; fp16 with a
//! loss scale far too large overflows, skips those updates on both ranks
//! alike while halving the scale, then trains on to the same place.

use std::collections::BTreeMap;

use adjoint_graph::Graph;
use adjoint_graph::precision::Precision;
use adjoint_graph::zoo::{self, TransformerConfig};
use adjoint_kernels::CpuBackend;
use adjoint_worker::collective::{Collective, LocalGroup};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::{DistConfig, DistTrainer, LossScaleConfig, StepMetrics};
use adjoint_worker::optim::OptimizerConfig;

const VOCAB: i64 = 16;
const SEQ: usize = 8;
const STEPS: usize = 50;

fn transformer() -> Graph {
    zoo::transformer(&TransformerConfig {
        vocab: VOCAB as usize,
        d_model: 32,
        layers: 2,
        heads: 4,
        seq: SEQ,
        batch: None,
    })
    .unwrap()
}

/// Sequences counting up by a per-sample stride; the targets are the
/// next token: learnable, so the loss falls well within 50 steps.
fn dataset(g: &Graph, samples: usize) -> Dataset {
    let token = |s: i64, t: i64| (s * 3 + t * (1 + s % 3)) % VOCAB;
    let grid = |shift: i64| -> Vec<i64> {
        (0..samples as i64)
            .flat_map(|s| (0..SEQ as i64).map(move |t| token(s, t + shift)))
            .collect()
    };
    let tensors = g
        .inputs
        .iter()
        .enumerate()
        .map(|(k, input)| {
            let t = HostTensor::from_i64(vec![samples, SEQ], &grid(k as i64));
            (g.name_of(input.value).to_owned(), t)
        })
        .collect();
    Dataset::new(g, tensors).unwrap()
}

/// Trains `world` ranks on threads; returns rank 0's metrics and weights.
fn train(
    precision: Precision,
    world: usize,
    loss_scale: LossScaleConfig,
) -> (Vec<StepMetrics>, BTreeMap<String, HostTensor>, Vec<String>) {
    let g = transformer();
    let data = dataset(&g, 128);
    let cfg = DistConfig {
        optimizer: OptimizerConfig::adamw(3e-3),
        precision,
        loss_scale,
        seed: 7,
        ..DistConfig::new(0, world, 8 / world)
    };
    let mut results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = LocalGroup::new(world)
            .into_iter()
            .enumerate()
            .map(|(rank, mut coll)| {
                let (g, data) = (&g, data.clone());
                s.spawn(move || {
                    let mut t =
                        DistTrainer::new(CpuBackend::new(), g, data, DistConfig { rank, ..cfg })
                            .unwrap();
                    let metrics: Vec<StepMetrics> = (0..STEPS)
                        .map(|_| t.step(&mut coll as &mut dyn Collective).unwrap())
                        .collect();
                    (metrics, t.params().unwrap(), t.take_logs())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = results.remove(0);
    for (rank, other) in results.iter().enumerate() {
        assert_eq!(
            other.1,
            first.1,
            "rank {} ended with other weights",
            rank + 1
        );
        let skips: Vec<bool> = other.0.iter().map(|m| m.skipped).collect();
        let first_skips: Vec<bool> = first.0.iter().map(|m| m.skipped).collect();
        assert_eq!(skips, first_skips, "rank {} skipped other steps", rank + 1);
    }
    first
}

fn losses(m: &[StepMetrics]) -> Vec<f32> {
    m.iter().map(|m| m.loss).collect()
}

#[test]
fn bf16_tracks_the_f32_losses_with_f32_master_weights() {
    let (f32_run, f32_weights, _) = train(Precision::F32, 1, LossScaleConfig::default());
    let (bf16_run, bf16_weights, _) = train(Precision::Bf16, 1, LossScaleConfig::default());
    let (a, b) = (losses(&f32_run), losses(&bf16_run));
    assert!(a[STEPS - 1] < 0.6 * a[0], "the f32 run must learn: {a:?}");
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) / x).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "bf16 vs f32 over {STEPS} steps: worst per-step loss deviation {worst:.5}; loss {} -> {} (f32) and {} -> {} (bf16)",
        a[0],
        a[STEPS - 1],
        b[0],
        b[STEPS - 1]
    );
    assert!(
        worst <= 0.02,
        "bf16 strays {worst} from f32: {a:?} vs {b:?}"
    );
    assert!(worst > 0.0, "bf16 must round somewhere");
    // Master weights stay f32, under their own names.
    assert_eq!(
        f32_weights.keys().collect::<Vec<_>>(),
        bf16_weights.keys().collect::<Vec<_>>()
    );
    for (name, t) in &bf16_weights {
        assert_eq!(t.dtype, f32_weights[name].dtype, "{name}");
    }
    assert!(bf16_run.iter().all(|m| !m.skipped && m.loss_scale == 0.0));
}

#[test]
fn fp16_survives_an_overflowing_loss_scale() {
    // 2^40 times these gradients is far past f16's 65504.
    let scale = LossScaleConfig {
        init: 2f32.powi(40),
        growth_interval: 20,
        min: 1.0,
    };
    let (run, weights, logs) = train(Precision::Fp16, 2, scale);
    // The first steps overflow, one after another, until the scale fits.
    let prefix = run.iter().take_while(|m| m.skipped).count();
    assert!(prefix >= 10, "{prefix} overflows at the start");
    // Every step's scale follows the rules: halved after an overflow,
    // doubled after 20 good steps in a row, else kept.
    let mut good = 0;
    for i in 1..STEPS {
        let (before, now) = (run[i - 1].loss_scale, run[i].loss_scale);
        let want = if run[i - 1].skipped {
            good = 0;
            before / 2.0
        } else {
            good += 1;
            if good == 20 {
                good = 0;
                before * 2.0
            } else {
                before
            }
        };
        assert_eq!(now, want, "step {i}");
    }
    assert_eq!(run[0].loss_scale, 2f32.powi(40));
    let skipped = run.iter().filter(|m| m.skipped).count();
    let overflow_logs = logs.iter().filter(|l| l.contains("overflow")).count();
    assert_eq!(overflow_logs, skipped, "{logs:?}");
    assert!(skipped < STEPS / 2, "{skipped} of {STEPS} skipped");
    eprintln!(
        "fp16: {prefix} overflows from 2^40 down to {}, {skipped} skipped in all; loss {} -> {}",
        run[prefix].loss_scale,
        run[prefix].loss,
        run[STEPS - 1].loss
    );
    for (name, t) in &weights {
        assert!(
            t.to_f32().unwrap().iter().all(|v| v.is_finite()),
            "{name} is not finite"
        );
    }
    // After the skipped steps training goes on and learns.
    let l = losses(&run);
    assert!(l[STEPS - 1] < 0.6 * l[prefix], "{l:?}");
}

#[test]
fn an_fp16_checkpoint_resumes_with_its_loss_scale() {
    use adjoint_worker::dist::checkpoint::Checkpoint;
    let g = transformer();
    let data = dataset(&g, 128);
    let cfg = DistConfig {
        optimizer: OptimizerConfig::adamw(3e-3),
        precision: Precision::Fp16,
        loss_scale: LossScaleConfig {
            init: 2f32.powi(24),
            growth_interval: 4,
            min: 1.0,
        },
        seed: 7,
        ..DistConfig::new(0, 1, 8)
    };
    let mut coll = LocalGroup::new(1).pop().unwrap();
    let coll = &mut coll as &mut dyn Collective;
    let new = || DistTrainer::new(CpuBackend::new(), &g, data.clone(), cfg).unwrap();
    let mut whole = new();
    let all: Vec<StepMetrics> = (0..16).map(|_| whole.step(coll).unwrap()).collect();
    assert!(all.iter().any(|m| m.skipped), "some steps overflow");

    let mut first = new();
    for _ in 0..9 {
        first.step(coll).unwrap();
    }
    let ckpt = Checkpoint::decode(&first.checkpoint().unwrap()).unwrap();
    let scaler = first.loss_scaler().unwrap();
    assert_eq!(
        ckpt.meta.loss_scale,
        Some((scaler.scale(), scaler.good_steps()))
    );
    let mut resumed = new();
    resumed.restore(&ckpt).unwrap();
    let rest: Vec<StepMetrics> = (9..16).map(|_| resumed.step(coll).unwrap()).collect();
    for (i, (a, b)) in all[9..].iter().zip(&rest).enumerate() {
        assert_eq!(
            (a.loss.to_bits(), a.loss_scale, a.skipped),
            (b.loss.to_bits(), b.loss_scale, b.skipped),
            "step {}",
            i + 10
        );
    }
    assert_eq!(resumed.params().unwrap(), whole.params().unwrap());
}
