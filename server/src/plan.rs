//! Validation and planning of a job at submit time. Pure: the blobs it
//! needs (graph bytes, dataset headers) are read by the caller.
//!
//! 1. [`normalize`] fills the spec's defaults (workers 1, device "cpu",
//!    grad_accum 1, optimizer sgd with lr 0.01, schedule "constant") and
//!    checks its scalar fields. The normalized spec is what is stored and
//!    what workers receive in their `Assignment`.
//! 2. [`decode_graph`] loads the graph (inline message or blob bytes,
//!    binary protobuf or proto3 JSON).
//! 3. [`check_dataset`] matches a safetensors header against the graph
//!    inputs: a tensor per input, same dtype, same per-sample shape, the same
//!    sample count everywhere, no extra tensors.
//! 4. [`estimate`] binds the batch dimension to `batch_size`, differentiates
//!    the loss with respect to the trainable parameters, plans memory and
//!    hashes the plan — exactly as a worker does before it runs, so the
//!    [`Estimate::plan_hash`] is the one each worker must reproduce.

use std::collections::BTreeMap;

use adjoint_graph::plan::{MemoryPlan, PlanOptions, plan_hash, plan_memory};
use adjoint_graph::{DType, Dim, Graph, autodiff, serialize};
use adjoint_proto::v1::{Estimate, JobSpec, OptimizerSpec, job_spec};
use safetensors::Dtype;
use safetensors::tensor::Metadata;

use crate::{Error, Result, names};

/// The device kinds a job may ask for.
pub const DEVICES: [&str; 2] = ["cpu", "gpu"];

/// Fills the defaults of `spec` and checks its fields (not the graph or the
/// blobs' content).
pub fn normalize(mut spec: JobSpec) -> Result<JobSpec> {
    let bad = |field, message: &str| Error::InvalidSpec {
        field,
        message: message.to_owned(),
    };
    match &spec.model {
        None => return Err(bad("model", "set either graph or graph_blob")),
        Some(job_spec::Model::GraphBlob(id)) => names::check_blob_id(id)?,
        Some(job_spec::Model::Graph(_)) => {}
    }
    if spec.dataset_blob.is_empty() {
        return Err(bad("dataset_blob", "is required"));
    }
    names::check_blob_id(&spec.dataset_blob)?;
    for blob in [&spec.eval_blob, &spec.init_blob] {
        if !blob.is_empty() {
            names::check_blob_id(blob)?;
        }
    }
    if !spec.resume_from_job.is_empty() {
        names::check_job_id(&spec.resume_from_job)?;
    }
    if spec.batch_size == 0 {
        return Err(bad("batch_size", "is required and must be at least 1"));
    }
    if spec.steps == 0 && spec.epochs == 0 {
        return Err(bad("steps", "set steps or epochs"));
    }
    spec.workers = spec.workers.max(1);
    spec.grad_accum = spec.grad_accum.max(1);
    if spec.device.is_empty() {
        spec.device = "cpu".into();
    }
    if !DEVICES.contains(&spec.device.as_str()) {
        return Err(bad("device", &format!("'{}': use cpu or gpu", spec.device)));
    }
    if !spec.clip_grad_norm.is_finite() || spec.clip_grad_norm < 0.0 {
        return Err(bad("clip_grad_norm", "must be finite and not negative"));
    }
    if !spec.bucket_mb.is_finite() || !(0.0..=1e6).contains(&spec.bucket_mb) {
        return Err(bad("bucket_mb", "must be a size in MiB from 0 to 1e6"));
    }
    spec.optimizer = Some(normalize_optimizer(
        spec.optimizer.take().unwrap_or_default(),
    )?);
    let mut schedule = spec.schedule.take().unwrap_or_default();
    schedule.kind = schedule.kind.to_ascii_lowercase();
    if schedule.kind.is_empty() {
        schedule.kind = "constant".into();
    }
    if !matches!(schedule.kind.as_str(), "constant" | "cosine") {
        return Err(bad(
            "schedule.kind",
            &format!("'{}': use constant or cosine", schedule.kind),
        ));
    }
    spec.schedule = Some(schedule);
    Ok(spec)
}

