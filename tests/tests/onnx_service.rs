//! ONNX models through the CLI and the service, as real processes: the MLP
//! PyTorch exported (`tests/fixtures/onnx/mlp`) is submitted as
//! `model.onnx` to a coordinator with one worker, trains 20 SGD steps to
//! the weights PyTorch reached, and comes back both as safetensors and
//! (`pull --onnx`) as the original model with the trained weights, which
//! imports again and, when `ADJOINT_PYTHON` names a Python with
//! onnxruntime, computes in ONNX Runtime what PyTorch computed. The CNN
//! with BatchNorm does the same with its running statistics. Broken
//! models fail with a message naming the problem, never a panic; and
//! `adjoint inspect` describes the fixture.

// The importer's external-data callback returns the graph crate's error,
// large by design (it names node, op and provenance).
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use adjoint_client::local::LocalCluster;
use adjoint_graph::Init;
use adjoint_graph::onnx::{ImportOptions, import};
use adjoint_tests::{CliOutput, adjoint, logs, max_rel_diff, read_weights, weights_differ};
use adjoint_worker::data::{HostTensor, read_safetensors, write_safetensors};
use adjoint_worker::dist::shuffle;
use serde_json::Value;

/// No coordinator: for commands that do not need one.
const NO_ADDR: &str = "127.0.0.1:1";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/onnx")
        .join(name)
}

/// Copies fixture `name`'s files into `dir/name`.
fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

/// The rows of `tensors` (all `[samples, ...]`) placed so that the
/// service's epoch-0 shuffle with `seed` feeds them back in file order:
/// step `i` then trains on samples `[i·batch, (i+1)·batch)` as PyTorch
/// did.
fn unshuffled(tensors: &BTreeMap<String, HostTensor>, seed: u64) -> BTreeMap<String, HostTensor> {
    let samples = tensors.values().next().unwrap().shape[0];
    let mut perm = vec![0u32; samples];
    shuffle(&mut perm, seed, 0);
    tensors
        .iter()
        .map(|(name, t)| {
            let row = t.bytes.len() / samples;
            let mut bytes = vec![0u8; t.bytes.len()];
            for (k, &p) in perm.iter().enumerate() {
                let p = p as usize;
                bytes[p * row..(p + 1) * row].copy_from_slice(&t.bytes[k * row..(k + 1) * row]);
            }
            let moved = HostTensor {
                dtype: t.dtype,
                shape: t.shape.clone(),
                bytes,
            };
            (name.clone(), moved)
        })
        .collect()
}

fn no_files(location: &str) -> adjoint_graph::Result<Vec<u8>> {
    Err(adjoint_graph::Error::Unsupported(format!(
        "unexpected external data '{location}'"
    )))
}

