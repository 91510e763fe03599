//! Reading and writing graph files: binary protobuf (`.pb`, or any other
//! extension), proto3 JSON (`.json`) and, for reading, ONNX models
//! (`.onnx`, imported by [`crate::onnx_file`]).

use std::path::Path;

use adjoint_graph::{Graph, serialize};
use anyhow::{Context, Result};

use crate::onnx_file::{self, OnnxOptions};

/// The two encodings of a graph file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Binary,
    Json,
}

impl Format {
    /// `.json` means JSON; everything else is binary protobuf.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Binary,
        }
    }
}

/// Loads and validates a graph file; an ONNX model is imported with no
/// loss and a symbolic batch.
pub fn load(path: &Path) -> Result<Graph> {
    load_with(path, &OnnxOptions::default())
}

/// Loads and validates a graph file; an ONNX model is imported with
/// `onnx`'s batch, frozen initializers and loss (ignored for other files).
pub fn load_with(path: &Path, onnx: &OnnxOptions) -> Result<Graph> {
    if onnx_file::is_onnx(path) {
        return Ok(onnx_file::load(path, onnx)?.graph);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let graph = match Format::from_path(path) {
        Format::Json => {
            let text = std::str::from_utf8(&bytes)
                .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
            serialize::from_json(text)
        }
        Format::Binary => serialize::decode(&bytes),
    };
    graph.with_context(|| format!("invalid graph file {}", path.display()))
}

/// Writes a graph in the format its extension names.
pub fn save(path: &Path, graph: &Graph) -> Result<()> {
    let bytes = match Format::from_path(path) {
        Format::Json => serialize::to_json(graph).into_bytes(),
        Format::Binary => serialize::encode(graph),
    };
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
