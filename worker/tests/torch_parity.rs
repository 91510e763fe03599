//! Parity with PyTorch: the committed fixtures under `tests/fixtures/`
//! (written by `bench/torch_ref.py`) hold a model's initial weights, a
//! batch, PyTorch's gradients at those weights and its losses over 20
//! training steps. adjoint must match them; PyTorch itself is not needed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use adjoint_graph::Graph;
use adjoint_graph::zoo::{self, MlpConfig, TransformerConfig};
use adjoint_kernels::CpuBackend;
use adjoint_worker::data::{HostTensor, params_by_name, read_safetensors};
use adjoint_worker::{ExecOptions, OptimizerConfig, Trainer};
use serde_json::Value;

fn fixture(model: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(model)
        .join(file)
}

fn tensors(model: &str, file: &str) -> BTreeMap<String, HostTensor> {
    let path = fixture(model, file);
    read_safetensors(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

fn reference(model: &str) -> Value {
    let path = fixture(model, "reference.json");
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("reference.json: config.{key}")) as usize
}

fn f32_of(v: &Value, key: &str) -> f32 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("reference.json: optimizer.{key}")) as f32
}

fn model_of(name: &str, r: &Value) -> Graph {
    let c = &r["config"];
    let batch = Some(usize_of(c, "batch"));
    match name {
        "mlp" => zoo::mlp(&MlpConfig {
            input: usize_of(c, "input"),
            hidden: c["hidden"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_u64().unwrap() as usize)
                .collect(),
            classes: usize_of(c, "classes"),
            batch,
        }),
        _ => zoo::transformer(&TransformerConfig {
            vocab: usize_of(c, "vocab"),
            d_model: usize_of(c, "d_model"),
            layers: usize_of(c, "layers"),
            heads: usize_of(c, "heads"),
            seq: usize_of(c, "seq"),
            batch,
        }),
    }
    .unwrap()
}

fn optimizer_of(r: &Value) -> OptimizerConfig {
    let o = &r["optimizer"];
    match o["name"].as_str().unwrap() {
        "sgd" => OptimizerConfig::Sgd {
            lr: f32_of(o, "lr"),
            momentum: f32_of(o, "momentum"),
            dampening: f32_of(o, "dampening"),
            weight_decay: f32_of(o, "weight_decay"),
            nesterov: o["nesterov"].as_bool().unwrap(),
        },
        _ => OptimizerConfig::AdamW {
            lr: f32_of(o, "lr"),
            beta1: o["betas"][0].as_f64().unwrap() as f32,
            beta2: o["betas"][1].as_f64().unwrap() as f32,
            eps: f32_of(o, "eps"),
            weight_decay: f32_of(o, "weight_decay"),
        },
    }
}

/// A trainer for the fixture's model with PyTorch's initial weights.
fn trainer(model: &str) -> (Trainer<CpuBackend>, Graph, Value) {
    let r = reference(model);
    let g = model_of(model, &r);
    let mut t = Trainer::new(
        CpuBackend::new(),
        &g,
        optimizer_of(&r),
        ExecOptions::default(),
        0,
    )
    .unwrap();
    let params = tensors(model, "params.safetensors");
    let exec = t.executor_mut();
    let fed = params_by_name(exec.graph(), &params).unwrap();
    assert_eq!(
        fed.len(),
        exec.graph().params.len(),
        "{model}: the fixture must give every parameter"
    );
    for (v, tensor) in fed {
        exec.write_bytes(v, &tensor.bytes).unwrap();
    }
    (t, g, r)
}

fn batch(model: &str, g: &Graph) -> Vec<Vec<u8>> {
    let b = tensors(model, "batch.safetensors");
    g.inputs
        .iter()
        .map(|i| b[g.name_of(i.value)].bytes.clone())
        .collect()
}

fn check_gradients(model: &str) {
    let (mut t, g, _) = trainer(model);
    let data = batch(model, &g);
    let feed: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    t.step(&feed).unwrap();
    let want = tensors(model, "grads.safetensors");
    let exec = t.executor();
    for p in exec.graph().trainable_params() {
        let name = exec.graph().name_of(p);
        let got = exec.grad(p).unwrap();
        let w = want[name].to_f32().unwrap();
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (i, (a, b)) in got.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale + 1e-3 * b.abs(),
                "{model}: gradient of '{name}' [{i}]: adjoint {a}, PyTorch {b} (largest |grad| {scale})"
            );
        }
    }
}

fn check_losses(model: &str) {
    let (mut t, g, r) = trainer(model);
    let data = batch(model, &g);
    let feed: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let want: Vec<f64> = r["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(want.len(), 20);
    let got: Vec<f64> = (0..want.len())
        .map(|_| f64::from(t.step(&feed).unwrap().loss))
        .collect();
    for (step, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "{model}: loss at step {step}: adjoint {a}, PyTorch {b}\nadjoint: {got:?}\nPyTorch: {want:?}"
        );
    }
}

#[test]
fn mlp_gradients_match_pytorch() {
    check_gradients("mlp");
}

#[test]
fn transformer_gradients_match_pytorch() {
    check_gradients("transformer");
}

#[test]
fn mlp_sgd_momentum_losses_match_pytorch_for_20_steps() {
    check_losses("mlp");
}

#[test]
fn transformer_adamw_losses_match_pytorch_for_20_steps() {
    check_losses("transformer");
}