#[test]
fn an_onnx_model_trains_on_the_service_like_pytorch_and_exports_back_to_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = copy_fixture("mlp", dir.path());
    let reference: Value =
        serde_json::from_slice(&std::fs::read(mlp.join("reference.json")).unwrap()).unwrap();
    let data = read_safetensors(&std::fs::read(mlp.join("data.safetensors")).unwrap()).unwrap();
    let train = mlp.join("train.safetensors");
    std::fs::write(&train, write_safetensors(&unshuffled(&data, 0)).unwrap()).unwrap();
    let model = mlp.join("model.onnx");
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 1).unwrap();

    // A broken model is refused before anything is submitted.
    let broken = mlp.join("broken.onnx");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let refused = adjoint(
        &cluster.addr,
        &[
            "submit",
            broken.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--loss",
            "cross_entropy",
            "--batch-size",
            "8",
            "--steps",
            "20",
        ],
    );
    assert!(
        !refused.ok && refused.stderr.contains("broken.onnx") && !panicked(&refused),
        "{refused}"
    );

    // Submit the model itself, as PyTorch trained it.
    let submitted = adjoint(
        &cluster.addr,
        &[
            "submit",
            model.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--loss",
            "cross_entropy",
            "--loss-output",
            "logits",
            "--label",
            "labels",
            "--batch-size",
            "8",
            "--steps",
            "20",
            "--optimizer",
            "sgd:lr=0.1",
        ],
    );
    assert!(submitted.ok, "submit failed: {submitted}{}", logs(&cluster));
    let id = submitted.stdout.trim().to_owned();
    let watched = adjoint(&cluster.addr, &["watch", &id]);
    assert!(watched.ok, "watch failed: {watched}{}", logs(&cluster));
    let status = adjoint(&cluster.addr, &["status", &id]);
    assert!(
        status.stdout.contains("succeeded") && status.stdout.contains("model.onnx"),
        "{status}{}",
        logs(&cluster)
    );

    // The weights, named as the initializers, are PyTorch's.
    let weights = dir.path().join("weights.safetensors");
    let pulled = adjoint(
        &cluster.addr,
        &["pull", &id, "-o", weights.to_str().unwrap()],
    );
    assert!(pulled.ok, "pull failed: {pulled}");
    let got = read_weights(&std::fs::read(&weights).unwrap()).unwrap();
    let want = read_weights(&std::fs::read(mlp.join("trained.safetensors")).unwrap()).unwrap();
    if let Some(diff) = weights_differ(&got, &want, 1e-4) {
        panic!("the service's weights are not PyTorch's: {diff}");
    }
    println!(
        "service weights vs PyTorch's: max relative difference {:.2e}",
        max_rel_diff(&got, &want)
    );

    // The trained model as ONNX: its initializers are the pulled weights.
    let exported = dir.path().join("trained.onnx");
    let pulled = adjoint(
        &cluster.addr,
        &["pull", &id, "--onnx", "-o", exported.to_str().unwrap()],
    );
    assert!(pulled.ok, "pull --onnx failed: {pulled}");
    let onnx = std::fs::read(&exported).unwrap();
    let again = import(&onnx, &ImportOptions::default(), &no_files).unwrap();
    let g = &again.graph;
    let mut names = Vec::new();
    for p in &g.params {
        let name = g.name_of(p.value);
        names.push(name.to_owned());
        let Init::Values(values) = &p.init else {
            panic!("{name}: not initialized from the model's values");
        };
        let w = &got[name];
        assert_eq!(
            (&values.shape, &values.bytes),
            (&w.shape, &w.bytes),
            "initializer {name} of the exported model is not the pulled weight"
        );
    }
    assert_eq!(names.len(), got.len(), "{names:?} vs {:?}", got.keys());

    // ONNX Runtime computes with the exported model what PyTorch did.
    onnxruntime_round_trip(&exported, &data, &reference, dir.path());
}

