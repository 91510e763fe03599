//! The engine commands `adjoint grad`, `adjoint train` and `adjoint bench`,
//! run as real processes: gradients agree with the f64 reference
//! interpreter, training learns, bad input gives a clear error and the
//! benchmark prints one parseable JSON line.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use adjoint_graph::interp::{self, EvalCx, Tensor};
use adjoint_graph::zoo::{MlpConfig, mlp};
use adjoint_graph::{DType, autodiff, init, serialize};
use adjoint_worker::data::{HostTensor, read_safetensors, write_safetensors};

/// The mlp's parameters and their shapes.
const PARAMS: [(&str, &[usize]); 6] = [
    ("fc1.weight", &[784, 1024]),
    ("fc1.bias", &[1024]),
    ("fc2.weight", &[1024, 1024]),
    ("fc2.bias", &[1024]),
    ("fc3.weight", &[1024, 10]),
    ("fc3.bias", &[10]),
];

fn adjoint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adjoint"))
        .args(args)
        .output()
        .expect("the adjoint binary runs")
}

/// Runs `adjoint args`, which must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = adjoint(args);
    assert!(
        out.status.success(),
        "adjoint {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `adjoint args`, which must fail cleanly with every one of `needles`
/// in its error message; returns its stderr.
fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = adjoint(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "adjoint {args:?} succeeded; stderr: {err}"
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        !err.contains("panicked"),
        "adjoint {args:?} panicked: {err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "adjoint {args:?}: no '{needle}' in: {err}"
        );
    }
    err
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// SplitMix64: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next_u64() % n) as i64
    }
}

fn write_tensors(path: &str, tensors: Vec<(&str, HostTensor)>) {
    let map: BTreeMap<String, HostTensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    std::fs::write(path, write_safetensors(&map).unwrap()).unwrap();
}

fn read_tensors(path: &str) -> BTreeMap<String, HostTensor> {
    read_safetensors(&std::fs::read(path).unwrap()).unwrap()
}

fn i64s(t: &HostTensor) -> Vec<i64> {
    assert_eq!(t.dtype, DType::I64);
    t.bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A batch for the mlp: `x` f32 `[n, 784]` in [-1, 1) and `labels` i64 `[n]` in [0, 10).
fn random_batch(n: usize, seed: u64) -> Vec<(&'static str, HostTensor)> {
    let mut rng = Rng(seed);
    let x: Vec<f32> = (0..n * 784).map(|_| rng.uniform()).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(10)).collect();
    vec![
        ("x", HostTensor::from_f32(vec![n, 784], &x)),
        ("labels", HostTensor::from_i64(vec![n], &labels)),
    ]
}

/// The loss and the gradient of every trainable parameter, computed in f64
/// by the reference interpreter on the graph in `graph_file`, with the
/// parameters from their initializers under `seed` (rounded to f32, as the
/// engine stores them) unless `overrides` gives them.
fn reference(
    graph_file: &str,
    batch: &BTreeMap<String, HostTensor>,
    overrides: &BTreeMap<&str, Vec<f32>>,
    seed: u64,
) -> (f64, BTreeMap<String, Tensor>) {
    let graph = serialize::decode(&std::fs::read(graph_file).unwrap()).unwrap();
    let loss = graph.loss.expect("the mlp has a loss");
    let joint = autodiff::grad(&graph, loss, &graph.trainable_params()).unwrap();
    let g = &joint.graph;
    let mut feeds = BTreeMap::new();
    for p in &g.params {
        let name = g.name_of(p.value);
        let data: Vec<f64> = match overrides.get(name) {
            Some(values) => values.iter().map(|&v| f64::from(v)).collect(),
            None => init::materialize(g, p.value, &p.init, seed)
                .unwrap()
                .data
                .iter()
                .map(|&v| f64::from(v as f32))
                .collect(),
        };
        feeds.insert(p.value, Tensor::new(g.static_shape(p.value), data));
    }
    for (name, t) in batch {
        let data: Vec<f64> = match t.dtype {
            DType::F32 => t.to_f32().unwrap().into_iter().map(f64::from).collect(),
            DType::I64 => i64s(t).into_iter().map(|v| v as f64).collect(),
            other => panic!("unexpected dtype {other}"),
        };
        let v = g.find(name).unwrap();
        feeds.insert(v, Tensor::new(t.shape.clone(), data));
    }
    let cx = EvalCx {
        seed,
        step: 0,
        rank: 0,
        exact_float_casts: false,
    };
    let env = interp::run(g, &feeds, &cx).unwrap();
    let loss_value = env[joint.loss.index()].as_ref().unwrap().data[0];
    let grads = joint
        .grads
        .iter()
        .map(|&(p, dp)| (g.name_of(p).to_owned(), env[dp.index()].clone().unwrap()))
        .collect();
    (loss_value, grads)
}

