//! The fuzz targets' entry points, one per input kind, shared by the
//! cargo-fuzz targets under `fuzz/` and the stable test
//! `tests/tests/fuzz_corpus.rs`, which runs every saved input (the seed
//! corpus and the regressions) through them in `cargo test`.
//!
//! Each entry takes arbitrary bytes and returns `Ok` when the input is
//! accepted and `Err` (the loader's message) when it is rejected. None of
//! them may panic on any input: a panic is a bug, either in the loader or
//! in one of the invariants the entries assert on what they accept (a
//! decoded graph re-encodes to the same bytes, a normalized job spec is a
//! fixed point of `normalize`, ...).

use adjoint_client::spec::{SpecFields, optimizer_spec, schedule_spec};
use adjoint_graph::onnx::{self, ImportOptions};
use adjoint_graph::{Error as GraphError, Graph, serialize, validate};
use adjoint_proto::v1::{JobSpec, job_spec};
use adjoint_server::plan;
use anyhow::{Context, Result, anyhow, bail};
use prost::Message;

/// A target's entry: `Ok` when the input is accepted.
pub type Entry = fn(&[u8]) -> Result<()>;

/// The fuzz targets: name (a folder of `fuzz/corpus/` and
/// `fuzz/regressions/`) and entry.
pub const TARGETS: [(&str, Entry); 4] = [
    ("graph_proto", graph_proto),
    ("graph_json", graph_json),
    ("onnx_import", onnx_import),
    ("job_spec", job_spec),
];

/// The entry of target `name`, if there is one.
pub fn entry(name: &str) -> Option<Entry> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Binary protobuf `adjoint.v1.Graph` → [`serialize::decode`]. An accepted
/// graph validates and round-trips: `decode(encode(g)) == g`, and its
/// encoding is stable.
pub fn graph_proto(data: &[u8]) -> Result<()> {
    let graph = serialize::decode(data)?;
    check_graph_round_trip(&graph);
    Ok(())
}

/// UTF-8 proto3 JSON → [`serialize::from_json`]. An accepted graph
/// round-trips through JSON and through binary protobuf.
pub fn graph_json(data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data).context("not UTF-8")?;
    let graph = serialize::from_json(text)?;
    check_graph_round_trip(&graph);
    let bytes = serialize::encode(&graph);
    let again = serialize::from_json(&serialize::to_json(&graph))
        .unwrap_or_else(|e| panic!("to_json of an accepted graph does not load: {e}"));
    assert!(
        serialize::encode(&again) == bytes,
        "from_json(to_json(g)) differs from g"
    );
    Ok(())
}

/// ONNX `ModelProto` bytes → [`onnx::import`] with no external data files,
/// once with default options and once with the batch bound to 2. An
/// imported graph validates and round-trips through protobuf. Accepted
/// when either import succeeds.
pub fn onnx_import(data: &[u8]) -> Result<()> {
    let mut errors = Vec::new();
    for opts in [
        ImportOptions::default(),
        ImportOptions {
            batch: Some(2),
            ..ImportOptions::default()
        },
    ] {
        match onnx::import(data, &opts, &no_external_files) {
            Ok(imported) => {
                check_graph_round_trip(&imported.graph);
                assert_eq!(
                    imported.outputs.len(),
                    imported.graph.outputs.len(),
                    "imported outputs and graph outputs differ"
                );
            }
            Err(e) => errors.push(format!("batch {:?}: {e}", opts.batch)),
        }
    }
    match errors.len() {
        2 => Err(anyhow!(errors.join("; "))),
        _ => Ok(()),
    }
}

/// The external data callback: there are no files.
#[allow(clippy::result_large_err)] // the signature `onnx::import` takes
fn no_external_files(location: &str) -> adjoint_graph::Result<Vec<u8>> {
    Err(GraphError::Unsupported(format!(
        "fuzzing: no external data ('{location}')"
    )))
}

