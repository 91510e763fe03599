//! ONNX's own backend node tests, run through the importer and the f64
//! reference interpreter: every case (a one-node model with input and
//! expected output tensors) of every op the importer maps is imported,
//! run, and compared with ONNX's expected outputs (|got − want| ≤ 1e-6 +
//! 1e-3·|want|, ONNX's tolerance).
//!
//! Integer inputs of a case (shapes, axes, indices) are bound at import
//! from the case's data, as the fixed shapes of an exported model are; the
//! float inputs are fed.
//!
//! The cases come from the `onnx` Python package (its wheel ships the
//! generators; `scripts/onnx_node_data.py OUT` writes them) in the folder
//! `ADJOINT_ONNX_NODE_TESTS` names; `.ci/run` sets it up. Without it the
//! test says so and passes. A case the importer refuses with an
//! "unsupported" error (a dtype, an attribute, an op we do not have yet)
//! counts as skipped with that reason; any other outcome than a match is a
//! failure, unless `onnx_backend_known.txt` lists the case with its reason.
//! The summary (passed / run / total per op) is printed.

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adjoint_graph::interp::{EvalCx, Tensor, run_outputs};
use adjoint_graph::onnx::{ImportOptions, import, read_tensor};
use adjoint_graph::{Error, init};
use adjoint_proto::onnx::{ModelProto, TensorProto};
use prost::Message;

#[derive(Debug)]
enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

fn op_of(model: &[u8]) -> String {
    ModelProto::decode(model)
        .ok()
        .and_then(|m| m.graph)
        .and_then(|g| g.node.first().and_then(|n| n.op_type.clone()))
        .unwrap_or_else(|| "?".into())
}

fn tensor_file(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, data) = read_tensor(&bytes).map_err(|e| e.to_string())?;
    let values = init::decode(&data)?;
    Ok(Tensor::new(data.shape.clone(), values))
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (0..)
        .map(|i| dir.join(format!("{prefix}_{i}.pb")))
        .take_while(|p| p.exists())
        .collect();
    out.sort();
    out
}

fn close(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-6 + 1e-3 * w.abs();
        if !ok {
            return Err(format!("element {i}: {g}, expected {w}"));
        }
    }
    Ok(())
}

/// ONNX's INT32 and INT64 element types.
const INT_TYPES: [i32; 2] = [6, 7];

fn run_case(dir: &Path) -> Outcome {
    let Ok(bytes) = std::fs::read(dir.join("model.onnx")) else {
        return Outcome::Failed("no model.onnx".into());
    };
    let Ok(model) = ModelProto::decode(bytes.as_slice()) else {
        return Outcome::Failed("model.onnx does not decode".into());
    };
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    for set in sets {
        if let Err(outcome) = run_set(&model, &set) {
            return outcome;
        }
    }
    Outcome::Passed
}