fn loss_of(grads: &BTreeMap<String, HostTensor>) -> f64 {
    let loss = &grads["loss"];
    assert!(loss.shape.is_empty(), "loss has shape {:?}", loss.shape);
    f64::from(loss.to_f32().unwrap()[0])
}

fn assert_close_to_reference(name: &str, got: &HostTensor, want: &Tensor) {
    assert_eq!(got.shape, want.shape, "{name}");
    let got = got.to_f32().unwrap();
    let mut worst = 0.0f64;
    for (i, (&a, &b)) in got.iter().zip(&want.data).enumerate() {
        let err = (f64::from(a) - b).abs();
        assert!(
            err <= 1e-4 * b.abs() + 1e-6,
            "{name}[{i}]: engine {a}, reference {b}"
        );
        worst = worst.max(err);
    }
    eprintln!("{name}: worst error {worst:e}");
    assert!(
        want.data.iter().any(|&b| b.abs() > 1e-4),
        "{name}: the reference gradient vanishes"
    );
}

#[test]
fn grad_matches_the_reference_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let model = path(dir.path(), "m.pb");
    let batch_file = path(dir.path(), "b.safetensors");
    let out = path(dir.path(), "g.safetensors");
    ok(&["model", "mlp", "--batch", "8", "-o", &model]);
    write_tensors(&batch_file, random_batch(8, 11));
    let batch = read_tensors(&batch_file);

    let stdout = ok(&[
        "grad",
        &model,
        "--batch",
        &batch_file,
        "-o",
        &out,
        "--seed",
        "3",
    ]);
    assert!(stdout.contains("wrote 6 gradients"), "{stdout}");
    let grads = read_tensors(&out);
    let names: Vec<&str> = grads.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = PARAMS.iter().map(|(n, _)| *n).chain(["loss"]).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    for (name, shape) in PARAMS {
        let t = &grads[name];
        assert_eq!(t.dtype, DType::F32, "{name}");
        assert_eq!(t.shape, shape, "{name}");
        assert!(t.to_f32().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }
    let loss = loss_of(&grads);
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");

    let (ref_loss, ref_grads) = reference(&model, &batch, &BTreeMap::new(), 3);
    assert!(
        (loss - ref_loss).abs() <= 1e-4 * ref_loss.abs(),
        "loss: engine {loss}, reference {ref_loss}"
    );
    for (name, _) in PARAMS {
        assert_close_to_reference(name, &grads[name], &ref_grads[name]);
    }

    // Parameters from a file replace their initializers. A constant bias
    // shifts every logit alike, so the loss is that of a zero bias, which
    // differs from the loss under the (non-constant) initial bias.
    let params_file = path(dir.path(), "p.safetensors");
    let bias = vec![0.5f32; 10];
    write_tensors(
        &params_file,
        vec![("fc3.bias", HostTensor::from_f32(vec![10], &bias))],
    );
    let out2 = path(dir.path(), "g2.safetensors");
    ok(&[
        "grad",
        &model,
        "--batch",
        &batch_file,
        "--params",
        &params_file,
        "-o",
        &out2,
        "--seed",
        "3",
    ]);
    let grads2 = read_tensors(&out2);
    let loss2 = loss_of(&grads2);
    assert!(
        (loss2 - loss).abs() > 1e-4,
        "the loss did not change: {loss} and {loss2}"
    );
    let overrides = BTreeMap::from([("fc3.bias", bias)]);
    let (ref_loss2, ref_grads2) = reference(&model, &batch, &overrides, 3);
    assert!(
        (loss2 - ref_loss2).abs() <= 1e-4 * ref_loss2.abs(),
        "loss with --params: engine {loss2}, reference {ref_loss2}"
    );
    assert_close_to_reference(
        "fc3.bias (with --params)",
        &grads2["fc3.bias"],
        &ref_grads2["fc3.bias"],
    );
}

