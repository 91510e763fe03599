//! ONNX models exported from PyTorch (`tests/fixtures/onnx/`, written by
//! `bench/onnx_fixtures.py`: an MLP, a 2-layer GPT and a CNN with
//! BatchNorm through the TorchScript exporter in training mode, the MLP
//! again through the dynamo exporter with external data) train in adjoint
//! as they are: imported, given the cross-entropy loss the spec would name,
//! and trained for 20 SGD steps from the exported initializers on the same
//! batches, their losses match PyTorch's within 1e-4 relative and their
//! weights PyTorch's after the 20 steps, BatchNorm's running statistics
//! (state, updated by every step) included.

// The importer's callback returns the graph crate's error, large by design
// (it names node, op and provenance); this is a test.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adjoint_graph::onnx::{ImportOptions, import, with_loss};
use adjoint_kernels::CpuBackend;
use adjoint_worker::data::{Dataset, read_safetensors};
use adjoint_worker::{ExecOptions, OptimizerConfig, Trainer};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/onnx")
        .join(name)
}

fn check(name: &str) {
    let dir = fixture(name);
    let reference: Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let batch = reference["batch"].as_u64().unwrap() as usize;
    let lr = reference["optimizer"]["lr"].as_f64().unwrap() as f32;
    let want: Vec<f64> = reference["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let loss = &reference["loss"];

    let model = std::fs::read(dir.join("model.onnx")).unwrap();
    let external = |location: &str| -> adjoint_graph::Result<Vec<u8>> {
        std::fs::read(dir.join(location))
            .map_err(|e| adjoint_graph::Error::Decode(format!("{location}: {e}")))
    };
    let opts = ImportOptions {
        batch: Some(batch),
        ..ImportOptions::default()
    };
    let imported = import(&model, &opts, &external).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want_state: Vec<&str> = reference["state"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(imported.state, want_state, "{name}: state initializers");
    let graph = with_loss(
        &imported,
        loss["kind"].as_str().unwrap(),
        loss["output"].as_str().unwrap(),
        loss["labels"].as_str().unwrap(),
    )
    .unwrap();

    let tensors = read_safetensors(&std::fs::read(dir.join("data.safetensors")).unwrap()).unwrap();
    let data = Dataset::new(&graph, tensors).unwrap();
    let mut trainer = Trainer::new(
        CpuBackend::new(),
        &graph,
        OptimizerConfig::sgd(lr),
        ExecOptions::default(),
        0,
    )
    .unwrap();
    let mut got = Vec::new();
    for step in 0..want.len() {
        // A fixture with fewer samples than steps × batch reads them again.
        let start = (step * batch) % data.samples();
        let rows: Vec<&[u8]> = (0..graph.inputs.len())
            .map(|i| data.rows(i, start, batch).unwrap())
            .collect();
        got.push(f64::from(trainer.step(&rows).unwrap().loss));
    }
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs(),
            "{name}, step {step}: adjoint {g} vs PyTorch {w}\nadjoint {got:?}\nPyTorch {want:?}"
        );
    }

    // The weights and state after the 20 steps, by initializer name.
    let trained =
        read_safetensors(&std::fs::read(dir.join("trained.safetensors")).unwrap()).unwrap();
    let exec = trainer.executor();
    let g = exec.graph();
    let mut worst: BTreeMap<String, f32> = BTreeMap::new();
    for (param, t) in &trained {
        let v = g
            .find(param)
            .unwrap_or_else(|| panic!("{name}: no parameter '{param}'"));
        let ours = exec.read_f32(v).unwrap();
        let theirs = t.to_f32().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: {param}");
        let scale = theirs.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = ours
            .iter()
            .zip(&theirs)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst.insert(param.clone(), diff / scale);
    }
    for (param, rel) in &worst {
        assert!(
            *rel <= 1e-4,
            "{name}: {param} differs by {rel} relative: {worst:?}"
        );
    }
    let loss_rel = got
        .iter()
        .zip(&want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs() / w.abs()));
    let state_rel = want_state.iter().map(|s| worst[*s]).fold(0f32, f32::max);
    println!(
        "{name}: 20 losses within {loss_rel:.1e} relative of PyTorch's ({} -> {}); weights within {:.1e}; {} state tensors within {state_rel:.1e}",
        got[0],
        got[got.len() - 1],
        worst.values().fold(0f32, |m, v| m.max(*v)),
        want_state.len()
    );
}

#[test]
fn mlp_from_the_torchscript_exporter_trains_like_pytorch() {
    check("mlp");
}

#[test]
fn mlp_from_the_dynamo_exporter_with_external_data_trains_like_pytorch() {
    check("mlp_dynamo");
}

#[test]
fn transformer_from_the_torchscript_exporter_trains_like_pytorch() {
    check("transformer");
}

#[test]
fn cnn_with_batch_norm_trains_like_pytorch_running_statistics_included() {
    check("cnn_bn");
}
