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

use adjoint_graph::checkpoint::{Policy, parse_bytes};
use adjoint_graph::precision::Precision;
use adjoint_graph::training::{TrainingGraph, training_graph_with};
use adjoint_graph::{DType, Dim, Graph, serialize};
use adjoint_proto::v1::{Estimate, JobSpec, OptimizerSpec, PolicyEstimate, job_spec};
use safetensors::Dtype;
use safetensors::tensor::Metadata;

use crate::{Error, Result, names};

/// The device kinds a job may ask for ("cuda" is read as "gpu").
pub const DEVICES: [&str; 2] = ["cpu", "gpu"];

/// What a GPU worker holds besides the job's plan, counted in its
/// estimate ([`device_bytes`]).
pub mod gpu_overhead {
    /// The CUDA context with its loaded modules (the NVRTC kernels) and
    /// the allocator's reserve: a few hundred MiB on an H100.
    pub const CUDA_CONTEXT: u64 = 512 << 20;
    /// cuBLAS's workspace on Hopper (32 MiB per handle; one handle).
    pub const CUBLAS_WORKSPACE: u64 = 32 << 20;
    /// NCCL's buffers with more than one rank: 2 peers (ring) × 32
    /// channels × 4 MiB (NCCL_BUFFSIZE), send and receive.
    pub const NCCL_BUFFERS: u64 = 2 * 2 * 32 * (4 << 20);
}

/// Bytes a worker of a job on `device` with `workers` ranks needs besides
/// the plan: nothing on the CPU; on a GPU the CUDA context, cuBLAS
/// workspace, the buffers of the on-device gradient reduction
/// (`reduce_bytes`, [`device_reduce_bytes`]) and, with more than one rank,
/// NCCL's buffers plus a staging copy of the largest bucket
/// (`bucket_bytes`, for what is reduced through the host: sparse expert
/// rows).
pub fn device_bytes(device: &str, workers: u32, bucket_bytes: u64, reduce_bytes: u64) -> u64 {
    if device != "gpu" {
        return 0;
    }
    let nccl = if workers > 1 {
        gpu_overhead::NCCL_BUFFERS + bucket_bytes
    } else {
        0
    };
    gpu_overhead::CUDA_CONTEXT + gpu_overhead::CUBLAS_WORKSPACE + reduce_bytes + nccl
}

/// The on-device gradient reduction's buffers for `grad_bytes` of f32
/// gradients: the reduced sums (as large as the gradients), the
/// accumulator with gradient accumulation, the bf16 copy the all-reduce
/// sends with `grad_reduce = "bf16"` (half), and a few scalars.
pub fn device_reduce_bytes(grad_bytes: u64, accumulate: bool, bf16: bool) -> u64 {
    let accum = if accumulate { grad_bytes } else { 0 };
    let half = if bf16 { grad_bytes / 2 } else { 0 };
    grad_bytes + accum + half + 4096
}