/// A learnable dataset for the mlp: `x` uniform in [-1, 1) and each label
/// the index of the largest of the first ten features.
fn learnable_dataset(n: usize, seed: u64) -> Vec<(&'static str, HostTensor)> {
    let mut rng = Rng(seed);
    let x: Vec<f32> = (0..n * 784).map(|_| rng.uniform()).collect();
    let labels: Vec<i64> = x
        .chunks_exact(784)
        .map(|row| {
            let first = &row[..10];
            (0..10)
                .max_by(|&a, &b| first[a].total_cmp(&first[b]))
                .unwrap() as i64
        })
        .collect();
    vec![
        ("x", HostTensor::from_f32(vec![n, 784], &x)),
        ("labels", HostTensor::from_i64(vec![n], &labels)),
    ]
}

/// The number after `key` in `text`.
fn number_after(text: &str, key: &str) -> f64 {
    let rest = text
        .split(key)
        .nth(1)
        .unwrap_or_else(|| panic!("no '{key}' in: {text}"));
    let word = rest
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches([';', ',']);
    word.parse()
        .unwrap_or_else(|_| panic!("'{word}' after '{key}' is not a number: {text}"))
}

#[test]
fn train_lowers_the_loss_and_writes_every_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let model = path(dir.path(), "m.json");
    let data = path(dir.path(), "d.safetensors");
    let trained = path(dir.path(), "trained.safetensors");
    ok(&["model", "mlp", "-o", &model]);
    let dataset = learnable_dataset(64, 5);
    write_tensors(&data, dataset.clone());

    // The untrained model's loss on the first batch, for comparison.
    let model_16 = path(dir.path(), "m16.pb");
    ok(&["model", "mlp", "--batch", "16", "-o", &model_16]);
    let first = path(dir.path(), "first.safetensors");
    let x = dataset[0].1.to_f32().unwrap();
    let labels = i64s(&dataset[1].1);
    write_tensors(
        &first,
        vec![
            ("x", HostTensor::from_f32(vec![16, 784], &x[..16 * 784])),
            ("labels", HostTensor::from_i64(vec![16], &labels[..16])),
        ],
    );
    let initial = path(dir.path(), "initial.safetensors");
    ok(&["grad", &model_16, "--batch", &first, "-o", &initial]);
    let initial_loss = loss_of(&read_tensors(&initial));

    let stdout = ok(&[
        "train",
        &model,
        "--data",
        &data,
        "--steps",
        "30",
        "--batch-size",
        "16",
        "--optimizer",
        "sgd:lr=0.1,momentum=0.9",
        "-o",
        &trained,
    ]);
    eprintln!("{stdout}");
    assert!(
        stdout.contains("trained 30 steps of 16 samples"),
        "{stdout}"
    );
    assert!(stdout.contains("wrote 6 parameters"), "{stdout}");
    let final_loss = number_after(&stdout, "final loss");
    eprintln!("initial loss {initial_loss}, final loss {final_loss}");
    assert!(final_loss.is_finite(), "{stdout}");
    assert!(
        final_loss < 0.5 * initial_loss,
        "initial loss {initial_loss}, final {final_loss}"
    );

    let params = read_tensors(&trained);
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = PARAMS.iter().map(|(n, _)| *n).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    let graph = serialize::from_json(&std::fs::read_to_string(&model).unwrap()).unwrap();
    for (name, shape) in PARAMS {
        let t = &params[name];
        assert_eq!((t.dtype, t.shape.as_slice()), (DType::F32, shape), "{name}");
        let values = t.to_f32().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{name}");
        let v = graph.find(name).unwrap();
        let p = graph.params.iter().find(|p| p.value == v).unwrap();
        let initial = init::materialize(&graph, v, &p.init, 0).unwrap();
        let moved = values
            .iter()
            .zip(&initial.data)
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{name}: moved {moved:e}");
        assert!(
            moved > 1e-4,
            "{name} did not move from its initializer (max change {moved:e})"
        );
    }
}