/// One data set of a case. Integer inputs (shapes, axes, indices, counts)
/// are given to the importer as initializers holding the set's values: a
/// static-shape importer takes them at import, as a model exported with
/// fixed shapes carries them; the float inputs are fed at run time.
fn run_set(model: &ModelProto, set: &Path) -> Result<(), Outcome> {
    let no_files = |location: &str| -> adjoint_graph::Result<Vec<u8>> {
        Err(Error::Decode(format!("no external data here ({location})")))
    };
    let mut model = model.clone();
    let graph = model
        .graph
        .as_mut()
        .expect("the model decoded with a graph");
    let given = files(set, "input");
    if given.len() != graph.input.len() {
        return Err(Outcome::Failed(format!(
            "{} input files for {} model inputs",
            given.len(),
            graph.input.len()
        )));
    }
    let mut runtime_inputs = Vec::new();
    for (info, path) in graph.input.clone().iter().zip(&given) {
        let name = info.name.clone().unwrap_or_default();
        let bytes = std::fs::read(path).map_err(|e| Outcome::Failed(e.to_string()))?;
        let mut t = TensorProto::decode(bytes.as_slice())
            .map_err(|e| Outcome::Failed(format!("{}: {e}", path.display())))?;
        if t.data_type.is_some_and(|d| INT_TYPES.contains(&d)) {
            t.name = Some(name);
            graph.initializer.push(t);
        } else {
            runtime_inputs.push((name, path.clone()));
        }
    }
    let imported = match import(&model.encode_to_vec(), &ImportOptions::default(), &no_files) {
        Ok(i) => i,
        Err(e @ Error::Unsupported(_)) => return Err(Outcome::Skipped(e.to_string())),
        Err(e) => return Err(Outcome::Failed(format!("import: {e}"))),
    };
    let g = &imported.graph;
    let mut feeds = BTreeMap::new();
    for (name, path) in &runtime_inputs {
        let Some(v) = g
            .inputs
            .iter()
            .map(|i| i.value)
            .find(|&v| g.name_of(v) == name)
        else {
            return Err(Outcome::Failed(format!("no graph input '{name}'")));
        };
        let t = tensor_file(path).map_err(|e| Outcome::Skipped(format!("input tensor: {e}")))?;
        feeds.insert(v, t);
    }
    let got = run_outputs(g, &feeds, &EvalCx::default())
        .map_err(|e| Outcome::Failed(format!("run: {e}")))?;
    let want = files(set, "output");
    if want.len() != got.len() {
        return Err(Outcome::Failed(format!(
            "{} outputs, expected {}",
            got.len(),
            want.len()
        )));
    }
    for (j, (g, path)) in got.iter().zip(&want).enumerate() {
        let w = tensor_file(path).map_err(|e| Outcome::Skipped(format!("output tensor: {e}")))?;
        close(g, &w).map_err(|e| Outcome::Failed(format!("output {j}: {e}")))?;
    }
    Ok(())
}

/// Cases that fail for a known reason: `case  reason` per line.
fn known() -> BTreeMap<String, String> {
    include_str!("onnx_backend_known.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (case, why) = l.split_once(char::is_whitespace)?;
            Some((case.to_owned(), why.trim().to_owned()))
        })
        .collect()
}

#[test]
fn onnx_backend_node_tests() {
    let Some(root) = std::env::var_os("ADJOINT_ONNX_NODE_TESTS") else {
        println!(
            "skipped: ADJOINT_ONNX_NODE_TESTS is not set (pip install onnx, then \
             `python scripts/onnx_node_data.py DIR` and point it at DIR)"
        );
        return;
    };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("ADJOINT_ONNX_NODE_TESTS is a folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", root.to_string_lossy());
    let known = known();
    // op -> (passed, run, total)
    let mut per_op: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    let mut known_failed = 0;
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let op = op_of(&std::fs::read(dir.join("model.onnx")).unwrap_or_default());
        let outcome = run_case(dir);
        let e = per_op.entry(op).or_default();
        e.2 += 1;
        match outcome {
            Outcome::Passed => {
                e.0 += 1;
                e.1 += 1;
            }
            Outcome::Skipped(why) => skipped.push((name, why)),
            Outcome::Failed(why) => {
                e.1 += 1;
                match known.get(&name) {
                    Some(_) => known_failed += 1,
                    None => failures.push((name, why)),
                }
            }
        }
    }
    let (passed, run, total) = per_op
        .values()
        .fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
    println!("ONNX backend node tests: {passed} passed / {run} run / {total} total");
    println!("{:<22} {:>6} {:>4} {:>6}", "op", "passed", "run", "total");
    for (op, (p, r, t)) in &per_op {
        println!("{op:<22} {p:>6} {r:>4} {t:>6}");
    }
    println!("skipped ({}), each with its reason:", skipped.len());
    for (case, why) in &skipped {
        println!("  {case}: {why}");
    }
    println!("failed but listed in onnx_backend_known.txt: {known_failed}");
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(c, w)| format!("  {c}: {w}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