/// What one job may ask for; past these, submit fails naming the field or
/// the value (the gRPC message limit, 64 MiB, bounds the spec itself).
pub mod limits {
    /// Workers of one job.
    pub const WORKERS: u32 = 4096;
    /// Samples per worker per micro-step.
    pub const BATCH_SIZE: u64 = 1 << 24;
    /// Micro-steps per optimizer step.
    pub const GRAD_ACCUM: u32 = 1 << 16;
    /// Optimizer steps (or epochs).
    pub const STEPS: u64 = 1_000_000_000;
    /// Nodes of the graph.
    pub const NODES: usize = 1_000_000;
    /// Elements of any one value of the graph bound to the batch size.
    pub const VALUE_ELEMENTS: u64 = 1 << 36;
    /// Samples of a dataset.
    pub const SAMPLES: u64 = 1 << 32;
}

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
    for blob in [&spec.eval_blob, &spec.init_blob, &spec.onnx_blob] {
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
    let over = |field, value: u64, max: u64| {
        (value > max).then(|| bad(field, &format!("{value} is more than the limit, {max}")))
    };
    if let Some(err) = [
        over("workers", spec.workers.into(), limits::WORKERS.into()),
        over("batch_size", spec.batch_size, limits::BATCH_SIZE),
        over(
            "grad_accum",
            spec.grad_accum.into(),
            limits::GRAD_ACCUM.into(),
        ),
        over("steps", spec.steps, limits::STEPS),
        over("epochs", spec.epochs, limits::STEPS),
    ]
    .into_iter()
    .flatten()
    .next()
    {
        return Err(err);
    }
    spec.expert_parallel = spec.expert_parallel.max(1);
    spec.nan_policy = spec.nan_policy.trim().to_ascii_lowercase();
    if spec.nan_policy.is_empty() {
        spec.nan_policy = "fail".into();
    }
    if !matches!(spec.nan_policy.as_str(), "fail" | "skip_step") {
        return Err(bad(
            "nan_policy",
            &format!("'{}': use fail or skip_step", spec.nan_policy),
        ));
    }
    spec.precision = match Precision::parse(spec.precision.trim().to_ascii_lowercase().as_str()) {
        Ok(p) => p.name().to_owned(),
        Err(e) => return Err(bad("precision", &e)),
    };
    spec.grad_reduce = spec.grad_reduce.trim().to_ascii_lowercase();
    match spec.grad_reduce.as_str() {
        "" => spec.grad_reduce = "f32".into(),
        "f32" | "bf16" => {}
        other => {
            return Err(bad("grad_reduce", &format!("'{other}': use f32 or bf16")));
        }
    }
    if spec.loss_scale != 0.0 && !(spec.loss_scale.is_finite() && spec.loss_scale >= 1.0) {
        return Err(bad(
            "loss_scale",
            &format!(
                "{} is not a loss scale (a number ≥ 1; 0 for the default 65536)",
                spec.loss_scale
            ),
        ));
    }
    if !spec.workers.is_multiple_of(spec.expert_parallel) {
        return Err(bad(
            "expert_parallel",
            &format!(
                "{} does not divide the job's {} workers: each copy of the experts spans expert_parallel workers",
                spec.expert_parallel, spec.workers
            ),
        ));
    }
    spec.device = spec.device.trim().to_ascii_lowercase();
    if spec.device.is_empty() {
        spec.device = "cpu".into();
    }
    if spec.device == "cuda" {
        spec.device = "gpu".into();
    }
    if !DEVICES.contains(&spec.device.as_str()) {
        return Err(bad(
            "device",
            &format!("'{}': use cpu or gpu (cuda)", spec.device),
        ));
    }
    if !spec.clip_grad_norm.is_finite() || spec.clip_grad_norm < 0.0 {
        return Err(bad("clip_grad_norm", "must be finite and not negative"));
    }
    if !spec.bucket_mb.is_finite() || !(0.0..=1e6).contains(&spec.bucket_mb) {
        return Err(bad("bucket_mb", "must be a size in MiB from 0 to 1e6"));
    }
    // Not lowercased before parsing: the policy's name is case-insensitive,
    // a budget's unit is not (`budget:1GiB`).
    spec.checkpoint = spec.checkpoint.trim().to_owned();
    if spec.checkpoint.is_empty() || spec.checkpoint.eq_ignore_ascii_case(AUTO) {
        spec.checkpoint = AUTO.into();
    } else {
        let policy: Policy = spec
            .checkpoint
            .parse()
            .map_err(|e: adjoint_graph::Error| bad("checkpoint", &e.to_string()))?;
        spec.checkpoint = policy.to_string();
    }
    memory_budget(&spec)?;
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
    if samples > limits::SAMPLES {
        return Err(bad(format!(
            "has {samples} samples, more than the limit, {}",
            limits::SAMPLES
        )));
    }
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
    if graph.nodes.len() > limits::NODES {
        return Err(adjoint_graph::Error::Unsupported(format!(
            "graph '{}' has {} nodes, more than the limit, {}",
            graph.name,
            graph.nodes.len(),
            limits::NODES
        ))
        .into());
    }
    for v in &graph.values {
        let n = v.ty.shape.dims().iter().fold(1u64, |n, d| {
            n.saturating_mul(match d {
                Dim::Fixed(k) => *k as u64,
                Dim::Batch => spec.batch_size,
            })
        });
        if n > limits::VALUE_ELEMENTS {
            return Err(adjoint_graph::Error::InvalidValue {
                value: v.name.clone(),
                message: format!(
                    "{} ({n} elements at batch {}) is more than the limit, {} elements",
                    v.ty,
                    spec.batch_size,
                    limits::VALUE_ELEMENTS
                ),
            }
            .into());
        }
    }
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

/// The checkpoint policy that picks itself: none when the job fits, else
/// the budget that makes it fit.
pub const AUTO: &str = "auto";

/// The job's `memory_budget` in bytes, if it sets one.
fn memory_budget(spec: &JobSpec) -> Result<Option<u64>> {
    match spec.memory_budget.trim() {
        "" => Ok(None),
        text => parse_bytes(text)
            .map(|b| Some(b as u64))
            .map_err(|message| Error::InvalidSpec {
                field: "memory_budget",
                message,
            }),
    }
}

/// Plans `graph` for the job under checkpoint `policy`.
pub fn plan_job(graph: &Graph, spec: &JobSpec, policy: &Policy) -> Result<TrainingGraph> {
    let precision = Precision::parse(&spec.precision).unwrap_or_default();
    Ok(training_graph_with(
        graph,
        spec.batch_size as usize,
        policy,
        precision,
    )?)
}

/// Optimizer state bytes of a planned job.
fn optimizer_bytes(t: &TrainingGraph, spec: &JobSpec) -> u64 {
    let optimizer = spec.optimizer.clone().unwrap_or_default();
    t.plan.param_bytes as u64 * optimizer_state_per_element(&optimizer)
}

/// Per-worker bytes of a planned job: its plan's buffers, the optimizer
/// state and, on a GPU, the device's own ([`device_bytes`]).
fn total_bytes(t: &TrainingGraph, spec: &JobSpec) -> u64 {
    t.plan.total_bytes() as u64 + optimizer_bytes(t, spec) + spec_device_bytes(t, spec)
}

/// [`device_bytes`] of a planned job with a normalized spec (the bucket as
/// the worker sizes it: `bucket_mb`, else the executor's default of 25 MiB).
fn spec_device_bytes(t: &TrainingGraph, spec: &JobSpec) -> u64 {
    let bucket = if spec.bucket_mb > 0.0 {
        (spec.bucket_mb * f64::from(1u32 << 20)) as u64
    } else {
        25 << 20
    };
    let reduce = device_reduce_bytes(
        t.plan.grad_bytes as u64,
        spec.grad_accum > 1,
        spec.grad_reduce == "bf16",
    );
    device_bytes(&spec.device, spec.workers, bucket, reduce)
}

fn policy_row(policy: &Policy, t: &TrainingGraph, spec: &JobSpec) -> PolicyEstimate {
    let c = &t.checkpoint;
    PolicyEstimate {
        policy: policy.to_string(),
        kept_bytes: c.kept_bytes as u64,
        arena_bytes: t.plan.arena_bytes as u64,
        total_bytes: total_bytes(t, spec),
        recompute_flops: c.recompute_flops,
        recompute_share: c.recompute_share(),
    }
}

/// The per-worker estimate of a job whose graph is `graph` (checked with
/// [`check_graph`]) and whose spec is normalized, with its checkpoint
/// policy settled: `auto` becomes `none` when the job fits in its memory
/// budget (`memory_budget`, else `worker_memory`: the N-th largest live
/// worker's of the job's kind for N workers, when known), else `budget:B`
/// with B what parameters,
/// gradients, optimizer state and inputs leave of it. The settled policy is
/// written back into `spec`. A budget that no plan fits is an error naming
/// the smallest that does.
pub fn estimate(graph: &Graph, spec: &mut JobSpec, worker_memory: Option<u64>) -> Result<Estimate> {
    // Under expert parallelism a worker runs (and plans) the graph with
    // its share of the experts.
    let sharded;
    let graph = match spec.expert_parallel {
        0 | 1 => graph,
        ep => {
            sharded = adjoint_graph::expert_parallel::shard_experts(graph, ep as usize)?;
            &sharded.graph
        }
    };
    let plain = plan_job(graph, spec, &Policy::None)?;
    let plain_total = total_bytes(&plain, spec);
    let fixed = plain_total - plain.plan.arena_bytes as u64;
    let policy = if spec.checkpoint == AUTO {
        match memory_budget(spec)?.or(worker_memory) {
            Some(limit) if limit < plain_total => {
                Policy::Budget(limit.saturating_sub(fixed) as usize)
            }
            _ => Policy::None,
        }
    } else {
        spec.checkpoint
            .parse()
            .map_err(|e: adjoint_graph::Error| Error::InvalidSpec {
                field: "checkpoint",
                message: e.to_string(),
            })?
    };
    let chosen = match policy {
        Policy::None => plain.clone(),
        p => plan_job(graph, spec, &p).map_err(|e| match e {
            Error::Graph(adjoint_graph::Error::BudgetTooSmall { minimum, .. })
                if spec.checkpoint == AUTO =>
            {
                let needed = fixed + minimum as u64;
                let breakdown = format!(
                    "{fixed} fixed (parameters, gradients, optimizer state, inputs) + at least {minimum} of activations with the most recomputation"
                );
                match memory_budget(spec).ok().flatten() {
                    Some(budget) => Error::InvalidSpec {
                        field: "memory_budget",
                        message: format!(
                            "{budget} bytes is too small: the job needs at least {needed} per worker ({breakdown})"
                        ),
                    },
                    None => Error::TooBig {
                        needed,
                        largest: worker_memory.unwrap_or(0),
                        device: spec.device.clone(),
                        breakdown,
                    },
                }
            }
            other => other,
        })?,
    };
    let mut policies = vec![policy_row(&Policy::None, &plain, spec)];
    for p in [Policy::Selective, Policy::Sqrt] {
        if p != policy {
            policies.push(policy_row(&p, &plan_job(graph, spec, &p)?, spec));
        }
    }
    if policy != Policy::None {
        policies.push(policy_row(&policy, &chosen, spec));
    }
    spec.checkpoint = policy.to_string();
    let plan = &chosen.plan;
    let optimizer_bytes = optimizer_bytes(&chosen, spec);
    Ok(Estimate {
        arena_bytes: plan.arena_bytes as u64,
        param_bytes: plan.param_bytes as u64,
        grad_bytes: plan.grad_bytes as u64,
        optimizer_bytes,
        input_bytes: plan.input_bytes as u64,
        device_bytes: spec_device_bytes(&chosen, spec),
        total_bytes: total_bytes(&chosen, spec),
        flops_per_step: chosen.joint.graph.flops(),
        plan_hash: chosen.plan_hash(),
        checkpoint: spec.checkpoint.clone(),
        recompute_flops: chosen.checkpoint.recompute_flops,
        policies,
    })
}

/// Samples one optimizer step takes over all ranks: workers × grad_accum ×
/// batch_size (as the workers' sampler counts them).
pub fn samples_per_step(spec: &JobSpec) -> u64 {
    u64::from(spec.workers) * u64::from(spec.grad_accum) * spec.batch_size
}

/// "arena A + params P + grads G + optimizer O + inputs I" (bytes), with
/// " + device D" on a GPU.
pub fn breakdown(e: &Estimate) -> String {
    let device = if e.device_bytes > 0 {
        format!(" + device {}", e.device_bytes)
    } else {
        String::new()
    };
    format!(
        "arena {} + params {} + grads {} + optimizer {} + inputs {}{device}",
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
    fn limits_name_the_field_or_the_value() {
        for (field, set) in [
            (
                "workers",
                (|s: &mut JobSpec| s.workers = limits::WORKERS + 1) as fn(&mut JobSpec),
            ),
            ("batch_size", |s| s.batch_size = limits::BATCH_SIZE + 1),
            ("grad_accum", |s| s.grad_accum = limits::GRAD_ACCUM + 1),
            ("steps", |s| s.steps = limits::STEPS + 1),
            ("epochs", |s| s.epochs = limits::STEPS + 1),
        ] {
            let mut s = spec();
            set(&mut s);
            let err = normalize(s).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains("limit"),
                "{field}: {err}"
            );
        }
        // A value that would not fit: [batch, 2^20, 2^20] at batch 2^10.
        let mut b = adjoint_graph::Builder::new("huge");
        let x = b
            .input(
                "x",
                DType::F32,
                adjoint_graph::Shape(vec![Dim::Batch, Dim::Fixed(1 << 20), Dim::Fixed(1 << 20)]),
                adjoint_graph::InputRole::Data,
            )
            .unwrap();
        let y = b.sum_all(x).unwrap();
        b.loss(y);
        let g = b.finish().unwrap();
        let s = JobSpec {
            batch_size: 1 << 10,
            ..normalize(spec()).unwrap()
        };
        let err = check_graph(&g, &s).unwrap_err().to_string();
        assert!(err.contains("'x'") && err.contains("limit"), "{err}");
    }

    #[test]
    fn cuda_is_gpu_and_gpu_estimates_count_the_device() {
        let mut s = normalize(JobSpec {
            device: "CUDA".into(),
            ..spec()
        })
        .unwrap();
        assert_eq!(s.device, "gpu");
        let cpu = estimate(&small(), &mut normalize(spec()).unwrap(), None).unwrap();
        let gpu = estimate(&small(), &mut s, None).unwrap();
        assert_eq!(cpu.device_bytes, 0);
        let reduce = device_reduce_bytes(gpu.grad_bytes, false, false);
        assert!(reduce > gpu.grad_bytes, "the reduced sums and scalars");
        assert_eq!(
            gpu.device_bytes,
            gpu_overhead::CUDA_CONTEXT + gpu_overhead::CUBLAS_WORKSPACE + reduce
        );
        // Accumulation adds an accumulator, bf16 reduction a half copy.
        assert_eq!(
            device_reduce_bytes(1000, true, true),
            device_reduce_bytes(1000, false, false) + 1000 + 500
        );
        assert_eq!(gpu.total_bytes, cpu.total_bytes + gpu.device_bytes);
        assert!(breakdown(&gpu).ends_with(&format!(" + device {}", gpu.device_bytes)));
        // Two ranks add NCCL's buffers and a staging bucket.
        assert_eq!(
            device_bytes("gpu", 2, 1 << 20, reduce),
            gpu.device_bytes + gpu_overhead::NCCL_BUFFERS + (1 << 20)
        );
    }

    #[test]
    fn precision_is_named_checked_and_halves_activation_memory() {
        assert_eq!(normalize(spec()).unwrap().precision, "f32");
        let mut bf16 = normalize(JobSpec {
            precision: " BF16 ".into(),
            ..spec()
        })
        .unwrap();
        assert_eq!(bf16.precision, "bf16");
        let err = normalize(JobSpec {
            precision: "int8".into(),
            ..spec()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("precision") && err.contains("int8"), "{err}");
        let err = normalize(JobSpec {
            grad_reduce: "fp8".into(),
            ..spec()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("grad_reduce") && err.contains("fp8"), "{err}");
        assert_eq!(normalize(spec()).unwrap().grad_reduce, "f32");
        let err = normalize(JobSpec {
            precision: "fp16".into(),
            loss_scale: 0.5,
            ..spec()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("loss_scale") && err.contains("0.5"), "{err}");
        // At a large batch activations dominate the arena and bf16 halves
        // them (bf16 copies of the weights and their gradients add a
        // little); f32 master weights and optimizer state do not shrink.
        let g = adjoint_graph::zoo::mlp(&adjoint_graph::zoo::MlpConfig {
            input: 64,
            hidden: vec![256, 256],
            classes: 10,
            batch: None,
        })
        .unwrap();
        let mut f32_spec = JobSpec {
            batch_size: 4096,
            ..normalize(spec()).unwrap()
        };
        bf16.batch_size = 4096;
        let full = estimate(&g, &mut f32_spec, None).unwrap();
        let half = estimate(&g, &mut bf16, None).unwrap();
        assert_eq!(half.param_bytes, full.param_bytes);
        assert!(
            half.arena_bytes < full.arena_bytes * 6 / 10,
            "{} vs {}",
            half.arena_bytes,
            full.arena_bytes
        );
        assert_ne!(half.plan_hash, full.plan_hash);
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
        let sgd = estimate(&graph, &mut s.clone(), None).unwrap();
        assert_eq!(sgd.optimizer_bytes, 0);
        assert_eq!(sgd.param_bytes, (4 * 8 + 8 + 8 * 3 + 3) * 4);
        assert!(sgd.flops_per_step > 0);
        s.optimizer = Some(OptimizerSpec {
            name: "adamw".into(),
            ..OptimizerSpec::default()
        });
        let s = normalize(s).unwrap();
        let adam = estimate(&graph, &mut s.clone(), None).unwrap();
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
        assert_eq!(adam.checkpoint, "none");
        let policies: Vec<&str> = adam.policies.iter().map(|p| p.policy.as_str()).collect();
        assert_eq!(policies, ["none", "selective", "sqrt"]);
        assert_eq!(adam.policies[0].total_bytes, adam.total_bytes);
    }

    /// A wide chain whose activations dominate its memory.
    fn chain() -> Graph {
        adjoint_graph::zoo::chain(&adjoint_graph::zoo::ChainConfig {
            layers: 16,
            width: 64,
            batch: None,
        })
        .unwrap()
    }

    fn chain_spec() -> JobSpec {
        let mut s = spec();
        s.batch_size = 64;
        normalize(s).unwrap()
    }

    #[test]
    fn auto_checkpointing_fits_the_budget_or_names_the_minimum() {
        let graph = chain();
        let mut plain_spec = chain_spec();
        let plain = estimate(&graph, &mut plain_spec, None).unwrap();
        assert_eq!(
            (plain.checkpoint.as_str(), plain.recompute_flops),
            ("none", 0)
        );
        // A worker with room for everything: no recompute.
        let mut roomy = chain_spec();
        let e = estimate(&graph, &mut roomy, Some(plain.total_bytes)).unwrap();
        assert_eq!(
            (e.checkpoint.as_str(), roomy.checkpoint.as_str()),
            ("none", "none")
        );
        // A worker with 3/4 of it: a budget, met, at some recompute; the
        // spec now names the policy the workers will use.
        let fixed = plain.total_bytes - plain.arena_bytes;
        let limit = fixed + plain.arena_bytes * 3 / 4;
        let mut tight = chain_spec();
        let e = estimate(&graph, &mut tight, Some(limit)).unwrap();
        assert!(e.checkpoint.starts_with("budget:"), "{}", e.checkpoint);
        assert_eq!(tight.checkpoint, e.checkpoint);
        assert!(e.total_bytes <= limit, "{} > {limit}", e.total_bytes);
        assert!(e.recompute_flops > 0);
        assert_eq!(e.policies.last().unwrap().policy, e.checkpoint);
        // memory_budget in the spec wins over the worker's memory.
        let mut budgeted = chain_spec();
        budgeted.memory_budget = limit.to_string();
        let e2 = estimate(&graph, &mut budgeted, Some(u64::MAX)).unwrap();
        assert_eq!(e2.plan_hash, e.plan_hash);
        // A budget below what any plan needs names the smallest total.
        let mut tiny = chain_spec();
        tiny.memory_budget = (fixed + 1).to_string();
        let err = estimate(&graph, &mut tiny, None).unwrap_err().to_string();
        assert!(err.contains("at least"), "{err}");
        // An explicit policy is used as is.
        let mut sqrt = chain_spec();
        sqrt.checkpoint = "sqrt".into();
        let sqrt = normalize(sqrt).unwrap();
        let e = estimate(&graph, &mut sqrt.clone(), Some(1)).unwrap();
        assert_eq!(e.checkpoint, "sqrt");
        assert!(e.arena_bytes < plain.arena_bytes);
    }

    #[test]
    fn bad_checkpoint_fields_name_the_field() {
        let mut s = spec();
        s.checkpoint = "sometimes".into();
        let err = normalize(s).unwrap_err().to_string();
        assert!(err.contains("checkpoint") && err.contains("sqrt"), "{err}");
        let mut s = spec();
        s.memory_budget = "lots".into();
        let err = normalize(s).unwrap_err().to_string();
        assert!(err.contains("memory_budget"), "{err}");
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