/// The CNN with BatchNorm PyTorch exported in training mode: on the
/// service its 20 steps reach PyTorch's weights and running statistics,
/// which `pull` and `pull --onnx` hand back under the initializers' names.
#[test]
fn a_cnn_with_batch_norm_trains_on_the_service_with_its_running_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let cnn = copy_fixture("cnn_bn", dir.path());
    let reference: Value =
        serde_json::from_slice(&std::fs::read(cnn.join("reference.json")).unwrap()).unwrap();
    let data = read_safetensors(&std::fs::read(cnn.join("data.safetensors")).unwrap()).unwrap();
    // PyTorch read its 5 batches 4 times in order: one epoch of 160
    // samples in that order, placed for the service's shuffle.
    let steps = reference["steps"].as_u64().unwrap() as usize;
    let repeated: BTreeMap<String, HostTensor> = data
        .iter()
        .map(|(name, t)| {
            let mut t = t.clone();
            let times = steps * 8 / t.shape[0];
            t.bytes = t.bytes.repeat(times);
            t.shape[0] *= times;
            (name.clone(), t)
        })
        .collect();
    let train = cnn.join("train.safetensors");
    std::fs::write(
        &train,
        write_safetensors(&unshuffled(&repeated, 0)).unwrap(),
    )
    .unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 1).unwrap();
    let model = cnn.join("model.onnx");
    let submitted = adjoint(
        &cluster.addr,
        &[
            "submit",
            model.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--loss",
            "cross_entropy",
            "--batch-size",
            "8",
            "--steps",
            &steps.to_string(),
            "--optimizer",
            "sgd:lr=0.1",
        ],
    );
    assert!(submitted.ok, "submit failed: {submitted}{}", logs(&cluster));
    let id = submitted.stdout.trim().to_owned();
    let watched = adjoint(&cluster.addr, &["watch", &id]);
    assert!(watched.ok, "watch failed: {watched}{}", logs(&cluster));

    // Weights and running statistics, by initializer name, are PyTorch's.
    let weights = dir.path().join("weights.safetensors");
    let pulled = adjoint(
        &cluster.addr,
        &["pull", &id, "-o", weights.to_str().unwrap()],
    );
    assert!(pulled.ok, "pull failed: {pulled}");
    let got = read_weights(&std::fs::read(&weights).unwrap()).unwrap();
    let want = read_weights(&std::fs::read(cnn.join("trained.safetensors")).unwrap()).unwrap();
    assert!(got.contains_key("bn2.running_var"), "{:?}", got.keys());
    if let Some(diff) = weights_differ(&got, &want, 1e-4) {
        panic!("the service's weights are not PyTorch's: {diff}");
    }
    println!(
        "cnn_bn service weights and running statistics vs PyTorch's: max relative difference {:.2e}",
        max_rel_diff(&got, &want)
    );

    // The exported model carries the trained statistics as initializers.
    let exported = dir.path().join("trained.onnx");
    let pulled = adjoint(
        &cluster.addr,
        &["pull", &id, "--onnx", "-o", exported.to_str().unwrap()],
    );
    assert!(pulled.ok, "pull --onnx failed: {pulled}");
    let again = import(
        &std::fs::read(&exported).unwrap(),
        &ImportOptions::default(),
        &no_files,
    )
    .unwrap();
    let g = &again.graph;
    for st in &g.state {
        let name = g.name_of(st.value);
        let Init::Values(values) = &st.init else {
            panic!("{name}: not initialized from the model's values");
        };
        assert_eq!(
            values.bytes, got[name].bytes,
            "state {name} of the exported model is not the pulled statistic"
        );
    }
    assert_eq!(g.state.len(), 4, "{:?}", again.state);
    onnxruntime_round_trip(&exported, &data, &reference, dir.path());
}

