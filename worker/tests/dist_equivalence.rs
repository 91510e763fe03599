//! Data-parallel training is the same computation as one bigger batch:
//! `world` ranks × batch `B` give the weights of 1 rank × `world·B`, and
//! `grad_accum` 2 × `B/2` those of 1 × `B`, for SGD with momentum and AdamW
//! on a small mlp and a small transformer, over the in-process collective
//! and over the TCP ring (each rank on its own thread, real loopback
//! sockets). The event log shows bucket all-reduces running while backward
//! still runs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};

use adjoint_graph::Graph;
use adjoint_graph::zoo::{self, MlpConfig, TransformerConfig};
use adjoint_kernels::CpuBackend;
use adjoint_worker::collective::{Collective, LocalGroup, RingCollective, RingOptions};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::{DistConfig, DistTrainer, EventLog, LrSchedule, StepMetrics};
use adjoint_worker::{ExecOptions, OptimizerConfig};

const STEPS: u64 = 20;

fn mlp() -> Graph {
    zoo::mlp(&MlpConfig {
        input: 8,
        hidden: vec![16],
        classes: 4,
        batch: None,
    })
    .unwrap()
}

fn transformer() -> Graph {
    zoo::transformer(&TransformerConfig {
        vocab: 11,
        d_model: 16,
        layers: 1,
        heads: 2,
        seq: 6,
        batch: None,
    })
    .unwrap()
}

/// `samples` deterministic samples for every input of `g` (labels and
/// tokens below `classes`).
fn dataset(g: &Graph, samples: usize, classes: i64) -> Dataset {
    let tensors = g
        .inputs
        .iter()
        .map(|i| {
            let mut shape: Vec<usize> = vec![samples];
            shape.extend(
                g.ty(i.value).shape.dims()[1..]
                    .iter()
                    .map(|d| d.to_string().parse::<usize>().unwrap()),
            );
            let n: usize = shape.iter().product();
            let t = if g.ty(i.value).dtype.is_int() {
                HostTensor::from_i64(
                    shape,
                    &(0..n as i64)
                        .map(|j| (j * 7 + j / 3) % classes)
                        .collect::<Vec<_>>(),
                )
            } else {
                HostTensor::from_f32(
                    shape,
                    &(0..n)
                        .map(|j| ((j as f32) * 0.37).sin())
                        .collect::<Vec<_>>(),
                )
            };
            (g.name_of(i.value).to_owned(), t)
        })
        .collect();
    Dataset::new(g, tensors).unwrap()
}

fn data_for(g: &Graph) -> Dataset {
    match g.name.as_str() {
        "mlp" => dataset(g, 96, 4),
        _ => dataset(g, 96, 11),
    }
}

/// What one rank ends with.
struct RankResult {
    params: BTreeMap<String, HostTensor>,
    metrics: Vec<StepMetrics>,
    events: EventLog,
}

