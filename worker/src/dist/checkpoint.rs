//! Checkpoints: one safetensors file holding every parameter and state
//! variable (BatchNorm running statistics; named as in the graph), the
//! optimizer state per parameter (`optim.<state>.<param>`,
//! PyTorch's state names) and, as string metadata, the step, seed, data
//! position and the shape of the run.

use std::collections::{BTreeMap, HashMap};

use adjoint_kernels::Backend;

use super::{DataPosition, DistTrainer};
use crate::data::{self, HostTensor};
use crate::{Error, Result};

/// The metadata of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// Optimizer steps completed.
    pub step: u64,
    pub seed: u64,
    /// Where the next step reads.
    pub position: DataPosition,
    pub world: usize,
    pub batch: usize,
    pub grad_accum: usize,
    /// `sgd` or `adamw`.
    pub optimizer: String,
}

impl CheckpointMeta {
    fn to_map(&self) -> HashMap<String, String> {
        [
            ("format", "adjoint-checkpoint-v1".to_owned()),
            ("step", self.step.to_string()),
            ("seed", self.seed.to_string()),
            ("epoch", self.position.epoch.to_string()),
            ("window", self.position.window.to_string()),
            ("world", self.world.to_string()),
            ("batch", self.batch.to_string()),
            ("grad_accum", self.grad_accum.to_string()),
            ("optimizer", self.optimizer.clone()),
        ]
        .into_iter()
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
            seed: num("seed")?,
            position: DataPosition {
                epoch: num("epoch")?,
                window: num("window")?,
            },
            world: num("world")? as usize,
            batch: num("batch")? as usize,
            grad_accum: num("grad_accum")? as usize,
            optimizer: get("optimizer")?.clone(),
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
            seed: cfg.seed,
            position: self.position(),
            world: cfg.world,
            batch: cfg.batch,
            grad_accum: cfg.grad_accum,
            optimizer: match cfg.optimizer {
                crate::OptimizerConfig::Sgd { .. } => "sgd".into(),
                crate::OptimizerConfig::AdamW { .. } => "adamw".into(),
            },
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
        Ok(())
    }
}

/// Encodes parameters as a plain safetensors file (no optimizer state, no
/// metadata): the job's `weights.safetensors`.
pub fn weights_file(params: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    data::write_safetensors(params)
}
