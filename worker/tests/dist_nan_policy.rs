//! A step whose loss or gradient is NaN: with `nan_policy = fail` the step
//! fails with an error naming it; with `skip_step` the update is skipped on
//! every rank (the weights stay bit for bit), the step is reported as
//! skipped and training goes on with finite weights. Two ranks on threads
//! over the in-process collective, so both must decide alike.

use std::collections::BTreeMap;

use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_kernels::CpuBackend;
use adjoint_worker::collective::{Collective, LocalGroup};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::{DistConfig, DistTrainer, NanPolicy, Sampler};

const WORLD: usize = 2;
const BATCH: usize = 4;
const STEPS: u64 = 6;
/// The sample that holds a NaN.
const BAD: u32 = 5;

fn setup() -> (adjoint_graph::Graph, Dataset) {
    let g = zoo::mlp(&MlpConfig {
        input: 6,
        hidden: vec![8],
        classes: 3,
        batch: None,
    })
    .unwrap();
    let samples = 48;
    let mut x: Vec<f32> = (0..samples * 6)
        .map(|i| ((i as f32) * 0.37).sin())
        .collect();
    x[BAD as usize * 6 + 2] = f32::NAN;
    let labels: Vec<i64> = (0..samples as i64).map(|i| i % 3).collect();
    let tensors = BTreeMap::from([
        ("x".to_owned(), HostTensor::from_f32(vec![samples, 6], &x)),
        (
            "labels".to_owned(),
            HostTensor::from_i64(vec![samples], &labels),
        ),
    ]);
    let data = Dataset::new(&g, tensors).unwrap();
    (g, data)
}

/// The 0-based step whose window holds the bad sample.
fn bad_step(data: &Dataset, cfg: &DistConfig) -> u64 {
    let mut sampler = Sampler::new(data.samples(), cfg.global_batch(), cfg.seed).unwrap();
    (0..STEPS)
        .find(|&s| sampler.window(s).contains(&BAD))
        .expect("the bad sample is drawn within the run")
}

#[test]
fn fail_names_the_step_and_skip_step_keeps_the_weights() {
    let (g, data) = setup();
    for policy in [NanPolicy::Fail, NanPolicy::SkipStep] {
        let cfg = DistConfig {
            nan_policy: policy,
            ..DistConfig::new(0, WORLD, BATCH)
        };
        let bad = bad_step(&data, &cfg);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = LocalGroup::new(WORLD)
                .into_iter()
                .enumerate()
                .map(|(rank, mut coll)| {
                    let (g, data) = (&g, data.clone());
                    s.spawn(move || {
                        let mut t = DistTrainer::new(
                            CpuBackend::new(),
                            g,
                            data,
                            DistConfig { rank, ..cfg },
                        )
                        .unwrap();
                        let mut seen = Vec::new();
                        for step in 0..STEPS {
                            let before = t.params().unwrap();
                            match t.step(&mut coll as &mut dyn Collective) {
                                Ok(m) => {
                                    let after = t.params().unwrap();
                                    seen.push((step, m.skipped, before == after, m.loss));
                                }
                                Err(e) => return (seen, Some(e.to_string()), t.params().unwrap()),
                            }
                        }
                        (seen, None, t.params().unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, (seen, err, params)) in results.into_iter().enumerate() {
            match policy {
                NanPolicy::Fail => {
                    let err = err.unwrap_or_else(|| panic!("rank {rank}: no error"));
                    assert!(
                        err.contains(&format!("step {}", bad + 1)) && err.contains("NaN"),
                        "rank {rank}: {err}"
                    );
                    assert_eq!(seen.len() as u64, bad, "rank {rank} ran up to the bad step");
                }
                NanPolicy::SkipStep => {
                    assert!(err.is_none(), "rank {rank}: {err:?}");
                    assert_eq!(seen.len() as u64, STEPS);
                    for (step, skipped, unchanged, loss) in seen {
                        assert_eq!(skipped, step == bad, "rank {rank}, step {step}");
                        assert_eq!(unchanged, step == bad, "rank {rank}, step {step}");
                        assert_eq!(loss.is_nan(), step == bad, "rank {rank}, step {step}");
                    }
                    for (name, t) in params {
                        assert!(
                            t.to_f32().unwrap().iter().all(|v| v.is_finite()),
                            "rank {rank}: {name} is not finite"
                        );
                    }
                }
            }
        }
    }
}
