//! Job specs: a TOML file and CLI flags with the same fields, merged (flags
//! win) and turned into an `adjoint.v1.JobSpec`, uploading local files as
//! blobs.
//!
//! ```toml
//! name = "mlp"
//! graph = "mlp.json"             # graph file, sent inline
//! data = "train.safetensors"     # uploaded as a blob
//! eval = "eval.safetensors"      # optional eval split
//! workers = 2
//! batch_size = 32                # per worker
//! grad_accum = 1
//! steps = 200                    # or epochs = 3
//! optimizer = "adamw:lr=1e-3,wd=0.01"
//! schedule = "cosine:warmup=20,min_lr=1e-5"
//! clip_grad_norm = 1.0
//! checkpoint_every = 50
//! eval_every = 50
//! seed = 0
//! init = "weights.safetensors"   # optional initial weights
//! bucket_mb = 25                 # gradient bucket size for the all-reduce
//! checkpoint = "auto"            # or none, every:2, sqrt, selective, budget:1GiB
//! memory_budget = "8GiB"         # per worker; auto recomputes to fit
//! lazy_experts = false           # MoE: untouched experts skip the update
//! expert_parallel = 2            # MoE: each worker holds E/2 experts
//! nan_policy = "fail"            # or "skip_step": a NaN/Inf step is skipped
//! precision = "bf16"             # or "f32" (default), "fp16" (loss-scaled)
//! loss_scale = 65536             # fp16: the first loss scale
//! grad_reduce = "bf16"           # gradient all-reduce in bf16 (default f32)
//! max_restarts = 3               # after lost workers, from the newest checkpoint
//! ```
//!
//! An ONNX model (`graph = "model.onnx"`, external data files next to it)
//! is imported by the client at `batch_size` and sent inline like a native
//! graph; the original model, with its external data inlined, is uploaded
//! as a blob (`onnx_blob`) so `adjoint pull JOB --onnx` can export the
//! trained weights back into it. It needs a loss:
//!
//! ```toml
//! graph = "model.onnx"
//! loss = "cross_entropy"         # or "mse"
//! loss_output = "logits"         # default: the model's only output
//! label = "labels"               # the data's label tensor (default "labels")
//! freeze = ["embed.*"]           # initializers kept frozen (`*` globs)
//! ```

use std::path::{Path, PathBuf};

use adjoint_graph::serialize;
use adjoint_proto::v1::{JobSpec, LrSchedule, OptimizerSpec, job_spec};
use adjoint_worker::OptimizerConfig;
use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::onnx_file::{self, OnnxOptions};
use crate::{Client, graph_file};

/// The fields of a job spec, as a TOML file or flags give them. Paths are
/// relative to the spec file (for a file) or the working directory.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SpecFields {
    /// Job name.
    #[arg(long)]
    pub name: Option<String>,
    /// Graph file (`.json`, binary protobuf, or an `.onnx` model).
    #[arg(long)]
    pub graph: Option<PathBuf>,
    /// Training data: safetensors named as the graph inputs, `[samples, ...]`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluation split (same layout as the data).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Worker processes (data-parallel ranks).
    #[arg(long)]
    pub workers: Option<u32>,
    /// `cpu` or `gpu` (also `cuda`): a GPU job runs only on workers that
    /// registered a GPU (`adjoint-worker --device cuda:N`).
    #[arg(long)]
    pub device: Option<String>,
    /// Samples per worker per micro-step.
    #[arg(long)]
    pub batch_size: Option<u64>,
    /// Micro-steps per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<u32>,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Epochs over the data (when steps is not given).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// `sgd:lr=0.01,momentum=0.9` or `adamw:lr=1e-3,wd=0.01,...`.
    #[arg(long)]
    pub optimizer: Option<String>,
    /// `constant`, or `cosine:warmup=N,min_lr=X` (warmup also for constant).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Clip gradients to this global norm.
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Write a checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Evaluate on the eval split every N steps.
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Seed for initializers, shuffling and random ops.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Initial weights (safetensors named as the parameters).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Start from another job's last checkpoint.
    #[arg(long)]
    pub resume_from: Option<String>,
    /// Gradient bucket size in MiB (all-reduced while backward runs).
    #[arg(long)]
    pub bucket_mb: Option<f64>,
    /// Activation checkpointing: `auto` (default), `none`, `every:K`,
    /// `sqrt`, `selective` or `budget:BYTES`.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Memory a worker may use for the job (`2GiB`); with `auto`
    /// checkpointing, activations are recomputed to fit it.
    #[arg(long)]
    pub memory_budget: Option<String>,
    /// Experts no token chose keep their weights and optimizer state.
    #[arg(long)]
    pub lazy_experts: Option<bool>,
    /// Expert parallelism: workers one copy of the experts spans (each
    /// holds E/N experts; tokens reach them by all-to-all).
    #[arg(long)]
    pub expert_parallel: Option<u32>,
    /// A step whose loss or gradient is NaN or infinite: `fail` (default)
    /// or `skip_step`.
    #[arg(long)]
    pub nan_policy: Option<String>,
    /// Training precision: `f32` (default), `bf16` (matmuls in bfloat16,
    /// f32 master weights) or `fp16` (IEEE half with a dynamic loss scale).
    #[arg(long)]
    pub precision: Option<String>,
    /// fp16: the first loss scale (default 65536).
    #[arg(long)]
    pub loss_scale: Option<f64>,
    /// The gradient all-reduce: `f32` (default) or `bf16` (half the
    /// bytes).
    #[arg(long)]
    pub grad_reduce: Option<String>,
    /// Restarts after a lost worker or peer, each from the newest
    /// checkpoint, before the job fails (default 3).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// ONNX model: the loss to add, `cross_entropy` or `mse`.
    #[arg(long)]
    pub loss: Option<String>,
    /// ONNX model: the output the loss reads (default: the only output).
    #[arg(long)]
    pub loss_output: Option<String>,
    /// ONNX model: the label input the loss compares with (default `labels`).
    #[arg(long)]
    pub label: Option<String>,
    /// ONNX model: initializers to keep frozen (`*` globs; repeatable).
    #[arg(long)]
    pub freeze: Option<Vec<String>>,
}