#[test]
fn train_names_what_is_wrong_with_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = path(dir.path(), "m.json");
    ok(&["model", "mlp", "-o", &model]);
    let train = |data: &str, optimizer: &str, needles: &[&str]| {
        fails(
            &[
                "train",
                &model,
                "--data",
                data,
                "--steps",
                "1",
                "--batch-size",
                "4",
                "--optimizer",
                optimizer,
            ],
            needles,
        )
    };
    let [(_, x), (_, labels)] = <[_; 2]>::try_from(random_batch(8, 1)).unwrap();
    let good = path(dir.path(), "good.safetensors");
    write_tensors(&good, vec![("x", x.clone()), ("labels", labels.clone())]);

    let no_labels = path(dir.path(), "no-labels.safetensors");
    write_tensors(&no_labels, vec![("x", x.clone())]);
    train(&no_labels, "sgd", &["'labels'", "no-labels.safetensors"]);

    let narrow = path(dir.path(), "narrow.safetensors");
    let narrow_x = HostTensor::from_f32(vec![8, 100], &x.to_f32().unwrap()[..800]);
    write_tensors(&narrow, vec![("x", narrow_x), ("labels", labels.clone())]);
    train(&narrow, "sgd", &["'x'", "[8, 100]", "784"]);

    let wrong_dtype = path(dir.path(), "f32-labels.safetensors");
    let float_labels = HostTensor::from_f32(vec![8], &[1.0; 8]);
    write_tensors(
        &wrong_dtype,
        vec![("x", x.clone()), ("labels", float_labels)],
    );
    train(&wrong_dtype, "sgd", &["'labels'", "f32", "i64"]);

    let extra = path(dir.path(), "extra.safetensors");
    write_tensors(
        &extra,
        vec![
            ("x", x),
            ("labels", labels),
            ("weights", HostTensor::from_f32(vec![8], &[1.0; 8])),
        ],
    );
    train(&extra, "sgd", &["'weights'"]);

    let err = train(&good, "rmsprop", &["rmsprop", "sgd", "adamw"]);
    assert!(
        !err.contains("good.safetensors"),
        "the optimizer is checked first: {err}"
    );
    train(&good, "sgd:lr=abc", &["lr", "abc"]);
    train(&good, "sgd:beta1=0.9", &["beta1"]);

    let truncated = path(dir.path(), "truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    train(&truncated, "sgd", &["truncated.safetensors"]);
    let missing = path(dir.path(), "missing.safetensors");
    train(&missing, "sgd", &["missing.safetensors"]);

    // Training does the data check before it trains: a good file works.
    ok(&[
        "train",
        &model,
        "--data",
        &good,
        "--steps",
        "1",
        "--batch-size",
        "4",
    ]);
}

