//! State in data-parallel training, on the CNN with BatchNorm of
//! `tests/fixtures/onnx/cnn_bn` (its running statistics are state): every
//! step updates it; the ranks end with the same values (averaged over
//! them); parameters, checkpoints and the weights file carry it, named as
//! the ONNX initializers; a restore brings it back, so a resumed run goes on
//! exactly as a straight one; the weights write back into the ONNX model
//! (`pull --onnx`), whose re-import starts from them; and recomputing
//! activations (checkpoint policies) changes none of it.

// The importer's callback returns the graph crate's error, large by design.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adjoint_graph::checkpoint::Policy;
use adjoint_graph::onnx::{ImportOptions, import, with_loss, with_weights};
use adjoint_graph::{Graph, Init, TensorData, init};
use adjoint_kernels::CpuBackend;
use adjoint_worker::OptimizerConfig;
use adjoint_worker::collective::LocalGroup;
use adjoint_worker::data::{Dataset, HostTensor, read_safetensors};
use adjoint_worker::dist::checkpoint::Checkpoint;
use adjoint_worker::dist::{DistConfig, DistTrainer};

const STATE: [&str; 4] = [
    "bn1.running_mean",
    "bn1.running_var",
    "bn2.running_mean",
    "bn2.running_var",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx/cnn_bn")
}

fn no_files(location: &str) -> adjoint_graph::Result<Vec<u8>> {
    Err(adjoint_graph::Error::Decode(format!("no file {location}")))
}

/// The model's bytes, the training graph at `batch`, and the data.
fn setup(batch: usize) -> (Vec<u8>, Graph, Dataset) {
    let model = std::fs::read(dir().join("model.onnx")).unwrap();
    let opts = ImportOptions {
        batch: Some(batch),
        ..ImportOptions::default()
    };
    let imported = import(&model, &opts, &no_files).unwrap();
    assert_eq!(imported.state, STATE);
    let graph = with_loss(&imported, "cross_entropy", "logits", "labels").unwrap();
    let tensors =
        read_safetensors(&std::fs::read(dir().join("data.safetensors")).unwrap()).unwrap();
    let data = Dataset::new(&graph, tensors).unwrap();
    (model, graph, data)
}

fn cfg(rank: usize, world: usize, batch: usize) -> DistConfig {
    DistConfig {
        optimizer: OptimizerConfig::sgd(0.1),
        seed: 5,
        ..DistConfig::new(rank, world, batch)
    }
}

fn initial(graph: &Graph, name: &str) -> Vec<f32> {
    let s = graph
        .state
        .iter()
        .find(|s| graph.name_of(s.value) == name)
        .unwrap_or_else(|| panic!("no state '{name}'"));
    let Init::Values(data) = &s.init else {
        panic!("{name}: {:?}", s.init)
    };
    init::decode(data)
        .unwrap()
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

#[test]
fn running_statistics_reach_checkpoints_resumes_and_the_onnx_model() {
    let (model, graph, data) = setup(8);
    let mut coll = LocalGroup::new(1).pop().unwrap();
    let mut first =
        DistTrainer::new(CpuBackend::new(), &graph, data.clone(), cfg(0, 1, 8)).unwrap();
    for name in STATE {
        let now = first.params().unwrap()[name].to_f32().unwrap();
        assert_eq!(
            now,
            initial(&graph, name),
            "{name} starts at the initializer"
        );
    }
    first.train(&mut coll, 3, &mut |_| true).unwrap();
    let trained = first.params().unwrap();
    for name in STATE {
        let now = trained[name].to_f32().unwrap();
        assert_ne!(now, initial(&graph, name), "{name} is updated by training");
        assert!(now.iter().all(|v| v.is_finite()), "{name}: {now:?}");
    }

    // A checkpoint holds the state; a restore brings it back and the run
    // goes on as a straight one.
    let ckpt = Checkpoint::decode(&first.checkpoint().unwrap()).unwrap();
    for name in STATE {
        assert_eq!(
            ckpt.params()[name],
            trained[name],
            "{name} in the checkpoint"
        );
    }
    let mut second = DistTrainer::new(CpuBackend::new(), &graph, data, cfg(0, 1, 8)).unwrap();
    second.restore(&ckpt).unwrap();
    assert_eq!(second.params().unwrap(), trained);
    first.train(&mut coll, 2, &mut |_| true).unwrap();
    second.train(&mut coll, 2, &mut |_| true).unwrap();
    assert_eq!(
        second.params().unwrap(),
        first.params().unwrap(),
        "resumed run differs"
    );

    // The weights file, written back into the ONNX model: the re-imported
    // model starts from the trained state and weights.
    let weights: BTreeMap<String, TensorData> = first
        .params()
        .unwrap()
        .into_iter()
        .map(|(name, t): (String, HostTensor)| {
            let data = TensorData {
                dtype: t.dtype,
                shape: t.shape,
                bytes: t.bytes,
            };
            (name, data)
        })
        .collect();
    let written = with_weights(&model, &weights, &no_files).unwrap();
    let again = import(&written, &ImportOptions::default(), &no_files).unwrap();
    assert_eq!(again.state, STATE);
    let params = first.params().unwrap();
    for name in STATE.iter().copied().chain(["conv1.weight", "fc.bias"]) {
        let v = again.graph.find(name).unwrap();
        let init = again
            .graph
            .state
            .iter()
            .find(|s| s.value == v)
            .map(|s| &s.init)
            .or_else(|| again.graph.param(v).map(|p| &p.init))
            .unwrap();
        let Init::Values(data) = init else {
            panic!("{name}: {init:?}")
        };
        assert_eq!(data.bytes, params[name].bytes, "{name} written back");
    }
}

#[test]
fn ranks_end_with_the_same_averaged_running_statistics() {
    let (_, graph, data) = setup(8);
    let results: Vec<BTreeMap<String, HostTensor>> = std::thread::scope(|s| {
        let handles: Vec<_> = LocalGroup::new(2)
            .into_iter()
            .enumerate()
            .map(|(rank, mut coll)| {
                let (graph, data) = (&graph, data.clone());
                s.spawn(move || {
                    let mut t =
                        DistTrainer::new(CpuBackend::new(), graph, data, cfg(rank, 2, 8)).unwrap();
                    t.train(&mut coll, 3, &mut |_| true).unwrap();
                    t.params().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for name in STATE {
        let (a, b) = (&results[0][name], &results[1][name]);
        assert_eq!(a, b, "{name}: the ranks differ");
        assert_ne!(a.to_f32().unwrap(), initial(&graph, name), "{name}");
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn recomputing_activations_gives_the_same_state_and_weights() {
    let (_, graph, data) = setup(8);
    let run = |policy: Policy| {
        let mut coll = LocalGroup::new(1).pop().unwrap();
        let cfg = DistConfig {
            checkpoint: policy,
            ..cfg(0, 1, 8)
        };
        let mut t = DistTrainer::new(CpuBackend::new(), &graph, data.clone(), cfg).unwrap();
        t.train(&mut coll, 3, &mut |_| true).unwrap();
        t.params().unwrap()
    };
    let straight = run(Policy::None);
    for policy in [Policy::Sqrt, Policy::Selective, Policy::Every(1)] {
        let got = run(policy);
        for (name, t) in &straight {
            let (a, b) = (t.to_f32().unwrap(), got[name].to_f32().unwrap());
            let diff = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-5, "{policy}: {name} differs by {diff}");
        }
    }
}