/// Two readings of the same bytes, accepted when either succeeds:
/// - binary protobuf `adjoint.v1.JobSpec` → [`plan::normalize`] (a
///   normalized spec normalizes to itself) and, for an inline graph,
///   [`plan::decode_graph`] and [`plan::check_graph`], as submit does;
/// - UTF-8 TOML → [`SpecFields`], its optimizer and schedule strings
///   parsed as the CLI does, then the spec they make normalized.
pub fn job_spec(data: &[u8]) -> Result<()> {
    let proto = job_spec_proto(data);
    let toml = job_spec_toml(data);
    match (proto, toml) {
        (Err(p), Err(t)) => bail!("as protobuf: {p:#}; as TOML: {t:#}"),
        _ => Ok(()),
    }
}

fn job_spec_proto(data: &[u8]) -> Result<()> {
    let spec = JobSpec::decode(data).context("protobuf")?;
    let spec = plan::normalize(spec)?;
    check_normalized(&spec);
    if let Some(job_spec::Model::Graph(_)) = &spec.model {
        let graph = plan::decode_graph(&spec, None)?;
        plan::check_graph(&graph, &spec)?;
    }
    Ok(())
}

fn job_spec_toml(data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data).context("not UTF-8")?;
    let fields: SpecFields = toml::from_str(text).context("TOML")?;
    // As `SpecFields::build` makes the spec, with blob ids in place of the
    // uploads and no graph file read.
    let blob = |path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|_| format!("blobs/{}", "0".repeat(64)))
            .unwrap_or_default()
    };
    let spec = JobSpec {
        name: fields.name.clone().unwrap_or_default(),
        model: Some(job_spec::Model::GraphBlob(format!(
            "blobs/{}",
            "1".repeat(64)
        ))),
        dataset_blob: blob(&fields.data),
        eval_blob: blob(&fields.eval),
        init_blob: blob(&fields.init),
        workers: fields.workers.unwrap_or(1),
        device: fields.device.clone().unwrap_or_else(|| "cpu".into()),
        batch_size: fields.batch_size.unwrap_or(0),
        grad_accum: fields.grad_accum.unwrap_or(1),
        steps: fields.steps.unwrap_or(0),
        epochs: fields.epochs.unwrap_or(0),
        optimizer: Some(optimizer_spec(
            fields.optimizer.as_deref().unwrap_or("sgd:lr=0.01"),
        )?),
        schedule: Some(schedule_spec(
            fields.schedule.as_deref().unwrap_or("constant"),
        )?),
        clip_grad_norm: fields.clip_grad_norm.unwrap_or(0.0),
        checkpoint_every: fields.checkpoint_every.unwrap_or(0),
        eval_every: fields.eval_every.unwrap_or(0),
        seed: fields.seed.unwrap_or(0),
        resume_from_job: fields.resume_from.clone().unwrap_or_default(),
        bucket_mb: fields.bucket_mb.unwrap_or(0.0),
        checkpoint: fields.checkpoint.clone().unwrap_or_default(),
        memory_budget: fields.memory_budget.clone().unwrap_or_default(),
        lazy_experts: fields.lazy_experts.unwrap_or(false),
        expert_parallel: fields.expert_parallel.unwrap_or(1),
        nan_policy: fields.nan_policy.clone().unwrap_or_default(),
        max_restarts: fields.max_restarts,
        ..JobSpec::default()
    };
    let spec = plan::normalize(spec)?;
    check_normalized(&spec);
    Ok(())
}

/// A normalized spec is what the coordinator stores and workers receive:
/// normalizing it again must accept it unchanged.
fn check_normalized(spec: &JobSpec) {
    match plan::normalize(spec.clone()) {
        Ok(again) => assert!(
            again == *spec,
            "normalize is not idempotent:\n{spec:?}\nbecomes\n{again:?}"
        ),
        Err(e) => panic!("a normalized spec does not normalize again: {e}\n{spec:?}"),
    }
}

/// An accepted graph is valid, and its protobuf encoding loads back to the
/// same graph with the same bytes.
fn check_graph_round_trip(graph: &Graph) {
    if let Err(e) = validate::validate(graph) {
        panic!("an accepted graph does not validate: {e}");
    }
    let bytes = serialize::encode(graph);
    let again = serialize::decode(&bytes)
        .unwrap_or_else(|e| panic!("encode of an accepted graph does not decode: {e}"));
    assert!(
        serialize::encode(&again) == bytes,
        "encode(decode(encode(g))) != encode(g)"
    );
}
