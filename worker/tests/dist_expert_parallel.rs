//! Expert parallelism trains the same model: ranks holding E/N experts
//! each, with tokens travelling to their experts by all-to-all, end with
//! the weights of ranks holding every expert (and, without the per-rank
//! Switch loss, of one rank with the whole batch); checkpoints hold every
//! expert by global id, so a run resumes under another expert-parallel
//! size. Each rank runs on its own thread over the in-process collective
//! or the TCP ring on loopback.

use std::collections::BTreeMap;

use adjoint_graph::Graph;
use adjoint_graph::zoo::{MoeConfig, MoeLayerConfig, moe};
use adjoint_kernels::CpuBackend;
use adjoint_worker::OptimizerConfig;
use adjoint_worker::collective::{Collective, LocalGroup, RingCollective, RingOptions};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::checkpoint::Checkpoint;
use adjoint_worker::dist::{DistConfig, DistTrainer, StepMetrics};

const STEPS: u64 = 10;
const BATCH: usize = 6;

/// The `moe` workload, small: E 8, d 12, h 20, top-2, symbolic token count.
fn model(aux_weight: f64, capacity_factor: f64) -> Graph {
    moe(&MoeConfig {
        d_model: 12,
        layer: MoeLayerConfig {
            experts: 8,
            top_k: 2,
            hidden: 20,
            capacity_factor,
            aux_weight,
            z_weight: if aux_weight > 0.0 { 0.001 } else { 0.0 },
        },
        tokens: None,
    })
    .unwrap()
}

fn dataset(samples: usize) -> Dataset {
    let g = model(0.0, 0.0);
    let mut tensors = BTreeMap::new();
    for (name, phase) in [("x", 0.37f32), ("target", 0.91f32)] {
        let data: Vec<f32> = (0..samples * 12)
            .map(|j| ((j as f32) * phase).sin() + 0.3 * ((j / 12) as f32 * 0.13).cos())
            .collect();
        tensors.insert(
            name.to_owned(),
            HostTensor::from_f32(vec![samples, 12], &data),
        );
    }
    Dataset::new(&g, tensors).unwrap()
}

fn config(world: usize, batch: usize, ep: usize) -> DistConfig {
    DistConfig {
        optimizer: OptimizerConfig::adamw(3e-3),
        expert_parallel: ep,
        seed: 7,
        ..DistConfig::new(0, world, batch)
    }
}

type MakeColl = Box<dyn FnOnce() -> Box<dyn Collective> + Send>;

fn local(world: usize) -> Vec<MakeColl> {
    LocalGroup::new(world)
        .into_iter()
        .map(|c| Box::new(move || Box::new(c) as Box<dyn Collective>) as MakeColl)
        .collect()
}

fn ring(world: usize) -> Vec<MakeColl> {
    RingCollective::loopback(world, RingOptions::default())
        .unwrap()
        .into_iter()
        .map(|c| Box::new(move || Box::new(c) as Box<dyn Collective>) as MakeColl)
        .collect()
}

/// What rank 0 ends with: full weights, a full checkpoint and metrics.
struct Run {
    params: BTreeMap<String, HostTensor>,
    checkpoint: Vec<u8>,
    metrics: Vec<StepMetrics>,
}

/// Trains every rank of `cfg.world` on its own thread for `steps` steps,
/// optionally from a checkpoint.
fn train(
    g: &Graph,
    data: &Dataset,
    cfg: DistConfig,
    colls: Vec<MakeColl>,
    steps: u64,
    resume: Option<&Checkpoint>,
) -> Run {
    let runs: Vec<Option<Run>> = std::thread::scope(|s| {
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
                    if let Some(c) = resume {
                        t.restore(c).unwrap();
                    }
                    let mut metrics = Vec::new();
                    t.train(coll.as_mut(), steps, &mut |m| {
                        metrics.push(*m);
                        true
                    })
                    .unwrap();
                    let checkpoint = t.gather_checkpoint(coll.as_mut()).unwrap();
                    let params = t.full_params(coll.as_mut()).unwrap();
                    params.map(|params| Run {
                        params,
                        checkpoint: checkpoint.unwrap(),
                        metrics,
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    runs.into_iter().flatten().next().expect("rank 0 returns")
}

/// Largest difference relative to the largest magnitude, per tensor.
fn assert_same(
    what: &str,
    got: &BTreeMap<String, HostTensor>,
    want: &BTreeMap<String, HostTensor>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: tensor names"
    );
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.shape, w.shape, "{what}: shape of {name}");
        let (g, w) = (g.to_f32().unwrap(), w.to_f32().unwrap());
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = g
            .iter()
            .zip(&w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff / scale <= 1e-5,
            "{what}: {name} differs by {diff} (relative {})",
            diff / scale
        );
    }
}

/// The largest relative difference over all tensors (for the control).
fn max_rel(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, HostTensor>) -> f32 {
    a.iter()
        .map(|(n, x)| {
            let (x, y) = (x.to_f32().unwrap(), b[n].to_f32().unwrap());
            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            x.iter()
                .zip(&y)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()))
                / scale
        })
        .fold(0.0, f32::max)
}

