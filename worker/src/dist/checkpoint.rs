//! Checkpoints: one safetensors file holding every parameter and state
//! variable (BatchNorm running statistics; named as in the graph), the
//! optimizer state per parameter (`optim.<state>.<param>`,
//! PyTorch's state names) and, as string metadata, the step, seed, data
//! position, the shape of the run and, under fp16, the loss scaler's state.

use std::collections::{BTreeMap, HashMap};

use adjoint_kernels::Backend;

use super::{DataPosition, DistTrainer};
use crate::data::{self, HostTensor};
use crate::{Error, Result};

/// The metadata of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// Optimizer steps completed.
    pub step: u64,
    /// Updates the optimizer applied: `step` less the skipped steps
    /// (`nan_policy = skip_step`, fp16 overflows). It drives AdamW's bias
    /// correction and SGD's first-step momentum. Checkpoints without it
    /// read it as `step`.
    pub optimizer_steps: u64,
    pub seed: u64,
    /// Where the next step reads.
    pub position: DataPosition,
    pub world: usize,
    pub batch: usize,
    pub grad_accum: usize,
    /// `sgd` or `adamw`.
    pub optimizer: String,
    /// fp16: the loss scale and the good steps since it last changed.
    pub loss_scale: Option<(f32, u64)>,
}

impl CheckpointMeta {
    fn to_map(&self) -> HashMap<String, String> {
        [
            ("format", "adjoint-checkpoint-v1".to_owned()),
            ("step", self.step.to_string()),
            ("optimizer_steps", self.optimizer_steps.to_string()),
            ("seed", self.seed.to_string()),
            ("epoch", self.position.epoch.to_string()),
            ("window", self.position.window.to_string()),
            ("world", self.world.to_string()),
            ("batch", self.batch.to_string()),
            ("grad_accum", self.grad_accum.to_string()),
            ("optimizer", self.optimizer.clone()),
        ]
        .into_iter()
        .chain(self.loss_scale.into_iter().flat_map(|(scale, good)| {
            [
                ("loss_scale", scale.to_string()),
                ("loss_scale_good_steps", good.to_string()),
            ]
        }))
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn from_map(map: &HashMap<String, String>) -> Result<CheckpointMeta> {
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| Error::Data(format!("checkpoint metadata has no '{k}'")))
        };
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse()
                .map_err(|_| Error::Data(format!("checkpoint metadata '{k}' is not a number")))
        };
        Ok(CheckpointMeta {
            step: num("step")?,
            optimizer_steps: match map.get("optimizer_steps") {
                Some(_) => num("optimizer_steps")?,
                None => num("step")?,
            },
            seed: num("seed")?,
            position: DataPosition {
                epoch: num("epoch")?,
                window: num("window")?,
            },
            world: num("world")? as usize,
            batch: num("batch")? as usize,
            grad_accum: num("grad_accum")? as usize,
            optimizer: get("optimizer")?.clone(),
            loss_scale: match map.get("loss_scale") {
                None => None,
                Some(s) => Some((
                    s.parse()
                        .ok()
                        .filter(|v: &f32| v.is_finite() && *v > 0.0)
                        .ok_or_else(|| {
                            Error::Data(format!(
                                "checkpoint metadata 'loss_scale' {s:?} is not a scale"
                            ))
                        })?,
                    num("loss_scale_good_steps")?,
                )),
            },
        })
    }
}

/// A checkpoint decoded: tensors and metadata.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl Checkpoint {
    /// Decodes a checkpoint file.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::Data(format!("checkpoint: {e}")))?;
        let meta = header
            .metadata()
            .as_ref()
            .ok_or_else(|| Error::Data("checkpoint: no metadata".into()))?;
        Ok(Checkpoint {
            meta: CheckpointMeta::from_map(meta)?,
            tensors: data::read_safetensors(bytes)?,
        })
    }

    /// The parameters and state alone (tensors not named `optim.*`).
    pub fn params(&self) -> BTreeMap<String, HostTensor> {
        self.tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("optim."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl<B: Backend> DistTrainer<B> {
    /// The metadata a checkpoint taken now carries.
    pub fn checkpoint_meta(&self) -> CheckpointMeta {
        let cfg = self.config();
        CheckpointMeta {
            step: self.steps(),
            optimizer_steps: self.optimizer().steps(),
            seed: cfg.seed,
            position: self.position(),
            world: cfg.world,
            batch: cfg.batch,
            grad_accum: cfg.grad_accum,
            optimizer: match cfg.optimizer {
                crate::OptimizerConfig::Sgd { .. } => "sgd".into(),
                crate::OptimizerConfig::AdamW { .. } => "adamw".into(),
            },
            loss_scale: self.loss_scaler().map(|s| (s.scale(), s.good_steps())),
        }
    }

    /// A checkpoint of the current state as safetensors bytes.
    pub fn checkpoint(&self) -> Result<Vec<u8>> {
        let mut tensors = self.params()?;
        tensors.extend(self.optimizer_state()?);
        safetensors::serialize(
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some(self.checkpoint_meta().to_map()),
        )
        .map_err(|e| Error::Data(format!("safetensors: {e}")))
    }

    /// A checkpoint with expert weights whole, as safetensors bytes on rank
    /// 0 (`None` on the others); every rank must call it. Without expert
    /// parallelism only rank 0 does any work.
    pub fn gather_checkpoint(
        &self,
        coll: &mut dyn crate::collective::Collective,
    ) -> Result<Option<Vec<u8>>> {
        let Some(shards) = self.expert_shards() else {
            return match self.config().rank {
                0 => self.checkpoint().map(Some),
                _ => Ok(None),
            };
        };
        let mut tensors = self.params()?;
        tensors.extend(self.optimizer_state()?);
        shards.gather(coll, &mut tensors)?;
        if self.config().rank != 0 {
            return Ok(None);
        }
        safetensors::serialize(
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some(self.checkpoint_meta().to_map()),
        )
        .map(Some)
        .map_err(|e| Error::Data(format!("safetensors: {e}")))
    }

    /// Restores parameters, optimizer state and the step from a checkpoint
    /// of the same graph and optimizer.
    pub fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let want = self.checkpoint_meta();
        if ckpt.meta.optimizer != want.optimizer {
            return Err(Error::Data(format!(
                "the checkpoint is of optimizer {}, this job uses {}",
                ckpt.meta.optimizer, want.optimizer
            )));
        }
        self.load_params(&ckpt.params())?;
        self.load_optimizer_state(&ckpt.tensors)?;
        self.set_steps(ckpt.meta.step);
        self.set_optimizer_steps(ckpt.meta.optimizer_steps);
        // A checkpoint of another precision leaves the scaler at its start.
        if let Some((scale, good)) = ckpt.meta.loss_scale {
            self.set_loss_scaler(scale, good);
        }
        Ok(())
    }
}

/// Encodes parameters as a plain safetensors file (no optimizer state, no
/// metadata): the job's `weights.safetensors`.
pub fn weights_file(params: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    data::write_safetensors(params)
}
