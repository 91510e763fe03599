//! End-to-end tests of adjoint.
//!
//! The tests under `tests/tests/` start a real `adjoint-server` and real
//! `adjoint-worker` processes on loopback (through
//! `adjoint_client::local::LocalCluster`) and drive them through the CLI
//! and the Rust client, waiting on conditions, never fixed sleeps. This
//! library holds the data they share: a small model and a dataset it can
//! learn.

use std::collections::BTreeMap;
use std::path::Path;

use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_worker::data::{HostTensor, write_safetensors};
use anyhow::Result;

/// Features of the example model.
pub const FEATURES: usize = 16;
/// Classes of the example model.
pub const CLASSES: usize = 4;

/// Writes `model.json` (an MLP with a symbolic batch) and `train.safetensors`
/// (`samples` samples whose label is the argmax of the first 4 features)
/// into `dir`.
pub fn write_example(dir: &Path, samples: usize) -> Result<()> {
    let graph = zoo::mlp(&MlpConfig {
        input: FEATURES,
        hidden: vec![32],
        classes: CLASSES,
        batch: None,
    })?;
    adjoint_client::graph_file::save(&dir.join("model.json"), &graph)?;
    let mut x = Vec::with_capacity(samples * FEATURES);
    let mut labels = Vec::with_capacity(samples);
    for s in 0..samples {
        let row: Vec<f32> = (0..FEATURES)
            .map(|f| (((s * 31 + f * 17) % 97) as f32 / 48.0) - 1.0)
            .collect();
        let best = (0..CLASSES)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        labels.push(best as i64);
        x.extend(row);
    }
    let tensors = BTreeMap::from([
        (
            "x".to_owned(),
            HostTensor::from_f32(vec![samples, FEATURES], &x),
        ),
        (
            "labels".to_owned(),
            HostTensor::from_i64(vec![samples], &labels),
        ),
    ]);
    std::fs::write(dir.join("train.safetensors"), write_safetensors(&tensors)?)?;
    Ok(())
}