#[test]
fn two_and_four_ranks_of_experts_give_one_rank_holding_all_of_them() {
    // Without the Switch loss (a per-rank statistic), world × batch B is
    // the same step as one rank × world·B.
    // SGD with momentum: AdamW's normalised step turns the last-bit
    // differences of a sum split over ranks into whole steps for weights
    // whose gradient is near zero.
    let g = model(0.0, 0.0);
    let data = dataset(240);
    let sgd = |world, batch, ep| DistConfig {
        optimizer: OptimizerConfig::parse("sgd:lr=0.05,momentum=0.9").unwrap(),
        ..config(world, batch, ep)
    };
    let one = train(&g, &data, sgd(1, 4 * BATCH, 1), local(1), STEPS, None);
    for (world, ep) in [(2, 2), (4, 4), (4, 2)] {
        let batch = 4 * BATCH / world;
        let run = train(&g, &data, sgd(world, batch, ep), local(world), STEPS, None);
        assert_same(
            &format!("world {world}, expert_parallel {ep}"),
            &run.params,
            &one.params,
        );
        let sent: u64 = run.metrics.iter().map(|m| m.alltoall_bytes).sum();
        assert!(sent > 0, "world {world}: no rows crossed ranks");
        for (a, b) in run.metrics.iter().zip(&one.metrics) {
            assert!(
                (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs().max(1.0),
                "step {}: loss {} vs {}",
                a.step,
                a.loss,
                b.loss
            );
            assert!(
                (a.grad_norm - b.grad_norm).abs() <= 1e-4 * b.grad_norm.max(1e-3),
                "step {}: grad norm {} vs {}",
                a.step,
                a.grad_norm,
                b.grad_norm
            );
        }
    }
    // The control: a different seed moves the weights far more than the
    // tolerance, so the comparison can fail.
    let other = train(
        &g,
        &data,
        DistConfig {
            seed: 8,
            ..sgd(1, 4 * BATCH, 1)
        },
        local(1),
        STEPS,
        None,
    );
    assert!(max_rel(&other.params, &one.params) > 1e-2);
}

#[test]
fn expert_parallel_over_the_ring_matches_data_parallel_with_the_switch_loss() {
    // With the Switch and z losses each rank's aux loss covers its own
    // tokens, as in data parallelism over the same ranks.
    let g = model(0.01, 0.0);
    let data = dataset(240);
    let dp = train(&g, &data, config(2, BATCH, 1), ring(2), STEPS, None);
    let ep = train(&g, &data, config(2, BATCH, 2), ring(2), STEPS, None);
    assert_same("ring, expert_parallel 2", &ep.params, &dp.params);
    // Capacity drops slots before the exchange, the same on both.
    let g = model(0.01, 1.0);
    let dp = train(&g, &data, config(4, BATCH, 1), local(4), STEPS, None);
    let ep = train(&g, &data, config(4, BATCH, 4), local(4), STEPS, None);
    assert_same("capacity 1.0, expert_parallel 4", &ep.params, &dp.params);
}

#[test]
fn a_checkpoint_holds_every_expert_and_resumes_under_another_size() {
    let g = model(0.01, 0.0);
    let data = dataset(240);
    let whole = train(
        &g,
        &data,
        config(4, BATCH, 1),
        local(4),
        2 * STEPS / 2,
        None,
    );
    let half = train(&g, &data, config(4, BATCH, 2), local(4), STEPS / 2, None);
    let ckpt = Checkpoint::decode(&half.checkpoint).unwrap();
    // Experts by global id: full [E, d, h] tensors and their AdamW state.
    assert_eq!(ckpt.tensors["moe.w1"].shape, vec![8, 12, 20]);
    assert_eq!(ckpt.tensors["optim.exp_avg.moe.w2"].shape, vec![8, 20, 12]);
    for ep in [4, 1] {
        let rest = train(
            &g,
            &data,
            config(4, BATCH, ep),
            local(4),
            STEPS / 2,
            Some(&ckpt),
        );
        assert_same(
            &format!("resumed under expert_parallel {ep}"),
            &rest.params,
            &whole.params,
        );
    }
}

#[test]
fn bad_expert_parallel_sizes_are_named() {
    let g = model(0.0, 0.0);
    let err = DistTrainer::new(CpuBackend::new(), &g, dataset(24), config(3, 2, 2))
        .expect_err("world 3 cannot hold groups of 2");
    assert!(err.to_string().contains("expert_parallel = 2"), "{err}");
    let err = DistTrainer::new(CpuBackend::new(), &g, dataset(24), config(3, 2, 3))
        .expect_err("8 experts do not split over 3");
    assert!(err.to_string().contains('3'), "{err}");
}
