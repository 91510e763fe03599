//! The bundled example `adjoint demo` trains: a small GPT-style transformer
//! whose MLPs are mixture-of-experts layers (8 experts, top-2), learning a
//! synthetic sequence rule, `next = (5·t + 7) mod vocab`, from sequences
//! that start at random tokens. Chance is `ln vocab` nats per
//! token; a model that has learnt the rule gets close to zero, so the loss
//! falls visibly within a hundred steps. Everything is generated from a
//! seed: nothing is downloaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adjoint_graph::rng::Stream;
use adjoint_graph::zoo::{self, MoeTransformerConfig, TransformerConfig};
use adjoint_worker::data::{HostTensor, write_safetensors};
use anyhow::{Context, Result};

use crate::graph_file;

/// The model of the example, with a symbolic batch: the zoo's MoE layer
/// (8 experts, top-2, 0.01 · Switch loss) in a wider, shorter-vocabulary
/// decoder.
pub fn moe_gpt_config() -> MoeTransformerConfig {
    MoeTransformerConfig {
        transformer: TransformerConfig {
            vocab: 64,
            d_model: 128,
            layers: 2,
            heads: 4,
            seq: 64,
            batch: None,
        },
        ..MoeTransformerConfig::default()
    }
}

/// The files of the example.
#[derive(Debug, Clone)]
pub struct Example {
    /// `model.json`: the graph, loss included.
    pub graph: PathBuf,
    /// `train.safetensors`: `tokens` and `targets`, `[samples, seq]` int64.
    pub train: PathBuf,
    /// `eval.safetensors`: a held-out split drawn from another stream.
    pub eval: PathBuf,
    pub config: MoeTransformerConfig,
}

/// Writes the example into `dir`: `train` training and `eval` held-out
/// sequences.
pub fn write_moe_gpt_example(dir: &Path, seed: u64, train: usize, eval: usize) -> Result<Example> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = moe_gpt_config();
    let graph = zoo::moe_transformer(&config)?;
    let example = Example {
        graph: dir.join("model.json"),
        train: dir.join("train.safetensors"),
        eval: dir.join("eval.safetensors"),
        config,
    };
    graph_file::save(&example.graph, &graph)?;
    for (path, samples, site) in [(&example.train, train, 99), (&example.eval, eval, 100)] {
        let bytes =
            write_safetensors(&sequences(&example.config.transformer, samples, seed, site))?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(example)
}

/// `samples` sequences following the rule, each from a random first token.
fn sequences(
    cfg: &TransformerConfig,
    samples: usize,
    seed: u64,
    site: u64,
) -> BTreeMap<String, HostTensor> {
    let vocab = cfg.vocab as i64;
    let start = Stream {
        seed,
        step: 0,
        rank: 0,
        site,
    };
    let mut tokens = Vec::with_capacity(samples * cfg.seq);
    let mut targets = Vec::with_capacity(samples * cfg.seq);
    for s in 0..samples {
        let mut t = (start.uniform(s as u64) * cfg.vocab as f64) as i64;
        for _ in 0..cfg.seq {
            let next = (5 * t + 7) % vocab;
            tokens.push(t);
            targets.push(next);
            t = next;
        }
    }
    let shape = vec![samples, cfg.seq];
    BTreeMap::from([
        (
            "tokens".to_owned(),
            HostTensor::from_i64(shape.clone(), &tokens),
        ),
        ("targets".to_owned(), HostTensor::from_i64(shape, &targets)),
    ])
}