#[test]
fn grad_names_what_is_wrong_with_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = path(dir.path(), "m.pb");
    ok(&["model", "mlp", "--batch", "4", "-o", &model]);
    let batch = path(dir.path(), "b.safetensors");
    write_tensors(&batch, random_batch(4, 2));
    let out = path(dir.path(), "g.safetensors");

    // A graph without a loss.
    let mut lossless = mlp(&MlpConfig {
        batch: Some(4),
        ..MlpConfig::default()
    })
    .unwrap();
    lossless.loss = None;
    let lossless_file = path(dir.path(), "lossless.pb");
    std::fs::write(&lossless_file, serialize::encode(&lossless)).unwrap();
    fails(
        &["grad", &lossless_file, "--batch", &batch, "-o", &out],
        &["no loss"],
    );

    // Parameter files: a wrong shape, a name that is no parameter.
    let with_params = |tensors: Vec<(&str, HostTensor)>, needles: &[&str]| {
        let params = path(dir.path(), "p.safetensors");
        write_tensors(&params, tensors);
        fails(
            &[
                "grad", &model, "--batch", &batch, "--params", &params, "-o", &out,
            ],
            needles,
        );
    };
    with_params(
        vec![("fc3.bias", HostTensor::from_f32(vec![11], &[0.0; 11]))],
        &["'fc3.bias'", "[11]", "p.safetensors"],
    );
    with_params(
        vec![(
            "fc3.weight",
            HostTensor::from_f32(vec![10, 1024], &[0.0; 10240]),
        )],
        &["'fc3.weight'", "[10, 1024]"],
    );
    with_params(
        vec![("fc3.bias", HostTensor::from_i64(vec![10], &[0; 10]))],
        &["'fc3.bias'", "i64"],
    );
    with_params(
        vec![("fc9.weight", HostTensor::from_f32(vec![2], &[0.0; 2]))],
        &["'fc9.weight'", "not a parameter"],
    );

    // Batch files: truncated, missing an input.
    let truncated = path(dir.path(), "truncated.safetensors");
    let bytes = std::fs::read(&batch).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &["grad", &model, "--batch", &truncated, "-o", &out],
        &["truncated.safetensors"],
    );
    std::fs::write(&truncated, &bytes[..4]).unwrap();
    fails(
        &["grad", &model, "--batch", &truncated, "-o", &out],
        &["truncated.safetensors"],
    );
    let [(_, x), _] = <[_; 2]>::try_from(random_batch(4, 2)).unwrap();
    let no_labels = path(dir.path(), "no-labels.safetensors");
    write_tensors(&no_labels, vec![("x", x)]);
    fails(
        &["grad", &model, "--batch", &no_labels, "-o", &out],
        &["'labels'"],
    );
    assert!(!Path::new(&out).exists(), "a failed grad wrote {out}");

    // And the same files without the mistakes work.
    ok(&["grad", &model, "--batch", &batch, "-o", &out]);
}

#[test]
fn bench_prints_one_json_line() {
    let stdout = ok(&["bench", "mlp", "--steps", "1", "--warmup", "0"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let line: serde_json::Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(line["workload"], "mlp", "{line}");
    assert_eq!(line["impl"], "adjoint", "{line}");
    let number = |key: &str| {
        line[key]
            .as_f64()
            .filter(|v| v.is_finite())
            .unwrap_or_else(|| panic!("'{key}' is not a number: {line}"))
    };
    for key in [
        "fwd_ms",
        "step_ms",
        "gflops",
        "fwd_gflops",
        "peak_bytes",
        "param_bytes",
        "grad_bytes",
    ] {
        assert!(number(key) > 0.0, "'{key}' is not positive: {line}");
    }
    // The backward rate is a difference of two timings; only its presence is checked.
    number("bwd_gflops");
    assert!(line["optim_bytes"].is_u64(), "{line}");
    // Parameters and gradients are f32, at least 4 bytes per element.
    let elements: usize = PARAMS
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    for key in ["param_bytes", "grad_bytes"] {
        assert!(
            line[key].as_u64().unwrap() >= 4 * elements as u64,
            "'{key}': {line}"
        );
    }
}
