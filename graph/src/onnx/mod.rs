//! ONNX import: an ONNX model (`ModelProto` bytes) to a [`Graph`].
//!
//! - [`import()`]: the model to a graph with no loss; [`with_loss`] then adds
//!   a cross-entropy or MSE loss on one output for training.
//! - [`read_tensor`]: one `TensorProto` file (the ONNX backend tests'
//!   `input_N.pb` / `output_N.pb`).
//!
//! What becomes what:
//! - Float initializers are parameters holding their values
//!   ([`crate::Init::Values`]), trainable unless a [`ImportOptions::freeze`]
//!   glob matches, declared in the order nodes first read them; integer and
//!   bool initializers are constants. The running mean and variance a
//!   BatchNormalization reads are non-trainable state instead
//!   ([`crate::StateVar`], named as the initializer), which each training
//!   step updates when the node is in training mode. A float initializer
//!   no node reads as a value (unused, or only read where a constant is
//!   needed, like Dropout's ratio) makes no parameter. A graph input that
//!   is also an initializer is an initializer.
//! - Graph inputs are data inputs of their ONNX dtype and shape; a symbolic
//!   or unknown leading dim is bound to [`ImportOptions::batch`], or becomes
//!   the batch symbol when none is given. No other dim may be symbolic.
//! - Every value keeps its ONNX name (the IR accepts any non-empty name,
//!   so none is changed); the graph outputs are the ONNX outputs in order.
//! - Nodes map to the IR's ops as the tables in `ops` (arithmetic, matrix,
//!   activation, normalization, reduction, selection) and `shape_ops`
//!   (constants, shapes, layout, indexing) say. A node whose inputs are all
//!   constants is evaluated at import (`fold`), so the shape arithmetic
//!   exporters emit (`Shape -> Gather -> Unsqueeze -> Concat -> Reshape`)
//!   disappears; `Shape` of a value with a batch dim gives a constant whose
//!   entry stands for the batch symbol, which reaches Reshape and Expand
//!   as the symbol. A shape that depends on the batch size where a number
//!   is needed is an error naming the node and value ("dynamic shape we
//!   cannot resolve; pass a batch size").
//!
//! The default domain's opset must be 13 or newer. Errors name the node
//! (by name, or `#index/first-output` when unnamed), its op, the attribute
//! or input and the shapes involved: truncated or invalid protobuf is
//! [`Error::Decode`], an op outside the table [`Error::UnknownOp`] (with
//! the opset), another domain and ops not supported yet (ConvTranspose,
//! GlobalMaxPool) [`Error::Unsupported`], a bad attribute
//! [`Error::BadAttribute`], missing external data and malformed tensors
//! [`Error::InvalidValue`] naming the tensor and file, shape problems
//! [`Error::InvalidNode`] or, against a type the model declares,
//! [`Error::InvalidValue`]. Nothing panics on any input.
//!
//! The module is pure: external data files are read by the caller's
//! callback.

mod batch_norm;
mod emit;
pub mod export;
mod fold;
mod import;
mod loss;
mod node;
mod ops;
mod shape_ops;
mod tensor;
mod value;

use adjoint_proto::onnx::TensorProto;
use prost::Message;

pub use export::{inline_external, with_weights};

use crate::{Error, Graph, Result, TensorData};

/// How to import a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Binds symbolic dims (dim_param / unknown) of the graph inputs'
    /// leading dim to this batch.
    pub batch: Option<usize>,
    /// Initializer names matching any of these globs (`*` wildcard) stay
    /// frozen (trainable: false).
    pub freeze: Vec<String>,
}

/// An imported model.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// No loss set; outputs are the ONNX graph outputs in order.
    pub graph: Graph,
    /// The default-domain opset.
    pub opset: i64,
    /// ONNX graph inputs that are real inputs (not initializers), in order.
    pub inputs: Vec<String>,
    /// ONNX graph outputs, in order (`graph.outputs[i]` is `outputs[i]`).
    pub outputs: Vec<String>,
    /// Initializer names that became trainable parameters.
    pub trainable: Vec<String>,
    /// Initializer names that became non-trainable state (the running
    /// statistics of BatchNormalization), in initializer order.
    pub state: Vec<String>,
}

/// Imports an ONNX model. `external` returns the bytes of an external data
/// file named by `location` (relative to the model's folder).
pub fn import(
    model: &[u8],
    opts: &ImportOptions,
    external: &dyn Fn(&str) -> Result<Vec<u8>>,
) -> Result<Imported> {
    import::run(model, opts, external)
}

/// A TensorProto file (the ONNX backend tests' input_N.pb / output_N.pb):
/// name and data. Narrow integer types are widened as for initializers;
/// external data is not followed.
pub fn read_tensor(bytes: &[u8]) -> Result<(String, TensorData)> {
    let t = TensorProto::decode(bytes)
        .map_err(|e| Error::Decode(format!("ONNX tensor: protobuf: {e}")))?;
    let no_files = |location: &str| -> Result<Vec<u8>> {
        Err(Error::Unsupported(format!(
            "read_tensor does not follow external data ('{location}')"
        )))
    };
    let data = tensor::tensor_data(&t, &no_files).map_err(|message| Error::InvalidValue {
        value: t.name().to_owned(),
        message,
    })?;
    Ok((t.name().to_owned(), data))
}

/// Adds a loss for training: `kind` "cross_entropy" (logits output [N, C]
/// or [..., C] vs int labels) or "mse" (output vs float target of the
/// output's shape), on ONNX output `output` against a new graph input named
/// `label` (role Label); returns the graph with `loss` set. Cross-entropy
/// labels are i64 of the logits' shape without the last dim; the loss value
/// is named `loss` (or `loss_1`, ... when taken).
pub fn with_loss(imported: &Imported, kind: &str, output: &str, label: &str) -> Result<Graph> {
    loss::with_loss(imported, kind, output, label)
}