macro_rules! merge_fields {
    ($base:expr, $over:expr, $($f:ident),*) => {
        $( if $over.$f.is_some() { $base.$f = $over.$f.clone(); } )*
    };
}

impl SpecFields {
    /// Reads a TOML spec; relative paths become relative to its folder.
    pub fn from_file(path: &Path) -> Result<SpecFields> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut fields: SpecFields =
            toml::from_str(&text).with_context(|| format!("in job spec {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut fields.graph,
            &mut fields.data,
            &mut fields.eval,
            &mut fields.init,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(fields)
    }

    /// These fields with every field `over` sets replacing ours.
    pub fn merged(mut self, over: &SpecFields) -> SpecFields {
        merge_fields!(
            self,
            over,
            name,
            graph,
            data,
            eval,
            workers,
            device,
            batch_size,
            grad_accum,
            steps,
            epochs,
            optimizer,
            schedule,
            clip_grad_norm,
            checkpoint_every,
            eval_every,
            seed,
            init,
            resume_from,
            bucket_mb,
            checkpoint,
            memory_budget,
            lazy_experts,
            expert_parallel,
            nan_policy,
            precision,
            loss_scale,
            grad_reduce,
            max_restarts,
            loss,
            loss_output,
            label,
            freeze
        );
        self
    }

    /// The spec, with the graph inline and local files uploaded as blobs.
    pub async fn build(&self, client: &mut Client) -> Result<JobSpec> {
        let Some(graph_path) = &self.graph else {
            bail!("the job has no graph (--graph or `graph = ...` in the spec)");
        };
        let Some(data) = &self.data else {
            bail!("the job has no training data (--data or `data = ...` in the spec)");
        };
        let onnx = if onnx_file::is_onnx(graph_path) {
            Some(onnx_file::load_for_training(
                graph_path,
                &self.onnx_options(),
            )?)
        } else {
            if self.loss.is_some()
                || self.loss_output.is_some()
                || self.label.is_some()
                || self.freeze.is_some()
            {
                bail!(
                    "loss, loss_output, label and freeze apply to ONNX models only ({} is not `.onnx`)",
                    graph_path.display()
                );
            }
            None
        };
        let graph = match &onnx {
            Some(m) => m.graph.clone(),
            None => graph_file::load(graph_path)?,
        };
        let mut spec = JobSpec {
            name: self.name.clone().unwrap_or_else(|| graph.name.clone()),
            model: Some(job_spec::Model::Graph(serialize::to_proto(&graph))),
            dataset_blob: upload(client, data).await?,
            workers: self.workers.unwrap_or(1),
            device: self.device.clone().unwrap_or_else(|| "cpu".into()),
            batch_size: self.batch_size.unwrap_or(0),
            grad_accum: self.grad_accum.unwrap_or(1),
            steps: self.steps.unwrap_or(0),
            epochs: self.epochs.unwrap_or(0),
            optimizer: Some(optimizer_spec(
                self.optimizer.as_deref().unwrap_or("sgd:lr=0.01"),
            )?),
            schedule: Some(schedule_spec(
                self.schedule.as_deref().unwrap_or("constant"),
            )?),
            clip_grad_norm: self.clip_grad_norm.unwrap_or(0.0),
            checkpoint_every: self.checkpoint_every.unwrap_or(0),
            eval_every: self.eval_every.unwrap_or(0),
            seed: self.seed.unwrap_or(0),
            resume_from_job: self.resume_from.clone().unwrap_or_default(),
            bucket_mb: self.bucket_mb.unwrap_or(0.0),
            checkpoint: self.checkpoint.clone().unwrap_or_default(),
            memory_budget: self.memory_budget.clone().unwrap_or_default(),
            lazy_experts: self.lazy_experts.unwrap_or(false),
            expert_parallel: self.expert_parallel.unwrap_or(1),
            nan_policy: self.nan_policy.clone().unwrap_or_default(),
            precision: self.precision.clone().unwrap_or_default(),
            loss_scale: self.loss_scale.unwrap_or(0.0),
            grad_reduce: self.grad_reduce.clone().unwrap_or_default(),
            max_restarts: self.max_restarts,
            ..JobSpec::default()
        };
        if let Some(eval) = &self.eval {
            spec.eval_blob = upload(client, eval).await?;
        }
        if let Some(init) = &self.init {
            spec.init_blob = upload(client, init).await?;
        }
        if let Some(m) = onnx {
            if let Some(loss) = &m.loss {
                spec.loss = loss.kind.clone();
                spec.loss_output = loss.output.clone();
                spec.label = loss.label.clone();
            }
            spec.freeze = self.freeze.clone().unwrap_or_default();
            let name = graph_path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model.onnx");
            spec.onnx_blob = client
                .upload_blob(name, m.bytes)
                .await
                .with_context(|| format!("uploading {}", graph_path.display()))?;
        }
        Ok(spec)
    }

    /// How an ONNX graph is imported: at the batch size, with the loss and
    /// frozen initializers these fields name.
    pub fn onnx_options(&self) -> OnnxOptions {
        OnnxOptions {
            batch: self.batch_size.map(|b| b as usize),
            freeze: self.freeze.clone().unwrap_or_default(),
            loss: self.loss.clone(),
            loss_output: self.loss_output.clone(),
            label: self.label.clone(),
        }
    }
}

async fn upload(client: &mut Client, path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("blob");
    client
        .upload_blob(name, bytes)
        .await
        .with_context(|| format!("uploading {}", path.display()))
}

/// `sgd:lr=...` / `adamw:...` as the wire message.
pub fn optimizer_spec(text: &str) -> Result<OptimizerSpec> {
    Ok(match OptimizerConfig::parse(text)? {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
        } => OptimizerSpec {
            name: "sgd".into(),
            lr: f64::from(lr),
            momentum: f64::from(momentum),
            dampening: f64::from(dampening),
            weight_decay: f64::from(weight_decay),
            nesterov,
            ..OptimizerSpec::default()
        },
        OptimizerConfig::AdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => OptimizerSpec {
            name: "adamw".into(),
            lr: f64::from(lr),
            beta1: f64::from(beta1),
            beta2: f64::from(beta2),
            eps: f64::from(eps),
            weight_decay: f64::from(weight_decay),
            ..OptimizerSpec::default()
        },
    })
}

/// `constant`, `constant:warmup=N`, `cosine:warmup=N,min_lr=X`.
pub fn schedule_spec(text: &str) -> Result<LrSchedule> {
    let (kind, args) = text.split_once(':').unwrap_or((text, ""));
    if kind != "constant" && kind != "cosine" {
        bail!("unknown schedule '{kind}': use constant or cosine");
    }
    let mut schedule = LrSchedule {
        kind: kind.to_owned(),
        ..LrSchedule::default()
    };
    for kv in args.split(',').filter(|s| !s.is_empty()) {
        let (key, value) = kv
            .split_once('=')
            .with_context(|| format!("schedule option '{kv}' is not key=value"))?;
        match key {
            "warmup" => {
                schedule.warmup_steps =
                    value.parse().with_context(|| format!("warmup '{value}'"))?
            }
            "min_lr" => {
                schedule.min_lr = value.parse().with_context(|| format!("min_lr '{value}'"))?
            }
            other => bail!("schedule '{kind}' has no option '{other}'"),
        }
    }
    Ok(schedule)
}