/// Runs `scripts/onnx_run.py` on the exported model and batch 0 and
/// compares with `outputs_after`; skipped without `ADJOINT_PYTHON`.
fn onnxruntime_round_trip(
    model: &Path,
    data: &BTreeMap<String, HostTensor>,
    reference: &Value,
    dir: &Path,
) {
    let Some(python) = std::env::var_os("ADJOINT_PYTHON") else {
        println!(
            "skipped the ONNX Runtime round trip: ADJOINT_PYTHON is not set (a Python with onnxruntime, numpy and safetensors)"
        );
        return;
    };
    let after = &reference["outputs_after"];
    let batch = reference["batch"].as_u64().unwrap() as usize;
    let x = &data["x"];
    let row = x.bytes.len() / x.shape[0];
    let mut shape = x.shape.clone();
    shape[0] = batch;
    let inputs = BTreeMap::from([(
        "x".to_owned(),
        HostTensor {
            dtype: x.dtype,
            shape,
            bytes: x.bytes[..batch * row].to_vec(),
        },
    )]);
    let inputs_path = dir.join("inputs.safetensors");
    let out_path = dir.join("outputs.safetensors");
    std::fs::write(&inputs_path, write_safetensors(&inputs).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/onnx_run.py");
    let run = Command::new(&python)
        .arg(&script)
        .arg(model)
        .arg(&inputs_path)
        .arg(&out_path)
        .output()
        .expect("ADJOINT_PYTHON runs");
    assert!(
        run.status.success(),
        "{} {} failed:\n{}{}",
        python.to_string_lossy(),
        script.display(),
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let outputs = read_safetensors(&std::fs::read(&out_path).unwrap()).unwrap();
    let name = after["output"].as_str().unwrap();
    let got = outputs[name].to_f32().unwrap();
    let want: Vec<f32> = after["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got.len(), want.len(), "{name}");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff / scale <= 1e-4,
        "ONNX Runtime's {name} differs from PyTorch's by {diff} (relative {})\n{got:?}\n{want:?}",
        diff / scale
    );
    println!(
        "ONNX Runtime on the exported model vs PyTorch's outputs_after: max |diff| {diff:.2e}, relative {:.2e} ({} values)",
        diff / scale,
        got.len()
    );
}

fn panicked(out: &CliOutput) -> bool {
    out.stderr.contains("panicked")
}

#[test]
fn inspect_describes_the_fixture() {
    let model = fixture("mlp").join("model.onnx");
    let out = adjoint(NO_ADDR, &["inspect", model.to_str().unwrap()]);
    assert!(out.ok, "{out}");
    for want in [
        "opset       ai.onnx 17",
        "producer",
        "x     float32  [8, 16]",
        "logits  float32  [8, 4]",
        "fc1.weight  [32, 16]",
        "Gemm  2      yes",
        "Relu  1      yes",
        "total parameters 676 (",
        "memory per worker at batch 8 (cross_entropy on 'logits' vs 'labels'",
    ] {
        assert!(out.stdout.contains(want), "no '{want}' in:\n{out}");
    }
}

/// Replaces the first `from` in `bytes` by `to` (same length); an op type
/// is NodeProto field 4 (key `0x22`) and its length.
fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{from:?} is not in the model"));
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// The model with its default-domain opset import set to `version`: the
/// OperatorSetIdProto (ModelProto field 8) whose last field is version 17.
fn with_opset(bytes: &[u8], version: u8) -> Vec<u8> {
    let at = (0..bytes.len() - 2)
        .find(|&i| {
            let len = bytes[i + 1] as usize;
            bytes[i] == 0x42
                && (2..16).contains(&len)
                && bytes.get(i + 2 + len - 2..i + 2 + len) == Some(&[0x10, 17][..])
        })
        .expect("the model imports opset 17");
    let mut out = bytes.to_vec();
    out[at + 2 + bytes[at + 1] as usize - 1] = version;
    out
}

#[test]
fn broken_models_fail_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = copy_fixture("mlp", dir.path());
    let data = mlp.join("data.safetensors");
    let bytes = std::fs::read(mlp.join("model.onnx")).unwrap();

    let truncated = mlp.join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let unknown = mlp.join("unknown_op.onnx");
    std::fs::write(&unknown, patch(&bytes, b"\x22\x04Relu", b"\x22\x04Relv")).unwrap();
    let old = mlp.join("old_opset.onnx");
    std::fs::write(&old, with_opset(&bytes, 11)).unwrap();
    let dynamo = copy_fixture("mlp_dynamo", dir.path());
    std::fs::remove_file(dynamo.join("model.onnx.data")).unwrap();
    let missing = dynamo.join("model.onnx");

    let cases: [(&Path, &[&str]); 4] = [
        (&truncated, &["truncated.onnx", "protobuf"]),
        (&unknown, &["unknown op 'Relv'"]),
        (&missing, &["model.onnx.data"]),
        (&old, &["opset 11 is too old"]),
    ];
    for (model, wants) in cases {
        let model = model.to_str().unwrap();
        let runs = [
            adjoint(
                NO_ADDR,
                &[
                    "train",
                    model,
                    "--data",
                    data.to_str().unwrap(),
                    "--loss",
                    "cross_entropy",
                    "--steps",
                    "1",
                ],
            ),
            adjoint(NO_ADDR, &["inspect", model]),
        ];
        for out in runs {
            assert!(!out.ok && !panicked(&out), "{model}: {out}");
            for want in wants {
                assert!(out.stderr.contains(want), "{model}: no '{want}' in {out}");
            }
        }
    }

    // Training an ONNX model without a loss says how to give it one.
    let out = adjoint(
        NO_ADDR,
        &[
            "train",
            mlp.join("model.onnx").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert!(
        !out.ok && out.stderr.contains("--loss cross_entropy"),
        "{out}"
    );
}