/// Names are lowercased (the workers read them case-insensitively).
/// Defaults: name "sgd", lr 0.01 (sgd) or 0.001 (adamw); adamw's beta1,
/// beta2 and eps default to 0.9, 0.999 and 1e-8 when zero.
fn normalize_optimizer(mut opt: OptimizerSpec) -> Result<OptimizerSpec> {
    let bad = |field, message: String| Error::InvalidSpec { field, message };
    opt.name = opt.name.to_ascii_lowercase();
    if opt.name.is_empty() {
        opt.name = "sgd".into();
    }
    match opt.name.as_str() {
        "sgd" => {
            if opt.lr == 0.0 {
                opt.lr = 0.01;
            }
            if !(0.0..1.0).contains(&opt.momentum) {
                return Err(bad(
                    "optimizer.momentum",
                    format!("{} is not in [0, 1)", opt.momentum),
                ));
            }
        }
        "adamw" => {
            if opt.lr == 0.0 {
                opt.lr = 1e-3;
            }
            for (value, default) in [
                (&mut opt.beta1, 0.9),
                (&mut opt.beta2, 0.999),
                (&mut opt.eps, 1e-8),
            ] {
                if *value == 0.0 {
                    *value = default;
                }
            }
        }
        other => {
            return Err(bad(
                "optimizer.name",
                format!("'{other}': use sgd or adamw"),
            ));
        }
    }
    if !opt.lr.is_finite() || opt.lr < 0.0 {
        return Err(bad(
            "optimizer.lr",
            format!("{} is not a positive number", opt.lr),
        ));
    }
    Ok(opt)
}

/// Optimizer state elements per parameter element (as the worker's
/// `OptimizerConfig::state_per_element`): sgd with momentum 1, without 0,
/// adamw 2.
pub fn optimizer_state_per_element(opt: &OptimizerSpec) -> u64 {
    match opt.name.as_str() {
        "adamw" => 2,
        _ => u64::from(opt.momentum != 0.0),
    }
}

/// Loads the job's graph: the inline message, or the blob's bytes (binary
/// protobuf, or proto3 JSON if they start with `{`).
pub fn decode_graph(spec: &JobSpec, blob: Option<&[u8]>) -> Result<Graph> {
    match (&spec.model, blob) {
        (Some(job_spec::Model::Graph(graph)), _) => Ok(serialize::from_proto(graph)?),
        (Some(job_spec::Model::GraphBlob(_)), Some(bytes)) => {
            let text = bytes.trim_ascii_start();
            if text.first() == Some(&b'{') {
                let text = std::str::from_utf8(text)
                    .map_err(|e| adjoint_graph::Error::Decode(format!("json: {e}")))?;
                Ok(serialize::from_json(text)?)
            } else {
                Ok(serialize::decode(bytes)?)
            }
        }
        _ => Err(Error::InvalidSpec {
            field: "model",
            message: "set either graph or graph_blob".into(),
        }),
    }
}

/// Name → (dtype, shape) of the tensors of a safetensors header.
pub fn tensors_of(metadata: &Metadata) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, (info.dtype, info.shape.clone())))
        .collect()
}

