//! Helpers the engine commands share: loading tensors and binding a graph's
//! batch dimension to the data.

use std::collections::BTreeMap;
use std::path::Path;

use adjoint_graph::{Dim, Graph};
use adjoint_worker::data::{HostTensor, read_safetensors};
use anyhow::{Context, Result, bail};

/// Reads a safetensors file.
pub fn load_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    read_safetensors(&bytes).with_context(|| format!("reading {}", path.display()))
}

/// `graph` with its batch dimension bound to the leading dimension of the
/// data's tensors (which must agree), after checking every input is there.
pub fn bind_to_data(graph: &Graph, data: &BTreeMap<String, HostTensor>) -> Result<Graph> {
    let mut batch = None;
    for input in &graph.inputs {
        let name = graph.name_of(input.value);
        let Some(t) = data.get(name) else {
            bail!("the data has no tensor '{name}' for graph input '{name}'");
        };
        let shape = &graph.ty(input.value).shape;
        if let Some(axis) = shape.dims().iter().position(|d| *d == Dim::Batch) {
            let Some(&n) = t.shape.get(axis) else {
                bail!(
                    "tensor '{name}' has shape {:?}, the input {}",
                    t.shape,
                    shape
                );
            };
            match batch {
                None => batch = Some(n),
                Some(b) if b != n => bail!("tensor '{name}' has batch {n}, another input {b}"),
                Some(_) => {}
            }
        }
    }
    let bound = match batch {
        Some(b) => graph.bind_batch(b),
        None => graph.clone(),
    };
    for input in &bound.inputs {
        let name = bound.name_of(input.value);
        let (t, want) = (&data[name], bound.ty(input.value));
        if t.dtype != want.dtype || Some(&t.shape) != want.shape.to_static().as_ref() {
            bail!(
                "tensor '{name}' is {}{:?}, but the graph input needs {want}",
                t.dtype,
                t.shape
            );
        }
    }
    if let Some(extra) = data.keys().find(|k| {
        bound
            .find(k)
            .is_none_or(|v| !bound.inputs.iter().any(|i| i.value == v))
    }) {
        bail!("the data has a tensor '{extra}' that is not a graph input");
    }
    Ok(bound)
}