/// Trains `cfg.world` ranks, each on its own thread with its collective,
/// and checks that every rank ends with bit-identical weights.
fn train_with(
    g: &Graph,
    data: &Dataset,
    cfg: DistConfig,
    colls: Vec<Box<dyn FnOnce() -> Box<dyn Collective> + Send>>,
) -> RankResult {
    let mut results: Vec<RankResult> = std::thread::scope(|s| {
        let handles: Vec<_> = colls
            .into_iter()
            .enumerate()
            .map(|(rank, make)| {
                let data = data.clone();
                s.spawn(move || {
                    let mut coll = make();
                    let mut t =
                        DistTrainer::new(CpuBackend::new(), g, data, DistConfig { rank, ..cfg })
                            .unwrap();
                    let mut metrics = Vec::new();
                    t.train(coll.as_mut(), STEPS, &mut |m| {
                        metrics.push(*m);
                        true
                    })
                    .unwrap();
                    RankResult {
                        params: t.params().unwrap(),
                        metrics,
                        events: t.events().clone(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, other) in results.iter().enumerate().skip(1) {
        assert!(
            other.params == results[0].params,
            "rank {r} ended with other weights than rank 0"
        );
        for (a, b) in other.metrics.iter().zip(&results[0].metrics) {
            assert_eq!(
                a.loss, b.loss,
                "rank {r} reports another loss at step {}",
                a.step
            );
        }
    }
    results.swap_remove(0)
}

fn local(world: usize) -> Vec<Box<dyn FnOnce() -> Box<dyn Collective> + Send>> {
    LocalGroup::new(world)
        .into_iter()
        .map(|c| {
            Box::new(move || Box::new(c) as Box<dyn Collective>)
                as Box<dyn FnOnce() -> Box<dyn Collective> + Send>
        })
        .collect()
}

/// Ring ranks that each bind their listener here and connect on their own
/// thread.
fn ring(world: usize) -> Vec<Box<dyn FnOnce() -> Box<dyn Collective> + Send>> {
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let peers = peers.clone();
            Box::new(move || {
                let opts = RingOptions {
                    segment_bytes: 256,
                    token: "dist-test".into(),
                    ..RingOptions::default()
                };
                Box::new(RingCollective::connect(rank, world, l, &peers, opts).unwrap())
                    as Box<dyn Collective>
            }) as Box<dyn FnOnce() -> Box<dyn Collective> + Send>
        })
        .collect()
}

fn train(g: &Graph, data: &Dataset, cfg: DistConfig) -> RankResult {
    train_with(g, data, cfg, local(cfg.world))
}

/// Every element of every parameter: |a − b| ≤ 1e-5 · (|b| + rms(b)), the
/// rms of the parameter tensor standing in for elements that cross zero.
fn assert_same_weights(
    what: &str,
    got: &BTreeMap<String, HostTensor>,
    want: &BTreeMap<String, HostTensor>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: parameter names"
    );
    for (name, w) in want {
        let (a, b) = (got[name].to_f32().unwrap(), w.to_f32().unwrap());
        assert_eq!(a.len(), b.len());
        let rms = (b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let tol = 1e-5 * (f64::from(y.abs()) + rms);
            assert!(
                f64::from((x - y).abs()) <= tol,
                "{what}: {name}[{i}]: {x} vs {y} (tolerance {tol:e})"
            );
        }
    }
}

fn assert_same_losses(what: &str, got: &[StepMetrics], want: &[StepMetrics]) {
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(want) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs(),
            "{what}: step {}: loss {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
    }
}

fn base(opt: OptimizerConfig, world: usize, batch: usize) -> DistConfig {
    DistConfig {
        optimizer: opt,
        seed: 5,
        ..DistConfig::new(0, world, batch)
    }
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::parse("sgd:lr=0.05,momentum=0.9").unwrap()
}

/// AdamW for `g`. The transformer's key bias has an exactly zero gradient
/// (softmax ignores a shift shared by all keys), so what reaches it is
/// rounding noise, which AdamW with eps 1e-8 blows up to full-size steps in
/// a direction set by the noise's sign; eps 1e-4 keeps such noise below
/// the tolerance while real gradients still get Adam's scaling.
fn adamw(g: &Graph) -> OptimizerConfig {
    match g.name.as_str() {
        "mlp" => OptimizerConfig::adamw(1e-2),
        _ => OptimizerConfig::parse("adamw:lr=1e-2,eps=1e-4").unwrap(),
    }
}

fn two_ranks_match_one(g: &Graph, opt: OptimizerConfig) {
    let data = data_for(g);
    let one = train(g, &data, base(opt, 1, 8));
    let two = train(g, &data, base(opt, 2, 4));
    let what = format!("{} {opt:?}: 2 ranks × 4 vs 1 × 8", g.name);
    assert_same_weights(&what, &two.params, &one.params);
    assert_same_losses(&what, &two.metrics, &one.metrics);
    assert!(
        one.metrics.last().unwrap().loss < one.metrics[0].loss,
        "{what}: the loss did not fall"
    );
    assert_ne!(
        one.params,
        train(g, &data, base(opt, 1, 4)).params,
        "{what}: the batch size changes nothing"
    );
}

#[test]
fn sgd_momentum_two_ranks_match_one_rank_with_twice_the_batch() {
    two_ranks_match_one(&mlp(), sgd());
    two_ranks_match_one(&transformer(), sgd());
}

#[test]
fn adamw_two_ranks_match_one_rank_with_twice_the_batch() {
    two_ranks_match_one(&mlp(), adamw(&mlp()));
    let tf = transformer();
    two_ranks_match_one(&tf, adamw(&tf));
}

#[test]
fn two_accumulated_half_batches_match_one_batch() {
    for g in [mlp(), transformer()] {
        let data = data_for(&g);
        for opt in [sgd(), adamw(&g)] {
            let one = train(&g, &data, base(opt, 1, 8));
            let accum = train(
                &g,
                &data,
                DistConfig {
                    grad_accum: 2,
                    ..base(opt, 1, 4)
                },
            );
            let what = format!("{} {opt:?}: grad_accum 2 × 4 vs 1 × 8", g.name);
            assert_same_weights(&what, &accum.params, &one.params);
            assert_same_losses(&what, &accum.metrics, &one.metrics);
        }
    }
    // Both at once: 2 ranks × 2 micro-steps × 2 samples = 1 × 8.
    let g = mlp();
    let data = data_for(&g);
    let one = train(&g, &data, base(sgd(), 1, 8));
    let both = train(
        &g,
        &data,
        DistConfig {
            grad_accum: 2,
            ..base(sgd(), 2, 2)
        },
    );
    assert_same_weights(
        "mlp: 2 ranks × grad_accum 2 × 2 vs 1 × 8",
        &both.params,
        &one.params,
    );
}

#[test]
fn clipping_and_schedules_agree_across_world_sizes() {
    let g = transformer();
    let data = data_for(&g);
    let cfg = |world, batch| DistConfig {
        clip_grad_norm: 0.5,
        schedule: LrSchedule::parse("cosine", 3, 1e-3, STEPS).unwrap(),
        ..base(sgd(), world, batch)
    };
    let one = train(&g, &data, cfg(1, 8));
    let two = train(&g, &data, cfg(2, 4));
    assert_same_weights("clipped, cosine", &two.params, &one.params);
    let m = &one.metrics;
    assert!(
        m.iter().any(|s| s.grad_norm > 0.5),
        "clipping never engaged"
    );
    assert!(
        (m[0].lr - 0.05 / 3.0).abs() < 1e-7 && (m[2].lr - 0.05).abs() < 1e-7,
        "warmup: {} {}",
        m[0].lr,
        m[2].lr
    );
    assert!(
        (m[STEPS as usize - 1].lr - 1e-3).abs() < 1e-7,
        "cosine ends at min_lr"
    );
}

#[test]
fn tcp_ring_ranks_match_one_rank() {
    let g = transformer();
    let data = data_for(&g);
    let opt = adamw(&g);
    let one = train(&g, &data, base(opt, 1, 6));
    let three = train_with(&g, &data, base(opt, 3, 2), ring(3));
    assert_same_weights("ring, 3 ranks × 2 vs 1 × 6", &three.params, &one.params);
    assert_same_losses("ring, 3 ranks × 2 vs 1 × 6", &three.metrics, &one.metrics);
    let g = mlp();
    let data = data_for(&g);
    let one = train(&g, &data, base(sgd(), 1, 8));
    let two = train_with(&g, &data, base(sgd(), 2, 4), ring(2));
    assert_same_weights("ring, 2 ranks × 4 vs 1 × 8", &two.params, &one.params);
}

#[test]
fn bucket_all_reduce_starts_before_backward_finishes() {
    let g = transformer();
    let data = data_for(&g);
    let cfg = DistConfig {
        exec: ExecOptions {
            bucket_bytes: 1024,
            ..ExecOptions::default()
        },
        ..base(sgd(), 2, 4)
    };
    let r = train(&g, &data, cfg);
    let log = &r.events;
    let end = log.backward_end.expect("backward end recorded");
    assert_eq!(log.step, STEPS - 1, "the log holds the last step");
    assert!(
        log.buckets.len() > 3,
        "expected several buckets, got {}",
        log.buckets.len()
    );
    let early = log
        .buckets
        .iter()
        .find(|b| b.ready_after < log.instructions - 1)
        .expect("a bucket ready before the last instruction");
    assert!(
        early.start < end,
        "bucket {} was all-reduced at {:?}, after backward ended at {end:?}",
        early.bucket,
        early.start
    );
    assert!(early.end <= end);
    assert!(log.overlapped() >= 1);
    for w in log.buckets.windows(2) {
        assert!(w[0].end <= w[1].start, "all-reduces run one after another");
        assert!(w[0].ready_after <= w[1].ready_after, "in readiness order");
    }
    let m = r.metrics.last().unwrap();
    let bytes: usize = log.buckets.iter().map(|b| b.bytes).sum();
    assert_eq!(
        m.allreduce_bytes,
        bytes as u64 + 4,
        "bucket bytes plus the loss"
    );
    assert!(m.step_ms > 0.0 && m.samples_per_sec > 0.0 && m.allreduce_ms > 0.0);
}