/// Checks that `tensors` (of blob `blob`, spec field `field`) hold samples
/// for every input of `graph` with `batch` samples per batch, and at least
/// `min_samples` of them; returns the number of samples. Messages name the
/// tensor.
pub fn check_dataset(
    graph: &Graph,
    field: &'static str,
    blob: &str,
    tensors: &BTreeMap<String, (Dtype, Vec<usize>)>,
    batch: u64,
    min_samples: u64,
) -> Result<u64> {
    let bad = |message: String| Error::Dataset {
        field,
        blob: blob.to_owned(),
        message,
    };
    let mut samples: Option<(u64, &str)> = None;
    for input in &graph.inputs {
        let name = graph.name_of(input.value);
        let want = graph.ty(input.value);
        let Some((dtype, shape)) = tensors.get(name) else {
            return Err(bad(format!(
                "has no tensor '{name}' for graph input '{name}'"
            )));
        };
        if dtype_of(*dtype) != Some(want.dtype) {
            return Err(bad(format!(
                "tensor '{name}' has dtype {dtype}, but graph input '{name}' is {}",
                want.dtype
            )));
        }
        let per_sample: Vec<usize> = want
            .shape
            .dims()
            .iter()
            .skip(1)
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Batch => batch as usize,
            })
            .collect();
        if shape.is_empty() || shape[1..] != per_sample[..] {
            return Err(bad(format!(
                "tensor '{name}' has shape {shape:?}, but graph input '{name}' {} needs \
                 [samples, {}]",
                want.shape,
                per_sample
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let n = shape[0] as u64;
        match samples {
            Some((m, other)) if m != n => {
                return Err(bad(format!(
                    "tensor '{name}' has {n} samples, but tensor '{other}' has {m}"
                )));
            }
            _ => samples = Some((n, name)),
        }
    }
    if let Some(extra) = tensors.keys().find(|t| {
        graph
            .find(t)
            .is_none_or(|v| !graph.inputs.iter().any(|i| i.value == v))
    }) {
        return Err(bad(format!("tensor '{extra}' is not a graph input")));
    }
    let samples = samples.map_or(0, |(n, _)| n);
    if samples < min_samples {
        return Err(bad(format!(
            "has {samples} samples, fewer than the {min_samples} one step needs"
        )));
    }
    Ok(samples)
}

/// The graph dtype of a safetensors dtype, if there is one.
fn dtype_of(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Checks the graph against the (normalized) spec: it has a loss, and every
/// input's leading (sample) dimension is the batch symbol or `batch_size`.
pub fn check_graph(graph: &Graph, spec: &JobSpec) -> Result<()> {
    if graph.loss.is_none() {
        return Err(adjoint_graph::Error::Unsupported(format!(
            "graph '{}' has no loss to train",
            graph.name
        ))
        .into());
    }
    for input in &graph.inputs {
        let name = graph.name_of(input.value);
        let shape = &graph.ty(input.value).shape;
        match shape.dims().first() {
            None => {
                return Err(adjoint_graph::Error::InvalidValue {
                    value: name.to_owned(),
                    message: "a graph input needs a leading batch dimension, found a scalar".into(),
                }
                .into());
            }
            Some(Dim::Fixed(n)) if *n as u64 != spec.batch_size => {
                return Err(Error::InvalidSpec {
                    field: "batch_size",
                    message: format!(
                        "{}, but graph input '{name}' fixes its batch at {n}",
                        spec.batch_size
                    ),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The bound joint graph of a job and its memory plan: what every worker
/// derives from the spec.
#[derive(Debug, Clone)]
pub struct JointPlan {
    pub graph: Graph,
    pub plan: MemoryPlan,
}

/// Binds the batch to `batch`, differentiates the loss with respect to the
/// trainable parameters and plans the joint graph's memory.
pub fn joint_plan(graph: &Graph, batch: u64) -> Result<JointPlan> {
    let bound = graph.bind_batch(batch as usize);
    let loss = bound.loss.ok_or_else(|| {
        adjoint_graph::Error::Unsupported(format!("graph '{}' has no loss to train", graph.name))
    })?;
    let joint = autodiff::grad(&bound, loss, &bound.trainable_params())?;
    let plan = plan_memory(&joint.graph, &PlanOptions::with_grads(&joint.grads))?;
    Ok(JointPlan {
        graph: joint.graph,
        plan,
    })
}

/// The per-worker estimate of a job whose graph is `graph` (checked with
/// [`check_graph`]) and whose spec is normalized.
pub fn estimate(graph: &Graph, spec: &JobSpec) -> Result<Estimate> {
    let JointPlan { graph: joint, plan } = joint_plan(graph, spec.batch_size)?;
    let optimizer = spec.optimizer.clone().unwrap_or_default();
    let param_bytes = plan.param_bytes as u64;
    let optimizer_bytes = param_bytes * optimizer_state_per_element(&optimizer);
    let flops_per_step = joint.flops();
    Ok(Estimate {
        arena_bytes: plan.arena_bytes as u64,
        param_bytes,
        grad_bytes: plan.grad_bytes as u64,
        optimizer_bytes,
        input_bytes: plan.input_bytes as u64,
        total_bytes: plan.total_bytes() as u64 + optimizer_bytes,
        flops_per_step,
        plan_hash: plan_hash(&joint, &plan),
    })
}

/// Samples one optimizer step takes over all ranks: workers × grad_accum ×
/// batch_size (as the workers' sampler counts them).
pub fn samples_per_step(spec: &JobSpec) -> u64 {
    u64::from(spec.workers) * u64::from(spec.grad_accum) * spec.batch_size
}

/// "arena A + params P + grads G + optimizer O + inputs I" (bytes).
pub fn breakdown(e: &Estimate) -> String {
    format!(
        "arena {} + params {} + grads {} + optimizer {} + inputs {}",
        e.arena_bytes, e.param_bytes, e.grad_bytes, e.optimizer_bytes, e.input_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use adjoint_graph::zoo::{MlpConfig, mlp};

    fn small() -> Graph {
        mlp(&MlpConfig {
            input: 4,
            hidden: vec![8],
            classes: 3,
            batch: None,
        })
        .unwrap()
    }

    fn spec() -> JobSpec {
        JobSpec {
            model: Some(job_spec::Model::GraphBlob(format!(
                "blobs/{}",
                "0".repeat(64)
            ))),
            dataset_blob: format!("blobs/{}", "1".repeat(64)),
            batch_size: 2,
            steps: 3,
            ..JobSpec::default()
        }
    }

    #[test]
    fn defaults_are_filled_and_bad_fields_named() {
        let s = normalize(spec()).unwrap();
        assert_eq!((s.workers, s.device.as_str(), s.grad_accum), (1, "cpu", 1));
        let opt = s.optimizer.unwrap();
        assert_eq!((opt.name.as_str(), opt.lr), ("sgd", 0.01));
        let err = normalize(JobSpec {
            batch_size: 0,
            ..spec()
        })
        .unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
        let err = normalize(JobSpec { steps: 0, ..spec() }).unwrap_err();
        assert!(err.to_string().contains("steps"), "{err}");
        let err = normalize(JobSpec {
            device: "tpu".into(),
            ..spec()
        })
        .unwrap_err();
        assert!(err.to_string().contains("tpu"), "{err}");
    }

    #[test]
    fn the_estimate_adds_up_and_counts_optimizer_state() {
        let graph = small();
        let mut s = normalize(spec()).unwrap();
        let sgd = estimate(&graph, &s).unwrap();
        assert_eq!(sgd.optimizer_bytes, 0);
        assert_eq!(sgd.param_bytes, (4 * 8 + 8 + 8 * 3 + 3) * 4);
        assert!(sgd.flops_per_step > 0);
        s.optimizer = Some(OptimizerSpec {
            name: "adamw".into(),
            ..OptimizerSpec::default()
        });
        let s = normalize(s).unwrap();
        let adam = estimate(&graph, &s).unwrap();
        assert_eq!(adam.optimizer_bytes, 2 * adam.param_bytes);
        assert_eq!(
            adam.total_bytes,
            adam.arena_bytes
                + adam.param_bytes
                + adam.grad_bytes
                + adam.optimizer_bytes
                + adam.input_bytes
        );
        assert_eq!(adam.plan_hash, sgd.plan_hash);
    }

    #[test]
    fn dataset_mismatches_name_the_tensor() {
        let graph = small();
        let mut tensors = BTreeMap::new();
        tensors.insert("x".to_owned(), (Dtype::F32, vec![10, 4]));
        tensors.insert("labels".to_owned(), (Dtype::I64, vec![10]));
        assert_eq!(
            check_dataset(&graph, "dataset_blob", "b", &tensors, 2, 2).unwrap(),
            10
        );
        let mut wrong = tensors.clone();
        wrong.insert("extra".into(), (Dtype::F32, vec![10]));
        let err = check_dataset(&graph, "dataset_blob", "b", &wrong, 2, 2).unwrap_err();
        assert!(err.to_string().contains("'extra'"), "{err}");
        let mut wrong = tensors.clone();
        wrong.insert("x".into(), (Dtype::F32, vec![10, 5]));
        let err = check_dataset(&graph, "dataset_blob", "b", &wrong, 2, 2).unwrap_err();
        assert!(err.to_string().contains("tensor 'x'"), "{err}");
        let mut wrong = tensors.clone();
        wrong.insert("labels".into(), (Dtype::I64, vec![9]));
        let err = check_dataset(&graph, "dataset_blob", "b", &wrong, 2, 2).unwrap_err();
        assert!(err.to_string().contains("9 samples"), "{err}");
        let err = check_dataset(&graph, "dataset_blob", "b", &tensors, 2, 12).unwrap_err();
        assert!(
            err.to_string().contains("10 samples, fewer than the 12"),
            "{err}"
        );
        wrong.remove("labels");
        let err = check_dataset(&graph, "dataset_blob", "b", &wrong, 2, 2).unwrap_err();
        assert!(err.to_string().contains("no tensor 'labels'"), "{err}");
    }
}
