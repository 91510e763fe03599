//! Checkpoints: training 10 steps, checkpointing, restoring into a fresh
//! trainer and training 10 more gives the weights of 20 steps straight
//! (parameters, optimizer state, step count and data position all carry
//! over).

use adjoint_graph::Graph;
use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_kernels::CpuBackend;
use adjoint_worker::OptimizerConfig;
use adjoint_worker::collective::LocalGroup;
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::checkpoint::Checkpoint;
use adjoint_worker::dist::{DataPosition, DistConfig, DistTrainer, LrSchedule};

fn setup() -> (Graph, Dataset) {
    let g = zoo::mlp(&MlpConfig {
        input: 6,
        hidden: vec![12],
        classes: 3,
        batch: None,
    })
    .unwrap();
    let n = 30;
    let x: Vec<f32> = (0..n * 6).map(|j| ((j as f32) * 0.61).cos()).collect();
    let y: Vec<i64> = (0..n as i64).map(|j| j % 3).collect();
    let data = Dataset::new(
        &g,
        [
            ("x".to_owned(), HostTensor::from_f32(vec![n, 6], &x)),
            ("labels".to_owned(), HostTensor::from_i64(vec![n], &y)),
        ]
        .into_iter()
        .collect(),
    )
    .unwrap();
    (g, data)
}

#[test]
fn resuming_from_a_checkpoint_continues_the_same_run() {
    let (g, data) = setup();
    for opt in [
        OptimizerConfig::parse("sgd:lr=0.1,momentum=0.9").unwrap(),
        OptimizerConfig::adamw(1e-2),
    ] {
        let cfg = DistConfig {
            optimizer: opt,
            seed: 3,
            schedule: LrSchedule::parse("cosine", 2, 1e-3, 20).unwrap(),
            ..DistConfig::new(0, 1, 4)
        };
        let mut coll = LocalGroup::new(1).pop().unwrap();
        let mut straight = DistTrainer::new(CpuBackend::new(), &g, data.clone(), cfg).unwrap();
        straight.train(&mut coll, 20, &mut |_| true).unwrap();

        let mut first = DistTrainer::new(CpuBackend::new(), &g, data.clone(), cfg).unwrap();
        assert!(
            first
                .take_logs()
                .iter()
                .any(|l| l.contains("the last 2 of 30 samples")),
            "the dropped tail is reported"
        );
        first.train(&mut coll, 10, &mut |_| true).unwrap();
        let bytes = first.checkpoint().unwrap();
        let ckpt = Checkpoint::decode(&bytes).unwrap();
        assert_eq!(ckpt.meta.step, 10);
        assert_eq!(
            ckpt.meta.position,
            DataPosition {
                epoch: 1,
                window: 3
            },
            "7 steps per epoch"
        );
        let names: Vec<&String> = ckpt.tensors.keys().collect();
        assert!(names.iter().any(|n| n.starts_with("optim.")), "{names:?}");
        assert!(ckpt.params().contains_key("fc1.weight"));

        let mut second = DistTrainer::new(
            CpuBackend::new(),
            &g,
            data.clone(),
            DistConfig { seed: 3, ..cfg },
        )
        .unwrap();
        second.restore(&ckpt).unwrap();
        assert_eq!(second.steps(), 10);
        second.train(&mut coll, 10, &mut |_| true).unwrap();
        assert_eq!(
            second.params().unwrap(),
            straight.params().unwrap(),
            "{opt:?}: resumed run differs"
        );
    }
}
