//! ONNX models (`.onnx`) as graph files: read with their external data
//! (files relative to the model's folder), imported with a batch size and
//! frozen initializers, and given a loss for training.
//!
//! A model's loss comes from the job spec or flags: `loss`
//! (`cross_entropy` or `mse`) on `loss_output` (default: the model's only
//! output) against a new input `label` (default `labels`).

// The importer's external-data callback returns the graph crate's error,
// large by design (it names node, op and provenance).
#![allow(clippy::result_large_err)]

use std::path::{Component, Path};

use adjoint_graph::Graph;
use adjoint_graph::onnx::{self, ImportOptions, Imported};
use anyhow::{Context, Result, bail};

/// The losses an ONNX model can be given.
pub const LOSSES: [&str; 2] = ["cross_entropy", "mse"];

/// The label input's default name.
pub const DEFAULT_LABEL: &str = "labels";

/// How to import an ONNX model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnnxOptions {
    /// Binds the inputs' symbolic leading dim.
    pub batch: Option<usize>,
    /// Initializer globs (`*` wildcard) kept frozen.
    pub freeze: Vec<String>,
    /// `cross_entropy` or `mse`; none: the graph has no loss.
    pub loss: Option<String>,
    /// The output the loss reads (default: the only output).
    pub loss_output: Option<String>,
    /// The label input's name (default `labels`).
    pub label: Option<String>,
}

/// The loss an imported model was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub kind: String,
    pub output: String,
    pub label: String,
}

/// An imported ONNX model.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// The model as one self-contained file (external data inlined).
    pub bytes: Vec<u8>,
    pub imported: Imported,
    /// The imported graph, with the loss when one was asked for.
    pub graph: Graph,
    pub loss: Option<Loss>,
}

/// Whether `path` names an ONNX model (extension `.onnx`).
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Reads external data file `location` relative to `dir`; a location that
/// is absolute or leaves the folder (`..`) is refused.
pub fn read_external(dir: &Path, location: &str) -> adjoint_graph::Result<Vec<u8>> {
    let rel = Path::new(location);
    if location.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(adjoint_graph::Error::Unsupported(format!(
            "external data location '{location}' must be a relative path inside the model's folder"
        )));
    }
    let path = dir.join(rel);
    std::fs::read(&path).map_err(|e| {
        adjoint_graph::Error::Unsupported(format!("cannot read {}: {e}", path.display()))
    })
}

/// The folder external data locations are relative to.
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The model at `path` as one self-contained file: external data read
/// from files next to it and stored inline.
pub fn read_inlined(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let dir = folder(path);
    onnx::inline_external(&bytes, &|location| read_external(dir, location))
        .with_context(|| format!("invalid ONNX model {}", path.display()))
}

/// Reads and imports the model at `path`, adding the loss `opts` asks for.
pub fn load(path: &Path, opts: &OnnxOptions) -> Result<OnnxModel> {
    let bytes = read_inlined(path)?;
    let import_opts = ImportOptions {
        batch: opts.batch,
        freeze: opts.freeze.clone(),
    };
    let dir = folder(path);
    let imported = onnx::import(&bytes, &import_opts, &|location| {
        read_external(dir, location)
    })
    .with_context(|| format!("cannot import ONNX model {}", path.display()))?;
    if let Some(pattern) = opts.freeze.iter().find(|p| {
        !imported
            .graph
            .params
            .iter()
            .any(|q| glob(p, imported.graph.name_of(q.value)))
    }) {
        bail!(
            "freeze pattern '{pattern}' matches no parameter of {} (parameters: {})",
            path.display(),
            names(&imported)
        );
    }
    let (graph, loss) = match &opts.loss {
        None => {
            if opts.loss_output.is_some() || opts.label.is_some() {
                bail!("--loss-output and --label need --loss cross_entropy or mse");
            }
            (imported.graph.clone(), None)
        }
        Some(kind) => {
            if !LOSSES.contains(&kind.as_str()) {
                bail!("unknown loss '{kind}': use {}", LOSSES.join(" or "));
            }
            let output = match &opts.loss_output {
                Some(o) => o.clone(),
                None => match imported.outputs.as_slice() {
                    [only] => only.clone(),
                    outputs => bail!(
                        "{} has {} outputs ({}): name the one the loss reads with --loss-output",
                        path.display(),
                        outputs.len(),
                        outputs.join(", ")
                    ),
                },
            };
            let label = opts.label.clone().unwrap_or_else(|| DEFAULT_LABEL.into());
            let graph = onnx::with_loss(&imported, kind, &output, &label).with_context(|| {
                format!(
                    "adding a {kind} loss on '{output}' vs '{label}' to {}",
                    path.display()
                )
            })?;
            let loss = Loss {
                kind: kind.clone(),
                output,
                label,
            };
            (graph, Some(loss))
        }
    };
    Ok(OnnxModel {
        bytes,
        imported,
        graph,
        loss,
    })
}

/// Like [`load`], for training: the model must be given a loss.
pub fn load_for_training(path: &Path, opts: &OnnxOptions) -> Result<OnnxModel> {
    if opts.loss.is_none() {
        bail!(
            "the ONNX model {} has no loss: pass --loss cross_entropy or --loss mse (`loss = ...` in a spec), with --loss-output NAME (default: the only output) and --label NAME (default: labels)",
            path.display()
        );
    }
    load(path, opts)
}

fn names(imported: &Imported) -> String {
    let g = &imported.graph;
    let all: Vec<&str> = g.params.iter().map(|p| g.name_of(p.value)).collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_locations() {
        assert!(glob("fc1.*", "fc1.weight"));
        assert!(glob("*bias", "fc2.bias"));
        assert!(!glob("fc1.*", "fc2.weight"));
        let dir = Path::new("/nonexistent");
        for bad in ["../x", "/etc/passwd", ""] {
            let e = read_external(dir, bad).unwrap_err().to_string();
            assert!(e.contains("inside the model's folder"), "{e}");
        }
        assert!(is_onnx(Path::new("a/model.ONNX")));
        assert!(!is_onnx(Path::new("model.json")));
    }
}
